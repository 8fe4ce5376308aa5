//! Any bytes, cut anywhere, with small limits: the parser never panics and its
//! buffer stays bounded. Run: `cargo +nightly fuzz run parser` in this folder.
#![no_main]

#[path = "../../src/parser.rs"]
#[allow(dead_code, missing_docs)]
mod parser;

use libfuzzer_sys::fuzz_target;
use parser::{Frame, Limits, Parser};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line: 128,
        max_message: 1024,
        max_headers: 16,
    };
    let (cuts, body) = data.split_at(data.len().min(4));
    let mut parser = Parser::new(limits);
    let mut rest = body;
    for &cut in cuts {
        let (a, b) = rest.split_at((cut as usize).min(rest.len()));
        parser.feed(a);
        rest = b;
        while let Some(frame) = parser.next_frame() {
            if let Frame::Message(m) = frame {
                for (name, value) in m.headers() {
                    assert!(!name.contains('\n') && !value.contains('\n'));
                }
                let _ = m.command_output();
            }
        }
        assert!(parser.buffered() <= 1024 + 128 + 256);
    }
    parser.feed(rest);
    while parser.next_frame().is_some() {}
});
