//! gRPC `AmiService`: actions, typed helpers and the live `Events` stream.
//!
//! Who calls: when `ami.api_token` is set, every RPC must carry
//! `authorization: Bearer <token>` (compared in constant time); the action
//! allow/deny list applies to every RPC that sends an action.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_bus::Secret;
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::ami::v1::ami_service_server::AmiService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::session::{ActionError, SessionHandle};

/// The `AmiService` implementation.
#[derive(Debug, Clone)]
pub struct Service {
    sessions: Arc<BTreeMap<String, SessionHandle>>,
    live: broadcast::Sender<Arc<pb::EventsItem>>,
    token: Option<Secret>,
    /// Ends open `Events` streams, so shutdown does not wait for clients.
    shutdown: CancellationToken,
}

impl Service {
    /// A service over these sessions and the live event feed.
    pub fn new(
        sessions: Arc<BTreeMap<String, SessionHandle>>,
        live: broadcast::Sender<Arc<pb::EventsItem>>,
        token: Option<Secret>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            sessions,
            live,
            token,
            shutdown,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = self.token.as_ref().filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "a valid `authorization: Bearer <token>` is required",
            ))
        }
    }

    fn session<T>(&self, request: &Request<T>, pbx: &str) -> Result<&SessionHandle, Status> {
        self.authorize(request)?;
        self.sessions
            .get(pbx)
            .ok_or_else(|| Status::not_found(format!("no PBX {pbx:?}")))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Maps an action failure to a gRPC status.
pub fn status_of(e: ActionError) -> Status {
    match e {
        ActionError::NotConnected(_) | ActionError::SessionLost { .. } => Status::unavailable(e.to_string()),
        ActionError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        ActionError::Refused(_) => Status::permission_denied(e.to_string()),
        ActionError::UnknownPbx(_) => Status::not_found(e.to_string()),
    }
}

fn request(pbx: &str, action: &str, headers: &[(&str, &str)]) -> pb::ActionRequest {
    pb::ActionRequest {
        pbx: pbx.to_owned(),
        action: action.to_owned(),
        headers: headers
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| pb::Header {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Asterisk's `OriginateResponse` `Reason` codes, as text.
pub fn originate_reason(code: i32) -> &'static str {
    match code {
        0 => "Failed (no such extension, or the channel could not be created)",
        1 => "Hung up",
        3 => "No answer (rang)",
        4 => "Answered",
        5 => "Busy",
        8 => "Congestion",
        _ => "Unknown",
    }
}

/// The typed reply of an Originate's complete response.
pub fn originate_reply(response: &pb::ActionResponse) -> pb::OriginateReply {
    let event = response
        .events
        .iter()
        .find(|e| e.event.eq_ignore_ascii_case("OriginateResponse"));
    let get = |name: &str| {
        event
            .and_then(|e| e.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)))
            .map(|h| h.value.clone())
            .unwrap_or_default()
    };
    let reason_code = get("Reason").parse().unwrap_or(0);
    let outcome = get("Response");
    pb::OriginateReply {
        success: outcome.eq_ignore_ascii_case("Success"),
        response: if event.is_some() {
            outcome
        } else {
            response.response.clone()
        },
        reason: if event.is_some() {
            originate_reason(reason_code).to_owned()
        } else {
            response.message.clone()
        },
        reason_code,
        channel: get("Channel"),
        uniqueid: get("Uniqueid"),
        action_id: response.action_id.clone(),
    }
}

#[tonic::async_trait]
impl AmiService for Service {
    async fn action(&self, req: Request<pb::ActionRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        session
            .action(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status_of)
    }

    async fn originate(&self, req: Request<pb::OriginateRequest>) -> Result<Response<pb::OriginateReply>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let o = req.into_inner();
        let timeout = if o.timeout_ms == 0 {
            String::new()
        } else {
            o.timeout_ms.to_string()
        };
        let mut action = request(
            &o.pbx,
            "Originate",
            &[
                ("Channel", &o.channel),
                ("Context", &o.context),
                ("Exten", &o.exten),
                ("Priority", &o.priority),
                ("Application", &o.application),
                ("Data", &o.data),
                ("CallerID", &o.caller_id),
                ("Timeout", &timeout),
                ("Account", &o.account),
            ],
        );
        for (name, value) in &o.variables {
            action.headers.push(pb::Header {
                name: "Variable".into(),
                value: format!("{name}={value}"),
            });
        }
        action.timeout_ms = o.reply_timeout_ms;
        let response = session.action(action).await.map_err(status_of)?;
        Ok(Response::new(originate_reply(&response)))
    }

    async fn hangup(&self, req: Request<pb::HangupRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let h = req.into_inner();
        let cause = if h.cause == 0 {
            String::new()
        } else {
            h.cause.to_string()
        };
        let action = request(&h.pbx, "Hangup", &[("Channel", &h.channel), ("Cause", &cause)]);
        session.action(action).await.map(Response::new).map_err(status_of)
    }

    async fn redirect(&self, req: Request<pb::RedirectRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let r = req.into_inner();
        let action = request(
            &r.pbx,
            "Redirect",
            &[
                ("Channel", &r.channel),
                ("Context", &r.context),
                ("Exten", &r.exten),
                ("Priority", &r.priority),
            ],
        );
        session.action(action).await.map(Response::new).map_err(status_of)
    }

    async fn setvar(&self, req: Request<pb::SetvarRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let s = req.into_inner();
        let action = request(
            &s.pbx,
            "Setvar",
            &[("Channel", &s.channel), ("Variable", &s.variable), ("Value", &s.value)],
        );
        session.action(action).await.map(Response::new).map_err(status_of)
    }

    async fn getvar(&self, req: Request<pb::GetvarRequest>) -> Result<Response<pb::GetvarReply>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let g = req.into_inner();
        let action = request(&g.pbx, "Getvar", &[("Channel", &g.channel), ("Variable", &g.variable)]);
        let response = session.action(action).await.map_err(status_of)?;
        if !response.response.eq_ignore_ascii_case("Success") {
            return Err(Status::failed_precondition(format!("Getvar: {}", response.message)));
        }
        let value = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("Value"))
            .map(|h| h.value.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::GetvarReply {
            variable: g.variable,
            value,
        }))
    }

    async fn command(&self, req: Request<pb::CommandRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let c = req.into_inner();
        let response = session
            .action(request(&c.pbx, "Command", &[("Command", &c.command)]))
            .await
            .map_err(status_of)?;
        if response.response.eq_ignore_ascii_case("Error") {
            return Err(Status::failed_precondition(format!("Command: {}", response.message)));
        }
        Ok(Response::new(pb::CommandReply {
            output: response.output,
        }))
    }

    async fn core_show_channels(
        &self,
        req: Request<pb::CoreShowChannelsRequest>,
    ) -> Result<Response<pb::ChannelSnapshot>, Status> {
        let session = self.session(&req, &req.get_ref().pbx)?.clone();
        let pbx = req.into_inner().pbx;
        let response = session
            .action(request(&pbx, "CoreShowChannels", &[]))
            .await
            .map_err(status_of)?;
        let channels = response
            .events
            .iter()
            .filter(|e| e.event.eq_ignore_ascii_case("CoreShowChannel"))
            .map(|e| {
                let g = |n: &str| {
                    e.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(n))
                        .map(|h| h.value.clone())
                        .unwrap_or_default()
                };
                pb::Channel {
                    channel: g("Channel"),
                    uniqueid: g("Uniqueid"),
                    linkedid: g("Linkedid"),
                    context: g("Context"),
                    extension: g("Exten"),
                    priority: g("Priority"),
                    state: g("ChannelStateDesc"),
                    caller_id_num: g("CallerIDNum"),
                    caller_id_name: g("CallerIDName"),
                    connected_line_num: g("ConnectedLineNum"),
                    connected_line_name: g("ConnectedLineName"),
                    application: g("Application"),
                    application_data: g("ApplicationData"),
                    duration: g("Duration"),
                    bridge_id: g("BridgeId"),
                    account_code: g("AccountCode"),
                }
            })
            .collect();
        Ok(Response::new(pb::ChannelSnapshot {
            pbx,
            session_id: session.status().session_id,
            channels,
            taken_at: Some({
                let now = time::OffsetDateTime::now_utc();
                switchboard_proto::wkt::Timestamp {
                    seconds: now.unix_timestamp(),
                    nanos: i32::try_from(now.nanosecond()).unwrap_or(0),
                }
            }),
        }))
    }

    async fn list_pbx(&self, req: Request<pb::ListPbxRequest>) -> Result<Response<pb::ListPbxReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(pb::ListPbxReply {
            pbx: self.sessions.values().map(SessionHandle::status).collect(),
        }))
    }

    type EventsStream = ReceiverStream<Result<pb::EventsItem, Status>>;

    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        self.authorize(&req)?;
        let filter = req.into_inner();
        for pbx in &filter.pbx {
            if !self.sessions.contains_key(pbx) {
                return Err(Status::not_found(format!("no PBX {pbx:?}")));
            }
        }
        let mut live = self.live.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = live.recv() => received,
                };
                let item = match received {
                    Ok(item) => item,
                    Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "the stream fell {n} events behind; reconnect (JetStream has every event)"
                            ))))
                            .await;
                        return;
                    }
                };
                if passes(&filter, &item) && tx.send(Ok((*item).clone())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Whether an item passes an `Events` filter.
pub fn passes(filter: &pb::EventsRequest, item: &pb::EventsItem) -> bool {
    use pb::events_item::Item;
    let (pbx, name) = match &item.item {
        Some(Item::Raw(r)) => (r.pbx.as_str(), Some(r.event.as_str())),
        Some(Item::Call(c)) if filter.calls => (c.pbx.as_str(), None),
        Some(Item::Link(l)) => (l.pbx.as_str(), None),
        _ => return false,
    };
    if !filter.pbx.is_empty() && !filter.pbx.iter().any(|p| p == pbx) {
        return false;
    }
    match name {
        Some(name) => filter.events.is_empty() || filter.events.iter().any(|e| e.eq_ignore_ascii_case(name)),
        None => true,
    }
}
