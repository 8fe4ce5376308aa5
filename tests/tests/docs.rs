//! The docs name what the code does: every subject family in the bus crate's
//! `CATALOGUE` is listed in `docs/subjects.md` with its payload.

use std::path::PathBuf;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

#[test]
fn every_subject_in_code_is_in_docs_subjects_md() {
    // Markdown tables escape `|` inside cells as `\|`.
    let doc = repo_file("docs/subjects.md").replace("\\|", "|");
    let rows: Vec<&str> = doc.lines().filter(|line| line.starts_with('|')).collect();
    let missing: Vec<String> = switchboard_bus::CATALOGUE
        .iter()
        .filter(|info| {
            let pattern = format!("`{}`", info.pattern);
            let first_payload = info.payload.split(" / ").next().unwrap_or(info.payload);
            !rows
                .iter()
                .any(|row| row.contains(&pattern) && row.contains(first_payload))
        })
        .map(|info| format!("{} ({})", info.pattern, info.payload))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/subjects.md lacks a row naming these subjects with their payloads: {missing:#?}"
    );
    assert!(switchboard_bus::CATALOGUE.len() >= 20, "the catalogue lost entries");
}

#[test]
fn readme_names_the_two_commands_ci_runs() {
    let readme = repo_file("README.md");
    let ci = repo_file(".ci/run");
    assert!(
        readme.contains("scripts/up.sh"),
        "README must give the one command that runs the stack"
    );
    assert!(
        readme.contains("scripts/test.sh"),
        "README must give the one command that runs every test"
    );
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must run the README's test command"
    );
}
