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
    let mut file = EventFile::parse(event_json).map_err(|e| vec![e])?;
    let steps = std::mem::take(&mut file.steps);
    let trigger = file.into_trigger().map_err(|e| vec![e])?;
    let mut input = CelInput::new();
    let defaults = Defaults {
        prefix: prefix.to_owned(),
    };
    let mut matched = Vec::new();
    let mut skipped = Vec::new();
    for rule in &set.rules {
        match set.verdict(rule, &trigger, &mut input) {
            Verdict::Matched => {
                let mut entry = dry_run(&set, rule, &trigger, &defaults, &steps);
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    fn examples() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rules"))
    }

    /// Runs the sample event of a flow against every example rule.
    fn sample(name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(examples().join("events").join(name)).expect("sample event");
        test(&examples(), &text, "sb").expect("test runs")
    }

    /// The one matching rule's actions, with no render error anywhere.
    fn only_match(report: &serde_json::Value, rule: &str) -> Vec<serde_json::Value> {
        let matched = report["matched"].as_array().expect("matched");
        assert_eq!(matched.len(), 1, "exactly one rule matches: {report:#}");
        assert_eq!(matched[0]["rule"], rule);
        assert!(!report.to_string().contains("\"error\""), "a render error: {report:#}");
        matched[0]["actions"].as_array().expect("actions").clone()
    }

    #[test]
    fn the_examples_load() {
        let summary = check(&examples()).expect("examples are valid");
        for rule in [
            "screen-pop",
            "im-call-bot",
            "missed-call-im",
            "admin-ping",
            "site-to-im",
        ] {
            assert!(summary.contains(rule), "{summary}");
        }
        assert!(summary.ends_with("5 rule(s) ok\n"), "{summary}");
    }

    #[test]
    fn f1_a_ringing_call_pops_up_at_the_extension() {
        let actions = only_match(&sample("f1-call-ringing.json"), "screen-pop");
        let pop = &actions[0]["rendered"];
        assert_eq!(pop["kind"], "publish");
        assert_eq!(pop["subject"], "sb.push.user.101");
        assert_eq!(pop["type"], "switchboard.push.v1");
        assert_eq!(pop["data"]["type"], "call.ringing");
        assert_eq!(pop["data"]["data"]["number"], "+48600100200");
        assert_eq!(pop["data"]["data"]["name"], "Jan Kowalski");
    }

    #[test]
    fn f2_call_request_originates_then_answers_the_sender() {
        let actions = only_match(&sample("f2-im-call.json"), "im-call-bot");
        let originate = &actions[0]["rendered"];
        assert_eq!(originate["subject"], "sb.cmd.ami.pbx1.action");
        assert_eq!(originate["data"]["action"], "Originate");
        assert_eq!(
            originate["data"]["headers"][0],
            json!({"name": "Channel", "value": "PJSIP/101"})
        );
        let answer = &actions[1]["rendered"];
        assert_eq!(answer["subject"], "sb.cmd.im.main.send");
        assert_eq!(answer["data"]["to"], "alice@example.org");
        assert_eq!(
            answer["data"]["text"],
            "Calling 101: Success Originate successfully queued"
        );
        assert_eq!(
            actions[0]["on_failure"][0]["rendered"]["data"]["to"],
            "alice@example.org"
        );

        // Someone not on the list, or text that is not "call <digits>", matches nothing.
        for (from, text) in [
            ("mallory@example.org", "call 101"),
            ("alice@example.org", "call 101; rm -rf /"),
        ] {
            let event = json!({
                "subject": "sb.evt.im.main.message",
                "type": "switchboard.im.message.v1",
                "data": { "from": from, "text": text },
            });
            let report = test(&examples(), &event.to_string(), "sb").expect("test runs");
            assert_eq!(report["matched"], json!([]), "{from} {text}");
        }
    }

    #[test]
    fn f3_a_missed_call_tells_the_owner() {
        let actions = only_match(&sample("f3-call-missed.json"), "missed-call-im");
        let tell = &actions[0]["rendered"];
        assert_eq!(tell["subject"], "sb.cmd.im.main.send");
        assert_eq!(tell["data"]["to"], "bob@example.org");
        assert_eq!(tell["data"]["text"], "Missed call on 102 from +48600100200.");
        // An answered call (proto3 JSON leaves `missed: false` out) matches nothing.
        let answered = json!({
            "subject": "sb.evt.ami.pbx1.call.ended",
            "type": "switchboard.ami.call.v1",
            "data": { "extension": "102", "caller": { "number": "1" } },
        });
        let report = test(&examples(), &answered.to_string(), "sb").expect("test runs");
        assert_eq!(report["matched"], json!([]));
    }

    #[test]
    fn f4_an_admin_ping_runs_without_a_shell_and_answers_that_admin() {
        let actions = only_match(&sample("f4-admin-ping.json"), "admin-ping");
        let ping = &actions[0]["rendered"];
        assert_eq!(ping["kind"], "exec");
        assert_eq!(ping["program"], "/usr/bin/ping");
        assert_eq!(ping["args"], json!(["-c", "3", "-q", "-W", "2", "127.0.0.1"]));
        assert_eq!(ping["env"], json!({"LANG": "C"}));
        let answer = &actions[1]["rendered"];
        assert_eq!(answer["subject"], "sb.push.user.admin1");
        assert_eq!(answer["data"]["data"]["connection"], "c-7f3a");
        assert_eq!(answer["data"]["data"]["exitCode"], 0);
        // Not an admin, or a host that would be an option or shell syntax: no match.
        for (admin, host) in [
            (false, "127.0.0.1"),
            (true, "-f"),
            (true, "1.1.1.1; id"),
            (true, "$(id)"),
        ] {
            let event = json!({
                "subject": "sb.evt.push.inbound.u.admin-ping",
                "type": "switchboard.push.inbound.v1",
                "data": { "user": "u", "admin": admin, "data": { "host": host } },
            });
            let report = test(&examples(), &event.to_string(), "sb").expect("test runs");
            assert_eq!(report["matched"], json!([]), "{admin} {host}");
        }
    }

    #[test]
    fn f7_a_site_event_becomes_an_im() {
        let actions = only_match(&sample("f7-site-notify.json"), "site-to-im");
        let send = &actions[0]["rendered"];
        assert_eq!(send["subject"], "sb.cmd.im.main.send");
        assert_eq!(send["data"]["to"], "bob@example.org");
        assert_eq!(send["data"]["text"], "[shop] Order 1234 has shipped");
    }
}
