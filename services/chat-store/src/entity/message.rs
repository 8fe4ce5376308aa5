//! `messages`: one private message. The recipient's receipts (delivered, read) are
//! columns of the row: a message has exactly one recipient, so a per-message receipt
//! is one pair of times, and unread counts stay one index scan.

use sea_orm::entity::prelude::*;

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// Increasing id: the history cursor and the "read up to" mark.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The sender's idempotency key, unique per sender.
    pub client_id: String,
    /// Who sent it.
    pub sender: String,
    /// Who it is for.
    pub recipient: String,
    /// The canonical key of the two participants (see `store::dialog_key`).
    pub dialog: String,
    /// The text exactly as sent (emptied on delete).
    pub text: String,
    /// An attached image, by attachment id.
    pub attachment_id: Option<String>,
    /// The sender's browser, as the seed kept it.
    pub user_agent: String,
    /// When it was sent.
    pub created_at: i64,
    /// When its text was last edited.
    pub edited_at: Option<i64>,
    /// When it was deleted.
    pub deleted_at: Option<i64>,
    /// Who deleted it (the sender or an admin).
    pub deleted_by: Option<String>,
    /// When a device of the recipient got it.
    pub delivered_at: Option<i64>,
    /// When the recipient read it.
    pub read_at: Option<i64>,
}

/// No declared relations: joins are written where they are used.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
