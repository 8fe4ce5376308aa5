//! Private one-to-one chat for a website: messages, dialogs, receipts, relations,
//! complaints, attachments, admin views.
//!
//! Start it in-process with [`App::build`] (ports 0 pick free ports) and
//! [`App::run`], or with [`run`].

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_runtime::{Base, Endpoints};
use tokio_util::sync::CancellationToken;

pub mod attachments;
pub mod auth;
pub mod backend;
pub mod config;
pub mod entity;
pub mod error;
pub mod http;
pub mod migration;
pub mod openapi;
pub mod rate;
pub mod service;
pub mod store;
pub mod translate;
pub mod web;

pub use config::Config;
pub use error::Error;
pub use store::Store;

use auth::{Auth, Management};
use rate::RateLimiter;
use service::Chat;
use switchboard_proto::chat::v1::chat_service_server::ChatServiceServer;
use translate::Translator;

/// The service's name: binary, NATS client name, CloudEvents source.
pub const SERVICE: &str = "chat-store";

/// The database URL the config names: PostgreSQL or SQLite by URL, else SQLite in
/// `data_dir/chat.db` (the directory is created).
pub fn database_url(config: &Config) -> Result<String, Error> {
    let url = config.database.url.expose();
    if !url.is_empty() {
        return Ok(url.to_owned());
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("data_dir {}: {e}", config.data_dir.display())))?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        config.data_dir.join("chat.db").display()
    ))
}

/// A started service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct App {
    base: Base,
    chat: Chat,
    management: Management,
    max_upload: usize,
    widget: config::WidgetConfig,
    shutdown: CancellationToken,
}

impl App {
    /// Opens and migrates the database, binds the ports, connects to NATS.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        if config.auth.jwt_secret.is_empty() && config.auth.key_url.is_empty() {
            // Valid, so the stack starts with no setup (`switchboard up`), but say why
            // every browser will be refused.
            tracing::warn!("neither auth.jwt_secret nor auth.key_url is set: every browser request will be refused");
        }
        let limits = store::Limits {
            max_text_chars: config.chat.max_text_chars,
            edit_window: config.chat.edit_window,
        };
        let store = Store::open(
            &database_url(&config)?,
            config.database.max_connections,
            limits,
            &config.auth.admin_ids,
        )
        .await?;
        let base = Base::start(SERVICE, &config.nats, &config.http, &config.grpc).await?;
        let auth = Auth::new(&config.auth, store.clone())?;
        let limiter = Arc::new(RateLimiter::new(config.chat.rate_per_minute, config.chat.rate_burst));
        limiter.clone().share(base.bus.clone(), shutdown.clone()).await?;
        let translator = Translator::new(&config.translate)?;
        let chat = Chat::new(service::Parts {
            store,
            bus: base.bus.clone(),
            auth,
            limiter,
            translator,
            blobs: attachments::Blobs::open(&config.attachments, &config.data_dir).await?,
            attachments: config.attachments.clone(),
        });
        let max_upload = config.attachments.max_bytes;
        Ok(Self {
            base,
            chat,
            management: Management::new(config.management),
            max_upload,
            widget: config.widget.clone(),
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

    /// The store (for tests and tools).
    pub fn store(&self) -> &Store {
        self.chat.store()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) -> Result<(), Error> {
        self.base.log_ready(SERVICE);
        let commands = backend::serve_commands(self.chat.clone(), self.shutdown.clone()).await?;
        let Base {
            listeners,
            bus: _,
            health,
        } = self.base;
        let router = http::router(http::HttpState {
            chat: self.chat.clone(),
            management: self.management.clone(),
            max_upload: self.max_upload,
            widget: self.widget.clone(),
        });
        let endpoints = Endpoints {
            router,
            grpc: tonic::service::Routes::default().add_service(ChatServiceServer::new(backend::Grpc::new(
                self.chat.clone(),
                self.management.clone(),
            ))),
            grpc_services: vec![switchboard_proto::service_names::CHAT],
            health,
        };
        listeners.serve(endpoints, self.shutdown).await?;
        // Commands in flight finish before the process ends.
        let _ = commands.await;
        Ok(())
    }
}

/// Builds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    App::build(config, shutdown).await?.run().await
}
