//! `translations`: a message's text translated into one language (a cache).

use sea_orm::entity::prelude::*;

/// One cached translation.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "translations")]
pub struct Model {
    /// The message.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: i64,
    /// The target language code (`en`, `pl`, ...).
    #[sea_orm(primary_key, auto_increment = false)]
    pub lang: String,
    /// The translated text.
    pub text: String,
    /// When it was translated.
    pub created_at: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
