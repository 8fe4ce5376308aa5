//! `/healthz` (the process runs), `/readyz` (its dependencies are up) and
//! `/metrics` (Prometheus), served on every service's HTTP port.

use std::sync::{Arc, OnceLock, RwLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The readiness checks of one service. Cheap to clone; checks added later count.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<RwLock<Vec<(&'static str, CheckFn)>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .checks
            .read()
            .map(|c| c.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        f.debug_struct("Health").field("checks", &names).finish()
    }
}

/// One check's outcome in the `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// The check's name, e.g. `nats`.
    pub name: &'static str,
    /// True when ready.
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyReport {
    /// True when every check passes.
    pub ready: bool,
    /// Each check.
    pub checks: Vec<CheckReport>,
}

impl Health {
    /// Adds a readiness check. Keep it cheap and non-blocking (read a flag that a
    /// background task maintains).
    pub fn add(&self, name: &'static str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        if let Ok(mut checks) = self.checks.write() {
            checks.push((name, Arc::new(check)));
        }
    }

    /// Runs every check.
    pub fn report(&self) -> ReadyReport {
        let checks: Vec<CheckReport> = self
            .checks
            .read()
            .map(|checks| {
                checks
                    .iter()
                    .map(|(name, check)| match check() {
                        Ok(()) => CheckReport {
                            name,
                            ok: true,
                            error: None,
                        },
                        Err(error) => CheckReport {
                            name,
                            ok: false,
                            error: Some(error),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        ReadyReport {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The router with `/healthz`, `/readyz` and `/metrics`.
    pub fn router(&self) -> Router {
        let health = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let report = health.report();
                    async move {
                        let status = if report.ready {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        (status, axum::Json(report)).into_response()
                    }
                }),
            )
            .route("/metrics", get(metrics_text))
    }
}

async fn metrics_text() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedding program's): still serve
            // an endpoint, with our own empty registry.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}
