//! Per-user rate limits that hold across replicas.
//!
//! Each replica keeps a token bucket per user and answers from it at once, with no
//! round trip. Every [`SHARE_INTERVAL`] it broadcasts what each user spent there
//! (`sb.cmd.chat.rate.spent`, a `RateSpent`), and every replica takes the others'
//! spending from its own buckets. So a user who spreads requests over N replicas
//! gets the configured sustained rate in total, not N times it; the overshoot is
//! bounded by what the user can spend within one interval before the reports land
//! (and by one burst per replica for a user who was idle). A strongly consistent
//! counter (a KV compare-and-set per request) would add a NATS round trip to every
//! send; a chat limit is there against floods, where a 100 ms lag does not matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_bus::{Bus, BusError};
use switchboard_proto::chat::v1::RateSpent;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// How often a replica reports what its users spent.
pub const SHARE_INTERVAL: Duration = Duration::from_millis(100);

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// A token bucket per user, shared with the other replicas through the bus.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens a bucket gains per second.
    per_second: f64,
    /// A bucket's capacity.
    burst: f64,
    /// This replica's id in its reports.
    replica: String,
    /// User -> (tokens, when last refilled).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// User -> requests made here since the last report.
    unreported: Mutex<HashMap<String, u32>>,
}

impl RateLimiter {
    /// `per_minute` sustained, `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            replica: uuid::Uuid::now_v7().simple().to_string(),
            buckets: Mutex::new(HashMap::new()),
            unreported: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user`, or refuses.
    pub fn check(&self, user: &str) -> Result<(), Error> {
        if self.take(user, 1.0, true) {
            if let Ok(mut unreported) = self.unreported.lock() {
                *unreported.entry(user.to_owned()).or_default() += 1;
            }
            Ok(())
        } else {
            Err(Error::ResourceExhausted("too many requests; slow down".into()))
        }
    }

    /// Refills `user`'s bucket, then takes `tokens`: when `refuse_short`, only if that
    /// many are there (a request); otherwise whatever is there, down to empty (what
    /// the user already spent on another replica).
    fn take(&self, user: &str, tokens: f64, refuse_short: bool) -> bool {
        // A poisoned lock means a panic elsewhere already; limits must not add a second.
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        if buckets.len() > MAX_BUCKETS {
            let full_after = self.burst / self.per_second.max(f64::MIN_POSITIVE);
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < full_after);
        }
        let (left, at) = buckets.entry(user.to_owned()).or_insert((self.burst, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if refuse_short && *left < tokens {
            return false;
        }
        *left = (*left - tokens).max(0.0);
        true
    }

    /// What users spent here since the last call, as a report; `None` when nothing.
    fn drain_report(&self) -> Option<RateSpent> {
        let mut unreported = self.unreported.lock().ok()?;
        if unreported.is_empty() {
            return None;
        }
        Some(RateSpent {
            replica: self.replica.clone(),
            spent: std::mem::take(&mut *unreported),
        })
    }

    /// Takes another replica's reported spending from this replica's buckets.
    fn apply(&self, report: &RateSpent) {
        if report.replica == self.replica {
            return;
        }
        for (user, spent) in &report.spent {
            self.take(user, f64::from(*spent), false);
        }
    }

    /// Reports this replica's spending every [`SHARE_INTERVAL`] and applies the other
    /// replicas' reports, until `shutdown`.
    pub async fn share(self: Arc<Self>, bus: Bus, shutdown: CancellationToken) -> Result<(), BusError> {
        let subject = bus.subjects().chat_rate_spent();
        let limiter = self.clone();
        bus.on_broadcast(subject.clone(), shutdown.clone(), move |report: RateSpent| {
            limiter.apply(&report);
        })
        .await?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHARE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(report) = self.drain_report() {
                    // A lost report only loosens the limit for one interval: no retry.
                    if let Err(e) = bus.broadcast(subject.clone(), &report).await {
                        tracing::debug!(error = %e, "rate report not sent");
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refuses_after_the_burst() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            limiter.check("a").expect("within burst");
        }
        assert!(matches!(limiter.check("a"), Err(Error::ResourceExhausted(_))));
        limiter.check("b").expect("another user has their own bucket");
    }

    #[test]
    fn another_replicas_spending_empties_this_replicas_bucket() {
        let here = RateLimiter::new(1, 3);
        let there = RateLimiter::new(1, 3);
        there.check("a").expect("within burst");
        there.check("a").expect("within burst");
        let report = there.drain_report().expect("a report");
        assert_eq!(report.spent.get("a"), Some(&2));
        assert!(there.drain_report().is_none(), "a report is drained once");
        here.apply(&report);
        here.check("a").expect("one token left here");
        assert!(matches!(here.check("a"), Err(Error::ResourceExhausted(_))));
        here.check("b").expect("another user untouched");
    }

    #[test]
    fn a_replica_skips_its_own_report() {
        let limiter = RateLimiter::new(1, 2);
        limiter.check("a").expect("within burst");
        let report = limiter.drain_report().expect("a report");
        limiter.apply(&report);
        limiter.check("a").expect("its own spending is not taken twice");
    }
}
