//! Templates for every string of a rule: minijinja with strict undefined, no loader
//! (no file access, no `include`), no HTML escaping, and a fuel limit so that no
//! template loops forever.
//!
//! A string without `{{`, `{%` or `{#` is a literal. A string that is exactly one
//! `{{ expression }}` keeps the expression's type in JSON payloads (a number stays a
//! number, `{{ data }}` copies an object).

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Map;

use crate::Error;

/// The instruction budget of one render when the config does not say.
pub const DEFAULT_FUEL: u64 = 100_000;

/// A compiled text template.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// No template syntax: used as is.
    Literal(String),
    /// A template registered under this name in [`Templates`].
    Template {
        /// The registered name.
        name: String,
        /// The source, for `check` and dry runs.
        source: String,
    },
}

impl Text {
    /// The source as written.
    pub fn source(&self) -> &str {
        match self {
            Text::Literal(s) => s,
            Text::Template { source, .. } => source,
        }
    }
}

/// A compiled JSON value whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTemplate {
    /// A number, bool or null.
    Scalar(serde_json::Value),
    /// A string.
    Text(Text),
    /// Exactly `{{ expression }}`: the expression's value, of any type.
    Expression(String),
    /// A list.
    Array(Vec<ValueTemplate>),
    /// An object; keys are literal.
    Object(Vec<(String, ValueTemplate)>),
}

/// The template environment of one rule set.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    count: usize,
}

impl Templates {
    /// A sandboxed environment with the given fuel per render.
    pub fn new(fuel: u64) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(fuel));
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_filter("token", |value: String| {
            switchboard_bus::escape_token(&value).into_owned()
        });
        Self { env, count: 0 }
    }

    /// Compiles a text template; the error is minijinja's message.
    pub fn text(&mut self, source: &str) -> Result<Text, String> {
        if !has_syntax(source) {
            return Ok(Text::Literal(source.to_owned()));
        }
        self.count += 1;
        let name = format!("t{}", self.count);
        self.env
            .add_template_owned(name.clone(), source.to_owned())
            .map_err(|e| describe(&e))?;
        Ok(Text::Template {
            name,
            source: source.to_owned(),
        })
    }

    /// Compiles every string of a JSON value; an error gives the path inside the
    /// value, the offending string and minijinja's message.
    pub fn value(&mut self, value: &serde_json::Value) -> Result<ValueTemplate, (String, String, String)> {
        Ok(match value {
            serde_json::Value::String(s) => match single_expression(s) {
                Some(expr) => {
                    self.env
                        .compile_expression_owned(expr.to_owned())
                        .map_err(|e| (String::new(), s.clone(), describe(&e)))?;
                    ValueTemplate::Expression(expr.to_owned())
                }
                None => ValueTemplate::Text(self.text(s).map_err(|e| (String::new(), s.clone(), e))?),
            },
            serde_json::Value::Array(items) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v).map_err(|(path, src, e)| (format!("[{i}]{path}"), src, e)))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| {
                        self.value(v)
                            .map(|t| (k.clone(), t))
                            .map_err(|(path, src, e)| (format!(".{k}{path}"), src, e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => ValueTemplate::Scalar(other.clone()),
        })
    }

    /// Renders a text template in `ctx`; `field` names it in errors.
    pub fn render(&self, text: &Text, ctx: &Value, field: &str) -> Result<String, Error> {
        match text {
            Text::Literal(s) => Ok(s.clone()),
            Text::Template { name, .. } => self
                .env
                .get_template(name)
                .and_then(|t| t.render(ctx))
                .map_err(|e| render_error(field, &e)),
        }
    }

    /// Renders a value template in `ctx`.
    pub fn render_value(&self, value: &ValueTemplate, ctx: &Value, field: &str) -> Result<serde_json::Value, Error> {
        Ok(match value {
            ValueTemplate::Scalar(v) => v.clone(),
            ValueTemplate::Text(t) => serde_json::Value::String(self.render(t, ctx, field)?),
            ValueTemplate::Expression(expr) => {
                let compiled = self
                    .env
                    .compile_expression_owned(expr.clone())
                    .map_err(|e| render_error(field, &e))?;
                let result = compiled.eval(ctx).map_err(|e| render_error(field, &e))?;
                if result.is_undefined() {
                    return Err(Error::Render {
                        field: field.to_owned(),
                        message: format!("{expr} is undefined"),
                    });
                }
                serde_json::to_value(&result).map_err(|e| Error::Render {
                    field: field.to_owned(),
                    message: e.to_string(),
                })?
            }
            ValueTemplate::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.render_value(v, ctx, &format!("{field}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    map.insert(k.clone(), self.render_value(v, ctx, &format!("{field}.{k}"))?);
                }
                serde_json::Value::Object(map)
            }
        })
    }
}

fn has_syntax(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// `{{ expr }}` and nothing else: the inner expression.
fn single_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if has_syntax(inner) || inner.contains("}}") || inner.trim().is_empty() {
        return None;
    }
    Some(inner.trim())
}

fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    if let Some(detail) = error.detail()
        && !message.contains(detail)
    {
        message = format!("{message} ({detail})");
    }
    message
}

fn render_error(field: &str, error: &minijinja::Error) -> Error {
    Error::Render {
        field: field.to_owned(),
        message: describe(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::value::Serde;
    use serde_json::json;

    fn ctx(v: serde_json::Value) -> Value {
        Value::from(Serde(v))
    }

    #[test]
    fn literals_templates_and_typed_expressions() {
        let mut t = Templates::new(DEFAULT_FUEL);
        let c = ctx(json!({"data": {"exten": "101", "n": 3, "who": {"a": 1}}}));
        let lit = t.text("plain").unwrap();
        assert_eq!(lit, Text::Literal("plain".into()));
        let text = t.text("sb.push.user.{{ data.exten }}").unwrap();
        assert_eq!(t.render(&text, &c, "f").unwrap(), "sb.push.user.101");
        let value = t
            .value(&json!({"n": "{{ data.n }}", "who": "{{ data.who }}", "s": "x{{ data.n }}", "k": true}))
            .unwrap();
        assert_eq!(
            t.render_value(&value, &c, "data").unwrap(),
            json!({"n": 3, "who": {"a": 1}, "s": "x3", "k": true})
        );
    }

    #[test]
    fn undefined_is_an_error_naming_the_field() {
        let mut t = Templates::new(DEFAULT_FUEL);
        let c = ctx(json!({"data": {}}));
        let text = t.text("{{ data.missing }}").unwrap();
        let err = t.render(&text, &c, "actions[0].exec.args[1]").unwrap_err().to_string();
        assert!(err.contains("actions[0].exec.args[1]"), "{err}");
        let value = t.value(&json!("{{ data.missing }}")).unwrap();
        assert!(t.render_value(&value, &c, "x").is_err());
    }

    #[test]
    fn fuel_stops_runaway_templates() {
        let mut t = Templates::new(1_000);
        let text = t.text("{% for i in range(100000) %}{{ i }}{% endfor %}").unwrap();
        let err = t.render(&text, &ctx(json!({})), "body").unwrap_err().to_string();
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let mut t = Templates::new(DEFAULT_FUEL);
        assert!(t.text("{{ data. }}").is_err());
        assert!(t.value(&json!({"a": ["{{ ) }}"]})).is_err());
    }

    #[test]
    fn no_file_access_and_token_filter_escapes() {
        let mut t = Templates::new(DEFAULT_FUEL);
        let text = t.text("{% include '/etc/passwd' %}").unwrap();
        assert!(t.render(&text, &ctx(json!({})), "x").is_err());
        let token = t.text("{{ data.id | token }}").unwrap();
        assert_eq!(
            t.render(&token, &ctx(json!({"data": {"id": "a.b *"}})), "x").unwrap(),
            "a_2Eb_20_2A"
        );
    }
}
