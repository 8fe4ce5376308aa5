//! A lease on a key of a JetStream KV bucket: the one-active-session rule.
//!
//! The bucket's `max_age` is the lease TTL. The holder rewrites its entry (compare
//! and set on the revision) every TTL/4; if the holder dies, the entry expires and a
//! standby's `create` succeeds. A holder that cannot renew for 3/4 of the TTL gives
//! the lease up before anyone else can take it, so two holders never overlap by
//! the lease's own reckoning (message-id dedup absorbs the rest).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether this process holds the lease, as seen by the lease loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Someone else holds it, or NATS is unreachable; we wait.
    Standby,
    /// We hold it: run the session.
    Held,
}

/// A running lease loop.
#[derive(Debug)]
pub struct Lease {
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Starts competing for `key` in `bucket` (whose `max_age` must be `ttl`) as
    /// `holder` (unique per process). Stops, releasing the lease, on `shutdown`.
    pub fn spawn(bucket: kv::Store, key: String, holder: String, ttl: Duration, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(LeaseState::Standby);
        let task = tokio::spawn(run(bucket, key, holder, ttl, shutdown, tx));
        Self { state: rx, task }
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// A receiver to wait for changes.
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the loop has released the lease after shutdown.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn run(
    bucket: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    shutdown: CancellationToken,
    state: watch::Sender<LeaseState>,
) {
    let renew_every = (ttl / 4).max(Duration::from_millis(50));
    let poll_every = (ttl / 6).max(Duration::from_millis(50));
    let give_up_after = ttl * 3 / 4;
    let value = Bytes::from(holder.clone());
    let mut held: Option<(u64, Instant)> = None;
    loop {
        let wait = if held.is_some() { renew_every } else { poll_every };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        match held {
            None => match bucket.create(&key, value.clone()).await {
                Ok(revision) => {
                    tracing::info!(%key, %holder, "lease acquired");
                    held = Some((revision, Instant::now()));
                    state.send_replace(LeaseState::Held);
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => tracing::debug!(%key, error = %e, "lease not acquired"),
            },
            Some((revision, renewed_at)) => match bucket.update(&key, value.clone(), revision).await {
                Ok(revision) => held = Some((revision, Instant::now())),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(%key, "lease taken by another holder");
                    held = None;
                    state.send_replace(LeaseState::Standby);
                }
                Err(e) => {
                    if renewed_at.elapsed() >= give_up_after {
                        tracing::warn!(%key, error = %e, "lease not renewed in time; giving it up");
                        held = None;
                        state.send_replace(LeaseState::Standby);
                    } else {
                        tracing::debug!(%key, error = %e, "lease renewal failed; will retry");
                    }
                }
            },
        }
    }
    if let Some((revision, _)) = held {
        state.send_replace(LeaseState::Standby);
        match bucket.delete_expect_revision(&key, Some(revision)).await {
            Ok(()) => tracing::info!(%key, "lease released"),
            Err(e) => tracing::debug!(%key, error = %e, "lease not released; it will expire"),
        }
    }
}
