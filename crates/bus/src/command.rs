//! Commands: typed request/reply over core NATS, with timeouts and a typed error
//! reply.
//!
//! A reply carries the header `sb-status: ok` and the response as JSON, or
//! `sb-status: error` and a `switchboard.common.v1.Error` as JSON. A request body
//! that is empty is read as `{}`, so `nats req sb.cmd.push.presence ''` works.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_proto::common::v1::{Error as ErrorBody, ErrorCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{Bus, BusError, trace};

/// The reply header that says whether the body is a response or an error.
pub const STATUS_HEADER: &str = "sb-status";

/// How many requests one served subject handles at once.
const MAX_IN_FLIGHT: usize = 256;

/// Why a command did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Nobody serves the subject (the service is down or the target unknown).
    #[error("no service answers {subject}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// The service did not answer in time.
    #[error("{subject} did not answer within {timeout:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The service answered with an error.
    #[error("{subject}: {code:?}: {}", .error.message, code = .error.code())]
    Rejected {
        /// The request subject.
        subject: String,
        /// The error the service sent.
        error: ErrorBody,
    },
    /// The request could not be sent.
    #[error("request to {subject} failed: {reason}")]
    Transport {
        /// The request subject.
        subject: String,
        /// What the client said.
        reason: String,
    },
    /// The reply is not the JSON we expected.
    #[error("reply from {subject} does not decode: {reason}")]
    Decode {
        /// The request subject.
        subject: String,
        /// What serde said.
        reason: String,
    },
}

impl CommandError {
    /// The error as a `switchboard.common.v1.Error` (for passing on to callers).
    pub fn to_error_body(&self) -> ErrorBody {
        match self {
            Self::Rejected { error, .. } => error.clone(),
            Self::NoResponders { .. } => error_body(ErrorCode::Unavailable, self.to_string()),
            Self::Timeout { .. } => error_body(ErrorCode::Timeout, self.to_string()),
            Self::Transport { .. } => error_body(ErrorCode::Unavailable, self.to_string()),
            Self::Decode { .. } => error_body(ErrorCode::Internal, self.to_string()),
        }
    }
}

/// Builds an error body.
pub fn error_body(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code: code as i32,
        message: message.into(),
        details: Default::default(),
    }
}

/// One request as a handler sees it.
#[derive(Debug)]
pub struct Command<Req> {
    /// The subject it arrived on (carries the target, e.g. the PBX id).
    pub subject: String,
    /// Its headers (trace context, auth).
    pub headers: Option<HeaderMap>,
    /// The decoded body.
    pub body: Req,
}

impl Bus {
    /// Sends `request` to `subject` and waits for the typed response, up to
    /// `timeout` (or the configured default).
    pub async fn request<Req, Resp>(
        &self,
        subject: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CommandError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = serde_json::to_vec(request).map_err(|e| CommandError::Transport {
            subject: subject.to_owned(),
            reason: format!("request does not encode: {e}"),
        })?;
        let reply = self.request_raw(subject, Bytes::from(payload), timeout).await?;
        decode_reply(subject, reply.headers.as_ref(), &reply.payload)
    }

    /// Sends raw bytes and returns the raw reply message (the CLI's `req`).
    pub async fn request_raw(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<async_nats::Message, CommandError> {
        let timeout = timeout.unwrap_or(self.inner.request_timeout);
        let mut headers = HeaderMap::new();
        trace::inject_current(&mut headers);
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(timeout));
        self.inner
            .client
            .send_request(subject.to_owned(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => CommandError::NoResponders {
                    subject: subject.to_owned(),
                },
                async_nats::RequestErrorKind::TimedOut => CommandError::Timeout {
                    subject: subject.to_owned(),
                    timeout,
                },
                _ => CommandError::Transport {
                    subject: subject.to_owned(),
                    reason: e.to_string(),
                },
            })
    }

    /// Serves `subject` (wildcards allowed) in queue group `queue`: each request is
    /// decoded into `Req`, handled concurrently (at most 256 at once), and answered
    /// with the handler's response or error. Runs until `shutdown` is cancelled, then
    /// stops taking requests and waits for those in flight.
    pub async fn serve<Req, Resp, F, Fut>(
        &self,
        subject: String,
        queue: String,
        shutdown: CancellationToken,
        handler: F,
    ) -> Result<tokio::task::JoinHandle<()>, BusError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Command<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        let client = self.inner.client.clone();
        let mut subscriber = client
            .queue_subscribe(subject.clone(), queue)
            .await
            .map_err(|e| BusError::Subscribe {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let tracker = TaskTracker::new();
        Ok(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let Some(reply_to) = message.reply.clone() else {
                    tracing::debug!(subject = %message.subject, "command without reply subject ignored");
                    continue;
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let handler = handler.clone();
                let client = client.clone();
                let span = tracing::info_span!("command", subject = %message.subject);
                trace::set_parent_from(&span, message.headers.as_ref());
                tracker.spawn(
                    async move {
                        let _permit = permit;
                        let body: &[u8] = if message.payload.iter().all(u8::is_ascii_whitespace) {
                            b"{}"
                        } else {
                            &message.payload
                        };
                        let outcome = match serde_json::from_slice::<Req>(body) {
                            Ok(body) => {
                                handler(Command {
                                    subject: message.subject.to_string(),
                                    headers: message.headers.clone(),
                                    body,
                                })
                                .await
                            }
                            Err(e) => Err(error_body(
                                ErrorCode::InvalidArgument,
                                format!("request body is not a valid {}: {e}", short_type_name::<Req>()),
                            )),
                        };
                        let (status, payload) = match outcome {
                            Ok(response) => match serde_json::to_vec(&response) {
                                Ok(bytes) => ("ok", bytes),
                                Err(e) => ("error", encode_error(&error_body(ErrorCode::Internal, e.to_string()))),
                            },
                            Err(error) => {
                                tracing::debug!(code = ?error.code(), message = %error.message, "command refused");
                                ("error", encode_error(&error))
                            }
                        };
                        let mut headers = HeaderMap::new();
                        headers.insert(STATUS_HEADER, status);
                        headers.insert("content-type", crate::cloudevent::JSON);
                        if let Err(e) = client.publish_with_headers(reply_to, headers, payload.into()).await {
                            tracing::warn!(error = %e, "command reply not sent");
                        }
                    }
                    .instrument(span),
                );
            }
            let _ = subscriber.unsubscribe().await;
            tracker.close();
            tracker.wait().await;
        }))
    }
}

/// Broadcasts: a message every replica of a service acts on (no queue group, no
/// reply), such as ws-push's `sb.cmd.push.disconnect`. Core NATS: a replica that is
/// down misses it, which is why only state that heals by itself travels this way.
impl Bus {
    /// Publishes `body` as JSON on `subject` to every listener, and flushes.
    pub async fn broadcast<T: Serialize>(&self, subject: String, body: &T) -> Result<(), BusError> {
        let payload = serde_json::to_vec(body).map_err(|e| BusError::Publish {
            subject: subject.clone(),
            reason: e.to_string(),
        })?;
        let client = &self.inner.client;
        client
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        client.flush().await.map_err(|e| BusError::Publish {
            subject,
            reason: e.to_string(),
        })
    }

    /// Calls `handle` with each broadcast on `subject` decoded as `T`, in order, until
    /// `shutdown`; a message that does not decode is logged and skipped.
    pub async fn on_broadcast<T, F>(
        &self,
        subject: String,
        shutdown: CancellationToken,
        handle: F,
    ) -> Result<tokio::task::JoinHandle<()>, BusError>
    where
        T: DeserializeOwned,
        F: Fn(T) + Send + 'static,
    {
        let mut subscriber = self
            .inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::Subscribe {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        Ok(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                match serde_json::from_slice::<T>(&message.payload) {
                    Ok(body) => handle(body),
                    Err(e) => tracing::debug!(%subject, error = %e, "broadcast that does not decode ignored"),
                }
            }
        }))
    }
}

fn encode_error(error: &ErrorBody) -> Vec<u8> {
    serde_json::to_vec(error).unwrap_or_else(|_| br#"{"code":"ERROR_CODE_INTERNAL"}"#.to_vec())
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Decodes a reply: `sb-status: error` becomes [`CommandError::Rejected`].
pub fn decode_reply<Resp: DeserializeOwned>(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Resp, CommandError> {
    let is_error = headers
        .and_then(|h| h.get(STATUS_HEADER))
        .is_some_and(|v| v.as_str() == "error");
    if is_error {
        let error: ErrorBody = serde_json::from_slice(payload).map_err(|e| CommandError::Decode {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })?;
        return Err(CommandError::Rejected {
            subject: subject.to_owned(),
            error,
        });
    }
    serde_json::from_slice(payload).map_err(|e| CommandError::Decode {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}
