//! XMPP and IRC accounts on the bus: inbound messages and presence as events, sending from the bus, gRPC and a FIFO for scripts.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`]. See `docs/im-bridge.md` for the config and the
//! choices made.

pub mod account;
pub mod config;
mod error;
pub mod grpc;
pub mod irc;
pub mod script;
pub mod session;
pub mod tls;
pub mod xmpp;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchboard_bus::NatsConfig;
use switchboard_runtime::{Base, Endpoints, GrpcConfig, HttpConfig, LogConfig, ServiceConfig, Validate};
use tokio_util::sync::CancellationToken;

pub use account::Accounts;
pub use config::{
    AccountConfig, GrpcAuthConfig, IrcConfig, OutboundConfig, ProtocolConfig, RoomConfig, ScriptConfig, SessionConfig,
    WhileDown, XmppConfig, XmppTls,
};
pub use error::Error;

/// The service's name: binary, NATS client name, CloudEvents source.
pub const SERVICE: &str = "im-bridge";

/// The `im-bridge` config: `--config im-bridge.toml`, overridden by `SB_*` variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Health, metrics (and the service's HTTP API) listen here; default port 8082.
    pub http: HttpConfig,
    /// gRPC listens here; default port 9082.
    pub grpc: GrpcConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// `[[account]]`: the IM accounts.
    #[serde(rename = "account")]
    pub accounts: Vec<AccountConfig>,
    /// `[outbound]`: text limits and sends while an account is down.
    pub outbound: OutboundConfig,
    /// `[session]`: lease and reconnect.
    pub session: SessionConfig,
    /// `[script]`: FIFO and Unix socket.
    pub script: ScriptConfig,
    /// `[grpc_auth]`: the bearer token for ImService.
    pub grpc_auth: GrpcAuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8082),
            grpc: GrpcConfig::on_port(9082),
            log: LogConfig::default(),
            accounts: Vec::new(),
            outbound: OutboundConfig::default(),
            session: SessionConfig::default(),
            script: ScriptConfig::default(),
            grpc_auth: GrpcAuthConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        config::validate_accounts(&self.accounts)?;
        if self.outbound.queue_max == 0 && self.outbound.while_down == WhileDown::Queue {
            return Err("outbound.queue_max must be at least 1 with while_down = \"queue\"".to_owned());
        }
        if self.outbound.max_text_bytes == 0 {
            return Err("outbound.max_text_bytes must be at least 1".to_owned());
        }
        if self.session.reconnect_min.is_zero() || self.session.reconnect_max < self.session.reconnect_min {
            return Err("session.reconnect_min must be > 0 and <= session.reconnect_max".to_owned());
        }
        if self.session.lease_ttl < std::time::Duration::from_secs(1) {
            return Err("session.lease_ttl must be at least 1s".to_owned());
        }
        if self.grpc_auth.token.as_ref().is_some_and(|t| t.is_empty()) {
            return Err("grpc_auth.token must not be empty when set".to_owned());
        }
        Ok(())
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
    config: Config,
    accounts: Accounts,
    lease_bucket: Option<async_nats::jetstream::kv::Store>,
    shutdown: CancellationToken,
}

impl App {
    /// Binds the ports, connects to NATS and provisions what the service owns
    /// (the `SB_IM_LEASES` bucket when leases are on).
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        config
            .validate()
            .map_err(|message| switchboard_runtime::RuntimeError::Config { file: None, message })?;
        switchboard_runtime::install_crypto_provider();
        // The recorder must exist before the first counter is touched.
        switchboard_runtime::health::prometheus();
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        let lease_bucket = if config.session.lease && !config.accounts.is_empty() {
            Some(base.bus.bucket("IM_LEASES", config.session.lease_ttl, 1).await?)
        } else {
            None
        };
        let accounts = Accounts::new(
            &config.accounts,
            base.bus.clone(),
            config.outbound.clone(),
            config.session.clone(),
        );
        Ok(Self {
            base,
            config,
            accounts,
            lease_bucket,
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

    /// The accounts (state, sending), for embedding and tests.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Connects the accounts, opens the FIFO and socket, and serves until the
    /// shutdown token is cancelled; then closes every session.
    pub async fn run(self) -> Result<(), Error> {
        let Self {
            base,
            config,
            accounts,
            lease_bucket,
            shutdown,
        } = self;
        let mut scripts = Vec::new();
        if let Some(path) = &config.script.fifo {
            scripts.push(script::spawn_fifo(path.clone(), accounts.clone(), shutdown.clone())?);
        }
        if let Some(path) = &config.script.socket {
            scripts.push(script::spawn_socket(path.clone(), accounts.clone(), shutdown.clone())?);
        }
        let tasks = accounts.spawn(lease_bucket, shutdown.clone());
        let readiness = accounts.clone();
        base.health.add("accounts", move || readiness.readiness());
        base.log_ready(SERVICE);
        let Base {
            listeners,
            bus: _,
            health,
        } = base;
        let endpoints = Endpoints {
            router: axum::Router::new(),
            grpc: tonic::service::Routes::new(grpc::server(
                accounts.clone(),
                config.grpc_auth.token.clone(),
                shutdown.clone(),
            )),
            grpc_services: vec![switchboard_proto::service_names::IM],
            health,
        };
        let served = listeners.serve(endpoints, shutdown.clone()).await;
        shutdown.cancel();
        tasks.wait().await;
        for task in scripts {
            let _ = task.await;
        }
        served?;
        Ok(())
    }
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
