//! The core tables and an index for every query the store runs.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

use super::run_script;

/// Creates users, messages, relations, complaints, attachments, translations, admins.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// `messages.id` and `complaints.id` are increasing ids: the page cursors.
const SQLITE_IDS: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
const POSTGRES_IDS: &str = "BIGSERIAL PRIMARY KEY";

fn script(backend: DbBackend) -> String {
    let (id, collate) = match backend {
        DbBackend::Postgres => (POSTGRES_IDS, " COLLATE \"C\""),
        _ => (SQLITE_IDS, ""),
    };
    format!(
        r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT{collate} NOT NULL,
    login TEXT NOT NULL,
    login_key TEXT{collate} NOT NULL,
    avatar_url TEXT NOT NULL,
    city TEXT NOT NULL,
    age INTEGER,
    status TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);
CREATE INDEX users_name_key ON users (name_key);
CREATE INDEX users_login_key ON users (login_key);

CREATE TABLE messages (
    id {id},
    client_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    dialog TEXT NOT NULL,
    text TEXT NOT NULL,
    attachment_id TEXT,
    user_agent TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted_at BIGINT,
    deleted_by TEXT,
    delivered_at BIGINT,
    read_at BIGINT
);
CREATE UNIQUE INDEX messages_sender_client_id ON messages (sender, client_id);
CREATE INDEX messages_dialog_id ON messages (dialog, id);
CREATE INDEX messages_sender_id ON messages (sender, id);
CREATE INDEX messages_recipient_id ON messages (recipient, id);
CREATE INDEX messages_unread ON messages (recipient, sender, id) WHERE read_at IS NULL AND deleted_at IS NULL;
CREATE INDEX messages_undelivered ON messages (recipient, sender, id) WHERE delivered_at IS NULL AND deleted_at IS NULL;
CREATE INDEX messages_with_attachment ON messages (id) WHERE attachment_id IS NOT NULL;

CREATE TABLE relations (
    owner TEXT NOT NULL,
    other TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, other, kind)
);
CREATE INDEX relations_owner_kind ON relations (owner, kind, created_at);

CREATE TABLE complaints (
    id {id},
    reporter TEXT NOT NULL,
    target_user TEXT NOT NULL,
    message_id BIGINT,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT,
    resolved_by TEXT,
    resolution TEXT
);
CREATE INDEX complaints_state_id ON complaints (state, id);
CREATE INDEX complaints_target_user ON complaints (target_user);
CREATE INDEX complaints_reporter ON complaints (reporter);

CREATE TABLE attachments (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    blob_key TEXT NOT NULL,
    thumbnail_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    message_id BIGINT
);
CREATE INDEX attachments_owner ON attachments (owner);

CREATE TABLE translations (
    message_id BIGINT NOT NULL,
    lang TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, lang)
);

CREATE TABLE admins (
    user_id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
)
"#
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_script(manager, &script(manager.get_database_backend())).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_script(
            manager,
            "DROP TABLE admins; DROP TABLE translations; DROP TABLE attachments; DROP TABLE complaints; \
             DROP TABLE relations; DROP TABLE messages; DROP TABLE users",
        )
        .await
    }
}
