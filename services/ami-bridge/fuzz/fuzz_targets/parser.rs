//! Any bytes, cut anywhere, with small limits: the parser never panics and its
//! buffer stays bounded. Run: `cargo +nightly fuzz run parser` in this folder.
#![no_main]

use ami_bridge::parser::{Frame, Limits, Parser};
use libfuzzer_sys::fuzz_target;

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
