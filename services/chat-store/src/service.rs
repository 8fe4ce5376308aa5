//! The chat service: the store's operations plus what follows each change: an event
//! on `sb.evt.chat.*` and a push to both participants (`sb.push.user.<id>`) and to
//! the admin monitor channel; typing indicators (ephemeral, push only); per-user
//! rate limits. HTTP, gRPC and NATS commands all call this.

use std::sync::Arc;

use serde::Serialize;
use switchboard_bus::{Bus, event_types};
use switchboard_proto::chat::v1 as pb;
use switchboard_proto::push::v1::Push;

use bytes::Bytes;

use crate::attachments::{self, Blobs};
use crate::auth::Auth;
use crate::config::AttachmentsConfig;
use crate::entity::{attachment, message};
use crate::error::Error;
use crate::rate::RateLimiter;
use crate::store::{Caller, Marked, NewMessage, Receipt, Sent, Store, check_user_id, timestamp};
use crate::translate::{Translator, check_lang};

/// The push channel admins' monitor pages subscribe to.
pub const ADMIN_CHANNEL: &str = "chat-admin";

/// Push `type`s a page dispatches on.
pub mod push_types {
    /// A new message (data: `ChatMessage`).
    pub const MESSAGE: &str = "chat.message";
    /// An edited message (data: `ChatMessage`).
    pub const EDITED: &str = "chat.message.edited";
    /// A deleted message (data: `ChatMessage`, text empty).
    pub const DELETED: &str = "chat.message.deleted";
    /// Receipts (data: `ReceiptEvent`).
    pub const RECEIPT: &str = "chat.receipt";
    /// The peer is typing (data: `{from, to}`).
    pub const TYPING: &str = "chat.typing";
    /// A relation changed (data: `RelationEvent`), to its owner only.
    pub const RELATION: &str = "chat.relation";
    /// A complaint was filed or resolved (data: `Complaint`), to admins.
    pub const COMPLAINT: &str = "chat.complaint";
}

/// What a [`Chat`] is made of.
#[derive(Debug)]
pub struct Parts {
    /// The database.
    pub store: Store,
    /// The bus.
    pub bus: Bus,
    /// The authenticator.
    pub auth: Auth,
    /// Per-user rate limits.
    pub limiter: Arc<RateLimiter>,
    /// The translator, when configured.
    pub translator: Option<Translator>,
    /// Where attachments are kept.
    pub blobs: Blobs,
    /// Attachment limits.
    pub attachments: AttachmentsConfig,
}

/// Everything an interface needs.
#[derive(Debug, Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    bus: Bus,
    auth: Auth,
    limiter: Arc<RateLimiter>,
    translator: Option<Translator>,
    blobs: Blobs,
    attachments: AttachmentsConfig,
}

impl Chat {
    /// Wires the parts together.
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: parts.store,
                bus: parts.bus,
                auth: parts.auth,
                limiter: parts.limiter,
                translator: parts.translator,
                blobs: parts.blobs,
                attachments: parts.attachments,
            }),
        }
    }

    /// Checks, re-encodes and stores an uploaded image for `caller` to send.
    pub async fn upload(&self, caller: &Caller, data: Bytes) -> Result<pb::Attachment, Error> {
        let config = self.inner.attachments.clone();
        let processed = tokio::task::spawn_blocking(move || attachments::process(&data, &config))
            .await
            .map_err(|e| Error::InvalidArgument(format!("the image could not be processed: {e}")))??;
        let id = uuid::Uuid::now_v7().to_string();
        let extension = if processed.content_type == "image/jpeg" {
            "jpg"
        } else {
            "png"
        };
        let blob_key = format!("{id}.{extension}");
        let thumbnail_key = format!("{id}.thumb.{extension}");
        let size = processed.image.len();
        self.inner.blobs.put(&blob_key, processed.image).await?;
        self.inner.blobs.put(&thumbnail_key, processed.thumbnail).await?;
        let model = attachment::Model {
            id,
            owner: caller.user.clone(),
            content_type: processed.content_type.to_owned(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            width: i32::try_from(processed.width).unwrap_or(i32::MAX),
            height: i32::try_from(processed.height).unwrap_or(i32::MAX),
            blob_key,
            thumbnail_key,
            created_at: crate::store::now_ms(),
            message_id: None,
        };
        self.inner.store.put_attachment(model.clone()).await?;
        Ok(crate::store::attachment_to_proto(&model))
    }

    /// An attachment's bytes (or its thumbnail's) and type, if the caller may see it.
    pub async fn attachment_bytes(&self, caller: &Caller, id: &str, thumbnail: bool) -> Result<(String, Bytes), Error> {
        let found = self.inner.store.attachment(caller, id).await?;
        let key = if thumbnail {
            &found.thumbnail_key
        } else {
            &found.blob_key
        };
        Ok((found.content_type.clone(), self.inner.blobs.get(key).await?))
    }

    /// Whether a translator is configured.
    pub fn can_translate(&self) -> bool {
        self.inner.translator.is_some()
    }

    /// A message's text in `lang`: from the cache, else from the translator (then
    /// cached per message and language).
    pub async fn translate(&self, message: &message::Model, lang: &str) -> Result<String, Error> {
        check_lang(lang)?;
        let Some(translator) = &self.inner.translator else {
            return Err(Error::Unavailable("translation is not configured".into()));
        };
        if message.deleted_at.is_some() || message.text.trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "message {} has no text to translate",
                message.id
            )));
        }
        if let Some(text) = self.inner.store.cached_translation(message.id, lang).await? {
            return Ok(text);
        }
        let text = translator.translate(&message.text, lang).await?;
        self.inner.store.put_translation(message.id, lang, &text).await?;
        Ok(text)
    }

    /// Erases a user, everything they sent or received, and their files.
    pub async fn erase_user(&self, user: &str) -> Result<pb::EraseUserReply, Error> {
        let erased = self.inner.store.erase_user(user).await?;
        for key in &erased.blob_keys {
            self.inner.blobs.delete(key).await;
        }
        Ok(pb::EraseUserReply {
            messages_erased: erased.messages,
            attachments_erased: erased.attachments,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The authenticator.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Takes one request from `user`'s rate budget.
    pub fn rate(&self, user: &str) -> Result<(), Error> {
        self.inner.limiter.check(user)
    }

    /// Sends a message and tells both sides and the monitor (unless it was a retry).
    pub async fn send(&self, caller: &Caller, new: NewMessage) -> Result<Sent, Error> {
        let sent = self.inner.store.send(caller, new).await?;
        if !sent.duplicate {
            self.message_changed("created", push_types::MESSAGE, &sent.message, &caller.user)
                .await;
        }
        Ok(sent)
    }

    /// Edits one's own message and tells both sides.
    pub async fn edit(&self, caller: &Caller, id: i64, text: String) -> Result<pb::ChatMessage, Error> {
        let message = self.inner.store.edit(caller, id, text).await?;
        self.message_changed("edited", push_types::EDITED, &message, &caller.user)
            .await;
        Ok(message)
    }

    /// Deletes a message (own within the window, any for admins) and tells both sides.
    pub async fn delete(&self, caller: &Caller, id: i64) -> Result<pb::ChatMessage, Error> {
        let message = self.inner.store.delete(caller, id).await?;
        self.message_changed("deleted", push_types::DELETED, &message, &caller.user)
            .await;
        Ok(message)
    }

    /// Records receipts and, when any changed, tells the sender live.
    pub async fn mark(&self, caller: &Caller, peer: &str, up_to: Option<i64>, kind: Receipt) -> Result<Marked, Error> {
        let marked = self.inner.store.mark(caller, peer, up_to, kind).await?;
        if let Some(last) = marked.ids.last() {
            let event = pb::ReceiptEvent {
                reader: caller.user.clone(),
                peer: peer.to_owned(),
                up_to_message_id: last.to_string(),
                message_ids: marked.ids.iter().map(i64::to_string).collect(),
                at: Some(timestamp(marked.at)),
                kind: kind.as_str().to_owned(),
            };
            let subjects = self.inner.bus.subjects();
            self.publish_event(
                subjects.chat_event("message", kind.as_str()),
                event_types::CHAT_RECEIPT,
                &event,
            )
            .await;
            for user in [peer, caller.user.as_str()] {
                self.push(subjects.push_user(user), push_types::RECEIPT, &event).await;
            }
        }
        Ok(marked)
    }

    /// Tells `to` that `caller` is typing: ephemeral, never stored, never an event.
    pub async fn typing(&self, caller: &Caller, to: &str) -> Result<(), Error> {
        check_user_id("to", to)?;
        #[derive(Serialize)]
        struct Typing<'a> {
            from: &'a str,
            to: &'a str,
        }
        let push = push_body(push_types::TYPING, &Typing { from: &caller.user, to })?;
        let event = self.inner.bus.event(event_types::PUSH, &push)?;
        self.inner
            .bus
            .publish_ephemeral(self.inner.bus.subjects().push_user(to), &event)
            .await?;
        Ok(())
    }

    /// Sets or clears a relation; the owner's other tabs hear of it (the other user
    /// never learns they were blocked).
    pub async fn set_relation(
        &self,
        caller: &Caller,
        other: &str,
        kind: pb::RelationKind,
        on: bool,
    ) -> Result<bool, Error> {
        let changed = self.inner.store.set_relation(caller, other, kind, on).await?;
        if changed {
            let event = pb::RelationEvent {
                user: caller.user.clone(),
                other: other.to_owned(),
                kind: kind.into(),
                on,
            };
            let subjects = self.inner.bus.subjects();
            self.publish_event(
                subjects.chat_event("relation", "changed"),
                event_types::CHAT_RELATION,
                &event,
            )
            .await;
            self.push(subjects.push_user(&caller.user), push_types::RELATION, &event)
                .await;
        }
        Ok(changed)
    }

    /// Files a complaint; admins' monitors hear of it.
    pub async fn complain(
        &self,
        caller: &Caller,
        target_user: &str,
        message_id: Option<i64>,
        reason: &str,
    ) -> Result<pb::Complaint, Error> {
        let complaint = self
            .inner
            .store
            .complain(caller, target_user, message_id, reason)
            .await?;
        self.complaint_changed("created", &complaint).await;
        Ok(complaint)
    }

    /// Resolves a complaint (admins).
    pub async fn resolve_complaint(&self, caller: &Caller, id: i64, resolution: &str) -> Result<pb::Complaint, Error> {
        let complaint = self.inner.store.resolve_complaint(caller, id, resolution).await?;
        self.complaint_changed("resolved", &complaint).await;
        Ok(complaint)
    }

    async fn complaint_changed(&self, change: &str, complaint: &pb::Complaint) {
        let subjects = self.inner.bus.subjects();
        let event = pb::ComplaintEvent {
            complaint: Some(complaint.clone()),
        };
        self.publish_event(
            subjects.chat_event("complaint", change),
            event_types::CHAT_COMPLAINT,
            &event,
        )
        .await;
        self.push(subjects.push_channel(ADMIN_CHANNEL), push_types::COMPLAINT, complaint)
            .await;
    }

    async fn message_changed(&self, change: &str, push_type: &str, message: &pb::ChatMessage, actor: &str) {
        let subjects = self.inner.bus.subjects();
        let event = pb::MessageEvent {
            message: Some(message.clone()),
            actor: actor.to_owned(),
        };
        self.publish_event(
            subjects.chat_event("message", change),
            event_types::CHAT_MESSAGE,
            &event,
        )
        .await;
        for target in [
            subjects.push_user(&message.from),
            subjects.push_user(&message.to),
            subjects.push_channel(ADMIN_CHANNEL),
        ] {
            self.push(target, push_type, message).await;
        }
    }

    /// Publishes an event; the change is already stored, so a bus failure is logged
    /// (subscribers recover from the store) rather than failing the caller.
    async fn publish_event<T: Serialize>(&self, subject: String, ty: &str, data: &T) {
        let result = async {
            let event = self.inner.bus.event(ty, data)?;
            self.inner.bus.publish(subject.clone(), &event).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%subject, error = %e, "chat event not published");
        }
    }

    async fn push<T: Serialize>(&self, subject: String, push_type: &str, data: &T) {
        let result = async {
            let push = push_body(push_type, data)?;
            let event = self.inner.bus.event(event_types::PUSH, &push)?;
            self.inner.bus.publish(subject.clone(), &event).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%subject, error = %e, "chat push not published");
        }
    }
}

/// A `Push` with `data` as the JSON of `data`.
fn push_body<T: Serialize>(push_type: &str, data: &T) -> Result<Push, Error> {
    let json = serde_json::to_value(data).map_err(|e| Error::InvalidArgument(format!("push data: {e}")))?;
    let value = serde_json::from_value(json).map_err(|e| Error::InvalidArgument(format!("push data: {e}")))?;
    Ok(Push {
        r#type: push_type.to_owned(),
        data: Some(value),
        id: String::new(),
    })
}
