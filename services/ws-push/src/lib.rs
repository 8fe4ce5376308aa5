//! Browser connections over WebSocket: delivery to users and channels with recovery, presence, inbound browser messages, a site API.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`]. The protocol, config keys and APIs are in
//! `docs/ws-push.md`.

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod delivery;
pub mod grpc;
pub mod hub;
pub mod interest;
pub mod node;
pub mod pattern;
pub mod presence;
pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_bus::{BusError, Command};
use switchboard_proto::push::v1::{DisconnectRequest, PresenceRequest};
use switchboard_runtime::{Base, Endpoints, RuntimeError};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The service's name: binary, NATS client name, CloudEvents source.
pub const SERVICE: &str = "ws-push";

/// What stops the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up or serving failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A NATS operation failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A setting is unusable (names the key).
    #[error("config: {0}")]
    Config(String),
    /// The `SB_PUSH` stream or the presence bucket failed.
    #[error("stream: {0}")]
    Stream(String),
}

/// A started service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct App {
    base: Base,
    node: Arc<node::Node>,
    shutdown: CancellationToken,
}

fn node_name(configured: &str) -> String {
    if configured.is_empty() {
        let id = uuid::Uuid::now_v7().simple().to_string();
        format!("n{}", &id[id.len() - 10..])
    } else {
        configured.to_owned()
    }
}

impl App {
    /// Binds the ports, connects to NATS, opens `SB_PUSH` and `SB_PRESENCE`, and
    /// starts delivering.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        use switchboard_runtime::Validate;
        config.validate().map_err(Error::Config)?;
        let verifier = auth::Verifier::new(&config.auth)?;
        if !config.auth.any() {
            tracing::warn!(
                "no auth.jwt_secret, auth.jwks_file or auth.callback_url: every browser connection will be refused"
            );
        }
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        let bus = base.bus.clone();
        let name = node_name(&config.node);
        let stream = bus
            .jetstream()
            .get_stream(bus.subjects().stream_name("PUSH"))
            .await
            .map_err(|e| Error::Stream(format!("SB_PUSH: {e}")))?;
        let epoch = delivery::epoch_of(&stream);
        let hub = Arc::new(hub::Hub::default());
        let presence = presence::Presence::start(
            bus.clone(),
            name.clone(),
            &config.presence,
            hub.clone(),
            shutdown.clone(),
        )
        .await?;
        let interest = Arc::new(interest::Interest::start(
            bus.clone(),
            stream.clone(),
            hub.clone(),
            epoch.clone(),
            config.interest.user_subscriptions,
            shutdown.clone(),
        ));
        // Every connection gets `all`: the node holds it for its whole life.
        interest.hold(&delivery::Route::All).await?;
        let node = Arc::new(node::Node::new(
            config,
            name,
            verifier,
            hub,
            interest,
            presence,
            bus.clone(),
            stream,
            epoch,
            shutdown.clone(),
        ));

        let query_node = node.clone();
        bus.serve(
            bus.subjects().push_presence_query(),
            SERVICE.to_owned(),
            shutdown.clone(),
            move |command: Command<PresenceRequest>| {
                let node = query_node.clone();
                async move {
                    node.presence_of(&command.body.users).map_err(|e| {
                        switchboard_bus::error_body(
                            switchboard_proto::common::v1::ErrorCode::InvalidArgument,
                            e.to_string(),
                        )
                    })
                }
            },
        )
        .await?;

        let disconnect_node = node.clone();
        bus.on_broadcast(
            bus.subjects().push_disconnect(),
            shutdown.clone(),
            move |request: DisconnectRequest| {
                let closed = disconnect_node.disconnect_local(&request);
                tracing::info!(closed, "user disconnected by the API");
            },
        )
        .await?;

        let probe = node.clone();
        base.health.add("push", move || {
            if probe.shutdown.is_cancelled() {
                Err("shutting down".to_owned())
            } else {
                Ok(())
            }
        });
        Ok(Self { base, node, shutdown })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.base.listeners.http_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.base.listeners.grpc_addr()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node.node
    }

    /// What this node subscribes to (and how many messages it got).
    pub fn interest(&self) -> Arc<interest::Interest> {
        self.node.interest.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection
    /// with 1001 and removes this node's presence.
    pub async fn run(self) -> Result<(), Error> {
        self.base.log_ready(SERVICE);
        let Base {
            listeners,
            bus: _,
            health,
        } = self.base;
        let grpc = tonic::service::Routes::new(
            switchboard_proto::push::v1::push_service_server::PushServiceServer::new(grpc::Grpc::new(
                self.node.clone(),
            )),
        );
        let endpoints = Endpoints {
            router: api::router(self.node.clone()),
            grpc,
            grpc_services: vec![switchboard_proto::service_names::PUSH],
            health,
        };
        let close_connections = async {
            self.shutdown.cancelled().await;
            self.node.hub.close_all(protocol::close::SHUTDOWN, "server shutdown");
        };
        let (served, ()) = tokio::join!(listeners.serve(endpoints, self.shutdown.clone()), close_connections);
        self.node.presence.leave().await;
        served?;
        Ok(())
    }
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
