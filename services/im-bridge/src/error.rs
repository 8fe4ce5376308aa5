//! The crate's one error type: start-up failures and the answers a send can get.

use switchboard_proto::common::v1::{Error as ErrorBody, ErrorCode};

/// What can go wrong in im-bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up or serving failed.
    #[error(transparent)]
    Runtime(#[from] switchboard_runtime::RuntimeError),
    /// The bus refused something at start-up.
    #[error(transparent)]
    Bus(#[from] switchboard_bus::BusError),
    /// A FIFO or socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No account with this id is configured.
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// The account is not connected and sends are not queued (or the queue is off).
    #[error("account {account:?} is not connected: {reason}")]
    NotConnected {
        /// The account id.
        account: String,
        /// The state and last error.
        reason: String,
    },
    /// The recipient is not a valid address for the protocol.
    #[error("invalid recipient {to:?}: {reason}")]
    InvalidRecipient {
        /// What was asked for.
        to: String,
        /// Why it is refused.
        reason: String,
    },
    /// The text is longer than `outbound.max_text_bytes`.
    #[error("text too long: {len} bytes, at most {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing to send once control characters are removed.
    #[error("text is empty")]
    EmptyText,
    /// The queue of the disconnected account is full.
    #[error("account {0:?} is not connected and its send queue is full")]
    QueueFull(String),
    /// The connection failed or the server refused the message.
    #[error("{0}")]
    Session(String),
}

impl Error {
    /// The machine-readable code for replies.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownAccount(_) => ErrorCode::NotFound,
            Self::NotConnected { .. } | Self::Session(_) => ErrorCode::Unavailable,
            Self::InvalidRecipient { .. } | Self::TooLong { .. } | Self::EmptyText => ErrorCode::InvalidArgument,
            Self::QueueFull(_) => ErrorCode::ResourceExhausted,
            Self::Runtime(_) | Self::Bus(_) | Self::Io { .. } => ErrorCode::Internal,
        }
    }

    /// The error as a bus reply body.
    pub fn to_body(&self) -> ErrorBody {
        switchboard_bus::error_body(self.code(), self.to_string())
    }

    /// The error as a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self.code() {
            ErrorCode::NotFound => tonic::Status::not_found(message),
            ErrorCode::InvalidArgument => tonic::Status::invalid_argument(message),
            ErrorCode::ResourceExhausted => tonic::Status::resource_exhausted(message),
            ErrorCode::Unavailable => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}
