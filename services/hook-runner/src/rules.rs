//! Rules: YAML files in a directory, parsed into typed, compiled rules. Every error
//! names the file, the line (when it can be found) and the field.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use switchboard_bus::Secret;
use time::OffsetDateTime;

use crate::Error;
use crate::pattern::{self, PatternIndex};
use crate::template::{Templates, Text, ValueTemplate};

/// Defaults a rule falls back on.
pub mod defaults {
    use std::time::Duration;

    /// Runs of one rule in flight at once.
    pub const CONCURRENCY: u32 = 8;
    /// A whole run.
    pub const TIMEOUT: Duration = Duration::from_secs(60);
    /// Deliveries of one event to one rule before the dead letter.
    pub const ATTEMPTS: u32 = 3;
    /// First redelivery delay; doubles up to [`MAX_BACKOFF`].
    pub const BACKOFF: Duration = Duration::from_secs(1);
    /// Longest redelivery delay.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
    /// Captured output per stream (exec) or response body (http, request).
    pub const OUTPUT_LIMIT: usize = 64 * 1024;
    /// One HTTP attempt.
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
    /// HTTP retries after the first attempt.
    pub const HTTP_RETRIES: u32 = 3;
    /// First HTTP retry delay.
    pub const HTTP_BACKOFF: Duration = Duration::from_millis(500);
    /// Longest HTTP retry delay (also caps `Retry-After`).
    pub const HTTP_MAX_BACKOFF: Duration = Duration::from_secs(30);
    /// A NATS request.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
}

// ---------- the YAML shape ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    description: String,
    on: OneOrMany,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    throttle: Option<ThrottleSpec>,
    #[serde(default)]
    debounce: Option<DebounceSpec>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    allow_private_network: bool,
    #[serde(default)]
    context: Option<serde_json::Value>,
    actions: Vec<ActionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleSpec {
    key: String,
    #[serde(with = "humantime_serde")]
    per: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebounceSpec {
    key: String,
    #[serde(with = "humantime_serde")]
    wait: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FailureKeyword {
    Stop,
    Continue,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OnFailureSpec {
    Keyword(FailureKeyword),
    Actions(Vec<ActionSpec>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    on_failure: Option<OnFailureSpec>,
    #[serde(default)]
    exec: Option<ExecSpec>,
    #[serde(default)]
    http: Option<HttpSpec>,
    #[serde(default)]
    publish: Option<PublishSpec>,
    #[serde(default)]
    request: Option<RequestSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSpec {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    env_allow: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    output_limit: Option<usize>,
    #[serde(default)]
    success_codes: Option<Vec<i32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    json: Option<serde_json::Value>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    output_limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishSpec {
    subject: String,
    #[serde(default, rename = "type")]
    ty: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    subject: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    output_limit: Option<usize>,
}

// ---------- compiled rules ----------

/// A CEL condition and its source.
pub struct Condition {
    /// As written.
    pub source: String,
    /// Compiled.
    pub program: cel::Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// At most one run per key per window.
#[derive(Debug)]
pub struct Throttle {
    /// The key template.
    pub key: Text,
    /// The window.
    pub per: Duration,
}

/// Only the last event of a burst (per key) runs, after `wait` of quiet.
#[derive(Debug)]
pub struct Debounce {
    /// The key template.
    pub key: Text,
    /// The quiet time.
    pub wait: Duration,
}

/// Redelivery of a failed event to this rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Deliveries in all (1 = no retry).
    pub attempts: u32,
    /// First delay.
    pub backoff: Duration,
    /// Longest delay.
    pub max_backoff: Duration,
}

/// What to do when an action fails.
#[derive(Debug)]
pub enum OnFailure {
    /// End the run as failed (the default).
    Stop,
    /// Go on with the next action; the run still counts as failed.
    Continue,
    /// Run these actions, then end the run as failed.
    Run(Vec<Action>),
}

/// One compiled action.
#[derive(Debug)]
pub struct Action {
    /// Its name in the rule (or `<kind>#<index>`).
    pub name: String,
    /// What it does.
    pub kind: ActionKind,
    /// What a failure does to the run.
    pub on_failure: OnFailure,
}

/// The four kinds of action.
#[derive(Debug)]
pub enum ActionKind {
    /// Run a program.
    Exec(ExecAction),
    /// Call a URL.
    Http(HttpAction),
    /// Publish an event or a push.
    Publish(PublishAction),
    /// NATS request-reply.
    Request(RequestAction),
}

impl ActionKind {
    /// `exec`, `http`, `publish` or `request`.
    pub fn label(&self) -> &'static str {
        match self {
            ActionKind::Exec(_) => "exec",
            ActionKind::Http(_) => "http",
            ActionKind::Publish(_) => "publish",
            ActionKind::Request(_) => "request",
        }
    }
}

/// Run a program: never a shell.
#[derive(Debug)]
pub struct ExecAction {
    /// An absolute path once rendered.
    pub program: Text,
    /// Each argument rendered on its own.
    pub args: Vec<Text>,
    /// Variables set to rendered values.
    pub env: BTreeMap<String, Text>,
    /// Variables passed through from hook-runner's own environment.
    pub env_allow: Vec<String>,
    /// Working directory.
    pub cwd: Option<Text>,
    /// Written to stdin, then closed.
    pub stdin: Option<Text>,
    /// Kills the process group after this.
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr.
    pub output_limit: usize,
    /// Exit codes that mean success.
    pub success_codes: Vec<i32>,
}

/// Call a URL.
#[derive(Debug)]
pub struct HttpAction {
    /// `GET`, `POST`...
    pub method: String,
    /// The URL.
    pub url: Text,
    /// Headers.
    pub headers: BTreeMap<String, Text>,
    /// A text body, or a JSON body.
    pub body: HttpBody,
    /// One attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First retry delay.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Standard Webhooks signing secret (from the variable named by `secret_env`).
    pub secret: Option<Secret>,
    /// Loopback and private addresses are allowed.
    pub allow_private_network: bool,
    /// Bytes kept of the response body.
    pub output_limit: usize,
}

/// An HTTP body.
#[derive(Debug)]
pub enum HttpBody {
    /// None.
    Empty,
    /// Text as rendered.
    Text(Text),
    /// JSON (`content-type: application/json`).
    Json(ValueTemplate),
}

/// Publish an event (`<prefix>.evt.>`) or a push (`<prefix>.push.>`) to JetStream,
/// anything else on core NATS.
#[derive(Debug)]
pub struct PublishAction {
    /// The subject.
    pub subject: Text,
    /// The CloudEvents type (defaults by subject).
    pub ty: Option<String>,
    /// The data.
    pub data: ValueTemplate,
}

/// NATS request-reply.
#[derive(Debug)]
pub struct RequestAction {
    /// The subject.
    pub subject: Text,
    /// The request body.
    pub data: ValueTemplate,
    /// How long to wait for the reply.
    pub timeout: Duration,
    /// Bytes kept of the reply in the result.
    pub output_limit: usize,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Unique name: `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Free text.
    pub description: String,
    /// Subject patterns (already reduced to a non-overlapping set).
    pub on: Vec<String>,
    /// CloudEvents types (empty: any).
    pub types: Vec<String>,
    /// The condition.
    pub when: Option<Condition>,
    /// Throttle by key.
    pub throttle: Option<Throttle>,
    /// Debounce by key.
    pub debounce: Option<Debounce>,
    /// Runs in flight at once (also the consumer's max ack pending).
    pub concurrency: u32,
    /// A whole run.
    pub timeout: Duration,
    /// Redelivery.
    pub retry: Retry,
    /// Values passed on in every result.
    pub context: Option<ValueTemplate>,
    /// The actions, in order.
    pub actions: Vec<Action>,
}

/// Every rule of a directory, compiled, with the subject index and templates.
pub struct RuleSet {
    /// The rules, sorted by name.
    pub rules: Vec<Arc<Rule>>,
    /// Patterns to rule indexes.
    pub index: PatternIndex,
    /// Every template of every rule.
    pub templates: Templates,
    /// The CEL environment the conditions were compiled for.
    pub cel: Arc<cel::Env>,
    /// Where they came from.
    pub dir: PathBuf,
    /// When they were loaded.
    pub loaded_at: OffsetDateTime,
    /// The files and their contents' fingerprint, to notice changes.
    pub fingerprint: u64,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("dir", &self.dir)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// An empty set (before the first load, or for tests).
    pub fn empty(fuel: u64) -> Self {
        Self {
            rules: Vec::new(),
            index: PatternIndex::default(),
            templates: Templates::new(fuel),
            cel: Arc::new(cel::Env::stdlib()),
            dir: PathBuf::new(),
            loaded_at: OffsetDateTime::now_utc(),
            fingerprint: 0,
        }
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.rules.get(i))
    }
}

/// The rules files of `dir` (`*.yaml`, `*.yml`), sorted.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let is_yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if is_yaml && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The files' names and contents, read once.
pub fn read_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    rule_files(dir)?
        .into_iter()
        .map(|path| {
            std::fs::read_to_string(&path)
                .map(|text| (path.clone(), text))
                .map_err(|source| Error::Io { path, source })
        })
        .collect()
}

/// A cheap fingerprint of names and contents (FNV-1a), to tell whether to reload.
pub fn fingerprint(files: &[(PathBuf, String)]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, text) in files {
        for byte in path
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .chain([0u8].iter())
            .chain(text.as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Loads and compiles every rule of `dir`. Any error in any file fails the whole
/// load (so a reload keeps the old rules); all errors found are returned.
pub fn load_dir(dir: &Path, fuel: u64) -> Result<RuleSet, Vec<Error>> {
    let files = read_files(dir).map_err(|e| vec![e])?;
    load_files(dir, &files, fuel)
}

/// Compiles already-read files.
pub fn load_files(dir: &Path, files: &[(PathBuf, String)], fuel: u64) -> Result<RuleSet, Vec<Error>> {
    let mut compiler = Compiler {
        templates: Templates::new(fuel),
        cel: Arc::new(cel::Env::stdlib()),
        errors: Vec::new(),
    };
    let mut rules: Vec<Rule> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (path, text) in files {
        let spec: FileSpec = match serde_yaml_ng::from_str(text) {
            Ok(spec) => spec,
            Err(e) => {
                compiler.errors.push(yaml_error(path, &e));
                continue;
            }
        };
        for (i, rule) in spec.rules.into_iter().enumerate() {
            let mut at = At {
                file: path,
                text,
                field: format!("rules[{i}]"),
                hint: format!("name: {}", rule.name),
            };
            if !seen.insert(rule.name.clone()) {
                let field = at.field("name");
                compiler.fail(
                    &at,
                    &field,
                    &rule.name,
                    format!("rule name {:?} is used twice", rule.name),
                );
                continue;
            }
            at.hint = rule.name.clone();
            if let Some(rule) = compiler.rule(&at, rule, path) {
                rules.push(rule);
            }
        }
    }
    if !compiler.errors.is_empty() {
        return Err(compiler.errors);
    }
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let mut index = PatternIndex::default();
    for (i, rule) in rules.iter().enumerate() {
        for pattern in &rule.on {
            index.insert(pattern, i);
        }
    }
    Ok(RuleSet {
        rules: rules.into_iter().map(Arc::new).collect(),
        index,
        templates: compiler.templates,
        cel: compiler.cel,
        dir: dir.to_owned(),
        loaded_at: OffsetDateTime::now_utc(),
        fingerprint: fingerprint(files),
    })
}

fn yaml_error(path: &Path, error: &serde_yaml_ng::Error) -> Error {
    let text = error.to_string();
    // serde_yaml_ng writes "rules[0].actions[1]: unknown field ..." when it knows
    // the path; split it off so the field is named on its own.
    let (field, message) = match text.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => (head.to_owned(), rest.to_owned()),
        _ => ("(document)".to_owned(), text.clone()),
    };
    let message = match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    };
    Error::Rule {
        file: path.to_owned(),
        line: error.location().map(|l| l.line()),
        field,
        message,
    }
}

/// Where the compiler is: file, its text, the field path, and a string near the
/// rule to find lines when the offending value itself is not found.
struct At<'a> {
    file: &'a Path,
    text: &'a str,
    field: String,
    hint: String,
}

impl At<'_> {
    fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.field)
    }

    /// The first line containing `needle` (its first line), else the hint's line.
    fn line_of(&self, needle: &str) -> Option<usize> {
        let find = |n: &str| {
            let n = n.lines().next().unwrap_or("").trim();
            if n.is_empty() {
                return None;
            }
            self.text.lines().position(|line| line.contains(n)).map(|i| i + 1)
        };
        find(needle).or_else(|| find(&self.hint))
    }
}

struct Compiler {
    templates: Templates,
    cel: Arc<cel::Env>,
    errors: Vec<Error>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl Compiler {
    fn fail(&mut self, at: &At<'_>, field: &str, needle: &str, message: String) {
        self.errors.push(Error::Rule {
            file: at.file.to_owned(),
            line: at.line_of(needle),
            field: field.to_owned(),
            message,
        });
    }

    fn text(&mut self, at: &At<'_>, field: &str, source: &str) -> Option<Text> {
        match self.templates.text(source) {
            Ok(text) => Some(text),
            Err(message) => {
                self.fail(at, field, source, message);
                None
            }
        }
    }

    fn value(&mut self, at: &At<'_>, field: &str, value: &serde_json::Value) -> Option<ValueTemplate> {
        match self.templates.value(value) {
            Ok(v) => Some(v),
            Err((path, source, message)) => {
                self.fail(at, &format!("{field}{path}"), &source, message);
                None
            }
        }
    }

    fn rule(&mut self, at: &At<'_>, spec: RuleSpec, file: &Path) -> Option<Rule> {
        let before = self.errors.len();
        if !valid_name(&spec.name) {
            self.fail(
                at,
                &at.field("name"),
                &spec.name,
                format!(
                    "{:?} must be 1-64 of [A-Za-z0-9_-] (it names a consumer and a subject token)",
                    spec.name
                ),
            );
        }
        let on = match spec.on {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(ps) => ps,
        };
        if on.is_empty() {
            self.fail(
                at,
                &at.field("on"),
                "on:",
                "needs at least one subject pattern".to_owned(),
            );
        }
        for (i, p) in on.iter().enumerate() {
            if let Err(message) = pattern::check_pattern(p) {
                self.fail(at, &format!("{}.on[{i}]", at.field), p, message);
            }
        }
        for (i, t) in spec.types.iter().enumerate() {
            if t.trim().is_empty() {
                self.fail(at, &format!("{}.types[{i}]", at.field), "types:", "is empty".to_owned());
            }
        }
        let when = spec.when.and_then(|source| match self.cel.compile(&source) {
            Ok(program) => Some(Condition { source, program }),
            Err(e) => {
                self.fail(at, &at.field("when"), &source, format!("CEL: {e}"));
                None
            }
        });
        let throttle = spec.throttle.and_then(|t| {
            if t.per.is_zero() {
                self.fail(at, &at.field("throttle.per"), "per:", "must be more than 0".to_owned());
            }
            Some(Throttle {
                key: self.text(at, &at.field("throttle.key"), &t.key)?,
                per: t.per,
            })
        });
        let debounce = spec.debounce.and_then(|d| {
            if d.wait.is_zero() {
                self.fail(
                    at,
                    &at.field("debounce.wait"),
                    "wait:",
                    "must be more than 0".to_owned(),
                );
            }
            Some(Debounce {
                key: self.text(at, &at.field("debounce.key"), &d.key)?,
                wait: d.wait,
            })
        });
        let concurrency = spec.concurrency.unwrap_or(defaults::CONCURRENCY);
        if !(1..=10_000).contains(&concurrency) {
            self.fail(
                at,
                &at.field("concurrency"),
                "concurrency:",
                "must be 1-10000".to_owned(),
            );
        }
        let timeout = spec.timeout.unwrap_or(defaults::TIMEOUT);
        if timeout.is_zero() {
            self.fail(at, &at.field("timeout"), "timeout:", "must be more than 0".to_owned());
        }
        let retry = Retry {
            attempts: spec
                .retry
                .as_ref()
                .and_then(|r| r.attempts)
                .unwrap_or(defaults::ATTEMPTS),
            backoff: spec.retry.as_ref().and_then(|r| r.backoff).unwrap_or(defaults::BACKOFF),
            max_backoff: spec
                .retry
                .as_ref()
                .and_then(|r| r.max_backoff)
                .unwrap_or(defaults::MAX_BACKOFF),
        };
        if !(1..=100).contains(&retry.attempts) {
            self.fail(at, &at.field("retry.attempts"), "attempts:", "must be 1-100".to_owned());
        }
        let context = spec
            .context
            .as_ref()
            .and_then(|c| self.value(at, &at.field("context"), c));
        if spec.actions.is_empty() {
            self.fail(
                at,
                &at.field("actions"),
                "actions:",
                "needs at least one action".to_owned(),
            );
        }
        let actions = self.actions(
            at,
            &at.field("actions"),
            spec.actions,
            spec.allow_private_network,
            timeout,
        );
        if self.errors.len() > before {
            return None;
        }
        Some(Rule {
            name: spec.name,
            file: file.to_owned(),
            description: spec.description,
            on: pattern::minimal_cover(&on),
            types: spec.types,
            when,
            throttle,
            debounce,
            concurrency,
            timeout,
            retry,
            context,
            actions,
        })
    }

    fn actions(
        &mut self,
        at: &At<'_>,
        field: &str,
        specs: Vec<ActionSpec>,
        allow_private: bool,
        timeout: Duration,
    ) -> Vec<Action> {
        let mut names = HashSet::new();
        let mut actions = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let field = format!("{field}[{i}]");
            if let Some(action) = self.action(at, &field, i, spec, allow_private, timeout) {
                if !names.insert(action.name.clone()) {
                    self.fail(
                        at,
                        &format!("{field}.name"),
                        &action.name,
                        format!("action name {:?} is used twice", action.name),
                    );
                }
                actions.push(action);
            }
        }
        actions
    }

    fn action(
        &mut self,
        at: &At<'_>,
        field: &str,
        index: usize,
        spec: ActionSpec,
        allow_private: bool,
        timeout: Duration,
    ) -> Option<Action> {
        let kinds = [
            spec.exec.is_some(),
            spec.http.is_some(),
            spec.publish.is_some(),
            spec.request.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.fail(
                at,
                field,
                spec.name.as_deref().unwrap_or("actions:"),
                "an action has exactly one of exec, http, publish, request".to_owned(),
            );
            return None;
        }
        let kind = if let Some(exec) = spec.exec {
            ActionKind::Exec(self.exec(at, &format!("{field}.exec"), exec, timeout)?)
        } else if let Some(http) = spec.http {
            ActionKind::Http(self.http(at, &format!("{field}.http"), http, allow_private)?)
        } else if let Some(publish) = spec.publish {
            let f = format!("{field}.publish");
            ActionKind::Publish(PublishAction {
                subject: self.subject(at, &format!("{f}.subject"), &publish.subject)?,
                ty: publish.ty,
                data: self.value(at, &format!("{f}.data"), &publish.data.unwrap_or(serde_json::json!({})))?,
            })
        } else if let Some(request) = spec.request {
            let f = format!("{field}.request");
            ActionKind::Request(RequestAction {
                subject: self.subject(at, &format!("{f}.subject"), &request.subject)?,
                data: self.value(at, &format!("{f}.data"), &request.data.unwrap_or(serde_json::json!({})))?,
                timeout: request.timeout.unwrap_or(defaults::REQUEST_TIMEOUT),
                output_limit: request.output_limit.unwrap_or(defaults::OUTPUT_LIMIT),
            })
        } else {
            return None;
        };
        let name = spec.name.unwrap_or_else(|| format!("{}#{index}", kind.label()));
        let on_failure = match spec.on_failure {
            None | Some(OnFailureSpec::Keyword(FailureKeyword::Stop)) => OnFailure::Stop,
            Some(OnFailureSpec::Keyword(FailureKeyword::Continue)) => OnFailure::Continue,
            Some(OnFailureSpec::Actions(specs)) => {
                OnFailure::Run(self.actions(at, &format!("{field}.on_failure"), specs, allow_private, timeout))
            }
        };
        Some(Action { name, kind, on_failure })
    }

    fn subject(&mut self, at: &At<'_>, field: &str, source: &str) -> Option<Text> {
        let text = self.text(at, field, source)?;
        if let Text::Literal(s) = &text
            && let Err(message) = pattern::check_subject(s)
        {
            self.fail(at, field, source, message);
            return None;
        }
        Some(text)
    }

    fn exec(&mut self, at: &At<'_>, field: &str, spec: ExecSpec, timeout: Duration) -> Option<ExecAction> {
        let before = self.errors.len();
        let program = self.text(at, &format!("{field}.program"), &spec.program);
        if let Some(Text::Literal(p)) = &program
            && !Path::new(p).is_absolute()
        {
            self.fail(
                at,
                &format!("{field}.program"),
                &spec.program,
                format!("{p:?} must be an absolute path (there is no shell and no PATH lookup)"),
            );
        }
        let args: Vec<Option<Text>> = spec
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| self.text(at, &format!("{field}.args[{i}]"), a))
            .collect();
        let mut env = BTreeMap::new();
        for (name, value) in &spec.env {
            if !valid_env_name(name) {
                self.fail(
                    at,
                    &format!("{field}.env"),
                    name,
                    format!("{name:?} is not a variable name"),
                );
            }
            if let Some(text) = self.text(at, &format!("{field}.env.{name}"), value) {
                env.insert(name.clone(), text);
            }
        }
        for name in &spec.env_allow {
            if !valid_env_name(name) {
                self.fail(
                    at,
                    &format!("{field}.env_allow"),
                    name,
                    format!("{name:?} is not a variable name"),
                );
            }
        }
        let cwd = spec
            .cwd
            .as_ref()
            .and_then(|c| self.text(at, &format!("{field}.cwd"), c));
        let stdin = spec
            .stdin
            .as_ref()
            .and_then(|s| self.text(at, &format!("{field}.stdin"), s));
        let exec_timeout = spec.timeout.unwrap_or(timeout);
        if exec_timeout.is_zero() {
            self.fail(
                at,
                &format!("{field}.timeout"),
                "timeout:",
                "must be more than 0".to_owned(),
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(ExecAction {
            program: program?,
            args: args.into_iter().collect::<Option<_>>()?,
            env,
            env_allow: spec.env_allow,
            cwd,
            stdin,
            timeout: exec_timeout,
            output_limit: spec.output_limit.unwrap_or(defaults::OUTPUT_LIMIT),
            success_codes: spec.success_codes.unwrap_or_else(|| vec![0]),
        })
    }

    fn http(&mut self, at: &At<'_>, field: &str, spec: HttpSpec, allow_private: bool) -> Option<HttpAction> {
        let before = self.errors.len();
        let method = spec.method.unwrap_or_else(|| "POST".to_owned()).to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            self.fail(
                at,
                &format!("{field}.method"),
                &method,
                format!("{method:?} is not one of {METHODS:?}"),
            );
        }
        let url = self.text(at, &format!("{field}.url"), &spec.url);
        if let Some(Text::Literal(u)) = &url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            self.fail(
                at,
                &format!("{field}.url"),
                u,
                "must start with http:// or https://".to_owned(),
            );
        }
        let mut headers = BTreeMap::new();
        for (name, value) in &spec.headers {
            let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid {
                self.fail(
                    at,
                    &format!("{field}.headers"),
                    name,
                    format!("{name:?} is not a header name"),
                );
            }
            if let Some(text) = self.text(at, &format!("{field}.headers.{name}"), value) {
                headers.insert(name.clone(), text);
            }
        }
        let body = match (&spec.body, &spec.json) {
            (Some(_), Some(_)) => {
                self.fail(at, field, "json:", "has both body and json; choose one".to_owned());
                HttpBody::Empty
            }
            (Some(b), None) => self
                .text(at, &format!("{field}.body"), b)
                .map(HttpBody::Text)
                .unwrap_or(HttpBody::Empty),
            (None, Some(j)) => self
                .value(at, &format!("{field}.json"), j)
                .map(HttpBody::Json)
                .unwrap_or(HttpBody::Empty),
            (None, None) => HttpBody::Empty,
        };
        let secret = match &spec.secret_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Some(Secret::new(value)),
                _ => {
                    self.fail(
                        at,
                        &format!("{field}.secret_env"),
                        var,
                        format!("environment variable {var} (the signing secret) is not set"),
                    );
                    None
                }
            },
        };
        if self.errors.len() > before {
            return None;
        }
        Some(HttpAction {
            method,
            url: url?,
            headers,
            body,
            timeout: spec.timeout.unwrap_or(defaults::HTTP_TIMEOUT),
            retries: spec.retries.unwrap_or(defaults::HTTP_RETRIES).min(20),
            backoff: spec.backoff.unwrap_or(defaults::HTTP_BACKOFF),
            max_backoff: spec.max_backoff.unwrap_or(defaults::HTTP_MAX_BACKOFF),
            secret,
            allow_private_network: allow_private,
            output_limit: spec.output_limit.unwrap_or(defaults::OUTPUT_LIMIT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::DEFAULT_FUEL;

    fn load(files: &[(&str, &str)]) -> Result<RuleSet, Vec<Error>> {
        let files: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(name, text)| (PathBuf::from(format!("rules/{name}")), text.to_string()))
            .collect();
        load_files(Path::new("rules"), &files, DEFAULT_FUEL)
    }

    fn one_error(files: &[(&str, &str)]) -> (PathBuf, Option<usize>, String, String) {
        let errors = load(files).expect_err("should fail");
        match errors.into_iter().next() {
            Some(Error::Rule {
                file,
                line,
                field,
                message,
            }) => (file, line, field, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    const GOOD: &str = r#"
rules:
  - name: screen-pop
    on: sb.evt.ami.*.call.ringing
    types: [switchboard.ami.call.v1]
    when: 'data.extension != ""'
    throttle: { key: "{{ data.extension }}", per: 5s }
    actions:
      - name: pop
        publish:
          subject: "sb.push.user.{{ data.extension | token }}"
          data: { caller: "{{ data.caller.number }}" }
  - name: ping
    on: [sb.evt.push.inbound.*.ping, sb.evt.push.>]
    concurrency: 2
    timeout: 20s
    retry: { attempts: 5, backoff: 2s }
    actions:
      - exec:
          program: /usr/bin/ping
          args: ["-c", "3", "-q", "{{ data.host }}"]
          timeout: 10s
        on_failure: continue
      - http:
          url: "https://example.com/hook"
          json: { out: "{{ steps['exec#0'].output }}" }
        on_failure:
          - publish: { subject: sb.evt.alert.ping.failed }
"#;

    #[test]
    fn a_good_file_compiles_into_typed_rules() {
        let set = load(&[("a.yaml", GOOD)]).expect("loads");
        assert_eq!(set.rules.len(), 2);
        let ping = set.get("ping").expect("ping");
        assert_eq!(ping.on, vec!["sb.evt.push.>"], "overlapping patterns reduce");
        assert_eq!(ping.concurrency, 2);
        assert_eq!(ping.retry.attempts, 5);
        assert_eq!(ping.actions[0].name, "exec#0");
        assert!(matches!(ping.actions[0].on_failure, OnFailure::Continue));
        assert!(matches!(&ping.actions[1].on_failure, OnFailure::Run(a) if a.len() == 1));
        let pop = set.get("screen-pop").expect("screen-pop");
        assert_eq!(pop.throttle.as_ref().map(|t| t.per), Some(Duration::from_secs(5)));
        assert_eq!(pop.concurrency, defaults::CONCURRENCY);
    }

    #[test]
    fn rule_sets_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RuleSet>();
    }

    #[test]
    fn unknown_fields_name_file_line_and_field() {
        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - exec:\n          program: /bin/true\n          shell: yes\n";
        let (file, line, field, message) = one_error(&[("bad.yaml", text)]);
        assert_eq!(file, PathBuf::from("rules/bad.yaml"));
        assert_eq!(line, Some(7));
        assert_eq!(field, "rules[0].actions[0].exec");
        assert!(message.contains("unknown field `shell`"), "{message}");
    }

    #[test]
    fn bad_cel_names_the_when_field_and_line() {
        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    when: 'data.x ==== 1'\n    actions:\n      - publish: { subject: sb.evt.y }\n";
        let (_, line, field, message) = one_error(&[("c.yaml", text)]);
        assert_eq!(line, Some(4));
        assert_eq!(field, "rules[0].when");
        assert!(message.starts_with("CEL"), "{message}");
    }

    #[test]
    fn bad_templates_patterns_and_programs_are_named() {
        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - exec:\n          program: /bin/echo\n          args: [ok, '{{ data. }}']\n";
        let (_, line, field, _) = one_error(&[("t.yaml", text)]);
        assert_eq!((line, field.as_str()), (Some(7), "rules[0].actions[0].exec.args[1]"));

        let text = "rules:\n  - name: a\n    on: sb.evt.>.x\n    actions:\n      - publish: { subject: sb.evt.y }\n";
        let (_, line, field, _) = one_error(&[("p.yaml", text)]);
        assert_eq!((line, field.as_str()), (Some(3), "rules[0].on[0]"));

        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - exec: { program: bash, args: [-c, 'echo hi'] }\n";
        let (_, line, field, message) = one_error(&[("e.yaml", text)]);
        assert_eq!((line, field.as_str()), (Some(5), "rules[0].actions[0].exec.program"));
        assert!(message.contains("absolute"), "{message}");

        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - name: both\n        exec: { program: /bin/true }\n        publish: { subject: sb.evt.y }\n";
        let (_, line, field, _) = one_error(&[("k.yaml", text)]);
        assert_eq!((line, field.as_str()), (Some(5), "rules[0].actions[0]"));

        let text = "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - publish: { subject: 'sb.evt.*' }\n";
        let (_, _, field, message) = one_error(&[("w.yaml", text)]);
        assert_eq!(field, "rules[0].actions[0].publish.subject");
        assert!(message.contains("wildcard"), "{message}");
    }

    #[test]
    fn duplicate_names_across_files_fail() {
        let a = "rules:\n  - name: same\n    on: sb.evt.x\n    actions:\n      - publish: { subject: sb.evt.y }\n";
        let (file, line, field, message) = one_error(&[("a.yaml", a), ("b.yaml", a)]);
        assert_eq!(file, PathBuf::from("rules/b.yaml"));
        assert_eq!((line, field.as_str()), (Some(2), "rules[0].name"));
        assert!(message.contains("twice"));
    }

    #[test]
    fn every_error_of_every_file_is_reported() {
        let a = "rules:\n  - name: 'bad name'\n    on: sb.evt.x\n    actions: []\n";
        let b = "not: yaml: at: all:";
        let errors = load(&[("a.yaml", a), ("b.yaml", b)]).expect_err("fails");
        assert!(errors.len() >= 3, "{errors:?}");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.starts_with("rules/a.yaml:2: rules[0].name")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("rules[0].actions") && t.contains("at least one")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.starts_with("rules/b.yaml:")), "{text:?}");
    }

    proptest::proptest! {
        #[test]
        fn loading_any_text_never_panics(text in "(rules:|  - |name: |on: |when: |actions:|exec:|\\{\\{|\\}\\}|[a-z.*>]{0,6}|\\n| |'|\\[|\\]|:){0,60}") {
            let _ = load(&[("f.yaml", text.as_str())]);
        }
    }
}
