//! The engine: one durable JetStream pull consumer on `SB_EVENTS` per rule (named
//! `<consumer_prefix>-<rule>`, filtered by the rule's `on` patterns), shared by every
//! replica so each event's actions run once per rule. A message is acked after the
//! run ends; a failed run is nak'ed with exponential backoff until the rule's last
//! attempt, then sent with the original event to `sb.evt.hook.<rule>.dead`. Every
//! run publishes `sb.evt.hook.<rule>.succeeded|failed`.
//!
//! One consumer per rule (rather than one for all rules) keeps acks, redeliveries,
//! `max_ack_pending` (the concurrency limit) and dead letters independent per rule:
//! a failing rule never re-runs the actions of the rules that succeeded.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchboard_bus::{Bus, CloudEvent, event_types};
use switchboard_proto::hook::v1::{ActionResult, DeadLetter, RunResult};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::Error;
use crate::actions::{self, http::Clients};
use crate::render::{self, Defaults, Rendered};
use crate::rules::{Action, ActionKind, OnFailure, Rule, RuleSet, load_dir};
use crate::trigger::{CelInput, DEPTH_EXTENSION, Trigger, Verdict};

/// The `[rules]` config section (`SB_RULES__DIR`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// The rules directory (`*.yaml`, `*.yml`).
    pub dir: PathBuf,
    /// How often the directory is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Template instruction budget per render.
    pub fuel: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("rules"),
            reload_interval: Duration::from_secs(2),
            fuel: crate::template::DEFAULT_FUEL,
        }
    }
}

impl RulesConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("rules.dir must be set".to_owned());
        }
        if self.reload_interval.is_zero() {
            return Err("rules.reload_interval must be more than 0".to_owned());
        }
        if self.fuel < 100 {
            return Err("rules.fuel must be at least 100".to_owned());
        }
        Ok(())
    }
}

/// The `[hooks]` config section: the engine and its API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Events that `max_depth` hook results led to run no rule (stops loops).
    pub max_depth: u32,
    /// Runs kept per rule for `GetRuns`.
    pub runs_kept: usize,
    /// Durable consumer names are `<consumer_prefix>-<rule>`.
    pub consumer_prefix: String,
    /// Bearer token gRPC callers must send; unset: only loopback callers.
    pub api_token: Option<switchboard_bus::Secret>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            max_depth: 5,
            runs_kept: 50,
            consumer_prefix: "hook".to_owned(),
            api_token: None,
        }
    }
}

impl HooksConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_depth == 0 {
            return Err("hooks.max_depth must be at least 1".to_owned());
        }
        if !(1..=10_000).contains(&self.runs_kept) {
            return Err("hooks.runs_kept must be 1-10000".to_owned());
        }
        let valid = !self.consumer_prefix.is_empty()
            && self
                .consumer_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err("hooks.consumer_prefix must be [A-Za-z0-9_-]+".to_owned());
        }
        Ok(())
    }
}

/// Counters and the recent runs of one rule.
#[derive(Debug, Default, Clone)]
pub struct RuleStats {
    /// Events that matched.
    pub matched: u64,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Events skipped by throttle, debounce or the depth limit.
    pub throttled: u64,
    /// Events sent to the dead-letter subject.
    pub dead: u64,
    /// When the last run started.
    pub last_run_at: Option<OffsetDateTime>,
    /// Newest last, at most `runs_kept`.
    pub runs: VecDeque<RunResult>,
}

/// What to do with a delivered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Done (ran, skipped or not matched).
    Ack,
    /// Failed; deliver again after this delay.
    Retry(Duration),
    /// Failed on the last attempt: dead-lettered, then acked.
    Dead,
}

struct Running {
    signature: String,
    stop: CancellationToken,
}

/// How long one pull request waits for messages before the server ends it (408) and
/// the consumer sends the next; also the longest a stopping consumer waits for its
/// open request to end.
const PULL_EXPIRY: Duration = Duration::from_secs(2);

/// When the runs of one consumer may ack or nak their messages: at once while it
/// pulls; once it stops, only after its last pull request has ended. An ack frees
/// room under `max_ack_pending` and a nak redelivers, and while this replica's request
/// is open the server may hand that message (or the next one) straight back to it;
/// once the request has ended, nothing more comes to this replica and the other
/// replicas get it.
#[derive(Debug, Clone)]
struct AckGate {
    /// The consumer's stop.
    stop: CancellationToken,
    /// Cancelled when the consumer has no pull request open any more.
    pull_ended: CancellationToken,
}

impl AckGate {
    /// Returns once a run may ack or nak its message.
    async fn opened(&self) {
        if self.stop.is_cancelled() {
            self.pull_ended.cancelled().await;
        }
    }
}

/// Waits a little after a failed pull (unless stopping), so that a server that keeps
/// failing it (consumer deleted...) is not asked again in a loop.
async fn pause_after_pull_error(stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

/// How long a stopping engine waits for the client to write its last acks to NATS.
const LAST_ACKS_PATIENCE: Duration = Duration::from_secs(5);

/// The engine shared by the consumers, the reloader and the gRPC service.
pub struct Engine {
    bus: Bus,
    source: RulesConfig,
    settings: HooksConfig,
    clients: Clients,
    defaults: Defaults,
    rules: RwLock<Arc<RuleSet>>,
    last_reload_error: Mutex<String>,
    failed_fingerprint: Mutex<Option<u64>>,
    stats: Mutex<HashMap<String, RuleStats>>,
    keys: Mutex<Keys>,
    /// The throttle and debounce KV buckets made so far, by kind (`HOOK_THROTTLE_<ms>`).
    shared: tokio::sync::Mutex<HashMap<String, kv::Store>>,
    consumers: tokio::sync::Mutex<HashMap<String, Running>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyState {
    /// A throttled key: later events of it are skipped until then.
    ThrottledUntil(Instant),
    /// A debounced key with a burst pending: the generation of its latest event.
    Generation(u64),
}

/// Throttle and debounce state this replica keeps per rule and key.
#[derive(Debug)]
struct Keys {
    map: HashMap<String, KeyState>,
    /// The size at which expired throttle entries are dropped next; doubles with the
    /// live ones, so the scan stays amortised O(1) per insert however many are live.
    prune_at: usize,
}

/// The smallest size at which [`Keys`] drops expired throttle entries.
const KEYS_PRUNE_AT: usize = 4096;

impl Keys {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            prune_at: KEYS_PRUNE_AT,
        }
    }

    /// Inserts, first dropping expired throttle entries when the map has grown to
    /// `prune_at` (pending debounce entries stay: their bursts are still waiting).
    fn insert(&mut self, key: String, state: KeyState, now: Instant) {
        if self.map.len() >= self.prune_at {
            self.map.retain(|_, v| match v {
                KeyState::ThrottledUntil(until) => *until > now,
                KeyState::Generation(_) => true,
            });
            self.prune_at = (self.map.len() * 2).max(KEYS_PRUNE_AT);
        }
        self.map.insert(key, state);
    }
}

/// How much longer than the debounce wait a debounce entry is kept: long enough for
/// the slowest replica to check it after its own wait.
const DEBOUNCE_SLACK: Duration = Duration::from_secs(60);

/// The shortest age JetStream keeps entries for: a throttle window under it is
/// shared as this long (each replica still applies the exact window to its own runs).
const MIN_SHARED_AGE: Duration = Duration::from_millis(100);

/// The bucket kind of throttle windows of `per` (one bucket per window: a bucket has
/// one max age): `HOOK_THROTTLE_<ms>`.
fn throttle_bucket(per: Duration) -> String {
    format!("HOOK_THROTTLE_{}", millis(per))
}

/// The bucket kind of debounce waits of `wait`: `HOOK_DEBOUNCE_<ms>`.
fn debounce_bucket(wait: Duration) -> String {
    format!("HOOK_DEBOUNCE_{}", millis(wait))
}

/// The key of `rule`'s state for the rendered key `key` in a shared bucket: the rule's
/// name (already `[A-Za-z0-9_-]`) and a hash of the key, since rendered keys may hold
/// any character and any length.
fn shared_key(rule: &str, key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{rule}.{hex}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn timestamp(t: OffsetDateTime) -> switchboard_proto::wkt::Timestamp {
    switchboard_proto::wkt::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

impl Engine {
    /// Loads the rules (failing on any error: there are no old rules to keep yet).
    /// A missing directory starts with no rules (and is watched, so creating it
    /// loads them).
    pub fn new(
        bus: Bus,
        source: RulesConfig,
        settings: HooksConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, Vec<Error>> {
        let set = if source.dir.is_dir() {
            load_dir(&source.dir, source.fuel)?
        } else {
            tracing::warn!(dir = %source.dir.display(), "rules directory does not exist; starting with no rules");
            let mut set = RuleSet::empty(source.fuel);
            set.dir = source.dir.clone();
            set
        };
        Self::with_rules(bus, source, settings, set, shutdown).map_err(|e| vec![e])
    }

    /// An engine over an already loaded rule set.
    pub fn with_rules(
        bus: Bus,
        source: RulesConfig,
        settings: HooksConfig,
        set: RuleSet,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let defaults = Defaults {
            prefix: bus.subjects().prefix().to_owned(),
        };
        Ok(Arc::new(Self {
            clients: Clients::new()?,
            bus,
            source,
            settings,
            defaults,
            rules: RwLock::new(Arc::new(set)),
            last_reload_error: Mutex::new(String::new()),
            failed_fingerprint: Mutex::new(None),
            stats: Mutex::new(HashMap::new()),
            keys: Mutex::new(Keys::new()),
            shared: tokio::sync::Mutex::new(HashMap::new()),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
        }))
    }

    /// The rule set in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The last reload's error ("" when it succeeded).
    pub fn last_reload_error(&self) -> String {
        self.last_reload_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// A copy of every rule's stats.
    pub fn stats(&self) -> HashMap<String, RuleStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The counters of one rule; all zero until the rule has handled its first event.
    pub fn rule_stats(&self, rule: &str) -> RuleStats {
        self.stats
            .lock()
            .ok()
            .and_then(|s| s.get(rule).cloned())
            .unwrap_or_default()
    }

    /// The defaults used to render.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    fn with_stats(&self, rule: &str, f: impl FnOnce(&mut RuleStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(stats.entry(rule.to_owned()).or_default());
        }
    }

    /// Starts the consumers and the reloader (polling and SIGHUP); returns at once.
    /// SIGHUP is caught from here on, before any consumer exists.
    pub async fn start(self: &Arc<Self>) -> Result<(), Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let hangup = signal(SignalKind::hangup()).map_err(|e| Error::Action(format!("cannot catch SIGHUP: {e}")))?;
        self.reconcile().await;
        let engine = self.clone();
        self.tasks.spawn(async move { engine.watch(hangup).await });
        Ok(())
    }

    /// Stops taking messages, waits for the runs in flight and sends their acks.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
        // An ack is only queued in the client when it returns; the process may end
        // right after this, and an ack lost with it would run the event again.
        // Bounded: while NATS is unreachable the flush would wait for a reconnect.
        match tokio::time::timeout(LAST_ACKS_PATIENCE, self.bus.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot send the last acks; their events will be redelivered");
            }
            Err(_) => tracing::warn!("NATS did not take the last acks in time; their events will be redelivered"),
        }
    }

    /// Reloads the rules directory: atomically replaces the rules when every file is
    /// valid; otherwise keeps the old rules and logs every error (file:line: field).
    pub async fn reload(self: &Arc<Self>) -> Result<usize, String> {
        let dir = self.source.dir.clone();
        let loaded = crate::rules::read_files(&dir).map_err(|e| vec![e]).and_then(|files| {
            let fp = crate::rules::fingerprint(&files);
            crate::rules::load_files(&dir, &files, self.source.fuel).inspect_err(|_| {
                if let Ok(mut failed) = self.failed_fingerprint.lock() {
                    *failed = Some(fp);
                }
            })
        });
        match loaded {
            Ok(set) => {
                let count = set.rules.len();
                if let Ok(mut rules) = self.rules.write() {
                    *rules = Arc::new(set);
                }
                if let Ok(mut e) = self.last_reload_error.lock() {
                    e.clear();
                }
                tracing::info!(rules = count, dir = %dir.display(), "rules loaded");
                self.reconcile().await;
                Ok(count)
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(%error, "invalid rules file; keeping the rules in force");
                }
                let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                if let Ok(mut e) = self.last_reload_error.lock() {
                    e.clone_from(&text);
                }
                Err(text)
            }
        }
    }

    /// Polls the rules directory and listens for SIGHUP.
    async fn watch(self: Arc<Self>, mut hangup: tokio::signal::unix::Signal) {
        let mut tick = tokio::time::interval(self.source.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    let _ = self.reload().await;
                }
                _ = tick.tick() => {
                    if self.changed() {
                        let _ = self.reload().await;
                    }
                }
            }
        }
    }

    /// True when the directory differs from the rules in force and from the last
    /// invalid version (so an invalid file is reported once, not every tick).
    fn changed(&self) -> bool {
        let current = self.rules();
        let Ok(files) = crate::rules::read_files(&self.source.dir) else {
            return false;
        };
        let fp = crate::rules::fingerprint(&files);
        let failed = self.failed_fingerprint.lock().ok().and_then(|f| *f);
        fp != current.fingerprint && Some(fp) != failed
    }

    fn consumer_name(&self, rule: &str) -> String {
        format!("{}-{rule}", self.settings.consumer_prefix)
    }

    fn consumer_config(&self, rule: &Rule) -> pull::Config {
        let debounce = rule.debounce.as_ref().map_or(Duration::ZERO, |d| d.wait);
        pull::Config {
            durable_name: Some(self.consumer_name(&rule.name)),
            description: Some(format!("hook-runner rule {}", rule.name)),
            filter_subjects: rule.on.clone(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: rule.timeout + debounce + Duration::from_secs(30),
            max_deliver: i64::from(rule.retry.attempts),
            max_ack_pending: i64::from(rule.concurrency),
            ..Default::default()
        }
    }

    /// Starts, restarts or stops consumers so that each rule in force has one with
    /// its current settings.
    async fn reconcile(self: &Arc<Self>) {
        let set = self.rules();
        let mut running = self.consumers.lock().await;
        let wanted: HashMap<&str, &Arc<Rule>> = set.rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !wanted.contains_key(k.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = running.remove(&name) {
                old.stop.cancel();
            }
            if let Ok(stream) = self.events_stream().await {
                let _ = stream.delete_consumer(&self.consumer_name(&name)).await;
            }
        }
        let stream_filter = self.bus.subjects().all_events();
        for (name, rule) in wanted {
            if let Some(outside) = rule.on.iter().find(|p| !crate::pattern::covers(&stream_filter, p)) {
                let error = format!(
                    "rule {name}: {outside} is outside {stream_filter} (the SB_EVENTS stream); the rule does not run"
                );
                tracing::error!("{error}");
                if let Ok(mut e) = self.last_reload_error.lock() {
                    *e = error;
                }
                continue;
            }
            // The buckets exist before the first event needs them, so a burst's
            // first events are not slowed (and reordered) by creating them.
            if let Some(throttle) = &rule.throttle {
                self.shared_bucket(throttle_bucket(throttle.per), throttle.per).await;
            }
            if let Some(debounce) = &rule.debounce {
                self.shared_bucket(debounce_bucket(debounce.wait), debounce.wait + DEBOUNCE_SLACK)
                    .await;
            }
            let config = self.consumer_config(rule);
            let signature = format!("{config:?}");
            if running.get(name).is_some_and(|r| r.signature == signature) {
                continue;
            }
            if let Some(old) = running.remove(name) {
                old.stop.cancel();
            }
            match self.create_consumer(config).await {
                Ok(consumer) => {
                    let stop = self.shutdown.child_token();
                    let engine = self.clone();
                    let rule_name = name.to_owned();
                    let token = stop.clone();
                    let concurrency = rule.concurrency as usize;
                    self.tasks
                        .spawn(async move { engine.consume(rule_name, consumer, concurrency, token).await });
                    running.insert(name.to_owned(), Running { signature, stop });
                }
                Err(error) => {
                    tracing::error!(rule = name, %error, "cannot create the rule's consumer; the rule does not run");
                    if let Ok(mut e) = self.last_reload_error.lock() {
                        *e = error.to_string();
                    }
                }
            }
        }
    }

    async fn events_stream(&self) -> Result<async_nats::jetstream::stream::Stream, Error> {
        let name = self.bus.subjects().stream_name("EVENTS");
        self.bus
            .jetstream()
            .get_stream(&name)
            .await
            .map_err(|e| Error::Consumer {
                name,
                reason: e.to_string(),
            })
    }

    async fn create_consumer(&self, config: pull::Config) -> Result<PullConsumer, Error> {
        let name = config.durable_name.clone().unwrap_or_default();
        let stream = self.events_stream().await?;
        match stream.create_consumer(config.clone()).await {
            Ok(consumer) => Ok(consumer),
            Err(create) => stream.update_consumer(config).await.map_err(|update| Error::Consumer {
                name,
                reason: format!("{create}; update: {update}"),
            }),
        }
    }

    /// Pulls the rule's messages and runs each, one pull request at a time, until
    /// `stop`. A stopping consumer sends no new request but reads the open one until
    /// the server ends it (on expiry or once `concurrency` messages were delivered),
    /// so every message the server hands this replica is read and runs here; the runs
    /// ack or nak only after that (see [`AckGate`]).
    async fn consume(
        self: Arc<Self>,
        rule: String,
        consumer: PullConsumer,
        concurrency: usize,
        stop: CancellationToken,
    ) {
        let concurrency = concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let ack_gate = AckGate {
            stop: stop.clone(),
            pull_ended: CancellationToken::new(),
        };
        // Whichever way this returns, no pull request of it is open any more.
        let _pull_ended = ack_gate.pull_ended.clone().drop_guard();
        while !stop.is_cancelled() {
            // One request asks for the whole window: the server delivers at most
            // `max_ack_pending` (the rule's concurrency) anyway.
            let mut pull = match consumer
                .batch()
                .max_messages(concurrency)
                .expires(PULL_EXPIRY)
                .messages()
                .await
            {
                Ok(pull) => pull,
                Err(error) => {
                    tracing::warn!(rule, %error, "cannot pull from the rule's consumer; retrying");
                    pause_after_pull_error(&stop).await;
                    continue;
                }
            };
            // Not cut short by `stop`: the request stays open on the server until it
            // ends, and whatever it delivers till then is this replica's to run.
            while let Some(next) = pull.next().await {
                let message = match next {
                    Ok(message) => message,
                    Err(error) => {
                        // An error status (consumer deleted, leader change...) ends the
                        // request; do not spin when the server keeps answering so.
                        tracing::warn!(rule, %error, "pull failed; retrying");
                        pause_after_pull_error(&stop).await;
                        break;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let engine = self.clone();
                let rule = rule.clone();
                let ack_gate = ack_gate.clone();
                // The run joins the trace the event carries, so whatever its actions
                // publish or request does too.
                let span = tracing::info_span!("hook.rule", rule = %rule, subject = %message.subject);
                switchboard_bus::trace::set_parent_from(&span, message.headers.as_ref());
                self.tasks.spawn(
                    async move {
                        let ack = engine.handle(&rule, &message).await;
                        // The run is over: its permit goes to the next one even if
                        // the ack has to wait for the pull to end.
                        drop(permit);
                        ack_gate.opened().await;
                        let sent = match ack {
                            Some(kind) => message.ack_with(kind).await,
                            None => Ok(()),
                        };
                        if let Err(error) = sent {
                            tracing::warn!(rule, %error, "ack failed; the event will be redelivered");
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Runs one delivered message; the ack to send for it, `None` when there is none
    /// to send (the rule was removed and its consumer is being deleted).
    async fn handle(&self, rule_name: &str, message: &async_nats::jetstream::Message) -> Option<AckKind> {
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let event = match CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(rule = rule_name, subject = %message.subject, %error, "not a CloudEvent; skipped");
                return Some(AckKind::Term);
            }
        };
        let set = self.rules();
        let rule = set.get(rule_name).cloned()?;
        let trigger = Trigger::new(message.subject.to_string(), event, attempt);
        let no_headers = async_nats::HeaderMap::new();
        let headers = message.headers.as_ref().unwrap_or(&no_headers);
        Some(match self.process(&set, &rule, &trigger, Some(headers)).await {
            Disposition::Ack | Disposition::Dead => AckKind::Ack,
            Disposition::Retry(delay) => AckKind::Nak(Some(delay)),
        })
    }

    /// Matches, throttles, runs and reports one delivery of `trigger` to `rule`.
    /// `headers` (the message's) are kept for the dead letter; without them (a
    /// triggered run) there is no redelivery. A run whose result event JetStream
    /// did not store is delivered again, like a failed one (but acked on the last
    /// attempt): the result is part of the run's effect (the action publishes keep
    /// their ids, so JetStream drops their repeats).
    pub async fn process(
        &self,
        set: &RuleSet,
        rule: &Arc<Rule>,
        trigger: &Trigger,
        headers: Option<&async_nats::HeaderMap>,
    ) -> Disposition {
        if trigger.depth >= self.settings.max_depth {
            tracing::warn!(rule = %rule.name, depth = trigger.depth, event = %trigger.event.id, "depth limit reached; not running (loop?)");
            self.with_stats(&rule.name, |s| s.throttled += 1);
            metrics::counter!("hook_skipped_total", "rule" => rule.name.clone(), "reason" => "depth").increment(1);
            return Disposition::Ack;
        }
        let verdict = set.verdict(rule, trigger, &mut CelInput::new());
        match verdict {
            Verdict::Matched => {}
            Verdict::Error(error) => {
                tracing::warn!(rule = %rule.name, event = %trigger.event.id, error, "when failed; not running");
                return Disposition::Ack;
            }
            _ => return Disposition::Ack,
        }
        self.with_stats(&rule.name, |s| s.matched += 1);
        metrics::counter!("hook_matched_total", "rule" => rule.name.clone()).increment(1);
        if !self.admit(set, rule, trigger).await {
            if self.shutdown.is_cancelled() {
                // Cut short by shutdown (debounce): another replica gets it.
                return Disposition::Retry(Duration::ZERO);
            }
            self.with_stats(&rule.name, |s| s.throttled += 1);
            metrics::counter!("hook_skipped_total", "rule" => rule.name.clone(), "reason" => "throttle").increment(1);
            return Disposition::Ack;
        }
        let (result, reported) = self.run_and_report(set, rule, trigger).await;
        let last = headers.is_none() || trigger.attempt >= rule.retry.attempts;
        let backoff = actions::http::backoff(
            rule.retry.backoff,
            rule.retry.max_backoff,
            trigger.attempt.saturating_sub(1),
        );
        if result.success {
            if reported || headers.is_none() {
                return Disposition::Ack;
            }
            if last {
                // No delivery is left to store it on: the run's effect stands.
                tracing::error!(rule = %rule.name, event = %trigger.event.id, "the run's result was not stored on the last attempt; giving up on it");
                return Disposition::Ack;
            }
            tracing::warn!(rule = %rule.name, event = %trigger.event.id, "the run's result was not stored; the event will run again");
            return Disposition::Retry(backoff);
        }
        match headers {
            Some(headers) if last => {
                self.dead_letter(rule, trigger, headers, result).await;
                self.with_stats(&rule.name, |s| s.dead += 1);
                metrics::counter!("hook_dead_letters_total", "rule" => rule.name.clone()).increment(1);
                Disposition::Dead
            }
            Some(_) => Disposition::Retry(backoff),
            None => Disposition::Ack,
        }
    }

    /// Runs `rule` for a trigger given by a caller (gRPC `Trigger`): no throttle, no
    /// redelivery; the result is published and logged like any run.
    pub async fn trigger(&self, set: &RuleSet, rule: &Rule, trigger: &Trigger) -> RunResult {
        self.with_stats(&rule.name, |s| s.matched += 1);
        self.run_and_report(set, rule, trigger).await.0
    }

    /// Runs, counts and publishes the result; true when JetStream stored it.
    async fn run_and_report(&self, set: &RuleSet, rule: &Rule, trigger: &Trigger) -> (RunResult, bool) {
        let result = self.run(set, rule, trigger).await;
        // Counted and logged before the result event goes out, so whoever sees the
        // event also sees the run in ListRules and GetRuns.
        let success = result.success;
        let kept = self.settings.runs_kept;
        self.with_stats(&rule.name, |s| {
            if success {
                s.succeeded += 1;
            } else {
                s.failed += 1;
            }
            s.runs.push_back(result.clone());
            while s.runs.len() > kept {
                s.runs.pop_front();
            }
        });
        let outcome = if success { "succeeded" } else { "failed" };
        metrics::counter!("hook_runs_total", "rule" => rule.name.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("hook_run_duration_seconds", "rule" => rule.name.clone())
            .record(Duration::from_millis(result.duration_ms).as_secs_f64());
        let reported = self.report(&result, trigger).await;
        (result, reported)
    }

    /// Throttle and debounce: true when this event may run now. Both are decided
    /// across replicas through KV buckets (see [`Engine::throttle`] and
    /// [`Engine::debounce`]); when NATS cannot answer, this replica's own state decides.
    async fn admit(&self, set: &RuleSet, rule: &Rule, trigger: &Trigger) -> bool {
        if rule.throttle.is_none() && rule.debounce.is_none() {
            return true;
        }
        let ctx = trigger.template_context(&rule.name);
        if let Some(throttle) = &rule.throttle {
            let key = match set.templates.render(&throttle.key, &ctx, "throttle.key") {
                Ok(k) => k,
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "throttle key failed; not running");
                    return false;
                }
            };
            if !self.throttle(rule, throttle.per, &key).await {
                return false;
            }
        }
        if let Some(debounce) = &rule.debounce {
            let key = match set.templates.render(&debounce.key, &ctx, "debounce.key") {
                Ok(k) => k,
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "debounce key failed; not running");
                    return false;
                }
            };
            if !self.debounce(rule, debounce.wait, &key).await {
                return false;
            }
        }
        true
    }

    /// The KV bucket `SB_<kind>` with entries kept for `max_age` (at least
    /// [`MIN_SHARED_AGE`]), created or checked on first use; `None` (tried again next
    /// time) when NATS cannot make it.
    async fn shared_bucket(&self, kind: String, max_age: Duration) -> Option<kv::Store> {
        let mut buckets = self.shared.lock().await;
        if let Some(bucket) = buckets.get(&kind) {
            return Some(bucket.clone());
        }
        match self.bus.bucket(&kind, max_age.max(MIN_SHARED_AGE), 1).await {
            Ok(bucket) => {
                buckets.insert(kind, bucket.clone());
                Some(bucket)
            }
            Err(error) => {
                tracing::warn!(bucket = %kind, %error, "cannot make the KV bucket; this replica decides throttle and debounce alone");
                None
            }
        }
    }

    /// At most one run of `rule` per `key` per `per`, across replicas: the run goes
    /// ahead only if it creates the key's entry in the bucket `SB_HOOK_THROTTLE_<ms>`,
    /// whose entries expire after `per` (one bucket per window: a bucket has one max
    /// age). This replica's own record of its runs is checked first (a repeat it
    /// fired itself needs no round trip) and decides alone when NATS cannot answer.
    async fn throttle(&self, rule: &Rule, per: Duration, key: &str) -> bool {
        let local = format!("t\0{}\0{key}", rule.name);
        let now = Instant::now();
        if let Ok(keys) = self.keys.lock()
            && let Some(KeyState::ThrottledUntil(until)) = keys.map.get(&local)
            && now < *until
        {
            return false;
        }
        let shared = match self.shared_bucket(throttle_bucket(per), per).await {
            Some(bucket) => match bucket.create(shared_key(&rule.name, key), bytes::Bytes::new()).await {
                Ok(_) => true,
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => return false,
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "throttle state not shared (KV); this replica decides alone");
                    false
                }
            },
            None => false,
        };
        let Ok(mut keys) = self.keys.lock() else { return false };
        // Deciding alone, check again under the lock: another of this replica's
        // runs of the key may have gone ahead since the first look.
        if !shared
            && let Some(KeyState::ThrottledUntil(until)) = keys.map.get(&local)
            && now < *until
        {
            return false;
        }
        keys.insert(local, KeyState::ThrottledUntil(now + per), now);
        true
    }

    /// Only the last event of a burst of `key` runs, after `wait` without another,
    /// across replicas: each event writes the key's entry in `SB_HOOK_DEBOUNCE_<ms>`
    /// and, after `wait`, runs only if the entry is still the one it wrote (a later
    /// event, on any replica, wrote a newer revision). This replica's own generation
    /// counter is kept alongside and decides alone when NATS cannot answer.
    async fn debounce(&self, rule: &Rule, wait: Duration, key: &str) -> bool {
        let local = format!("d\0{}\0{key}", rule.name);
        let mine = {
            let Ok(mut keys) = self.keys.lock() else { return false };
            let next = match keys.map.get(&local) {
                Some(KeyState::Generation(g)) => g.wrapping_add(1),
                _ => 1,
            };
            keys.insert(local.clone(), KeyState::Generation(next), Instant::now());
            next
        };
        let shared_key = shared_key(&rule.name, key);
        let bucket = self.shared_bucket(debounce_bucket(wait), wait + DEBOUNCE_SLACK).await;
        let written = match &bucket {
            Some(bucket) => match bucket.put(&shared_key, bytes::Bytes::new()).await {
                Ok(revision) => Some((bucket, revision)),
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "debounce state not shared (KV); this replica decides alone");
                    None
                }
            },
            None => None,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => return false,
        }
        let latest_here = {
            let Ok(mut keys) = self.keys.lock() else { return false };
            match keys.map.get(&local) {
                Some(KeyState::Generation(g)) if *g == mine => {
                    keys.map.remove(&local);
                    true
                }
                _ => false,
            }
        };
        if !latest_here {
            return false;
        }
        match written {
            Some((bucket, revision)) => match bucket.entry(shared_key).await {
                Ok(Some(entry)) => entry.revision == revision,
                // Gone (expired or purged): nothing newer was written.
                Ok(None) => true,
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "debounce state not shared (KV); this replica decides alone");
                    true
                }
            },
            None => true,
        }
    }

    /// Runs the rule's actions for `trigger` (no matching, no throttling).
    pub async fn run(&self, set: &RuleSet, rule: &Rule, trigger: &Trigger) -> RunResult {
        let started_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        self.with_stats(&rule.name, |s| s.last_run_at = Some(started_at));
        let base = trigger.template_context(&rule.name);
        let mut results: Vec<ActionResult> = Vec::new();
        let mut success = true;
        let context = match render::rule_context(set, rule, &base) {
            Ok(c) => c,
            Err(error) => {
                success = false;
                results.push(ActionResult {
                    name: "context".into(),
                    kind: "render".into(),
                    error: error.to_string(),
                    ..ActionResult::default()
                });
                Value::Null
            }
        };
        if success {
            let run = self.run_actions(set, rule, trigger, &base, &context, &mut results);
            match tokio::time::timeout(rule.timeout, run).await {
                Ok(ok) => success = ok,
                Err(_) => {
                    success = false;
                    results.push(ActionResult {
                        name: "timeout".into(),
                        kind: "run".into(),
                        error: format!("the run took longer than the rule's timeout ({:?})", rule.timeout),
                        ..ActionResult::default()
                    });
                }
            }
        }
        RunResult {
            rule: rule.name.clone(),
            run_id: uuid::Uuid::now_v7().to_string(),
            success,
            trigger_event_id: trigger.event.id.clone(),
            trigger_subject: trigger.subject.clone(),
            trigger_type: trigger.event.ty.clone(),
            attempt: trigger.attempt,
            started_at: Some(timestamp(started_at)),
            duration_ms: millis(started.elapsed()),
            actions: results,
            depth: trigger.depth,
            context: match context {
                Value::Object(map) => serde_json::from_value(Value::Object(map)).ok(),
                _ => None,
            },
        }
    }

    async fn run_actions(
        &self,
        set: &RuleSet,
        rule: &Rule,
        trigger: &Trigger,
        base: &minijinja::Value,
        context: &Value,
        results: &mut Vec<ActionResult>,
    ) -> bool {
        let mut steps = Map::new();
        let mut success = true;
        for (i, action) in rule.actions.iter().enumerate() {
            let result = self
                .run_one(
                    set,
                    rule,
                    trigger,
                    base,
                    context,
                    &steps,
                    action,
                    &format!("actions[{i}]"),
                )
                .await;
            steps.insert(action.name.clone(), actions::step_view(&result));
            let ok = result.success;
            results.push(result);
            if ok {
                continue;
            }
            success = false;
            match &action.on_failure {
                OnFailure::Stop => break,
                OnFailure::Continue => continue,
                OnFailure::Run(fallback) => {
                    // The fallback sees the failed step; its own failures stop it.
                    for (j, action) in fallback.iter().enumerate() {
                        let field = format!("actions[{i}].on_failure[{j}]");
                        let result = self
                            .run_one(set, rule, trigger, base, context, &steps, action, &field)
                            .await;
                        steps.insert(action.name.clone(), actions::step_view(&result));
                        let ok = result.success;
                        results.push(result);
                        if !ok {
                            break;
                        }
                    }
                    break;
                }
            }
        }
        success
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_one(
        &self,
        set: &RuleSet,
        rule: &Rule,
        trigger: &Trigger,
        base: &minijinja::Value,
        context: &Value,
        steps: &Map<String, Value>,
        action: &Action,
        field: &str,
    ) -> ActionResult {
        let ctx = render::run_context(base, context, steps);
        let rendered = render::render(&set.templates, &action.kind, &ctx, field, &self.defaults);
        let stable_id = format!("hook-{}-{}-{}", rule.name, trigger.event.id, action.name);
        match (rendered, &action.kind) {
            (Err(error), kind) => ActionResult {
                name: action.name.clone(),
                kind: kind.label().to_owned(),
                error: error.to_string(),
                ..ActionResult::default()
            },
            (Ok(Rendered::Exec(spec)), _) => actions::exec::run(&action.name, &spec).await,
            (Ok(Rendered::Http(spec)), ActionKind::Http(http)) => {
                actions::http::run(&self.clients, &action.name, http, &spec, &stable_id).await
            }
            (Ok(Rendered::Publish(spec)), _) => {
                actions::nats::publish(&self.bus, &action.name, &spec, stable_id, trigger.depth + 1).await
            }
            (Ok(Rendered::Request(spec)), ActionKind::Request(request)) => {
                actions::nats::request(&self.bus, &action.name, &spec, request.output_limit).await
            }
            (Ok(_), kind) => ActionResult {
                name: action.name.clone(),
                kind: kind.label().to_owned(),
                error: "rendered action does not fit its kind".to_owned(),
                ..ActionResult::default()
            },
        }
    }

    /// Publishes the run's result; true when JetStream stored it.
    async fn report(&self, result: &RunResult, trigger: &Trigger) -> bool {
        let outcome = if result.success { "succeeded" } else { "failed" };
        let subject = self.bus.subjects().hook_result(&result.rule, outcome);
        match self.bus.event(event_types::HOOK_RESULT, result) {
            Ok(event) => {
                let event = event
                    .with_subject(result.rule.clone())
                    .with_extension(DEPTH_EXTENSION, (trigger.depth + 1).to_string());
                match self.bus.publish(subject, &event).await {
                    Ok(_) => true,
                    Err(error) => {
                        tracing::warn!(rule = %result.rule, %error, "cannot publish the run's result");
                        false
                    }
                }
            }
            Err(error) => {
                // Encoding fails the same way every time: running again would not help.
                tracing::warn!(rule = %result.rule, %error, "cannot encode the run's result");
                true
            }
        }
    }

    async fn dead_letter(&self, rule: &Rule, trigger: &Trigger, headers: &async_nats::HeaderMap, last: RunResult) {
        let last_error = last
            .actions
            .iter()
            .rev()
            .find(|a| !a.success)
            .map(|a| format!("{}: {}", a.name, a.error))
            .unwrap_or_default();
        let letter = DeadLetter {
            rule: rule.name.clone(),
            event_id: trigger.event.id.clone(),
            event_subject: trigger.subject.clone(),
            event_headers: headers
                .iter()
                .filter_map(|(k, v)| v.first().map(|v| (k.to_string(), v.as_str().to_owned())))
                .collect(),
            event_data: serde_json::from_value(trigger.data.clone()).ok(),
            attempts: trigger.attempt,
            last_error,
            last_run: Some(last),
        };
        let subject = self.bus.subjects().hook_result(&rule.name, "dead");
        let id = format!("hook-dead-{}-{}", rule.name, trigger.event.id);
        match self.bus.event(event_types::HOOK_DEAD, &letter) {
            Ok(event) => {
                let event = event
                    .with_id(id)
                    .with_subject(rule.name.clone())
                    .with_extension(DEPTH_EXTENSION, (trigger.depth + 1).to_string());
                if let Err(error) = self.bus.publish(subject, &event).await {
                    tracing::error!(rule = %rule.name, %error, "cannot publish the dead letter");
                }
            }
            Err(error) => tracing::error!(rule = %rule.name, %error, "cannot encode the dead letter"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_throttle_keys_are_dropped_and_pending_debounces_kept() {
        let mut keys = Keys::new();
        let now = Instant::now();
        keys.insert("debounce".into(), KeyState::Generation(1), now);
        for i in 0..KEYS_PRUNE_AT {
            keys.insert(format!("expired-{i}"), KeyState::ThrottledUntil(now), now);
        }
        keys.insert(
            "live".into(),
            KeyState::ThrottledUntil(now + Duration::from_secs(60)),
            now,
        );
        // Reaching KEYS_PRUNE_AT dropped every expired entry inserted before it.
        assert_eq!(keys.map.len(), 3, "{:?}", keys.map.keys().collect::<Vec<_>>());
        assert!(keys.map.contains_key("debounce"), "a pending burst survives");
        assert!(keys.map.contains_key("live"));
        assert_eq!(keys.prune_at, KEYS_PRUNE_AT);
    }
}
