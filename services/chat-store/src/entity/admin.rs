//! `admins`: users made admins through the management API (besides configured ids
//! and the JWT `admin` claim).

use sea_orm::entity::prelude::*;

/// One admin.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admins")]
pub struct Model {
    /// The site's user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// When it was granted.
    pub created_at: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
