//! sea-orm entities: one module per table created by [`crate::migration`].
//!
//! Times are milliseconds since the Unix epoch (`i64`): the same type and the same
//! index order on SQLite and PostgreSQL.

pub mod admin;
pub mod attachment;
pub mod complaint;
pub mod message;
pub mod relation;
pub mod translation;
pub mod user;
