//! The `hook-runner` binary refuses bad config with a clear error naming the file and the
//! key (exit code 2), and fails clearly when NATS is unreachable.

#[test]
fn bad_config_and_unreachable_nats_are_clear_errors() {
    switchboard_test_support::binary::assert_config_handling(env!("CARGO_BIN_EXE_hook-runner"));
}

/// `hook-runner check DIR` and `hook-runner test DIR EVENT.json` work without NATS;
/// an invalid file exits 1 with file:line: field.
#[test]
fn check_and_test_subcommands() {
    let exe = env!("CARGO_BIN_EXE_hook-runner");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rules");
    let output = std::process::Command::new(exe)
        .args(["check", examples])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("5 rule(s) ok"));

    let event = format!("{examples}/events/f1-call-ringing.json");
    let output = std::process::Command::new(exe)
        .args(["test", examples, &event])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["matched"][0]["rule"], "screen-pop");
    assert_eq!(
        report["matched"][0]["actions"][0]["rendered"]["subject"],
        "sb.push.user.101"
    );

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "rules:\n  - name: a\n    on: sb.evt.x\n    actions:\n      - exec: { program: /bin/true, shell: true }\n",
    )
    .expect("write");
    let output = std::process::Command::new(exe)
        .args(["check", &dir.path().display().to_string()])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml:5: rules[0].actions[0].exec: unknown field `shell`"),
        "{stderr}"
    );
}

/// The deployment files set `SB_RULES__DIR`: it must reach `rules.dir`.
#[test]
fn sb_rules_dir_sets_the_rules_directory() {
    let exe = env!("CARGO_BIN_EXE_hook-runner");
    let output = std::process::Command::new(exe)
        .arg("--check-config")
        .env("SB_RULES__DIR", "/etc/switchboard/rules")
        .env("SB_HOOKS__MAX_DEPTH", "7")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("\"/etc/switchboard/rules\""), "{printed}");
    assert!(printed.contains("max_depth: 7"), "{printed}");
}
