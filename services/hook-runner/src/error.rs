//! The one error type of the crate.

use std::path::PathBuf;

use switchboard_runtime::RuntimeError;

/// Everything that can go wrong in hook-runner, each naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up or serving failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] switchboard_bus::BusError),
    /// A rules file is invalid: names the file, the line (when known) and the field.
    #[error("{}{}: {field}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Rule {
        /// The file.
        file: PathBuf,
        /// The 1-based line, when it could be found.
        line: Option<usize>,
        /// The field path, e.g. `rules[0].actions[1].exec.args[2]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The rules could not be loaded at start (every error, one per line).
    #[error("invalid rules:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<Error>),
    /// The rules directory or a file in it cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A template failed to render (strict undefined, fuel exhausted, bad filter...).
    #[error("template {field}: {message}")]
    Render {
        /// Which field.
        field: String,
        /// What minijinja said.
        message: String,
    },
    /// A `when` condition failed to evaluate or did not give a bool.
    #[error("when: {0}")]
    Condition(String),
    /// An event file or payload is not what the command expects.
    #[error("event: {0}")]
    Event(String),
    /// An action failed.
    #[error("{0}")]
    Action(String),
    /// A JetStream consumer could not be created or read.
    #[error("consumer {name}: {reason}")]
    Consumer {
        /// The consumer's name.
        name: String,
        /// What the server said.
        reason: String,
    },
}
