//! Layered configuration: defaults, then a TOML file (`--config`), then `SB_`
//! environment variables (`SB_NATS__URL` sets `nats.url`). Errors name the key and
//! where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// The environment prefix of every setting.
pub const ENV_PREFIX: &str = "SB_";

/// Where a service listens for HTTP (health, metrics, its own API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`; port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

/// Where a service listens for gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// `host:port`; port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,ami_bridge=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info,async_nats=warn".to_owned(),
        }
    }
}

impl HttpConfig {
    /// The default for a service: `127.0.0.1:<port>`.
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::on_port(0)
    }
}

impl GrpcConfig {
    /// The default for a service: `127.0.0.1:<port>`.
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// A service config that can check itself after loading.
pub trait Validate {
    /// Checks values that parse but make no sense; the error names the key.
    fn validate(&self) -> Result<(), String>;
}

/// Loads `T`: its `Default`, then `file` (which must exist when given), then `SB_*`
/// environment variables. Unknown top-level keys in the file are errors (typos);
/// unknown `SB_*` variables are ignored, since several services share one
/// environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, RuntimeError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Config {
            file: Some(path.to_path_buf()),
            message: format!("cannot read: {e}"),
        })?;
        check_top_level_keys::<T>(path, &text)?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    let config: T = figment.extract().map_err(|error| RuntimeError::Config {
        file: file.map(Path::to_path_buf),
        message: describe(&error),
    })?;
    config.validate().map_err(|message| RuntimeError::Config {
        file: file.map(Path::to_path_buf),
        message,
    })?;
    Ok(config)
}

fn check_top_level_keys<T: Serialize + Default>(path: &Path, text: &str) -> Result<(), RuntimeError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| RuntimeError::Config {
        file: Some(path.to_path_buf()),
        message: e.to_string(),
    })?;
    let known = serde_json::to_value(T::default()).unwrap_or_default();
    let known = known.as_object().cloned().unwrap_or_default();
    for key in table.keys() {
        if !known.contains_key(key) {
            let mut names: Vec<_> = known.keys().cloned().collect();
            names.sort();
            return Err(RuntimeError::Config {
                file: Some(path.to_path_buf()),
                message: format!("unknown key `{key}`; expected one of: {}", names.join(", ")),
            });
        }
    }
    Ok(())
}

fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {} {source})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The command line every service binary takes.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServiceArgs {
    /// A TOML config file; `SB_*` environment variables override it.
    #[arg(long, short, env = "SB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Load and validate the config, print it (secrets hidden), and exit.
    #[arg(long)]
    pub check_config: bool,
}
