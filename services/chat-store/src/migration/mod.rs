//! Schema migrations (sea-orm-migration), one `mYYYYMMDD_*` file each, applied in
//! order at start-up. DDL is written per backend where the two differ (auto ids,
//! collation, full-text search).

use sea_orm_migration::prelude::*;

mod m20261122_000001_core;
mod m20261122_000002_fulltext;

/// Every migration of the chat schema.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_core::Migration),
            Box::new(m20261122_000002_fulltext::Migration),
        ]
    }
}

/// Runs each statement of a `;`-separated script (no `;` inside statements).
async fn run_script(manager: &SchemaManager<'_>, script: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
