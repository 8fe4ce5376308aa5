//! The event a rule runs for, and matching: subject patterns, CloudEvents types and
//! the `when` condition (CEL, evaluated synchronously: its context is not `Send`).

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchboard_bus::CloudEvent;
use time::format_description::well_known::Rfc3339;

use crate::Error;
use crate::rules::{Rule, RuleSet};

/// The CloudEvents extension carrying how many hook results led to an event.
pub const DEPTH_EXTENSION: &str = "sbdepth";

/// An event as a rule sees it.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The NATS subject it arrived on.
    pub subject: String,
    /// The event.
    pub event: CloudEvent,
    /// Its data: JSON when it parses, else the text.
    pub data: Value,
    /// How many hook results led to it.
    pub depth: u32,
    /// Delivery attempt (1 = first).
    pub attempt: u32,
}

impl Trigger {
    /// Wraps an event received on `subject`.
    pub fn new(subject: String, event: CloudEvent, attempt: u32) -> Self {
        let data = if event.data.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&event.data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.data).into_owned()))
        };
        let depth = event
            .extensions
            .get(DEPTH_EXTENSION)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        Self {
            subject,
            event,
            data,
            depth,
            attempt,
        }
    }

    /// The event's attributes as a map: `id`, `source`, `type`, `time`, `subject`,
    /// and every extension.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, value) in &self.event.extensions {
            map.insert(name.clone(), Value::String(value.clone()));
        }
        map.insert("id".into(), json!(self.event.id));
        map.insert("source".into(), json!(self.event.source));
        map.insert("type".into(), json!(self.event.ty));
        if let Some(time) = self.event.time.and_then(|t| t.format(&Rfc3339).ok()) {
            map.insert("time".into(), json!(time));
        }
        if let Some(subject) = &self.event.subject {
            map.insert("subject".into(), json!(subject));
        }
        map
    }

    /// The subject's tokens, as on the wire (ids escaped).
    pub fn tokens(&self) -> Vec<&str> {
        self.subject.split('.').collect()
    }

    /// What templates see: `data`, `event` (attributes), `subject`, `tokens`,
    /// `depth`, `attempt`, `rule`. Actions add `steps` and rules `context`. Built
    /// once per run straight from the event (no JSON copy) and shared by every
    /// template of the run: building it is a good part of a run's cost.
    pub fn template_context(&self, rule: &str) -> minijinja::Value {
        minijinja::context! {
            data => minijinja::Value::from(minijinja::value::Serde(&self.data)),
            event => minijinja::Value::from(minijinja::value::Serde(self.attributes())),
            subject => minijinja::Value::from(self.subject.as_str()),
            tokens => self.tokens().into_iter().map(minijinja::Value::from).collect::<Vec<_>>(),
            depth => self.depth,
            attempt => self.attempt,
            rule => rule,
        }
    }
}

/// An event written by hand, for `hook-runner test` and the Trigger RPC.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// The subject it pretends to arrive on.
    pub subject: String,
    /// CloudEvents type.
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    /// Id (default: a fresh UUIDv7).
    #[serde(default)]
    pub id: Option<String>,
    /// Source (default `/switchboard/hook-runner/test`).
    #[serde(default)]
    pub source: Option<String>,
    /// Extension attributes.
    #[serde(default)]
    pub extensions: std::collections::BTreeMap<String, String>,
    /// The data.
    #[serde(default)]
    pub data: Value,
    /// For dry runs: what earlier actions pretend to have returned, by action name
    /// (merged over a successful placeholder), e.g. `{"originate": {"reply": {...}}}`.
    #[serde(default)]
    pub steps: Map<String, Value>,
}

/// The CloudEvents type of hand-made events without one.
pub const SYNTHETIC_TYPE: &str = "switchboard.hook.synthetic.v1";

impl EventFile {
    /// Parses the JSON of an event file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::Event(e.to_string()))
    }

    /// The trigger it describes.
    pub fn into_trigger(self) -> Result<Trigger, Error> {
        crate::pattern::check_subject(&self.subject).map_err(Error::Event)?;
        let data = serde_json::to_vec(&self.data).map_err(|e| Error::Event(e.to_string()))?;
        let mut event = CloudEvent::new(
            self.source
                .unwrap_or_else(|| "/switchboard/hook-runner/test".to_owned()),
            self.ty.unwrap_or_else(|| SYNTHETIC_TYPE.to_owned()),
            Bytes::from(data),
        )
        .with_subject(self.subject.clone());
        event.data_content_type = Some(switchboard_bus::cloudevent::JSON.to_owned());
        if let Some(id) = self.id {
            event.id = id;
        }
        event.extensions = self.extensions;
        Ok(Trigger::new(self.subject, event, 1))
    }
}

/// Why a rule did or did not match.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Subject, type and condition agree.
    Matched,
    /// No `on` pattern matches the subject.
    Subject,
    /// The CloudEvents type is not in `types`.
    Type,
    /// `when` is false.
    When,
    /// `when` failed (treated as not matching).
    Error(String),
}

/// The CEL context of one trigger: built on the first condition that needs it and
/// shared by the rest (converting the data into CEL values is the costly part). Not
/// `Send`: used synchronously, never across an `.await`.
#[derive(Default)]
pub struct CelInput {
    context: Option<cel::Context<'static, 'static>>,
}

impl CelInput {
    /// An input whose context is built on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn context(&mut self, env: &Arc<cel::Env>, trigger: &Trigger) -> Result<&cel::Context<'static, 'static>, Error> {
        if self.context.is_none() {
            let convert = |v: &Value| cel::to_value(v).map_err(|e| Error::Condition(e.to_string()));
            let mut ctx = cel::Context::with_env(env.clone());
            ctx.add_variable_from_value("data", convert(&trigger.data)?);
            ctx.add_variable_from_value("attributes", convert(&Value::Object(trigger.attributes()))?);
            ctx.add_variable_from_value("subject", trigger.subject.clone());
            ctx.add_variable_from_value(
                "tokens",
                cel::Value::List(Arc::new(
                    trigger
                        .tokens()
                        .into_iter()
                        .map(|t| cel::Value::String(Arc::new(t.to_owned())))
                        .collect(),
                )),
            );
            self.context = Some(ctx);
        }
        self.context
            .as_ref()
            .ok_or_else(|| Error::Condition("no CEL context".to_owned()))
    }
}

impl RuleSet {
    /// Evaluates `rule`'s condition for `trigger` (true when it has none).
    pub fn condition(&self, rule: &Rule, trigger: &Trigger, input: &mut CelInput) -> Result<bool, Error> {
        let Some(when) = &rule.when else { return Ok(true) };
        let ctx = input.context(&self.cel, trigger)?;
        match when.program.execute(ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(Error::Condition(format!(
                "{:?} gave {other:?}, not a bool",
                when.source
            ))),
            Err(e) => Err(Error::Condition(format!("{:?}: {e}", when.source))),
        }
    }

    /// Checks one rule against a trigger.
    pub fn verdict(&self, rule: &Rule, trigger: &Trigger, input: &mut CelInput) -> Verdict {
        if !rule.on.iter().any(|p| crate::pattern::matches(p, &trigger.subject)) {
            return Verdict::Subject;
        }
        if !rule.types.is_empty() && !rule.types.contains(&trigger.event.ty) {
            return Verdict::Type;
        }
        match self.condition(rule, trigger, input) {
            Ok(true) => Verdict::Matched,
            Ok(false) => Verdict::When,
            Err(e) => Verdict::Error(e.to_string()),
        }
    }

    /// The indexes of every rule that matches `trigger`, using the subject index; a
    /// condition that fails to evaluate counts as no match.
    pub fn matching(&self, trigger: &Trigger) -> Vec<usize> {
        let mut candidates = Vec::new();
        self.index.find(&trigger.subject, &mut candidates);
        let mut input = CelInput::new();
        candidates.retain(|&i| {
            self.rules.get(i).is_some_and(|rule| {
                (rule.types.is_empty() || rule.types.contains(&trigger.event.ty))
                    && matches!(self.condition(rule, trigger, &mut input), Ok(true))
            })
        });
        candidates
    }
}
