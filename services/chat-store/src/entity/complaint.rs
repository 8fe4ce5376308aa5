//! `complaints`: a report about a user or one of their messages, and its resolution.

use sea_orm::entity::prelude::*;

/// `state` of a complaint nobody resolved yet.
pub const OPEN: &str = "open";
/// `state` of a resolved complaint.
pub const RESOLVED: &str = "resolved";

/// One complaint.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "complaints")]
pub struct Model {
    /// Increasing id (the page cursor).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Who complained.
    pub reporter: String,
    /// About whom.
    pub target_user: String,
    /// About which message, if any.
    pub message_id: Option<i64>,
    /// The reporter's words.
    pub reason: String,
    /// [`OPEN`] or [`RESOLVED`].
    pub state: String,
    /// When it was filed.
    pub created_at: i64,
    /// When an admin resolved it.
    pub resolved_at: Option<i64>,
    /// Which admin resolved it.
    pub resolved_by: Option<String>,
    /// What the admin decided.
    pub resolution: Option<String>,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
