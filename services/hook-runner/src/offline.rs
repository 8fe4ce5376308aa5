//! `hook-runner check DIR` and `hook-runner test DIR EVENT.json`: validate rules and
//! show what an event would do, without NATS and without running anything.

use std::path::Path;

use serde_json::json;

use crate::Error;
use crate::render::{Defaults, dry_run};
use crate::rules::load_dir;
use crate::template::DEFAULT_FUEL;
use crate::trigger::{CelInput, EventFile, Verdict};

/// Loads `dir`: a summary line per rule, or every error (file:line: field: message).
pub fn check(dir: &Path) -> Result<String, Vec<Error>> {
    let set = load_dir(dir, DEFAULT_FUEL)?;
    let mut out = String::new();
    for rule in &set.rules {
        out.push_str(&format!(
            "{}: {} ({} action{}, on {})\n",
            rule.file.display(),
            rule.name,
            rule.actions.len(),
            if rule.actions.len() == 1 { "" } else { "s" },
            rule.on.join(", ")
        ));
    }
    out.push_str(&format!("{} rule(s) ok\n", set.rules.len()));
    Ok(out)
}

/// Which rules of `dir` match the event in `event_json`, and their rendered actions,
/// as JSON.
pub fn test(dir: &Path, event_json: &str, prefix: &str) -> Result<serde_json::Value, Vec<Error>> {
    let set = load_dir(dir, DEFAULT_FUEL)?;
    let trigger = EventFile::parse(event_json)
        .and_then(EventFile::into_trigger)
        .map_err(|e| vec![e])?;
    let input = CelInput::new(&trigger).map_err(|e| vec![e])?;
    let defaults = Defaults {
        prefix: prefix.to_owned(),
    };
    let mut matched = Vec::new();
    let mut skipped = Vec::new();
    for rule in &set.rules {
        match set.verdict(rule, &trigger, &input) {
            Verdict::Matched => {
                let mut entry = dry_run(&set, rule, &trigger, &defaults);
                entry["rule"] = json!(rule.name);
                matched.push(entry);
            }
            Verdict::Subject => skipped.push(json!({ "rule": rule.name, "why": "subject" })),
            Verdict::Type => skipped.push(json!({ "rule": rule.name, "why": "type" })),
            Verdict::When => skipped.push(json!({ "rule": rule.name, "why": "when is false" })),
            Verdict::Error(e) => skipped.push(json!({ "rule": rule.name, "why": format!("when failed: {e}") })),
        }
    }
    Ok(json!({
        "event": { "id": trigger.event.id, "subject": trigger.subject, "type": trigger.event.ty },
        "matched": matched,
        "not_matched": skipped,
    }))
}
