//! Binding and serving a service's two ports: HTTP (its API plus health and
//! metrics) and gRPC (its services plus gRPC health and reflection), both stopping
//! gracefully on the shutdown token.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::RuntimeError;
use crate::config::{GrpcConfig, HttpConfig};
use crate::health::Health;
use crate::socket::{Peer, SocketListener};

/// The bound listeners of a service, before it serves.
#[derive(Debug)]
pub struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
}

/// What a service serves on its two ports.
pub struct Endpoints {
    /// Its own HTTP routes (merged with `/healthz`, `/readyz`, `/metrics`).
    pub router: axum::Router,
    /// Its own gRPC services (health and reflection are added).
    pub grpc: Routes,
    /// Fully qualified names of its gRPC services, for health and reflection.
    pub grpc_services: Vec<&'static str>,
    /// Its readiness checks.
    pub health: Health,
}

impl Listeners {
    /// Binds both ports (port 0 picks free ones).
    pub async fn bind(http: &HttpConfig, grpc: &GrpcConfig) -> Result<Self, RuntimeError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RuntimeError::Bind { what, addr, source })
        };
        Ok(Self {
            http: bind("http.listen", http.listen).await?,
            grpc: bind("grpc.listen", grpc.listen).await?,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn serve(self, endpoints: Endpoints, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let Endpoints {
            router,
            grpc,
            grpc_services,
            health,
        } = endpoints;
        let router = router.merge(health.router());

        let (reporter, health_service) = tonic_health::server::health_reporter();
        for name in &grpc_services {
            reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in &grpc_services {
            reflection = reflection.with_service_name(*name);
        }
        let reflection_v1 = reflection.build_v1().map_err(|e| RuntimeError::Serve(e.to_string()))?;
        let grpc = grpc.add_service(health_service).add_service(reflection_v1);

        let http_stop = shutdown.clone();
        let http = async move {
            // Every request carries `ConnectInfo<Peer>`: the client's address (for
            // per-IP limits) and its connection (ws-push writes pushes to it).
            axum::serve(
                SocketListener(self.http),
                router.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await
            .map_err(|e| RuntimeError::Serve(format!("http: {e}")))
        };
        let grpc_stop = shutdown.clone();
        let grpc_serve = async move {
            tonic::transport::Server::builder()
                .add_routes(grpc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), grpc_stop.cancelled_owned())
                .await
                .map_err(|e| RuntimeError::Serve(format!("grpc: {e}")))
        };
        let (http_result, grpc_result) = tokio::join!(http, grpc_serve);
        http_result.and(grpc_result)
    }
}
