//! Rules that turn any event into actions (exec, HTTP, NATS publish/request) and publish the results as events.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`].

pub mod actions;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod offline;
pub mod pattern;
pub mod render;
pub mod rules;
pub mod template;
pub mod trigger;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_bus::NatsConfig;
use switchboard_runtime::{Base, Endpoints, GrpcConfig, HttpConfig, LogConfig, ServiceConfig, Validate};

pub use engine::{Engine, HooksConfig, RulesConfig};
pub use error::Error;
use switchboard_proto::hook::v1::hook_service_server::HookServiceServer;
use tokio_util::sync::CancellationToken;

/// The service's name: binary, NATS client name, CloudEvents source.
pub const SERVICE: &str = "hook-runner";

/// The `hook-runner` config: `--config hook-runner.toml`, overridden by `SB_*` variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Health, metrics (and the service's HTTP API) listen here; default port 8085.
    pub http: HttpConfig,
    /// gRPC listens here; default port 9085.
    pub grpc: GrpcConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// Where the rules are and how they are reloaded.
    pub rules: engine::RulesConfig,
    /// The engine and its API.
    pub hooks: engine::HooksConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8085),
            grpc: GrpcConfig::on_port(9085),
            log: LogConfig::default(),
            rules: engine::RulesConfig::default(),
            hooks: engine::HooksConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        self.rules.validate()?;
        self.hooks.validate()
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// A started service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct App {
    base: Base,
    engine: Arc<Engine>,
    hooks: grpc::Hooks,
    shutdown: CancellationToken,
}

impl App {
    /// Binds the ports, connects to NATS and provisions what the service owns.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        // Install the recorder now, so runs before the first scrape are counted.
        switchboard_runtime::health::prometheus();
        let engine = Engine::new(
            base.bus.clone(),
            config.rules.clone(),
            config.hooks.clone(),
            shutdown.clone(),
        )
        .map_err(Error::Rules)?;
        let hooks = grpc::Hooks::new(engine.clone(), config.hooks.api_token.clone());
        Ok(Self {
            base,
            engine,
            hooks,
            shutdown,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.base.listeners.http_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.base.listeners.grpc_addr()
    }

    /// The engine (rules, stats, runs).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves until the shutdown token is cancelled, then waits for runs in flight.
    pub async fn run(self) -> Result<(), Error> {
        self.engine.start().await?;
        self.base.log_ready(SERVICE);
        let Base {
            listeners,
            bus: _,
            health,
        } = self.base;
        let endpoints = Endpoints {
            router: axum::Router::new(),
            grpc: tonic::service::Routes::new(HookServiceServer::new(self.hooks)),
            grpc_services: vec![switchboard_proto::service_names::HOOK],
            health,
        };
        listeners.serve(endpoints, self.shutdown).await?;
        self.engine.stopped().await;
        Ok(())
    }
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
