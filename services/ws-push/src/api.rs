//! The site API over HTTP JSON (`/api/v1/...`, API key), its OpenAPI document, and
//! the static files (`/client.js`, `/demo`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use switchboard_proto::push::v1::{
    DisconnectRequest, PresenceRequest, PublishBatchReply, PublishBatchRequest, PublishRequest,
};

use crate::conn;
use crate::node::{ApiError, Node};

/// Every route of the HTTP API (method, path as OpenAPI spells it); the OpenAPI
/// document must list each (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/ws"),
    ("get", "/client.js"),
    ("get", "/client.mjs"),
    ("get", "/client.d.ts"),
    ("get", "/demo"),
    ("get", "/demo.js"),
    ("get", "/openapi.json"),
    ("post", "/api/v1/publish"),
    ("post", "/api/v1/publish/batch"),
    ("post", "/api/v1/presence"),
    ("get", "/api/v1/online"),
    ("get", "/api/v1/channels/{channel}/presence"),
    ("post", "/api/v1/disconnect"),
];

/// The JS client, as a classic script (sets `window.SwitchboardPush`).
pub const CLIENT_JS: &str = include_str!("../static/switchboard-push.js");
/// What turns the same code into an ES module.
const ESM_EXPORTS: &str =
    "\nexport const SwitchboardPush = globalThis.SwitchboardPush;\nexport default SwitchboardPush;\n";
/// TypeScript declarations of the client.
pub const CLIENT_TYPES: &str = include_str!("../static/switchboard-push.d.ts");
/// The demo page.
pub const DEMO_HTML: &str = include_str!("../static/demo.html");
/// The demo page's script.
pub const DEMO_JS: &str = include_str!("../static/demo.js");

/// The HTTP routes of the service.
pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/ws", get(conn::upgrade))
        .route("/client.js", get(client_js))
        .route("/client.mjs", get(client_mjs))
        .route("/client.d.ts", get(client_types))
        .route("/demo", get(demo))
        .route("/demo.js", get(demo_js))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/publish/batch", post(publish_batch))
        .route("/api/v1/presence", post(presence))
        .route("/api/v1/online", get(online))
        .route("/api/v1/channels/{channel}/presence", get(channel_presence))
        .route("/api/v1/disconnect", post(disconnect))
        .with_state(node)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "ERROR_CODE_UNAUTHENTICATED"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "ERROR_CODE_INVALID_ARGUMENT"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ERROR_CODE_UNAVAILABLE"),
        };
        (
            status,
            Json(serde_json::json!({ "code": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

fn check_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if node.api_key_ok(key) {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated)
    }
}

/// A JSON body whose errors are API errors (400 with a message), not axum's text.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Invalid(format!("body: {e}")))
}

fn javascript(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

async fn client_js() -> Response {
    javascript(CLIENT_JS.to_owned())
}

async fn client_mjs() -> Response {
    javascript(format!("{CLIENT_JS}{ESM_EXPORTS}"))
}

async fn client_types() -> Response {
    (
        [(header::CONTENT_TYPE, "application/typescript; charset=utf-8")],
        CLIENT_TYPES,
    )
        .into_response()
}

async fn demo_js() -> Response {
    javascript(DEMO_JS.to_owned())
}

async fn demo() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:",
            ),
        ],
        DEMO_HTML,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    let request: PublishRequest = body(&bytes)?;
    let mut replies = node.publish(vec![request]).await?;
    let reply = replies.pop().ok_or_else(|| ApiError::Unavailable("no ack".into()))?;
    Ok(Json(reply).into_response())
}

async fn publish_batch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    let request: PublishBatchRequest = body(&bytes)?;
    let items = node.publish(request.items).await?;
    Ok(Json(PublishBatchReply { items }).into_response())
}

async fn presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    let request: PresenceRequest = body(&bytes)?;
    Ok(Json(node.presence_of(&request.users)?).into_response())
}

/// `GET /api/v1/online` parameters.
#[derive(Debug, Default, Deserialize)]
struct OnlineQuery {
    #[serde(default)]
    admins_only: bool,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    page_size: u32,
}

async fn online(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    query: Result<Query<OnlineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    Ok(Json(node.list_online(query.admins_only, &query.cursor, query.page_size)).into_response())
}

async fn channel_presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    Ok(Json(node.channel_presence(&channel)?).into_response())
}

async fn disconnect(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_key(&node, &headers)?;
    let request: DisconnectRequest = body(&bytes)?;
    Ok(Json(node.disconnect(request).await?).into_response())
}

/// The OpenAPI 3.1 document of the HTTP API.
pub const OPENAPI: &str = include_str!("../static/openapi.json");
