//! The browser JSON API (`/api/v1/...`), the admin and management APIs, and the
//! OpenAPI document (`/openapi.json`). Bodies are the proto3 JSON of the
//! `switchboard.chat.v1` messages (camelCase), so browsers, gRPC clients and NATS
//! subscribers see the same shapes.

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_proto::chat::v1 as pb;
use switchboard_proto::common::v1::PageRequest;
use switchboard_runtime::Peer;

use crate::auth::{Credentials, Management};
use crate::error::Error;
use crate::service::Chat;
use crate::store::{Caller, DialogFilter, NewMessage, Page, Receipt, UserInfo, parse_message_id, require_admin};

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The chat service.
    pub chat: Chat,
    /// The management API's gate.
    pub management: Management,
    /// The largest upload accepted, in bytes.
    pub max_upload: usize,
    /// What the widget and the admin console are told, and who may embed them.
    pub widget: crate::config::WidgetConfig,
}

/// Errors as JSON: `{"code": "ERROR_CODE_...", "reason": "blocked", "message": "..."}`;
/// 503 (a peer such as the database is down) carries `Retry-After: 1`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        use switchboard_proto::common::v1::ErrorCode;
        let code = self.code();
        let status = match code {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let status = if matches!(self, Error::ResourceExhausted(ref m) if !m.contains("slow down")) {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            status
        };
        let body = json!({
            "code": code.as_str_name(),
            "reason": self.reason(),
            "message": self.public_message(),
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A peer (usually the database) is down: worth retrying soon.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// An authenticated browser user, within their rate budget.
#[derive(Debug, Clone)]
pub struct User(pub Caller);

impl FromRequestParts<HttpState> for User {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let credentials = credentials(&parts.headers)?;
        let caller = state.chat.auth().authenticate(&credentials).await?;
        state.chat.rate(&caller.user)?;
        Ok(User(caller))
    }
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct AdminUser(pub Caller);

impl FromRequestParts<HttpState> for AdminUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let User(caller) = User::from_request_parts(parts, state).await?;
        require_admin(&caller)?;
        Ok(AdminUser(caller))
    }
}

/// A management caller: right API key from a trusted address.
#[derive(Debug, Clone, Copy)]
pub struct Manager;

impl FromRequestParts<HttpState> for Manager {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let key = bearer(&parts.headers);
        let ip = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.addr.ip());
        state.management.check(key, ip)?;
        Ok(Manager)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, Error> {
    if let Some(token) = bearer(headers) {
        return Ok(Credentials::Jwt(token.to_owned()));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match (header("x-chat-user"), header("x-chat-key")) {
        (Some(user), Some(key)) => Ok(Credentials::UserKey { user, key }),
        _ => Err(Error::Unauthenticated(
            "send Authorization: Bearer <jwt>, or X-Chat-User and X-Chat-Key".into(),
        )),
    }
}

/// `?pageSize=&cursor=` on list endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageQuery {
    #[serde(deserialize_with = "number_or_text")]
    page_size: u32,
    cursor: String,
}

/// A number given as a number or as text: a query flattened into another (`#[serde(flatten)]`)
/// reaches its fields as text, which a plain `u32` refuses.
fn number_or_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u32),
        Text(String),
    }
    match Given::deserialize(deserializer)? {
        Given::Number(n) => Ok(n),
        Given::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("pageSize must be a number, not {text:?}"))),
    }
}

impl PageQuery {
    fn page(&self) -> Result<Page, Error> {
        Page::from_request(Some(&PageRequest {
            page_size: self.page_size,
            cursor: self.cursor.clone(),
        }))
    }
}

fn json_rejection(e: axum::extract::rejection::JsonRejection) -> Error {
    Error::InvalidArgument(format!("bad JSON body: {}", e.body_text()))
}

fn query_rejection(e: axum::extract::rejection::QueryRejection) -> Error {
    Error::InvalidArgument(format!("bad query: {}", e.body_text()))
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;
type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// The router: every API route, `/openapi.json`, and the widget and admin pages
/// (`crate::web`); the API answers CORS requests from `widget.allowed_origins`.
pub fn router(state: HttpState) -> Router {
    let web = crate::web::router(&state.widget);
    let cors = cors(&state.widget.allowed_origins);
    let api = api_router(state);
    let api = match cors {
        Some(cors) => api.layer(cors),
        None => api,
    };
    api.merge(web)
}

/// CORS for the browser API from the configured origins (credentials travel in the
/// Authorization header, never in cookies, so `allow_credentials` stays off).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static("x-chat-user"),
                HeaderName::from_static("x-chat-key"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

fn api_router(state: HttpState) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/api/v1/me", get(me))
        .route("/api/v1/messages", post(send_message))
        .route(
            "/api/v1/messages/{id}",
            axum::routing::patch(edit_message).delete(delete_message),
        )
        .route("/api/v1/messages/{id}/translation", get(translate_message))
        .route("/api/v1/dialogs", get(list_dialogs))
        .route("/api/v1/dialogs/{peer}/messages", get(history))
        .route("/api/v1/dialogs/{peer}/read", post(mark_read))
        .route("/api/v1/dialogs/{peer}/delivered", post(mark_delivered))
        .route("/api/v1/dialogs/{peer}/typing", post(typing))
        .route("/api/v1/unread", get(count_unread))
        .route("/api/v1/relations/{kind}", get(list_relations))
        .route(
            "/api/v1/relations/{kind}/{other}",
            put(set_relation).delete(clear_relation),
        )
        .route("/api/v1/complaints", post(complain))
        .route("/api/v1/search", get(search_messages))
        .route("/api/v1/contacts", get(search_contacts))
        .route("/api/v1/users", get(users))
        .route(
            "/api/v1/attachments",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(state.max_upload.saturating_add(1))),
        )
        .route("/api/v1/attachments/{id}", get(attachment_image))
        .route("/api/v1/attachments/{id}/thumbnail", get(attachment_thumbnail))
        .route("/api/v1/admin/messages", get(admin_messages))
        .route("/api/v1/admin/messages/{id}", delete(admin_delete))
        .route("/api/v1/admin/complaints", get(admin_complaints))
        .route("/api/v1/admin/complaints/{id}/resolve", post(admin_resolve))
        .route("/api/v1/manage/users/{id}", delete(manage_erase_user))
        .route("/api/v1/manage/admins", put(manage_set_admins).get(manage_list_admins))
        .with_state(state)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Me {
    user: String,
    admin: bool,
    /// ws-push's WebSocket URL (`widget.push_url`), empty when not configured.
    push_url: String,
    /// Whether `/api/v1/messages/{id}/translation` can answer.
    translate: bool,
}

async fn me(State(state): State<HttpState>, User(caller): User) -> Json<Me> {
    Json(Me {
        user: caller.user,
        admin: caller.admin,
        push_url: state.widget.push_url.clone(),
        translate: state.chat.can_translate(),
    })
}

/// `POST /api/v1/messages` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendBody {
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    attachment_id: String,
}

async fn send_message(
    State(state): State<HttpState>,
    User(caller): User,
    headers: HeaderMap,
    body: Body<SendBody>,
) -> Result<(StatusCode, Json<pb::SendMessageReply>), Error> {
    let Json(body) = body.map_err(json_rejection)?;
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let sent = state
        .chat
        .send(
            &caller,
            NewMessage {
                to: body.to,
                text: body.text,
                client_id: body.client_id,
                attachment_id: (!body.attachment_id.is_empty()).then_some(body.attachment_id),
                user_agent,
            },
        )
        .await?;
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(pb::SendMessageReply {
            message: Some(sent.message),
            duplicate: sent.duplicate,
        }),
    ))
}

/// `PATCH /api/v1/messages/{id}` body.
#[derive(Debug, Deserialize)]
pub struct EditBody {
    text: String,
}

async fn edit_message(
    State(state): State<HttpState>,
    User(caller): User,
    Path(id): Path<String>,
    body: Body<EditBody>,
) -> Result<Json<pb::MessageReply>, Error> {
    let Json(body) = body.map_err(json_rejection)?;
    let message = state.chat.edit(&caller, parse_message_id(&id)?, body.text).await?;
    Ok(Json(pb::MessageReply { message: Some(message) }))
}

async fn delete_message(
    State(state): State<HttpState>,
    User(caller): User,
    Path(id): Path<String>,
) -> Result<Json<pb::MessageReply>, Error> {
    // Through this route even admins delete only their own messages; the admin
    // route deletes any.
    let caller = Caller { admin: false, ..caller };
    let message = state.chat.delete(&caller, parse_message_id(&id)?).await?;
    Ok(Json(pb::MessageReply { message: Some(message) }))
}

/// `?lang=` for translations.
#[derive(Debug, Deserialize)]
pub struct TranslateQuery {
    lang: String,
}

async fn translate_message(
    State(state): State<HttpState>,
    User(caller): User,
    Path(id): Path<String>,
    query: Q<TranslateQuery>,
) -> Result<Json<serde_json::Value>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let id = parse_message_id(&id)?;
    let message = state.chat.store().get(&caller, id).await?;
    let text = state.chat.translate(&message, &query.lang).await?;
    Ok(Json(
        json!({ "messageId": id.to_string(), "lang": query.lang, "text": text }),
    ))
}

/// `GET /api/v1/dialogs` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DialogsQuery {
    filter: String,
    #[serde(flatten)]
    page: PageQuery,
}

async fn list_dialogs(
    State(state): State<HttpState>,
    User(caller): User,
    query: Q<DialogsQuery>,
) -> Result<Json<pb::ListDialogsReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let (dialogs, page) = state
        .chat
        .store()
        .dialogs(&caller, DialogFilter::parse(&query.filter)?, query.page.page()?)
        .await?;
    Ok(Json(pb::ListDialogsReply {
        dialogs,
        page: Some(page),
    }))
}

async fn history(
    State(state): State<HttpState>,
    User(caller): User,
    Path(peer): Path<String>,
    query: Q<PageQuery>,
) -> Result<Json<pb::GetHistoryReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let (messages, page) = state.chat.store().history(&caller, &peer, query.page()?).await?;
    Ok(Json(pb::GetHistoryReply {
        messages,
        page: Some(page),
    }))
}

/// Receipts body: `{"upToMessageId": "42"}` (empty or absent: everything).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MarkBody {
    up_to_message_id: String,
}

async fn mark(
    state: HttpState,
    caller: Caller,
    peer: String,
    body: Option<MarkBody>,
    kind: Receipt,
) -> Result<Json<pb::MarkReadReply>, Error> {
    let up_to = match body.map(|b| b.up_to_message_id).unwrap_or_default() {
        id if id.is_empty() => None,
        id => Some(parse_message_id(&id)?),
    };
    let marked = state.chat.mark(&caller, &peer, up_to, kind).await?;
    Ok(Json(pb::MarkReadReply {
        marked: u32::try_from(marked.ids.len()).unwrap_or(u32::MAX),
    }))
}

async fn mark_read(
    State(state): State<HttpState>,
    User(caller): User,
    Path(peer): Path<String>,
    body: Option<Json<MarkBody>>,
) -> Result<Json<pb::MarkReadReply>, Error> {
    mark(state, caller, peer, body.map(|b| b.0), Receipt::Read).await
}

async fn mark_delivered(
    State(state): State<HttpState>,
    User(caller): User,
    Path(peer): Path<String>,
    body: Option<Json<MarkBody>>,
) -> Result<Json<pb::MarkReadReply>, Error> {
    mark(state, caller, peer, body.map(|b| b.0), Receipt::Delivered).await
}

async fn typing(
    State(state): State<HttpState>,
    User(caller): User,
    Path(peer): Path<String>,
) -> Result<StatusCode, Error> {
    state.chat.typing(&caller, &peer).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/unread?peer=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UnreadQuery {
    peer: String,
}

async fn count_unread(
    State(state): State<HttpState>,
    User(caller): User,
    query: Q<UnreadQuery>,
) -> Result<Json<pb::CountUnreadReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let peer = (!query.peer.is_empty()).then_some(query.peer.as_str());
    let unread = state.chat.store().count_unread(&caller, peer).await?;
    Ok(Json(pb::CountUnreadReply { unread }))
}

fn relation_kind(kind: &str) -> Result<pb::RelationKind, Error> {
    match kind {
        "favourite" | "favourites" | "favorite" => Ok(pb::RelationKind::Favourite),
        "blocked" => Ok(pb::RelationKind::Blocked),
        other => Err(Error::InvalidArgument(format!(
            "relation kind must be favourite or blocked, not {other:?}"
        ))),
    }
}

async fn list_relations(
    State(state): State<HttpState>,
    User(caller): User,
    Path(kind): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let users = state.chat.store().relations(&caller, relation_kind(&kind)?).await?;
    Ok(Json(json!({ "users": users })))
}

async fn set_relation(
    State(state): State<HttpState>,
    User(caller): User,
    Path((kind, other)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    state
        .chat
        .set_relation(&caller, &other, relation_kind(&kind)?, true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_relation(
    State(state): State<HttpState>,
    User(caller): User,
    Path((kind, other)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    state
        .chat
        .set_relation(&caller, &other, relation_kind(&kind)?, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/complaints` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ComplainBody {
    target_user: String,
    message_id: String,
    reason: String,
}

async fn complain(
    State(state): State<HttpState>,
    User(caller): User,
    body: Body<ComplainBody>,
) -> Result<(StatusCode, Json<pb::ComplainReply>), Error> {
    let Json(body) = body.map_err(json_rejection)?;
    let message_id = match body.message_id.as_str() {
        "" => None,
        id => Some(parse_message_id(id)?),
    };
    let complaint = state
        .chat
        .complain(&caller, &body.target_user, message_id, &body.reason)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(pb::ComplainReply {
            complaint: Some(complaint),
        }),
    ))
}

/// `?q=` searches.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SearchQuery {
    q: String,
    #[serde(flatten)]
    page: PageQuery,
}

async fn search_messages(
    State(state): State<HttpState>,
    User(caller): User,
    query: Q<SearchQuery>,
) -> Result<Json<pb::GetHistoryReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let (messages, page) = state.chat.store().search(&caller, &query.q, query.page.page()?).await?;
    Ok(Json(pb::GetHistoryReply {
        messages,
        page: Some(page),
    }))
}

#[derive(Serialize)]
struct Users {
    users: Vec<UserInfo>,
}

async fn search_contacts(
    State(state): State<HttpState>,
    User(_caller): User,
    query: Q<SearchQuery>,
) -> Result<Json<Users>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let users = state.chat.store().search_contacts(&query.q, 20).await?;
    Ok(Json(Users { users }))
}

/// `GET /api/v1/users?ids=1,2`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UsersQuery {
    ids: String,
}

async fn users(
    State(state): State<HttpState>,
    User(_caller): User,
    query: Q<UsersQuery>,
) -> Result<Json<Users>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let ids: Vec<String> = query
        .ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.len() > 200 {
        return Err(Error::InvalidArgument("at most 200 ids at once".into()));
    }
    let users = state.chat.auth().users(&ids).await?;
    Ok(Json(Users { users }))
}

/// `GET /api/v1/admin/messages` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdminMessagesQuery {
    user: String,
    peer: String,
    attachments_only: bool,
    #[serde(flatten)]
    page: PageQuery,
}

async fn admin_messages(
    State(state): State<HttpState>,
    AdminUser(caller): AdminUser,
    query: Q<AdminMessagesQuery>,
) -> Result<Json<pb::AdminMessagesReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let (messages, page) = state
        .chat
        .store()
        .admin_messages(
            &caller,
            &query.user,
            &query.peer,
            query.attachments_only,
            query.page.page()?,
        )
        .await?;
    Ok(Json(pb::AdminMessagesReply {
        messages,
        page: Some(page),
    }))
}

async fn admin_delete(
    State(state): State<HttpState>,
    AdminUser(caller): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<pb::MessageReply>, Error> {
    let message = state.chat.delete(&caller, parse_message_id(&id)?).await?;
    Ok(Json(pb::MessageReply { message: Some(message) }))
}

/// `GET /api/v1/admin/complaints?state=open|resolved`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ComplaintsQuery {
    state: String,
    #[serde(flatten)]
    page: PageQuery,
}

async fn admin_complaints(
    State(state): State<HttpState>,
    AdminUser(caller): AdminUser,
    query: Q<ComplaintsQuery>,
) -> Result<Json<pb::ListComplaintsReply>, Error> {
    let Query(query) = query.map_err(query_rejection)?;
    let filter = match query.state.as_str() {
        "" | "all" => pb::ComplaintState::Unspecified,
        "open" => pb::ComplaintState::Open,
        "resolved" => pb::ComplaintState::Resolved,
        other => {
            return Err(Error::InvalidArgument(format!(
                "state must be open or resolved, not {other:?}"
            )));
        }
    };
    let (complaints, page) = state
        .chat
        .store()
        .complaints(&caller, filter, query.page.page()?)
        .await?;
    Ok(Json(pb::ListComplaintsReply {
        complaints,
        page: Some(page),
    }))
}

/// `POST /api/v1/admin/complaints/{id}/resolve` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResolveBody {
    resolution: String,
}

async fn admin_resolve(
    State(state): State<HttpState>,
    AdminUser(caller): AdminUser,
    Path(id): Path<String>,
    body: Body<ResolveBody>,
) -> Result<Json<pb::ComplainReply>, Error> {
    let Json(body) = body.map_err(json_rejection)?;
    let id = id
        .parse::<i64>()
        .map_err(|_| Error::InvalidArgument(format!("complaint id {id:?} is not a complaint id")))?;
    let complaint = state.chat.resolve_complaint(&caller, id, &body.resolution).await?;
    Ok(Json(pb::ComplainReply {
        complaint: Some(complaint),
    }))
}

async fn manage_erase_user(
    State(state): State<HttpState>,
    _manager: Manager,
    Path(id): Path<String>,
) -> Result<Json<pb::EraseUserReply>, Error> {
    Ok(Json(state.chat.erase_user(&id).await?))
}

/// `PUT /api/v1/manage/admins` body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminsBody {
    admins: Vec<String>,
}

async fn manage_set_admins(
    State(state): State<HttpState>,
    _manager: Manager,
    body: Body<AdminsBody>,
) -> Result<Json<AdminsBody>, Error> {
    let Json(body) = body.map_err(json_rejection)?;
    state.chat.store().set_admins(&body.admins).await?;
    Ok(Json(AdminsBody {
        admins: state.chat.store().list_admins().await?,
    }))
}

async fn manage_list_admins(State(state): State<HttpState>, _manager: Manager) -> Result<Json<AdminsBody>, Error> {
    Ok(Json(AdminsBody {
        admins: state.chat.store().list_admins().await?,
    }))
}

async fn upload(
    State(state): State<HttpState>,
    User(caller): User,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<pb::Attachment>), Error> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::ResourceExhausted(format!("an image may be at most {} bytes", state.max_upload))
        } else {
            Error::InvalidArgument(e.body_text())
        }
    })?;
    Ok((StatusCode::CREATED, Json(state.chat.upload(&caller, body).await?)))
}

async fn serve_attachment(state: HttpState, caller: Caller, id: String, thumbnail: bool) -> Result<Response, Error> {
    let (content_type, bytes) = state.chat.attachment_bytes(&caller, &id, thumbnail).await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (axum::http::header::CACHE_CONTROL, "private, max-age=86400".to_owned()),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'".to_owned(),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn attachment_image(
    State(state): State<HttpState>,
    User(caller): User,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    serve_attachment(state, caller, id, false).await
}

async fn attachment_thumbnail(
    State(state): State<HttpState>,
    User(caller): User,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    serve_attachment(state, caller, id, true).await
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
