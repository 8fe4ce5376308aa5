//! Running rendered actions. Each returns the proto `ActionResult` (what the result
//! event carries) and a JSON view for the following actions' `steps.<name>`.

pub mod exec;
pub mod http;
pub mod nats;
pub mod sign;

use std::time::Instant;

use serde_json::{Value, json};
use switchboard_proto::hook::v1::ActionResult;

/// Text of at most `limit` bytes (cut at a char boundary) and whether it was cut.
pub fn capped(bytes: &[u8], limit: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= limit {
        return (text.into_owned(), false);
    }
    let mut cut = limit;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_owned(), true)
}

/// A result for an action named `name` of `kind`, started at `started`.
pub fn result(name: &str, kind: &str, started: Instant) -> ActionResult {
    ActionResult {
        name: name.to_owned(),
        kind: kind.to_owned(),
        attempts: 1,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..ActionResult::default()
    }
}

/// The `steps.<name>` view of a result: `success`, `exit_code`, `status`, `output`,
/// `stderr`, `error`, and `reply` (the output parsed as JSON, when it is).
pub fn step_view(result: &ActionResult) -> Value {
    let reply = serde_json::from_str::<Value>(&result.output).unwrap_or(Value::Null);
    json!({
        "success": result.success,
        "exit_code": result.exit_code,
        "status": result.status_code,
        "output": result.output,
        "stderr": result.stderr,
        "error": result.error,
        "attempts": result.attempts,
        "reply": reply,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capping_respects_char_boundaries() {
        assert_eq!(capped(b"hello", 10), ("hello".to_owned(), false));
        assert_eq!(capped(b"hello", 3), ("hel".to_owned(), true));
        assert_eq!(capped("żółw".as_bytes(), 3), ("ż".to_owned(), true));
    }
}
