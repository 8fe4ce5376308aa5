//! `switchboard up` runs the whole stack: its own nats-server and the five service
//! binaries (built next to `switchboard` by `cargo test --workspace`), all ready;
//! `pub`, `tail` and `streams` work against it; SIGINT stops everything cleanly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use switchboard_test_support::free_port;

const SERVICES: [&str; 5] = ["ami-bridge", "im-bridge", "ws-push", "chat-store", "hook-runner"];

fn switchboard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

#[test]
fn up_starts_everything_and_stops_cleanly() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_switchboard")).parent().expect("bin dir");
    for service in SERVICES {
        assert!(
            bin_dir.join(service).is_file(),
            "{service} is not built in {}; run the tests with --workspace",
            bin_dir.display()
        );
    }
    let work = tempfile::tempdir().expect("temp dir");
    let config_dir = work.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    for service in SERVICES {
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n[grpc]\nlisten = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        );
        std::fs::write(config_dir.join(format!("{service}.toml")), text).expect("write config");
    }
    let nats_port = free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    let mut up = switchboard()
        .args([
            "up",
            "--nats-port",
            &nats_port.to_string(),
            "--ready-timeout-secs",
            "60",
        ])
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--config-dir")
        .arg(&config_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard up");
    let (lines_tx, lines_rx) = mpsc::channel();
    let stderr = up.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let all_ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("all 5 services ready");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !all_ready {
        let _ = up.kill();
    }
    assert!(
        all_ready,
        "not all services became ready; up said:\n{}",
        seen.join("\n")
    );
    for service in SERVICES {
        assert!(
            seen.iter().any(|l| l.contains(&format!("{service} ready"))),
            "{service} not reported ready"
        );
    }

    // tail sees what pub publishes, with its CloudEvents attributes.
    let tail = switchboard()
        .args([
            "tail",
            "sb.evt.test.>",
            "--limit",
            "1",
            "--json",
            "--nats-url",
            &nats_url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    std::thread::sleep(Duration::from_millis(500));
    let published = switchboard()
        .args([
            "pub",
            "sb.evt.test.cli.hello",
            r#"{"hello":"world"}"#,
            "--type",
            "switchboard.test.v1",
        ])
        .args(["--nats-url", &nats_url])
        .output()
        .expect("pub");
    assert!(
        published.status.success(),
        "pub failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let tailed = tail.wait_with_output().expect("tail output");
    let out = String::from_utf8_lossy(&tailed.stdout);
    assert!(out.contains("sb.evt.test.cli.hello"), "tail printed: {out}");
    assert!(out.contains("switchboard.test.v1"), "tail should show ce-type: {out}");
    assert!(out.contains("world"), "tail should show the data: {out}");

    let streams = switchboard()
        .args(["streams", "--nats-url", &nats_url])
        .output()
        .expect("streams");
    let listing = String::from_utf8_lossy(&streams.stdout);
    assert!(
        listing.contains("SB_EVENTS") && listing.contains("SB_PUSH"),
        "streams printed: {listing}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(up.id()).expect("pid fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let mut rest = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
        rest.push(line);
    }
    let status = up.wait().expect("wait up");
    assert!(status.success(), "up exited with {status}; said:\n{}", rest.join("\n"));
    for service in SERVICES {
        assert!(
            rest.iter().any(|l| l.contains(&format!("{service} stopped"))),
            "{service} not stopped:\n{}",
            rest.join("\n")
        );
    }
    assert!(
        rest.iter().any(|l| l.contains("nats-server stopped")),
        "nats-server not stopped"
    );
}
