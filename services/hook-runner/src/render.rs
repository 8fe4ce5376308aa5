//! Actions rendered for one trigger: every template filled in and checked, ready to
//! run (or to show, for dry runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::rules::{ActionKind, HttpBody};
use crate::template::Templates;

/// One action, rendered.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Rendered {
    /// Run `program` with `args`.
    Exec(RenderedExec),
    /// Call a URL.
    Http(RenderedHttp),
    /// Publish `data` to `subject`.
    Publish(RenderedPublish),
    /// Request on `subject`.
    Request(RenderedRequest),
}

/// A program to run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RenderedExec {
    /// Absolute path.
    pub program: PathBuf,
    /// Arguments, each on its own.
    pub args: Vec<String>,
    /// The whole environment the program gets.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Written to stdin.
    pub stdin: Option<String>,
    /// Kill after.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes kept per stream.
    pub output_limit: usize,
    /// Exit codes meaning success.
    pub success_codes: Vec<i32>,
}

/// A request to make.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RenderedHttp {
    /// Method.
    pub method: String,
    /// URL.
    pub url: String,
    /// Headers (signature headers are added when sent).
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Option<String>,
    /// Whether the body is JSON.
    pub json: bool,
    /// Whether it is signed (Standard Webhooks).
    pub signed: bool,
}

/// A message to publish.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RenderedPublish {
    /// Subject.
    pub subject: String,
    /// CloudEvents type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Data.
    pub data: serde_json::Value,
}

/// A request to send.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RenderedRequest {
    /// Subject.
    pub subject: String,
    /// Body.
    pub data: serde_json::Value,
    /// Wait.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Subjects and types the service fills in by default.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The subject prefix (`sb`).
    pub prefix: String,
}

impl Defaults {
    /// The CloudEvents type of a published message without one.
    pub fn publish_type(&self, subject: &str) -> &'static str {
        if subject.starts_with(&format!("{}.push.", self.prefix)) {
            switchboard_bus::event_types::PUSH
        } else {
            "switchboard.hook.publish.v1"
        }
    }
}

fn no_line_breaks(field: &str, value: &str) -> Result<(), Error> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(Error::Render {
            field: field.to_owned(),
            message: "rendered value contains CR, LF or NUL".to_owned(),
        });
    }
    Ok(())
}

fn checked_subject(field: &str, subject: String) -> Result<String, Error> {
    crate::pattern::check_subject(&subject).map_err(|message| Error::Render {
        field: field.to_owned(),
        message,
    })?;
    Ok(subject)
}

/// Renders one action in `ctx`.
pub fn render(
    templates: &Templates,
    kind: &ActionKind,
    ctx: &minijinja::Value,
    field: &str,
    defaults: &Defaults,
) -> Result<Rendered, Error> {
    Ok(match kind {
        ActionKind::Exec(exec) => {
            let f = format!("{field}.exec");
            let program = templates.render(&exec.program, ctx, &format!("{f}.program"))?;
            if !Path::new(&program).is_absolute() || program.contains('\0') {
                return Err(Error::Render {
                    field: format!("{f}.program"),
                    message: format!("{program:?} is not an absolute path"),
                });
            }
            let args = exec
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let field = format!("{f}.args[{i}]");
                    let value = templates.render(a, ctx, &field)?;
                    if value.contains('\0') {
                        return Err(Error::Render {
                            field,
                            message: "contains NUL".into(),
                        });
                    }
                    Ok(value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut env = BTreeMap::new();
            for name in &exec.env_allow {
                if let Ok(value) = std::env::var(name) {
                    env.insert(name.clone(), value);
                }
            }
            for (name, value) in &exec.env {
                let field = format!("{f}.env.{name}");
                let value = templates.render(value, ctx, &field)?;
                if value.contains('\0') {
                    return Err(Error::Render {
                        field,
                        message: "contains NUL".into(),
                    });
                }
                env.insert(name.clone(), value);
            }
            let cwd = match &exec.cwd {
                Some(c) => Some(PathBuf::from(templates.render(c, ctx, &format!("{f}.cwd"))?)),
                None => None,
            };
            let stdin = match &exec.stdin {
                Some(s) => Some(templates.render(s, ctx, &format!("{f}.stdin"))?),
                None => None,
            };
            Rendered::Exec(RenderedExec {
                program: PathBuf::from(program),
                args,
                env,
                cwd,
                stdin,
                timeout: exec.timeout,
                output_limit: exec.output_limit,
                success_codes: exec.success_codes.clone(),
            })
        }
        ActionKind::Http(http) => {
            let f = format!("{field}.http");
            let url = templates.render(&http.url, ctx, &format!("{f}.url"))?;
            no_line_breaks(&format!("{f}.url"), &url)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::Render {
                    field: format!("{f}.url"),
                    message: format!("{url:?} is not an http(s) URL"),
                });
            }
            let mut headers = BTreeMap::new();
            for (name, value) in &http.headers {
                let field = format!("{f}.headers.{name}");
                let value = templates.render(value, ctx, &field)?;
                no_line_breaks(&field, &value)?;
                headers.insert(name.clone(), value);
            }
            let (body, json) = match &http.body {
                HttpBody::Empty => (None, false),
                HttpBody::Text(t) => (Some(templates.render(t, ctx, &format!("{f}.body"))?), false),
                HttpBody::Json(v) => {
                    let value = templates.render_value(v, ctx, &format!("{f}.json"))?;
                    (Some(value.to_string()), true)
                }
            };
            Rendered::Http(RenderedHttp {
                method: http.method.clone(),
                url,
                headers,
                body,
                json,
                signed: http.secret.is_some(),
            })
        }
        ActionKind::Publish(publish) => {
            let f = format!("{field}.publish");
            let subject = checked_subject(
                &format!("{f}.subject"),
                templates.render(&publish.subject, ctx, &format!("{f}.subject"))?,
            )?;
            let ty = publish
                .ty
                .clone()
                .unwrap_or_else(|| defaults.publish_type(&subject).to_owned());
            Rendered::Publish(RenderedPublish {
                data: templates.render_value(&publish.data, ctx, &format!("{f}.data"))?,
                subject,
                ty,
            })
        }
        ActionKind::Request(request) => {
            let f = format!("{field}.request");
            let subject = checked_subject(
                &format!("{f}.subject"),
                templates.render(&request.subject, ctx, &format!("{f}.subject"))?,
            )?;
            Rendered::Request(RenderedRequest {
                subject,
                data: templates.render_value(&request.data, ctx, &format!("{f}.data"))?,
                timeout: request.timeout,
            })
        }
    })
}

/// The template context of a run: the trigger's, plus `context` (the rule's rendered
/// context, when it has one) and `steps` (results of earlier actions, by name).
pub fn run_context(
    base: &minijinja::Value,
    context: &serde_json::Value,
    steps: &serde_json::Map<String, serde_json::Value>,
) -> minijinja::Value {
    minijinja::context! {
        context => minijinja::Value::from(minijinja::value::Serde(context)),
        steps => minijinja::Value::from(minijinja::value::Serde(steps)),
        ..base.clone()
    }
}

/// Renders a rule's context from the trigger alone (null when the rule has none).
pub fn rule_context(
    set: &crate::rules::RuleSet,
    rule: &crate::rules::Rule,
    base: &minijinja::Value,
) -> Result<serde_json::Value, Error> {
    match &rule.context {
        None => Ok(serde_json::Value::Null),
        Some(template) => set.templates.render_value(template, base, "context"),
    }
}

/// What a step looks like in a dry run: a success with empty output, with the
/// caller's simulated fields merged over it.
fn simulated_step(simulated: Option<&serde_json::Value>) -> serde_json::Value {
    let mut step = serde_json::json!({
        "success": true, "exit_code": 0, "status": 200, "output": "", "stderr": "",
        "error": "", "attempts": 1, "reply": null,
    });
    if let (Some(serde_json::Value::Object(given)), serde_json::Value::Object(map)) = (simulated, &mut step) {
        for (k, v) in given {
            map.insert(k.clone(), v.clone());
        }
    }
    step
}

/// A dry run of `rule` for `trigger`: every action rendered in order, nothing run.
/// Each action sees the earlier ones as `steps`: a success with empty output, or
/// what `simulated` gives for its name. A render error is shown in place.
pub fn dry_run(
    set: &crate::rules::RuleSet,
    rule: &crate::rules::Rule,
    trigger: &crate::trigger::Trigger,
    defaults: &Defaults,
    simulated: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let base = trigger.template_context(&rule.name);
    let context = match rule_context(set, rule, &base) {
        Ok(c) => c,
        Err(e) => return serde_json::json!({ "error": e.to_string() }),
    };
    let mut steps = serde_json::Map::new();
    let describe = |actions: &[crate::rules::Action],
                    field: &str,
                    steps: &mut serde_json::Map<String, serde_json::Value>|
     -> Vec<serde_json::Value> {
        actions
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let field = format!("{field}[{i}]");
                let ctx = run_context(&base, &context, steps);
                let entry = match render(&set.templates, &action.kind, &ctx, &field, defaults) {
                    Ok(rendered) => serde_json::json!({ "name": action.name, "rendered": rendered }),
                    Err(e) => serde_json::json!({ "name": action.name, "error": e.to_string() }),
                };
                steps.insert(action.name.clone(), simulated_step(simulated.get(&action.name)));
                entry
            })
            .collect()
    };
    let mut actions = describe(&rule.actions, "actions", &mut steps);
    for (i, action) in rule.actions.iter().enumerate() {
        if let crate::rules::OnFailure::Run(fallback) = &action.on_failure
            && let Some(entry) = actions.get_mut(i)
        {
            entry["on_failure"] =
                serde_json::Value::Array(describe(fallback, &format!("actions[{i}].on_failure"), &mut steps));
        }
    }
    serde_json::json!({ "context": context, "actions": actions })
}
