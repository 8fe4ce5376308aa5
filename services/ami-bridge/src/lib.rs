//! Sessions to Asterisk PBXs over AMI: every event onto the bus, derived call events, actions from the bus and gRPC.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`].

pub mod calls;
pub mod config;
pub mod grpc;
pub mod helpers;
pub mod parser;
pub mod session;
pub mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_bus::{Bus, Command, Lease, LeaseState, NatsConfig, error_body};
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
        let mut config = config;
        for pbx in &mut config.pbx {
            if pbx.secret.is_empty()
                && let Ok(secret) = std::env::var(config::secret_env(&pbx.id))
            {
                pbx.secret = switchboard_bus::Secret::new(secret);
            }
        }
        // The runtime installs its Prometheus recorder on the first scrape; install it
        // now so counts from before that scrape are not lost.
        let _ = switchboard_runtime::health::prometheus();
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        let settings = Arc::new(config.ami.clone());
        let mut sessions = BTreeMap::new();
        let mut calls = BTreeMap::new();
        for pbx in &config.pbx {
            let (handle, rx) = session::channel(pbx, settings.clone());
            sessions.insert(pbx.id.clone(), handle);
            calls.insert(pbx.id.clone(), rx);
        }
        let statuses: Vec<_> = sessions.values().map(SessionHandle::status_cell).collect();
        base.health.add("pbx", move || {
            use switchboard_proto::common::v1::LinkState;
            for cell in &statuses {
                let s = cell.lock().map(|s| s.clone()).unwrap_or_default();
                let up = s.state == LinkState::Up as i32 || s.state == LinkState::Standby as i32;
                if !up {
                    return Err(format!("PBX {} not connected: {}", s.id, s.last_error));
                }
            }
            Ok(())
        });
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
        let bucket = if self.config.ami.lease {
            Some(self.base.bus.bucket("AMI_LEASES", self.config.ami.lease_ttl, 1).await?)
        } else {
            None
        };
        let holder = format!("{SERVICE}-{}-{}", std::process::id(), uuid::Uuid::now_v7());
        let mut tasks = Vec::new();
        for pbx in &self.config.pbx {
            let (Some(rx), Some(handle)) = (self.calls.remove(&pbx.id), self.sessions.get(&pbx.id)) else {
                continue;
            };
            let lease = bucket.clone().map(|bucket| {
                Lease::spawn(
                    bucket,
                    switchboard_bus::escape_token(&pbx.id).into_owned(),
                    holder.clone(),
                    self.config.ami.lease_ttl,
                    self.shutdown.clone(),
                )
            });
            tasks.push(tokio::spawn(supervise(
                pbx.clone(),
                ctx.clone(),
                handle.clone(),
                rx,
                self.base.bus.clone(),
                lease,
                self.shutdown.clone(),
            )));
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

/// Runs one PBX: while this replica holds its lease (or always, without a
/// lease), the session and the PBX's NATS action command; on standby, callers
/// get an immediate "not connected" instead of a timeout.
async fn supervise(
    pbx: PbxConfig,
    ctx: session::SessionContext,
    handle: SessionHandle,
    mut calls: mpsc::Receiver<session::ActionCall>,
    bus: Bus,
    lease: Option<Lease>,
    shutdown: CancellationToken,
) {
    let mut state = lease.as_ref().map(Lease::watch);
    let status = handle.status_cell();
    loop {
        if let Some(state) = state.as_mut() {
            if let Ok(mut s) = status.lock() {
                s.state = switchboard_proto::common::v1::LinkState::Standby as i32;
            }
            // Standby: wait for the lease, refusing actions meanwhile.
            while *state.borrow_and_update() != LeaseState::Held {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = state.changed() => if changed.is_err() { return },
                    Some(call) = calls.recv() => session::refuse_standby(call, &pbx.id),
                }
            }
        }
        let active = shutdown.child_token();
        let session = session::spawn(pbx.clone(), ctx.clone(), status.clone(), calls, active.clone());
        let server = match serve_actions(&bus, handle.clone(), active.clone()).await {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::error!(pbx = %pbx.id, "cannot serve the action command: {e}");
                None
            }
        };
        match state.as_mut() {
            Some(state) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = state.changed() => {
                        if changed.is_err() || *state.borrow_and_update() != LeaseState::Held {
                            tracing::warn!(pbx = %pbx.id, "lease lost; stopping the session");
                            break;
                        }
                    }
                }
            },
            None => shutdown.cancelled().await,
        }
        active.cancel();
        if let Some(server) = server {
            let _ = server.await;
        }
        let Ok(returned) = session.await else { return };
        calls = returned;
        if shutdown.is_cancelled() {
            return;
        }
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
