//! `publish` and `request` on the bus.

use std::time::Instant;

use bytes::Bytes;
use switchboard_bus::Bus;
use switchboard_proto::hook::v1::ActionResult;

use super::{capped, result};
use crate::render::{RenderedPublish, RenderedRequest};
use crate::trigger::DEPTH_EXTENSION;

/// Publishes `spec` as a CloudEvent with id `id` (stable across redeliveries, so
/// JetStream drops a repeat) and the next depth. Events and pushes go to JetStream
/// and wait for the ack; other subjects go to core NATS.
pub async fn publish(bus: &Bus, name: &str, spec: &RenderedPublish, id: String, depth: u32) -> ActionResult {
    let started = Instant::now();
    let event = match bus.event(&spec.ty, &spec.data) {
        Ok(event) => event.with_id(id).with_extension(DEPTH_EXTENSION, depth.to_string()),
        Err(e) => {
            let mut r = result(name, "publish", started);
            r.error = e.to_string();
            return r;
        }
    };
    let prefix = bus.subjects().prefix();
    let durable = [format!("{prefix}.evt."), format!("{prefix}.push.")]
        .iter()
        .any(|p| spec.subject.starts_with(p.as_str()));
    let outcome = if durable {
        bus.publish(spec.subject.clone(), &event).await.map(|_| ())
    } else {
        bus.publish_ephemeral(spec.subject.clone(), &event).await
    };
    let mut r = result(name, "publish", started);
    match outcome {
        Ok(()) => r.success = true,
        Err(e) => r.error = e.to_string(),
    }
    r
}

/// Sends a request and waits for the reply; the reply (capped) is the output, and a
/// rejected command (`sb-status` error) is a failure carrying the error body.
pub async fn request(bus: &Bus, name: &str, spec: &RenderedRequest, output_limit: usize) -> ActionResult {
    let started = Instant::now();
    let payload = match serde_json::to_vec(&spec.data) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            let mut r = result(name, "request", started);
            r.error = e.to_string();
            return r;
        }
    };
    let reply = bus.request_raw(&spec.subject, payload, Some(spec.timeout)).await;
    let mut r = result(name, "request", started);
    match reply {
        Ok(message) => {
            let (output, truncated) = capped(&message.payload, output_limit);
            r.output = output;
            r.truncated = truncated;
            match switchboard_bus::command::decode_reply::<serde_json::Value>(
                &spec.subject,
                message.headers.as_ref(),
                &message.payload,
            ) {
                Ok(_) => r.success = true,
                Err(e) => r.error = e.to_string(),
            }
        }
        Err(e) => r.error = e.to_string(),
    }
    r
}
