//! Sessions to Asterisk PBXs over AMI: every event onto the bus, derived call events, actions from the bus and gRPC.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`].

pub mod parser;
pub mod sim;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchboard_bus::NatsConfig;
use switchboard_runtime::{Base, Endpoints, GrpcConfig, HttpConfig, LogConfig, RuntimeError, ServiceConfig, Validate};
use tokio_util::sync::CancellationToken;

/// The service's name: binary, NATS client name, CloudEvents source.
pub const SERVICE: &str = "ami-bridge";

/// The `ami-bridge` config: `--config ami-bridge.toml`, overridden by `SB_*` variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Health, metrics (and the service's HTTP API) listen here; default port 8081.
    pub http: HttpConfig,
    /// gRPC listens here; default port 9081.
    pub grpc: GrpcConfig,
    /// Log format and level.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8081),
            grpc: GrpcConfig::on_port(9081),
            log: LogConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// What stops the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up or serving failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// A started service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct App {
    base: Base,
    shutdown: CancellationToken,
}

impl App {
    /// Binds the ports, connects to NATS and provisions what the service owns.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        Ok(Self { base, shutdown })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.base.listeners.http_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.base.listeners.grpc_addr()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) -> Result<(), Error> {
        self.base.log_ready(SERVICE);
        let Base {
            listeners,
            bus: _,
            health,
        } = self.base;
        let endpoints = Endpoints {
            router: axum::Router::new(),
            grpc: tonic::service::Routes::default(),
            grpc_services: Vec::new(),
            health,
        };
        listeners.serve(endpoints, self.shutdown).await?;
        Ok(())
    }
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
