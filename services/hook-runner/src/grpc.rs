//! gRPC `HookService`: list rules with their stats, the recent runs of a rule,
//! trigger a rule with a given event (or a dry run), reload.
//!
//! Who calls: with `hooks.api_token` set, every call needs
//! `authorization: Bearer <token>`; without it, only loopback callers are served.

use std::sync::Arc;

use subtle_free::constant_time_eq;
use switchboard_bus::Secret;
use switchboard_proto::hook::v1::hook_service_server::HookService;
use switchboard_proto::hook::v1::{
    GetRunsReply, GetRunsRequest, ListRulesReply, ListRulesRequest, ReloadReply, ReloadRequest, RuleInfo, TriggerReply,
    TriggerRequest,
};
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::render::dry_run;
use crate::trigger::{CelInput, EventFile, SYNTHETIC_TYPE, Verdict};

/// Most runs one `GetRuns` returns.
pub const MAX_RUNS: u32 = 500;

/// The service over an engine.
#[derive(Debug, Clone)]
pub struct Hooks {
    engine: Arc<Engine>,
    token: Option<Secret>,
}

impl Hooks {
    /// Serves `engine`; `token` is the bearer token callers need (none: loopback only).
    pub fn new(engine: Arc<Engine>, token: Option<Secret>) -> Self {
        Self {
            engine,
            token: token.filter(|t| !t.is_empty()),
        }
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.token {
            Some(token) => {
                let given = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(
                        "a valid `authorization: Bearer <hooks.api_token>` is required",
                    ))
                }
            }
            None => match request.remote_addr() {
                Some(addr) if addr.ip().is_loopback() => Ok(()),
                _ => Err(Status::permission_denied(
                    "hooks.api_token is not set, so only loopback callers are served",
                )),
            },
        }
    }
}

/// Equal-time comparison, so a token is not guessed byte by byte from timings.
mod subtle_free {
    /// True when `a == b`, in time depending only on the lengths.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn timestamp(t: time::OffsetDateTime) -> switchboard_proto::wkt::Timestamp {
    switchboard_proto::wkt::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl HookService for Hooks {
    async fn list_rules(&self, request: Request<ListRulesRequest>) -> Result<Response<ListRulesReply>, Status> {
        self.check(&request)?;
        let set = self.engine.rules();
        let stats = self.engine.stats();
        let rules = set
            .rules
            .iter()
            .map(|rule| {
                let s = stats.get(&rule.name).cloned().unwrap_or_default();
                RuleInfo {
                    name: rule.name.clone(),
                    file: rule.file.display().to_string(),
                    on: rule.on.clone(),
                    when: rule.when.as_ref().map(|w| w.source.clone()).unwrap_or_default(),
                    actions: u32::try_from(rule.actions.len()).unwrap_or(u32::MAX),
                    matched: s.matched,
                    succeeded: s.succeeded,
                    failed: s.failed,
                    throttled: s.throttled,
                    dead: s.dead,
                    last_run_at: s.last_run_at.map(timestamp),
                }
            })
            .collect();
        Ok(Response::new(ListRulesReply {
            rules,
            loaded_at: Some(timestamp(set.loaded_at)),
            last_reload_error: self.engine.last_reload_error(),
        }))
    }

    async fn get_runs(&self, request: Request<GetRunsRequest>) -> Result<Response<GetRunsReply>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        if self.engine.rules().get(&request.rule).is_none() {
            return Err(Status::not_found(format!("no rule {:?}", request.rule)));
        }
        let limit = match request.limit {
            0 => 20,
            n => n.min(MAX_RUNS),
        } as usize;
        let runs = self
            .engine
            .stats()
            .remove(&request.rule)
            .map(|s| s.runs.into_iter().rev().take(limit).collect())
            .unwrap_or_default();
        Ok(Response::new(GetRunsReply { runs }))
    }

    async fn trigger(&self, request: Request<TriggerRequest>) -> Result<Response<TriggerReply>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        let set = self.engine.rules();
        let Some(rule) = set.get(&request.rule).cloned() else {
            return Err(Status::not_found(format!("no rule {:?}", request.rule)));
        };
        let subject = if request.subject.is_empty() {
            rule.on
                .iter()
                .find(|p| crate::pattern::check_subject(p).is_ok())
                .cloned()
                .ok_or_else(|| Status::invalid_argument("subject is required: the rule's patterns have wildcards"))?
        } else {
            request.subject
        };
        let ty = if request.r#type.is_empty() {
            rule.types.first().cloned().unwrap_or_else(|| SYNTHETIC_TYPE.to_owned())
        } else {
            request.r#type
        };
        let data = match request.data {
            Some(value) => serde_json::to_value(value).map_err(|e| Status::invalid_argument(e.to_string()))?,
            None => serde_json::Value::Null,
        };
        let trigger = EventFile {
            subject,
            ty: Some(ty),
            id: None,
            source: Some("/switchboard/hook-runner/trigger".to_owned()),
            extensions: Default::default(),
            data,
            steps: Default::default(),
        }
        .into_trigger()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let verdict = { set.verdict(&rule, &trigger, &mut CelInput::new()) };
        if let Verdict::Error(e) = &verdict {
            return Err(Status::invalid_argument(format!("when failed: {e}")));
        }
        if verdict != Verdict::Matched {
            return Ok(Response::new(TriggerReply::default()));
        }
        if request.dry_run {
            let rendered = dry_run(&set, &rule, &trigger, self.engine.defaults(), &serde_json::Map::new());
            return Ok(Response::new(TriggerReply {
                matched: true,
                result: None,
                rendered: serde_json::from_value(rendered).ok(),
            }));
        }
        let result = self.engine.trigger(&set, &rule, &trigger).await;
        Ok(Response::new(TriggerReply {
            matched: true,
            result: Some(result),
            rendered: None,
        }))
    }

    async fn reload(&self, request: Request<ReloadRequest>) -> Result<Response<ReloadReply>, Status> {
        self.check(&request)?;
        Ok(Response::new(match self.engine.reload().await {
            Ok(rules) => ReloadReply {
                ok: true,
                rules: u32::try_from(rules).unwrap_or(u32::MAX),
                error: String::new(),
            },
            Err(error) => ReloadReply {
                ok: false,
                rules: u32::try_from(self.engine.rules().rules.len()).unwrap_or(u32::MAX),
                error,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::subtle_free::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
