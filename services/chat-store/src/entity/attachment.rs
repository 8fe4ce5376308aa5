//! `attachments`: an uploaded image, re-encoded, with its thumbnail, in the blob store.

use sea_orm::entity::prelude::*;

/// One attachment.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attachments")]
pub struct Model {
    /// A generated id (UUIDv7), also the base of the blob names.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Who uploaded it.
    pub owner: String,
    /// The stored (re-encoded) type, e.g. `image/png`.
    pub content_type: String,
    /// Bytes of the stored image.
    pub size: i64,
    /// Pixels.
    pub width: i32,
    /// Pixels.
    pub height: i32,
    /// The image's key in the blob store.
    pub blob_key: String,
    /// The thumbnail's key in the blob store.
    pub thumbnail_key: String,
    /// When it was uploaded.
    pub created_at: i64,
    /// The message it was sent with, once sent.
    pub message_id: Option<i64>,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
