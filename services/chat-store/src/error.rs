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
    Database(#[from] sea_orm::DbErr),
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
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Runtime(_) | Self::Bus(_) | Self::Config(_) | Self::Database(_) => ErrorCode::Internal,
        }
    }

    /// The sentence shown to callers: internal failures are not described.
    pub fn public_message(&self) -> String {
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
            Self::Unavailable(_) => "unavailable",
            _ => "internal",
        }
    }
}
