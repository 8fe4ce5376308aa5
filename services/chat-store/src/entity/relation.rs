//! `relations`: what one user set about another (favourite, blocked).

use sea_orm::entity::prelude::*;

/// `kind` of a favourite.
pub const FAVOURITE: &str = "favourite";
/// `kind` of a block.
pub const BLOCKED: &str = "blocked";

/// One relation, set by `owner` about `other`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "relations")]
pub struct Model {
    /// Who set it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner: String,
    /// About whom.
    #[sea_orm(primary_key, auto_increment = false)]
    pub other: String,
    /// [`FAVOURITE`] or [`BLOCKED`].
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// When it was set.
    pub created_at: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
