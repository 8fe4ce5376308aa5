//! The crate's one error type, and how it maps to the shared error codes.

use switchboard_proto::common::v1::ErrorCode;
use switchboard_runtime::RuntimeError;

/// What went wrong, in any layer of the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up or serving failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A bus operation failed.
    #[error(transparent)]
    Bus(#[from] switchboard_bus::BusError),
    /// The config is unusable; the message names the key.
    #[error("config: {0}")]
    Config(String),
    /// The database failed (details are logged, not shown to callers).
    #[error("database: {0}")]
    Database(sea_orm::DbErr),
    /// The database cannot be reached: down, restarting, or the connection was cut
    /// (callers get 503 / `UNAVAILABLE` and may retry; the details are logged).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(sea_orm::DbErr),
    /// The request is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist (or the caller may not see it).
    #[error("{0}")]
    NotFound(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The recipient blocked the sender (or the sender blocked the recipient).
    #[error("{0}")]
    Blocked(String),
    /// The request conflicts with the state, e.g. the edit window has passed.
    #[error("{0}")]
    Conflict(String),
    /// A limit was hit: rate, size.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A peer the service needs (the site, the translator, the blob store) failed.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// The shared error code for replies.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::PermissionDenied(_) | Self::Blocked(_) => ErrorCode::PermissionDenied,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            Self::Unavailable(_) | Self::DatabaseUnavailable(_) => ErrorCode::Unavailable,
            Self::Runtime(_) | Self::Bus(_) | Self::Config(_) | Self::Database(_) => ErrorCode::Internal,
        }
    }

    /// The sentence shown to callers: internal failures are not described.
    pub fn public_message(&self) -> String {
        if let Self::DatabaseUnavailable(_) = self {
            tracing::warn!(error = %self, "database unavailable");
            return "the database is unavailable; nothing was changed, try again shortly".to_owned();
        }
        match self.code() {
            ErrorCode::Internal => {
                tracing::error!(error = %self, "internal error");
                "internal error".to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// A short machine-readable reason (`blocked`, `rate_limited`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Blocked(_) => "blocked",
            Self::ResourceExhausted(_) => "limit",
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not_found",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Unavailable(_) | Self::DatabaseUnavailable(_) => "unavailable",
            _ => "internal",
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        if unreachable(&e) {
            Self::DatabaseUnavailable(e)
        } else {
            Self::Database(e)
        }
    }
}

/// True when `e` says the database cannot be reached (refused, timed out, the
/// connection cut, the server shutting down or starting), as opposed to a statement
/// the database refused.
fn unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception) and 57P01..57P05
            // (admin / crash shutdown, cannot connect now, ...).
            sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        },
        _ => false,
    }
}
