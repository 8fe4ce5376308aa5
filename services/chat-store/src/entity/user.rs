//! `users`: the site's users as last fetched from its users URL (a cache with a TTL).

use sea_orm::entity::prelude::*;

/// One cached user.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// The site's user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Lower-cased name, for prefix search.
    pub name_key: String,
    /// Login.
    pub login: String,
    /// Lower-cased login, for prefix search.
    pub login_key: String,
    /// Avatar URL as the site gave it.
    pub avatar_url: String,
    /// City.
    pub city: String,
    /// Age, when the site knows it.
    pub age: Option<i32>,
    /// The site's status text.
    pub status: String,
    /// When the site last answered for this user.
    pub fetched_at: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
