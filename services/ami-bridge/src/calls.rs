//! Derived call events: `call.started|ringing|answered|ended`, tracked by Linkedid
//! across Newchannel, Newstate, DialBegin/DialState/DialEnd, BridgeEnter and Hangup.
//!
//! Rules (the issue is silent on the details; these are what a screen pop and a
//! missed-call alert need):
//! - a call is the set of channels sharing a Linkedid; its id is that Linkedid;
//! - `started` on its first Newchannel (caller = that channel's CallerID);
//! - `ringing` on the first ringing channel (Newstate 5, DialState RINGING, or
//!   DialBegin); the callee is the dialled destination (DestExten / DialString);
//! - `answered` on the first DialEnd ANSWER, BridgeEnter or Newstate Up of a
//!   channel other than a still-dialling caller;
//! - `ended` when its last channel hangs up; the cause is the first Hangup's;
//!   `missed` when never answered;
//! - direction: both numbers short (<= 5 digits) = internal; a long caller =
//!   inbound; a long callee = outbound.

use std::collections::{BTreeSet, HashMap};

use switchboard_proto::ami::v1::{CallDirection, CallEvent, CallState, Party};
use switchboard_proto::wkt::Timestamp;
use time::OffsetDateTime;

use crate::session::RawItem;

/// The subject token of a state.
pub fn state_name(state: i32) -> &'static str {
    match CallState::try_from(state) {
        Ok(CallState::Started) => "started",
        Ok(CallState::Ringing) => "ringing",
        Ok(CallState::Answered) => "answered",
        Ok(CallState::Ended) => "ended",
        _ => "unspecified",
    }
}

#[derive(Debug)]
struct Call {
    event: CallEvent,
    live: BTreeSet<String>,
    started: OffsetDateTime,
    answered: Option<OffsetDateTime>,
    cause_set: bool,
}

/// Tracks calls of every PBX from their raw events, in order.
#[derive(Debug, Default)]
pub struct CallTracker {
    /// Calls by PBX, then by Linkedid: two levels so that every event looks its
    /// call up with the `&str`s it has, where one `(pbx, linkedid)` key would need
    /// two new `String`s per event.
    calls: HashMap<String, HashMap<String, Call>>,
}

fn ts(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

fn known(v: Option<&str>) -> &str {
    match v {
        Some("<unknown>") | None => "",
        Some(v) => v,
    }
}

fn direction(caller: &str, callee: &str) -> CallDirection {
    let long = |n: &str| n.chars().filter(char::is_ascii_digit).count() > 5;
    match (long(caller), long(callee)) {
        (true, _) => CallDirection::Inbound,
        (false, true) => CallDirection::Outbound,
        _ => CallDirection::Internal,
    }
}

impl CallTracker {
    /// Forgets every call of `pbx` (the session dropped; the snapshot after the
    /// reconnect tells consumers what is still live).
    pub fn clear(&mut self, pbx: &str) {
        self.calls.remove(pbx);
    }

    /// The number of calls in progress.
    pub fn len(&self) -> usize {
        self.calls.values().map(HashMap::len).sum()
    }

    /// True when no call is in progress.
    pub fn is_empty(&self) -> bool {
        self.calls.values().all(HashMap::is_empty)
    }

    /// Feeds one raw event; returns the call events it causes.
    pub fn observe(&mut self, raw: &RawItem) -> Vec<CallEvent> {
        let m = &raw.message;
        let Some(name) = m.event() else { return Vec::new() };
        let at = raw.received_at;
        let mut out = Vec::new();
        let linkedid = known(m.get("Linkedid").or_else(|| m.get("DestLinkedid")));
        if linkedid.is_empty() {
            return out;
        }
        if name.eq_ignore_ascii_case("Newchannel") {
            let calls = self.calls.entry(raw.pbx.to_string()).or_default();
            let call = calls.entry(linkedid.to_owned()).or_insert_with(|| {
                let caller_num = known(m.get("CallerIDNum")).to_owned();
                Call {
                    event: CallEvent {
                        pbx: raw.pbx.to_string(),
                        call_id: linkedid.to_owned(),
                        caller: Some(Party {
                            number: caller_num,
                            name: known(m.get("CallerIDName")).to_owned(),
                            channel: m.get("Channel").unwrap_or_default().to_owned(),
                        }),
                        extension: m.get("Exten").unwrap_or_default().to_owned(),
                        context: m.get("Context").unwrap_or_default().to_owned(),
                        started_at: Some(ts(at)),
                        ..Default::default()
                    },
                    started: at,
                    live: BTreeSet::new(),
                    answered: None,
                    cause_set: false,
                }
            });
            let first = call.event.channels.is_empty();
            if let Some(uid) = m.get("Uniqueid") {
                call.live.insert(uid.to_owned());
                call.event.channels.push(uid.to_owned());
            }
            if first {
                out.push(Self::emit(call, CallState::Started));
            }
            return out;
        }
        let Some(call) = self.calls.get_mut(&*raw.pbx).and_then(|calls| calls.get_mut(linkedid)) else {
            return out;
        };
        let ringing = call.event.ringing_at.is_some();
        let answered = call.answered.is_some();
        match name {
            "NewCallerid" => {
                // The caller's own channel learned its CallerID (Originate sets it late).
                if let Some(caller) = call.event.caller.as_mut()
                    && caller.channel == m.get("Channel").unwrap_or_default()
                {
                    caller.number = known(m.get("CallerIDNum")).to_owned();
                    caller.name = known(m.get("CallerIDName")).to_owned();
                }
            }
            "DialBegin" => {
                let callee = known(m.get("DestExten")).to_owned();
                let callee = if callee.is_empty() {
                    m.get("DialString").unwrap_or_default().to_owned()
                } else {
                    callee
                };
                call.event.callee = Some(Party {
                    number: callee,
                    name: known(m.get("DestCallerIDName")).to_owned(),
                    channel: m.get("DestChannel").unwrap_or_default().to_owned(),
                });
                if !ringing {
                    call.event.ringing_at = Some(ts(at));
                    out.push(Self::emit(call, CallState::Ringing));
                }
            }
            "Newstate" | "DialState" => {
                let is_ringing = m.get("ChannelState") == Some("5") || m.get("DialStatus") == Some("RINGING");
                let is_up = name == "Newstate" && m.get("ChannelState") == Some("6");
                if is_ringing && !ringing {
                    call.event.ringing_at = Some(ts(at));
                    out.push(Self::emit(call, CallState::Ringing));
                } else if is_up && !answered {
                    Self::answer(call, at, &mut out);
                }
            }
            "DialEnd" if m.get("DialStatus") == Some("ANSWER") && !answered => Self::answer(call, at, &mut out),
            "BridgeEnter" if !answered => Self::answer(call, at, &mut out),
            "Hangup" => {
                if !call.cause_set {
                    call.cause_set = true;
                    call.event.hangup_cause = m.get("Cause").and_then(|c| c.parse().ok()).unwrap_or(0);
                    call.event.hangup_cause_text = m.get("Cause-txt").unwrap_or_default().to_owned();
                }
                if let Some(uid) = m.get("Uniqueid") {
                    call.live.remove(uid);
                }
                if call.live.is_empty() {
                    call.event.ended_at = Some(ts(at));
                    let ms = |d: time::Duration| u64::try_from(d.whole_milliseconds()).unwrap_or(0);
                    call.event.duration_ms = ms(at - call.started);
                    call.event.billable_ms = call.answered.map_or(0, |a| ms(at - a));
                    call.event.missed = call.answered.is_none();
                    out.push(Self::emit(call, CallState::Ended));
                    if let Some(calls) = self.calls.get_mut(&*raw.pbx) {
                        calls.remove(linkedid);
                    }
                }
            }
            _ => {}
        }
        out
    }

    fn answer(call: &mut Call, at: OffsetDateTime, out: &mut Vec<CallEvent>) {
        call.answered = Some(at);
        call.event.answered_at = Some(ts(at));
        out.push(Self::emit(call, CallState::Answered));
    }

    fn emit(call: &mut Call, state: CallState) -> CallEvent {
        let caller = call.event.caller.as_ref().map_or("", |p| p.number.as_str());
        let callee = call
            .event
            .callee
            .as_ref()
            .map_or(call.event.extension.as_str(), |p| p.number.as_str());
        call.event.direction = direction(caller, callee) as i32;
        call.event.state = state as i32;
        call.event.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::parser::{Frame, Parser};

    const F04: &[u8] = include_bytes!("../tests/fixtures/asterisk-22.6/04-calls-events-lists.server.raw");

    #[test]
    fn fixture_04_calls_are_derived() {
        let mut parser = Parser::default();
        parser.feed(F04);
        let mut tracker = CallTracker::default();
        let mut out = Vec::new();
        let mut seq = 0;
        while let Some(frame) = parser.next_frame() {
            let Frame::Message(message) = frame else { continue };
            seq += 1;
            if message.event().is_none() || message.action_id().is_some_and(|id| id.starts_with('l')) {
                continue; // list replies are not live events
            }
            let raw = RawItem {
                pbx: Arc::from("a"),
                session_id: Arc::from("s"),
                sequence: seq,
                received_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(seq as i64),
                message,
            };
            out.extend(tracker.observe(&raw));
        }
        let ended: Vec<&CallEvent> = out.iter().filter(|c| c.state == CallState::Ended as i32).collect();
        let started = out.iter().filter(|c| c.state == CallState::Started as i32).count();
        // Five Originates: answered, dial+bridge, busy, missing context, sync answered.
        assert_eq!(started, 5);
        assert_eq!(ended.len(), 5);
        assert!(tracker.is_empty());
        let by_id = |id: &str| ended.iter().find(|c| c.call_id == id).copied().expect(id);
        let first = by_id("1795319248.0");
        assert!(!first.missed);
        assert_eq!(first.hangup_cause, 16);
        assert_eq!(first.caller.as_ref().map(|p| p.number.as_str()), Some("1001"));
        let bridged = by_id("1795319252.4");
        assert!(!bridged.missed && bridged.ringing_at.is_some() && bridged.channels.len() == 4);
        let busy = by_id("1795319257.11");
        assert!(busy.missed);
        assert_eq!(busy.hangup_cause, 17);
        assert_eq!(busy.hangup_cause_text, "User busy");
        let failed = by_id("1795319259.13");
        assert!(failed.missed);
        assert!(failed.duration_ms > 0 && failed.billable_ms == 0);
        // Order per call: started, then ringing/answered, ended last.
        for id in ["1795319248.0", "1795319252.4"] {
            let states: Vec<i32> = out.iter().filter(|c| c.call_id == id).map(|c| c.state).collect();
            assert_eq!(states.first(), Some(&(CallState::Started as i32)));
            assert_eq!(states.last(), Some(&(CallState::Ended as i32)));
            assert!(states.contains(&(CallState::Answered as i32)));
        }
    }
}
