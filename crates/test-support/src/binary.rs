//! Service binaries in tests: [`workspace_binary`] finds (building if needed) the
//! binary of any workspace package, for tests that run services as separate
//! processes; [`assert_config_handling`] checks what every service binary must pass:
//! bad config is refused with one clear line naming the file and the key, and exit
//! code 2; an unreachable NATS is a clear error and a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn run(exe: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    // In a temp dir: a service that gets as far as opening its local store writes there.
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(exe);
    command.args(args).current_dir(cwd.path()).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .output()
        .unwrap_or_else(|error| panic!("running {exe}: {error}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_refused(exe: &str, config: &Path, must_name: &[&str]) {
    let output = run(exe, &["--config", &config.display().to_string()], &[]);
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{exe} --config {}: want exit 2, stderr: {text}",
        config.display()
    );
    for needle in must_name {
        assert!(
            text.contains(needle),
            "{exe}: the error should name {needle:?}; it said: {text}"
        );
    }
    assert!(!text.contains("panicked"), "{exe} panicked: {text}");
}

/// Runs the service binary `exe` (from `env!("CARGO_BIN_EXE_<name>")`) against a
/// missing file, malformed TOML, an unknown key, a bad value and a valid file with
/// `--check-config`, and with an unreachable NATS.
pub fn assert_config_handling(exe: &str) {
    let dir = tempfile::tempdir().expect("temp dir");

    let missing = dir.path().join("missing.toml");
    assert_refused(exe, &missing, &["missing.toml"]);

    let malformed = dir.path().join("malformed.toml");
    std::fs::write(&malformed, "[nats]\nurl = \"nats://x\n").expect("write");
    assert_refused(exe, &malformed, &["malformed.toml", "line 2"]);

    let unknown_section = dir.path().join("unknown-section.toml");
    std::fs::write(&unknown_section, "bogus_section = 1\n").expect("write");
    assert_refused(exe, &unknown_section, &["unknown-section.toml", "bogus_section"]);

    let unknown_field = dir.path().join("unknown-field.toml");
    std::fs::write(&unknown_field, "[nats]\nbogus_field = 1\n").expect("write");
    assert_refused(exe, &unknown_field, &["unknown-field.toml", "nats.bogus_field"]);

    let bad_value = dir.path().join("bad-value.toml");
    std::fs::write(&bad_value, "[http]\nlisten = \"not an address\"\n").expect("write");
    assert_refused(exe, &bad_value, &["bad-value.toml", "http.listen"]);

    let valid = dir.path().join("valid.toml");
    std::fs::write(&valid, "[nats]\nurl = \"nats://127.0.0.1:4999\"\n").expect("write");
    let output = run(exe, &["--config", &valid.display().to_string(), "--check-config"], &[]);
    assert!(
        output.status.success(),
        "{exe} --check-config on a valid file failed: {}",
        stderr(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nats://127.0.0.1:4999"),
        "--check-config should print the resolved config"
    );

    // The env layer overrides the file, and an unreachable NATS is one clear line.
    let dead = format!("nats://127.0.0.1:{}", crate::free_port());
    let output = run(
        exe,
        &["--config", &valid.display().to_string()],
        &[
            ("SB_NATS__URL", dead.as_str()),
            ("SB_NATS__CONNECT_TIMEOUT", "1s"),
            ("SB_HTTP__LISTEN", "127.0.0.1:0"),
            ("SB_GRPC__LISTEN", "127.0.0.1:0"),
            ("SB_LOG__FORMAT", "json"),
        ],
    );
    let text = format!("{}{}", stderr(&output), String::from_utf8_lossy(&output.stdout));
    assert!(!output.status.success(), "{exe} should fail without NATS");
    assert!(text.contains(&dead), "the NATS error should name {dead}: {text}");
    assert!(!text.contains("panicked"), "{exe} panicked: {text}");
}

/// The binary `name` of the workspace package of the same name, for tests that
/// run services as separate processes (`env!("CARGO_BIN_EXE_..")` reaches only a
/// package's own binaries). `cargo nextest run --workspace` (scripts/test.sh) builds
/// every binary before it runs any test; run such a test with `--workspace` and a
/// filter. Building from inside a test is no answer: a build with another package
/// selection unifies features differently and rebuilds half the workspace. A binary
/// older than a source file it is built from (its service, `crates/bus`,
/// `crates/runtime`, `proto`) is refused as stale.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    // <target>/<profile>/deps/<test binary>
    let test_exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let binary = profile_dir.join(name);
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it with `cargo nextest run --workspace` (or cargo build --workspace --bins)",
                binary.display()
            )
        });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let newest = newest_source(&workspace, name);
    assert!(
        newest.as_ref().is_none_or(|(time, _)| *time <= built),
        "{} is older than {}: rebuild with `cargo nextest run --workspace`",
        binary.display(),
        newest.map(|(_, path)| path.display().to_string()).unwrap_or_default()
    );
    binary
}

/// The most recently modified `.rs` or `.proto` file that service `name`'s
/// binary is built from.
fn newest_source(workspace: &Path, name: &str) -> Option<(std::time::SystemTime, std::path::PathBuf)> {
    fn walk(dir: &Path, newest: &mut Option<(std::time::SystemTime, std::path::PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "proto")
                && let Ok(time) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(t, _)| time > *t)
            {
                *newest = Some((time, path));
            }
        }
    }
    let mut newest = None;
    let service = format!("services/{name}/src");
    for top in [service.as_str(), "crates/bus/src", "crates/runtime/src", "proto"] {
        walk(&workspace.join(top), &mut newest);
    }
    newest
}
