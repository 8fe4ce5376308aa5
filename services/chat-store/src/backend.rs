//! The API for site backends: gRPC `ChatService` (API key in `x-api-key` metadata,
//! from a trusted address) and NATS commands `sb.cmd.chat.<verb>` (the NATS
//! account's permissions decide who may publish there). Both carry the same proto
//! messages and act for the users named in them; admin operations act as an admin.

use std::net::IpAddr;

use serde_json::Value;
use switchboard_bus::error_body;
use switchboard_proto::chat::v1 as pb;
use switchboard_proto::chat::v1::chat_service_server::ChatService;
use switchboard_proto::common::v1::{Error as ErrorBody, ErrorCode};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::Management;
use crate::error::Error;
use crate::service::Chat;
use crate::store::{Caller, DialogFilter, NewMessage, Page, Receipt, check_user_id, parse_message_id};

/// The identity admin operations from a site backend act as.
const SITE_ADMIN: &str = "site";

fn optional_id(id: &str) -> Result<Option<i64>, Error> {
    if id.is_empty() {
        Ok(None)
    } else {
        parse_message_id(id).map(Some)
    }
}

fn user(id: &str) -> Result<Caller, Error> {
    check_user_id("user", id)?;
    Ok(Caller::user(id))
}

fn admin(id: &str) -> Caller {
    Caller::admin(if id.is_empty() { SITE_ADMIN } else { id })
}

/// Every backend operation, transport-free.
impl Chat {
    /// `SendMessage`: from the named user, within their rate budget.
    pub async fn api_send(&self, r: pb::SendMessageRequest) -> Result<pb::SendMessageReply, Error> {
        let caller = user(&r.from)?;
        self.rate(&caller.user)?;
        let sent = self
            .send(
                &caller,
                NewMessage {
                    to: r.to,
                    text: r.text,
                    client_id: r.client_id,
                    attachment_id: (!r.attachment_id.is_empty()).then_some(r.attachment_id),
                    user_agent: String::new(),
                },
            )
            .await?;
        Ok(pb::SendMessageReply {
            message: Some(sent.message),
            duplicate: sent.duplicate,
        })
    }

    /// `ListDialogs`.
    pub async fn api_dialogs(&self, r: pb::ListDialogsRequest) -> Result<pb::ListDialogsReply, Error> {
        let (dialogs, page) = self
            .store()
            .dialogs(
                &user(&r.user)?,
                DialogFilter::parse(&r.filter)?,
                Page::from_request(r.page.as_ref())?,
            )
            .await?;
        Ok(pb::ListDialogsReply {
            dialogs,
            page: Some(page),
        })
    }

    /// `GetHistory`.
    pub async fn api_history(&self, r: pb::GetHistoryRequest) -> Result<pb::GetHistoryReply, Error> {
        let (messages, page) = self
            .store()
            .history(&user(&r.user)?, &r.peer, Page::from_request(r.page.as_ref())?)
            .await?;
        Ok(pb::GetHistoryReply {
            messages,
            page: Some(page),
        })
    }

    /// `MarkRead`.
    pub async fn api_mark_read(&self, r: pb::MarkReadRequest) -> Result<pb::MarkReadReply, Error> {
        let marked = self
            .mark(
                &user(&r.user)?,
                &r.peer,
                optional_id(&r.up_to_message_id)?,
                Receipt::Read,
            )
            .await?;
        Ok(pb::MarkReadReply {
            marked: u32::try_from(marked.ids.len()).unwrap_or(u32::MAX),
        })
    }

    /// `CountUnread`.
    pub async fn api_unread(&self, r: pb::CountUnreadRequest) -> Result<pb::CountUnreadReply, Error> {
        let peer = (!r.peer.is_empty()).then_some(r.peer.as_str());
        let unread = self.store().count_unread(&user(&r.user)?, peer).await?;
        Ok(pb::CountUnreadReply { unread })
    }

    /// `EditMessage`.
    pub async fn api_edit(&self, r: pb::EditMessageRequest) -> Result<pb::MessageReply, Error> {
        let message = self
            .edit(&user(&r.user)?, parse_message_id(&r.message_id)?, r.text)
            .await?;
        Ok(pb::MessageReply { message: Some(message) })
    }

    /// `DeleteMessage`: as the named user (admins by their rights).
    pub async fn api_delete(&self, r: pb::DeleteMessageRequest) -> Result<pb::MessageReply, Error> {
        let mut caller = user(&r.user)?;
        caller.admin = self.store().is_admin(&caller.user).await?;
        let message = self.delete(&caller, parse_message_id(&r.message_id)?).await?;
        Ok(pb::MessageReply { message: Some(message) })
    }

    /// `SetRelation`.
    pub async fn api_relation(&self, r: pb::SetRelationRequest) -> Result<pb::SetRelationReply, Error> {
        let kind = pb::RelationKind::try_from(r.kind).unwrap_or(pb::RelationKind::Unspecified);
        self.set_relation(&user(&r.user)?, &r.other, kind, r.on).await?;
        Ok(pb::SetRelationReply {})
    }

    /// `Complain`.
    pub async fn api_complain(&self, r: pb::ComplainRequest) -> Result<pb::ComplainReply, Error> {
        let complaint = self
            .complain(
                &user(&r.reporter)?,
                &r.target_user,
                optional_id(&r.message_id)?,
                &r.reason,
            )
            .await?;
        Ok(pb::ComplainReply {
            complaint: Some(complaint),
        })
    }

    /// `AdminMessages`.
    pub async fn api_admin_messages(&self, r: pb::AdminMessagesRequest) -> Result<pb::AdminMessagesReply, Error> {
        let (messages, page) = self
            .store()
            .admin_messages(
                &admin(""),
                &r.user,
                &r.peer,
                r.attachments_only,
                Page::from_request(r.page.as_ref())?,
            )
            .await?;
        Ok(pb::AdminMessagesReply {
            messages,
            page: Some(page),
        })
    }

    /// `ListComplaints`.
    pub async fn api_complaints(&self, r: pb::ListComplaintsRequest) -> Result<pb::ListComplaintsReply, Error> {
        let state = pb::ComplaintState::try_from(r.state).unwrap_or(pb::ComplaintState::Unspecified);
        let (complaints, page) = self
            .store()
            .complaints(&admin(""), state, Page::from_request(r.page.as_ref())?)
            .await?;
        Ok(pb::ListComplaintsReply {
            complaints,
            page: Some(page),
        })
    }

    /// `ResolveComplaint`.
    pub async fn api_resolve(&self, r: pb::ResolveComplaintRequest) -> Result<pb::ComplainReply, Error> {
        let id = r
            .complaint_id
            .parse::<i64>()
            .map_err(|_| Error::InvalidArgument(format!("complaint id {:?} is not a complaint id", r.complaint_id)))?;
        let complaint = self.resolve_complaint(&admin(&r.admin), id, &r.resolution).await?;
        Ok(pb::ComplainReply {
            complaint: Some(complaint),
        })
    }

    /// `EraseUser`.
    pub async fn api_erase(&self, r: pb::EraseUserRequest) -> Result<pb::EraseUserReply, Error> {
        self.erase_user(&r.user).await
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.public_message();
        match e.code() {
            ErrorCode::InvalidArgument => Status::invalid_argument(message),
            ErrorCode::NotFound => Status::not_found(message),
            ErrorCode::Unauthenticated => Status::unauthenticated(message),
            ErrorCode::PermissionDenied => Status::permission_denied(message),
            ErrorCode::Conflict => Status::failed_precondition(message),
            ErrorCode::ResourceExhausted => Status::resource_exhausted(message),
            ErrorCode::Unavailable => Status::unavailable(message),
            _ => Status::internal(message),
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Grpc {
    chat: Chat,
    management: Management,
}

impl Grpc {
    /// Serves `chat` to callers `management` lets in.
    pub fn new(chat: Chat, management: Management) -> Self {
        Self { chat, management }
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let key = request.metadata().get("x-api-key").and_then(|v| v.to_str().ok());
        let ip: Option<IpAddr> = request.remote_addr().map(|a| a.ip());
        self.management.check(key, ip).map_err(Status::from)
    }
}

/// Writes the whole impl at once, so `async_trait` sees every method expanded.
macro_rules! grpc_impl {
    ($(($name:ident, $req:ty, $resp:ty, $api:ident)),* $(,)?) => {
        #[tonic::async_trait]
        impl ChatService for Grpc {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.check(&request)?;
                    Ok(Response::new(self.chat.$api(request.into_inner()).await?))
                }
            )*
        }
    };
}

grpc_impl!(
    (send_message, pb::SendMessageRequest, pb::SendMessageReply, api_send),
    (list_dialogs, pb::ListDialogsRequest, pb::ListDialogsReply, api_dialogs),
    (get_history, pb::GetHistoryRequest, pb::GetHistoryReply, api_history),
    (mark_read, pb::MarkReadRequest, pb::MarkReadReply, api_mark_read),
    (count_unread, pb::CountUnreadRequest, pb::CountUnreadReply, api_unread),
    (edit_message, pb::EditMessageRequest, pb::MessageReply, api_edit),
    (delete_message, pb::DeleteMessageRequest, pb::MessageReply, api_delete),
    (set_relation, pb::SetRelationRequest, pb::SetRelationReply, api_relation),
    (complain, pb::ComplainRequest, pb::ComplainReply, api_complain),
    (
        admin_messages,
        pb::AdminMessagesRequest,
        pb::AdminMessagesReply,
        api_admin_messages
    ),
    (
        list_complaints,
        pb::ListComplaintsRequest,
        pb::ListComplaintsReply,
        api_complaints
    ),
    (
        resolve_complaint,
        pb::ResolveComplaintRequest,
        pb::ComplainReply,
        api_resolve
    ),
    (erase_user, pb::EraseUserRequest, pb::EraseUserReply, api_erase),
);

/// The NATS command verbs (`sb.cmd.chat.<verb>`), each taking the proto request of
/// the gRPC method of the same name.
pub const VERBS: &[&str] = &[
    "send",
    "dialogs",
    "history",
    "mark-read",
    "unread",
    "edit",
    "delete",
    "relation",
    "complain",
    "admin-messages",
    "complaints",
    "resolve",
    "erase-user",
];

fn decode<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Error> {
    serde_json::from_value(body).map_err(|e| Error::InvalidArgument(format!("request body: {e}")))
}

fn encode<T: serde::Serialize>(reply: T) -> Result<Value, Error> {
    serde_json::to_value(reply).map_err(|e| Error::InvalidArgument(format!("reply: {e}")))
}

async fn dispatch(chat: &Chat, verb: &str, body: Value) -> Result<Value, Error> {
    match verb {
        "send" => encode(chat.api_send(decode(body)?).await?),
        "dialogs" => encode(chat.api_dialogs(decode(body)?).await?),
        "history" => encode(chat.api_history(decode(body)?).await?),
        "mark-read" => encode(chat.api_mark_read(decode(body)?).await?),
        "unread" => encode(chat.api_unread(decode(body)?).await?),
        "edit" => encode(chat.api_edit(decode(body)?).await?),
        "delete" => encode(chat.api_delete(decode(body)?).await?),
        "relation" => encode(chat.api_relation(decode(body)?).await?),
        "complain" => encode(chat.api_complain(decode(body)?).await?),
        "admin-messages" => encode(chat.api_admin_messages(decode(body)?).await?),
        "complaints" => encode(chat.api_complaints(decode(body)?).await?),
        "resolve" => encode(chat.api_resolve(decode(body)?).await?),
        "erase-user" => encode(chat.api_erase(decode(body)?).await?),
        other => Err(Error::NotFound(format!(
            "no chat command {other:?}; verbs: {}",
            VERBS.join(", ")
        ))),
    }
}

/// Answers `sb.cmd.chat.*` until `shutdown`.
pub async fn serve_commands(chat: Chat, shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>, Error> {
    let bus = chat.bus().clone();
    let subject = bus.subjects().chat_command("*");
    let handle = bus
        .serve(
            subject,
            crate::SERVICE.to_owned(),
            shutdown,
            move |command: switchboard_bus::Command<Value>| {
                let chat = chat.clone();
                let verb = command.subject.rsplit('.').next().unwrap_or_default().to_owned();
                async move {
                    dispatch(&chat, &verb, command.body)
                        .await
                        .map_err(|e| -> ErrorBody { error_body(e.code(), e.public_message()) })
                }
            },
        )
        .await?;
    Ok(handle)
}
