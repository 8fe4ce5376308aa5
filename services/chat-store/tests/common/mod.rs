//! Test databases: a temp SQLite file, or a fresh PostgreSQL database per test
//! (dropped afterwards), so tests run in parallel on both backends; and the config
//! every test's service starts from.

#![allow(dead_code)]

use sea_orm::{ConnectionTrait, Database};

/// A config with its data in `data_dir`, the bus at `nats_url`, HTTP and gRPC on free
/// loopback ports; each test adds its database, auth and limits.
pub fn service_config(nats_url: String, data_dir: &std::path::Path) -> chat_store::Config {
    let mut config = chat_store::Config {
        data_dir: data_dir.to_owned(),
        ..chat_store::Config::default()
    };
    config.nats.url = nats_url;
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    config
}

/// The PostgreSQL server every test uses (trust auth).
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temp SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A database that lives as long as the test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

impl TestDb {
    /// Creates an empty database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("chat.db").display());
                Self {
                    url,
                    dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("chat_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(POSTGRES_ADMIN_URL)
                    .await
                    .expect("PostgreSQL at 127.0.0.1:5432");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                Self {
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }

    /// The SQLite data dir, when the backend is SQLite.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(POSTGRES_ADMIN_URL).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs an async test function once per backend: `both!(name, function)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body(super::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$body(super::common::Backend::Postgres).await
            }
        }
    };
}
