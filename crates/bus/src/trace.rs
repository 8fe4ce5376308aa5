//! W3C trace context (`traceparent`, `tracestate`) through NATS headers, so one
//! trace follows an event across services.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| AsRef::<str>::as_ref(name)).collect()
    }
}

/// Writes the current span's trace context into `headers` (nothing when the span
/// is not sampled or telemetry export is off).
pub fn inject_current(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(headers) = headers
        && headers.get("traceparent").is_some()
    {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(context);
    }
}

/// The `traceparent` header value of the current span, if it has one.
pub fn current_traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject_current(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}
