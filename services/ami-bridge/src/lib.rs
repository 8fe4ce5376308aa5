//! Sessions to Asterisk PBXs over AMI: every event onto the bus, derived call events, actions from the bus and gRPC.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`].

pub mod calls;
pub mod config;
pub mod grpc;
pub mod parser;
pub mod session;
pub mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_bus::{Bus, Command, NatsConfig, error_body};
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::common::v1::ErrorCode;
use tokio::sync::{broadcast, mpsc};

pub use config::{AmiSettings, AuthMode, PbxConfig};
use session::{ActionError, SessionHandle};
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
    /// Settings shared by every PBX session.
    pub ami: AmiSettings,
    /// The PBXs: `[[pbx]]`.
    pub pbx: Vec<PbxConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8081),
            grpc: GrpcConfig::on_port(9081),
            log: LogConfig::default(),
            ami: AmiSettings::default(),
            pbx: Vec::new(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        self.ami.validate()?;
        config::validate_pbx(&self.pbx)
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
    /// Serving the action command failed.
    #[error(transparent)]
    Bus(#[from] switchboard_bus::BusError),
}

/// A started service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct App {
    base: Base,
    shutdown: CancellationToken,
    config: Config,
    sessions: Arc<BTreeMap<String, SessionHandle>>,
    calls: BTreeMap<String, mpsc::Receiver<session::ActionCall>>,
    live: broadcast::Sender<Arc<pb::EventsItem>>,
}

impl App {
    /// Binds the ports, connects to NATS and provisions what the service owns.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        let settings = Arc::new(config.ami.clone());
        let mut sessions = BTreeMap::new();
        let mut calls = BTreeMap::new();
        for pbx in &config.pbx {
            let (handle, rx) = session::channel(pbx, settings.clone());
            sessions.insert(pbx.id.clone(), handle);
            calls.insert(pbx.id.clone(), rx);
        }
        let (live, _) = broadcast::channel(16_384);
        Ok(Self {
            base,
            shutdown,
            config,
            sessions: Arc::new(sessions),
            calls,
            live,
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

    /// The sessions by PBX id (in-process callers and tests).
    pub fn sessions(&self) -> Arc<BTreeMap<String, SessionHandle>> {
        self.sessions.clone()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(mut self) -> Result<(), Error> {
        self.base.log_ready(SERVICE);
        let settings = Arc::new(self.config.ami.clone());
        let (outbound, outbound_rx) = mpsc::channel(settings.publish_window.max(1024));
        let publisher = tokio::spawn(session::publisher(
            self.base.bus.clone(),
            outbound_rx,
            settings.publish_window,
            self.live.clone(),
        ));
        let ctx = session::SessionContext { settings, outbound };
        let mut tasks = Vec::new();
        for pbx in &self.config.pbx {
            let (Some(rx), Some(handle)) = (self.calls.remove(&pbx.id), self.sessions.get(&pbx.id)) else {
                continue;
            };
            tasks.push(session::spawn(
                pbx.clone(),
                ctx.clone(),
                handle.status_cell(),
                rx,
                self.shutdown.clone(),
            ));
            tasks.push(serve_actions(&self.base.bus, handle.clone(), self.shutdown.clone()).await?);
        }
        drop(ctx);
        let Base {
            listeners,
            bus: _,
            health,
        } = self.base;
        let service = grpc::Service::new(
            self.sessions.clone(),
            self.live.clone(),
            self.config.ami.api_token.clone(),
            self.shutdown.clone(),
        );
        let endpoints = Endpoints {
            router: axum::Router::new(),
            grpc: tonic::service::Routes::new(pb::ami_service_server::AmiServiceServer::new(service)),
            grpc_services: vec![switchboard_proto::service_names::AMI],
            health,
        };
        listeners.serve(endpoints, self.shutdown).await?;
        for task in tasks {
            let _ = task.await;
        }
        let _ = publisher.await;
        Ok(())
    }
}

/// The error body of an action failure, for the bus.
fn action_error_body(e: &ActionError) -> switchboard_proto::common::v1::Error {
    let code = match e {
        ActionError::NotConnected(_) | ActionError::SessionLost { .. } => ErrorCode::Unavailable,
        ActionError::Timeout { .. } => ErrorCode::Timeout,
        ActionError::Refused(_) => ErrorCode::PermissionDenied,
        ActionError::UnknownPbx(_) => ErrorCode::NotFound,
    };
    error_body(code, e.to_string())
}

/// Serves `sb.cmd.ami.<pbx>.action` for one PBX.
async fn serve_actions(
    bus: &Bus,
    handle: SessionHandle,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let subject = bus.subjects().ami_action(handle.pbx());
    let task = bus
        .serve(
            subject,
            SERVICE.to_owned(),
            shutdown,
            move |cmd: Command<pb::ActionRequest>| {
                let handle = handle.clone();
                async move {
                    let mut request = cmd.body;
                    request.pbx = handle.pbx().to_owned();
                    handle.action(request).await.map_err(|e| action_error_body(&e))
                }
            },
        )
        .await?;
    Ok(task)
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
