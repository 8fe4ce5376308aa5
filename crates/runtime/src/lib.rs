//! What every Switchboard service shares at run time:
//!
//! - [`config`]: defaults, then a TOML file, then `SB_*` env; validated at start.
//! - [`telemetry`]: `tracing` logs (pretty or JSON) and OTLP export.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`server`]: binding and serving the HTTP and gRPC ports, with gRPC health and
//!   reflection.
//! - [`shutdown_signal`] and [`service_main`]: SIGTERM/SIGINT and the thin `main`.

pub mod config;
pub mod health;
pub mod server;
pub mod socket;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use config::{GrpcConfig, HttpConfig, LogConfig, LogFormat, ServiceArgs, Validate};
pub use health::Health;
pub use server::{Endpoints, Listeners};
pub use socket::{Peer, Socket, SocketIo};

/// What can stop a service from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The config is missing, malformed or invalid.
    #[error("config error{}: {message}", .file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default())]
    Config {
        /// The file, when the error is in one.
        file: Option<PathBuf>,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The config key.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(String),
    /// Telemetry could not start.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// NATS could not be reached or provisioned.
    #[error(transparent)]
    Bus(#[from] switchboard_bus::BusError),
}

/// What every service has once started: its bound ports, its bus connection (with
/// `SB_EVENTS` and `SB_PUSH` provisioned) and its readiness checks (`nats` first).
#[derive(Debug)]
pub struct Base {
    /// The bound HTTP and gRPC ports.
    pub listeners: Listeners,
    /// The bus connection.
    pub bus: switchboard_bus::Bus,
    /// Readiness checks; services add their own.
    pub health: Health,
}

impl Base {
    /// Binds the ports, connects to NATS as `service`, provisions the shared streams
    /// and adds the `nats` readiness check.
    pub async fn start(
        service: &str,
        nats: &switchboard_bus::NatsConfig,
        http: &HttpConfig,
        grpc: &GrpcConfig,
    ) -> Result<Self, RuntimeError> {
        let listeners = Listeners::bind(http, grpc).await?;
        let bus = switchboard_bus::Bus::connect(nats, service).await?;
        bus.provision_streams().await?;
        let health = Health::default();
        let probe = bus.clone();
        health.add("nats", move || {
            if probe.is_connected() {
                Ok(())
            } else {
                Err("not connected to NATS".to_owned())
            }
        });
        Ok(Self { listeners, bus, health })
    }

    /// Logs the one "ready" line with the bound addresses.
    pub fn log_ready(&self, service: &str) {
        tracing::info!(
            service,
            http = %self.listeners.http_addr(),
            grpc = %self.listeners.grpc_addr(),
            nats = %self.bus.config().url,
            "ready"
        );
    }
}

/// A service config: loadable, checkable, with a `[log]` section.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Validate + std::fmt::Debug {
    /// The `[log]` section.
    fn log(&self) -> &LogConfig;
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Installs rustls' aws-lc-rs provider (both aws-lc-rs and ring end up compiled,
/// so rustls cannot pick one by itself). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The whole of a service's `main`: parse `--config`/`--check-config`, load and
/// validate the config, start telemetry, run until SIGTERM/SIGINT, and turn any
/// error into one line on stderr and a non-zero exit code.
pub fn service_main<C, F, Fut>(service: &'static str, version: &'static str, args: ServiceArgs, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{service}: {error}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{service}: config ok\n{config:#?}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(service, version, config.log()) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("{service}: {error}");
                return ExitCode::FAILURE;
            }
        };
        install_crypto_provider();
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; finishing work in flight");
            on_signal.cancel();
        });
        match run(config, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "{service} failed");
                eprintln!("{service}: error: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}
