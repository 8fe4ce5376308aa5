//! Full-text search over message texts: an FTS5 index on SQLite kept by triggers, a
//! generated `tsvector` column with a GIN index on PostgreSQL. Both use a
//! language-neutral tokenizer: a site's users write in any language.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

use super::run_script;

/// Adds the full-text index.
#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_UP: &str = r#"
CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')
"#;

const SQLITE_DOWN: &str = r#"
DROP TRIGGER messages_fts_update;
DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_insert;
DROP TABLE messages_fts
"#;

const POSTGRES_UP: &str = r#"
ALTER TABLE messages ADD COLUMN text_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED;
CREATE INDEX messages_text_tsv ON messages USING GIN (text_tsv)
"#;

const POSTGRES_DOWN: &str = "DROP INDEX messages_text_tsv; ALTER TABLE messages DROP COLUMN text_tsv";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_script(manager, POSTGRES_UP).await,
            _ => {
                // Trigger bodies hold `;`: run each trigger as one statement.
                let db = manager.get_connection();
                for statement in split_sqlite(SQLITE_UP) {
                    db.execute_unprepared(&statement).await?;
                }
                Ok(())
            }
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_script(manager, POSTGRES_DOWN).await,
            _ => run_script(manager, SQLITE_DOWN).await,
        }
    }
}

/// Splits on `;` at the end of a line, except inside `BEGIN ... END;` blocks.
fn split_sqlite(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut in_trigger = false;
    for line in script.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with("BEGIN") {
            in_trigger = true;
        }
        let ends = if in_trigger {
            trimmed == "END;"
        } else {
            trimmed.ends_with(';')
        };
        if ends {
            in_trigger = false;
            statements.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        statements.push(current);
    }
    statements
}
