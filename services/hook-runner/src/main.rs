//! The `hook-runner` binary: serves by default; `check DIR` validates rules and
//! `test DIR EVENT.json` shows which rules an event matches and their rendered
//! actions, without running them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_runtime::ServiceArgs;

#[derive(Debug, Parser)]
#[command(name = "hook-runner", version, about = "Rules that turn events into actions")]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: Option<Offline>,
}

#[derive(Debug, Subcommand)]
enum Offline {
    /// Validate every rules file of DIR (errors name file, line and field).
    Check {
        /// The rules directory.
        dir: PathBuf,
    },
    /// Show which rules of DIR match the event in EVENT.json and their rendered actions.
    Test {
        /// The rules directory.
        dir: PathBuf,
        /// A JSON file: {"subject": "...", "type": "...", "data": {...}}.
        event: PathBuf,
        /// The subject prefix.
        #[arg(long, default_value = "sb")]
        prefix: String,
    },
}

fn print_errors(errors: &[hook_runner::Error]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Offline::Check { dir }) => match hook_runner::offline::check(&dir) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(errors) => print_errors(&errors),
        },
        Some(Offline::Test { dir, event, prefix }) => {
            let text = match std::fs::read_to_string(&event) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("cannot read {}: {e}", event.display());
                    return ExitCode::from(1);
                }
            };
            match hook_runner::offline::test(&dir, &text, &prefix) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(errors) => print_errors(&errors),
            }
        }
        None => switchboard_runtime::service_main(
            hook_runner::SERVICE,
            env!("CARGO_PKG_VERSION"),
            cli.service,
            |config: hook_runner::Config, shutdown| async move { Ok(hook_runner::run(config, shutdown).await?) },
        ),
    }
}
