//! `scripts/bench_summary.py` (the summary bench.sh writes at the top of its section of
//! BENCHMARKS.md) reads the harnesses' tables as they print them: here the outputs of
//! the run of 2026-11-30 (`tests/fixtures/bench-run/`, one file per harness with a
//! target; im-bridge's has none). A harness that printed nothing is "not measured".

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn summary_of(run: &std::path::Path) -> String {
    let output = Command::new("python3")
        .arg(root().join("scripts/bench_summary.py"))
        .arg(run)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "bench_summary.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn row<'a>(summary: &'a str, figure: &str) -> &'a str {
    summary
        .lines()
        .find(|line| line.starts_with(&format!("| {figure} |")))
        .unwrap_or_else(|| panic!("no row for {figure:?} in\n{summary}"))
}

#[test]
fn every_figure_is_set_against_its_target_and_its_peer() {
    let summary = summary_of(&root().join("tests/fixtures/bench-run"));
    assert_eq!(
        row(&summary, "AMI parser, one core, msgs/s"),
        "| AMI parser, one core, msgs/s | 2,904,711 | ≥ 1,000,000 |  |  | met |"
    );
    assert_eq!(
        row(&summary, "AMI end to end, p99 ms at 10,000 events/s"),
        "| AMI end to end, p99 ms at 10,000 events/s | 26.38 | ≤ 5 |  |  | **not met** |"
    );
    assert!(
        row(
            &summary,
            "AMI events/s against the faster peer (panoramisk, node asterisk-manager; they only receive)"
        )
        .ends_with("| 56,433 | ≥ 10× the peer | 74,131 | 0.76× | **not met** |")
    );
    assert_eq!(
        row(&summary, "ws-push RSS per idle connection, KiB"),
        "| ws-push RSS per idle connection, KiB | 13.09 | ≤ 4 | 5.32 | 2.46× | **not met** |"
    );
    // The peer's broadcast table follows its idle table with no blank line between.
    assert_eq!(
        row(
            &summary,
            "ws-push deliveries per server CPU-second at 300,000/s offered"
        ),
        "| ws-push deliveries per server CPU-second at 300,000/s offered | 211,566 | ≥ 3× the peer | 121,408 | 1.74× | **not met** |"
    );
    assert_eq!(
        row(&summary, "ws-push p99 ms publish -> receive at 20,000/s offered"),
        "| ws-push p99 ms publish -> receive at 20,000/s offered | 129.20 | ≤ half the peer | 126.70 | 1.02× | **not met** |"
    );
    assert_eq!(
        row(&summary, "chat-store postgres, batched send msgs/s"),
        "| chat-store postgres, batched send msgs/s | 20,163 | ≥ 10,000 |  |  | met |"
    );
    assert_eq!(
        row(&summary, "hook-runner event -> publish action end to end, events/s"),
        "| hook-runner event -> publish action end to end, events/s | 21,894 | ≥ 50,000 |  |  | **not met** |"
    );
    assert_eq!(
        row(&summary, "F1 AMI byte in -> browser frame out, p99 ms at 1,000 calls/s"),
        "| F1 AMI byte in -> browser frame out, p99 ms at 1,000 calls/s | 3.74 | ≤ 20 |  |  | met |"
    );
}

#[test]
fn a_harness_that_printed_nothing_is_not_measured() {
    let run = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(root().join("tests/fixtures/bench-run")).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|name| name != "hook-runner.md") {
            std::fs::copy(&path, run.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let summary = summary_of(run.path());
    assert_eq!(
        row(&summary, "hook-runner exec action p50 ms"),
        "| hook-runner exec action p50 ms | not measured | ≤ 3 |  |  | not measured |"
    );
    assert!(row(&summary, "AMI parser, one core, msgs/s").ends_with("| met |"));
}
