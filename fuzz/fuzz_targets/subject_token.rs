//! Subject token escaping: any string escapes to a token of `[A-Za-z0-9_-]` that
//! unescapes to itself; any token either unescapes or is refused, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_bus::{escape_token, unescape_token};

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let token = escape_token(text);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_eq!(unescape_token(&token).expect("own escape unescapes"), text);
        if let Ok(id) = unescape_token(text) {
            assert_eq!(escape_token(&id), text, "one id has exactly one token");
        }
    }
});
