//! CloudEvents decoding from NATS headers and payload: any bytes, no panic; what
//! decodes re-encodes to the same attributes.
#![no_main]

use async_nats::HeaderMap;
use libfuzzer_sys::fuzz_target;
use switchboard_bus::CloudEvent;

fuzz_target!(|input: &[u8]| {
    // Input layout: header lines `name: value` separated by '\n', then a NUL, then the payload.
    let (head, payload) = match input.iter().position(|&b| b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else { continue };
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                continue;
            }
            headers.insert(name, value.trim());
        }
    }
    if let Ok(event) = CloudEvent::from_message(Some(&headers), bytes::Bytes::copy_from_slice(payload)) {
        let mut again = HeaderMap::new();
        event.write_headers(&mut again);
        let round = CloudEvent::from_message(Some(&again), event.data.clone()).expect("re-encoded event decodes");
        assert_eq!(round.id, event.id);
        assert_eq!(round.ty, event.ty);
        assert_eq!(round.source, event.source);
    }
    let _ = CloudEvent::from_message(None, bytes::Bytes::copy_from_slice(payload));
});
