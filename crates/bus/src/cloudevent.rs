//! CloudEvents 1.0 in the NATS binding's binary mode: the payload is the event's
//! data; the attributes ride in `ce-*` headers, percent-encoded as the HTTP binding
//! (§3.1.3.2) says; `Nats-Msg-Id` equals `ce-id` so JetStream drops duplicates.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The CloudEvents spec version we write and accept.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every JSON payload.
pub const JSON: &str = "application/json";
/// The JetStream de-duplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Space, `"`, `%` and everything outside printable ASCII is percent-encoded.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%').add(0x7f);

// The header names as constants: a name inserted as a `&str` is copied into a new
// buffer on every insert, one allocation per header per event.
const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
const CE_SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
const CE_DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
const CONTENT_TYPE: HeaderName = HeaderName::from_static("content-type");

/// The longest RFC 3339 text [`rfc3339`] writes: `9999-12-31T23:59:59.999999999+23:59`.
pub const RFC3339_MAX_LEN: usize = 35;

/// `time` in RFC 3339, written into `buf` rather than a new `String`, so a
/// producer can put it in a header or a JSON payload without an allocation of its
/// own. Empty when `time` has no RFC 3339 form (a year outside 0-9999, an offset
/// with seconds), as `time`'s own formatter refuses those.
pub fn rfc3339(time: OffsetDateTime, buf: &mut [u8; RFC3339_MAX_LEN]) -> &str {
    let mut rest = &mut buf[..];
    // The length is what the writer took, not the count `format_into` returns:
    // time 0.3.55 leaves the fraction's digits out of that count.
    let written = match time.format_into(&mut rest, &Rfc3339) {
        Ok(_) => RFC3339_MAX_LEN - rest.len(),
        Err(_) => 0,
    };
    buf.get(..written)
        .and_then(|text| std::str::from_utf8(text).ok())
        .unwrap_or_default()
}

/// Why a NATS message is not a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message has no headers at all.
    #[error("message has no headers; expected CloudEvents binary mode (ce-* headers)")]
    NoHeaders,
    /// A required attribute header is absent.
    #[error("missing required header ce-{0}")]
    Missing(&'static str),
    /// `ce-specversion` is not `1.0`.
    #[error("unsupported ce-specversion {0:?}; expected \"1.0\"")]
    SpecVersion(String),
    /// A header value has a bad percent-escape or is not UTF-8.
    #[error("header ce-{name} is not valid percent-encoded UTF-8")]
    Encoding {
        /// The attribute name.
        name: String,
    },
    /// `ce-time` is not RFC 3339.
    #[error("ce-time {0:?} is not an RFC 3339 timestamp")]
    Time(String),
    /// The payload is not the JSON the reader expected.
    #[error("event data does not decode as {type_name}: {source}")]
    Data {
        /// The Rust type asked for.
        type_name: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// One CloudEvent: its attributes and its data bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `id`: a UUIDv7 unless the producer chose one (e.g. a deterministic id for dedup).
    pub id: String,
    /// `source`: a URI-reference naming the producer.
    pub source: String,
    /// `type`, e.g. `switchboard.ami.raw.v1`.
    pub ty: String,
    /// `time`: when the fact happened.
    pub time: Option<OffsetDateTime>,
    /// `subject`: what the event is about inside the source.
    pub subject: Option<String>,
    /// `datacontenttype`, carried as the `content-type` header.
    pub data_content_type: Option<String>,
    /// `dataschema`.
    pub data_schema: Option<String>,
    /// Extension attributes (lower-case names), e.g. `sbdepth`.
    pub extensions: BTreeMap<String, String>,
    /// The data, as sent (JSON for every Switchboard event).
    pub data: Bytes,
}

impl CloudEvent {
    /// A new event with a fresh UUIDv7 id, the current time and raw data.
    pub fn new(source: impl Into<String>, ty: impl Into<String>, data: Bytes) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            ty: ty.into(),
            time: Some(OffsetDateTime::now_utc()),
            subject: None,
            data_content_type: None,
            data_schema: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// A new event whose data is `data` as JSON (the proto3 JSON mapping for proto
    /// types).
    pub fn json<T: Serialize + ?Sized>(
        source: impl Into<String>,
        ty: impl Into<String>,
        data: &T,
    ) -> Result<Self, serde_json::Error> {
        let mut event = Self::new(source, ty, Bytes::from(serde_json::to_vec(data)?));
        event.data_content_type = Some(JSON.to_owned());
        Ok(event)
    }

    /// Sets `subject`.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets `id` (for producers that derive ids so replicas dedup each other).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets `time`.
    pub fn with_time(mut self, time: OffsetDateTime) -> Self {
        self.time = Some(time);
        self
    }

    /// Sets an extension attribute.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// Decodes the data as JSON into `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_slice(&self.data).map_err(|source| DecodeError::Data {
            type_name: std::any::type_name::<T>(),
            source,
        })
    }

    /// The binary-mode headers of this event, with `Nats-Msg-Id` set to the id.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        headers
    }

    /// Writes the binary-mode headers into an existing map (which may already hold
    /// trace context).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        // One allocation per header, the value's own: `into_owned` keeps the
        // encoded `String` when there was something to encode, copies the `&str`
        // once when there was not.
        let mut put = |name: HeaderName, value: &str| {
            headers.insert(name, encode_value(value).into_owned());
        };
        put(CE_SPECVERSION, SPEC_VERSION);
        put(CE_ID, &self.id);
        put(CE_SOURCE, &self.source);
        put(CE_TYPE, &self.ty);
        if let Some(time) = self.time {
            put(CE_TIME, rfc3339(time, &mut [0; RFC3339_MAX_LEN]));
        }
        if let Some(subject) = &self.subject {
            put(CE_SUBJECT, subject);
        }
        if let Some(schema) = &self.data_schema {
            put(CE_DATASCHEMA, schema);
        }
        for (name, value) in &self.extensions {
            headers.insert(format!("ce-{name}"), encode_value(value).into_owned());
        }
        if let Some(content_type) = &self.data_content_type {
            headers.insert(CONTENT_TYPE, content_type.as_str());
        }
        headers.insert(NATS_MSG_ID, self.id.as_str());
    }

    /// Reads an event from a NATS message's headers and payload.
    pub fn from_message(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Self, DecodeError> {
        let headers = headers.ok_or(DecodeError::NoHeaders)?;
        let mut attributes: BTreeMap<String, String> = BTreeMap::new();
        let mut content_type = None;
        for (name, values) in headers.iter() {
            let name = AsRef::<str>::as_ref(name).to_ascii_lowercase();
            let Some(value) = values.first() else { continue };
            if let Some(attribute) = name.strip_prefix("ce-") {
                let decoded = percent_decode_str(value.as_str())
                    .decode_utf8()
                    .map_err(|_| DecodeError::Encoding {
                        name: attribute.to_owned(),
                    })?;
                attributes.insert(attribute.to_owned(), decoded.into_owned());
            } else if name == "content-type" {
                content_type = Some(value.as_str().to_owned());
            }
        }
        let spec = attributes
            .remove("specversion")
            .ok_or(DecodeError::Missing("specversion"))?;
        if spec != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(spec));
        }
        let id = attributes.remove("id").ok_or(DecodeError::Missing("id"))?;
        let source = attributes.remove("source").ok_or(DecodeError::Missing("source"))?;
        let ty = attributes.remove("type").ok_or(DecodeError::Missing("type"))?;
        let time = match attributes.remove("time") {
            Some(text) => Some(OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| DecodeError::Time(text))?),
            None => None,
        };
        let data_content_type = content_type.or_else(|| attributes.remove("datacontenttype"));
        Ok(Self {
            id,
            source,
            ty,
            time,
            subject: attributes.remove("subject"),
            data_content_type,
            data_schema: attributes.remove("dataschema"),
            extensions: attributes,
            data: payload,
        })
    }
}

/// The value as the header carries it: borrowed when nothing needs encoding (most
/// values), so that case costs no allocation here.
fn encode_value(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, HEADER_VALUE).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn headers_round_trip() {
        let event = CloudEvent::json(
            "/switchboard/ami-bridge/pbx1",
            "switchboard.ami.raw.v1",
            &serde_json::json!({"a": 1}),
        )
        .unwrap()
        .with_subject("PJSIP/101-0000 \"x\" 100% é")
        .with_extension("sbdepth", "2");
        let headers = event.to_headers();
        assert_eq!(headers.get("ce-specversion").unwrap().as_str(), "1.0");
        assert_eq!(headers.get(NATS_MSG_ID).unwrap().as_str(), event.id);
        assert_eq!(headers.get("content-type").unwrap().as_str(), JSON);
        assert_eq!(
            headers.get("ce-subject").unwrap().as_str(),
            "PJSIP/101-0000%20%22x%22%20100%25%20%C3%A9"
        );
        let back = CloudEvent::from_message(Some(&headers), event.data.clone()).unwrap();
        let mut expected = event.clone();
        // RFC 3339 keeps nanoseconds, so time survives exactly.
        expected.time = event.time;
        assert_eq!(back, expected);
        assert_eq!(back.data_as::<serde_json::Value>().unwrap()["a"], 1);
    }

    #[test]
    fn missing_and_bad_attributes_are_named() {
        assert!(matches!(
            CloudEvent::from_message(None, Bytes::new()),
            Err(DecodeError::NoHeaders)
        ));
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", "x");
        headers.insert("ce-source", "/s");
        let err = CloudEvent::from_message(Some(&headers), Bytes::new()).unwrap_err();
        assert_eq!(err.to_string(), "missing required header ce-type");
        headers.insert("ce-type", "t");
        headers.insert("ce-time", "yesterday");
        assert!(matches!(
            CloudEvent::from_message(Some(&headers), Bytes::new()),
            Err(DecodeError::Time(_))
        ));
        headers.insert("ce-time", "2026-11-22T10:00:00Z");
        headers.insert("ce-subject", "%FF%FE");
        assert!(matches!(
            CloudEvent::from_message(Some(&headers), Bytes::new()),
            Err(DecodeError::Encoding { .. })
        ));
        headers.insert("ce-subject", "fine");
        headers.insert("ce-specversion", "0.3");
        assert!(matches!(
            CloudEvent::from_message(Some(&headers), Bytes::new()),
            Err(DecodeError::SpecVersion(_))
        ));
    }

    #[test]
    fn rfc3339_refuses_what_time_refuses() {
        let mut buf = [0; RFC3339_MAX_LEN];
        let before_year_0 = OffsetDateTime::UNIX_EPOCH.replace_year(-1).unwrap();
        assert_eq!(rfc3339(before_year_0, &mut buf), "");
        let longest = time::macros::datetime!(9999-12-31 23:59:59.999_999_999 +23:59);
        assert_eq!(rfc3339(longest, &mut buf), "9999-12-31T23:59:59.999999999+23:59");
    }

    proptest! {
        #[test]
        fn rfc3339_is_times_own(seconds in 0i64..253_402_300_800, nanos in 0u32..1_000_000_000, offset in -86_399i32..86_400) {
            let utc = OffsetDateTime::from_unix_timestamp(seconds).unwrap().replace_nanosecond(nanos).unwrap();
            let offset = time::UtcOffset::from_whole_seconds(offset).unwrap();
            let Some(time) = utc.checked_to_offset(offset) else { return Ok(()) };
            let mut buf = [0; RFC3339_MAX_LEN];
            prop_assert_eq!(rfc3339(time, &mut buf), time.format(&Rfc3339).unwrap_or_default());
        }

        #[test]
        fn any_attribute_text_round_trips(subject in any::<String>(), source in "[ -~]{1,40}") {
            let event = CloudEvent::new(source, "t", Bytes::new()).with_subject(subject);
            let headers = event.to_headers();
            for (_, values) in headers.iter() {
                for value in values {
                    prop_assert!(value.as_str().bytes().all(|b| (0x21..0x7f).contains(&b)));
                }
            }
            let back = CloudEvent::from_message(Some(&headers), Bytes::new()).unwrap();
            prop_assert_eq!(back, event);
        }

        #[test]
        fn decoding_never_panics(values in proptest::collection::vec(("[a-z-]{1,16}", "[ -~]{0,40}"), 0..8)) {
            let mut headers = HeaderMap::new();
            for (name, value) in &values {
                headers.insert(name.as_str(), value.as_str());
            }
            let _ = CloudEvent::from_message(Some(&headers), Bytes::new());
        }
    }
}
