use proptest::prelude::*;

use super::*;

const FIXTURES: &[(&str, &[u8])] = &[
    (
        "01",
        include_bytes!("../../tests/fixtures/asterisk-22.6/01-login-ping-command.server.raw"),
    ),
    (
        "02",
        include_bytes!("../../tests/fixtures/asterisk-22.6/02-md5-challenge-and-bad-login.server.raw"),
    ),
    (
        "03",
        include_bytes!("../../tests/fixtures/asterisk-22.6/03-bad-login.server.raw"),
    ),
    (
        "04",
        include_bytes!("../../tests/fixtures/asterisk-22.6/04-calls-events-lists.server.raw"),
    ),
];

/// A comparable view of a frame: banner text, headers and output, or the error kind.
#[derive(Debug, Clone, PartialEq)]
enum View {
    Banner(String),
    Message(Vec<(String, String)>, Vec<String>),
    Error(ErrorKind),
}

fn view(frame: &Frame) -> View {
    match frame {
        Frame::Banner(b) => View::Banner(b.clone()),
        Frame::Message(m) => View::Message(
            m.headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            m.command_output().into_iter().map(str::to_owned).collect(),
        ),
        Frame::Error(e) => View::Error(e.kind),
    }
}

fn drain(parser: &mut Parser, out: &mut Vec<View>) {
    while let Some(frame) = parser.next_frame() {
        out.push(view(&frame));
    }
}

fn parse_chunks(chunks: &[&[u8]]) -> Vec<View> {
    let mut parser = Parser::default();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        drain(&mut parser, &mut out);
    }
    out
}

fn messages(views: &[View]) -> Vec<&Vec<(String, String)>> {
    views
        .iter()
        .filter_map(|v| match v {
            View::Message(h, _) => Some(h),
            _ => None,
        })
        .collect()
}

#[test]
fn fixture_04_parses_into_banner_and_every_message() {
    let views = parse_chunks(&[FIXTURES[3].1]);
    assert_eq!(
        views.first(),
        Some(&View::Banner("Asterisk Call Manager/11.0.0".into()))
    );
    let msgs = messages(&views);
    assert_eq!(msgs.len(), 193);
    let events = msgs
        .iter()
        .filter(|h| h.first().is_some_and(|(n, _)| n == "Event"))
        .count();
    let responses = msgs
        .iter()
        .filter(|h| h.first().is_some_and(|(n, _)| n == "Response"))
        .count();
    assert_eq!(events + responses, 193);
    assert_eq!(responses, 11);
    // No errors on real Asterisk output.
    assert!(!views.iter().any(|v| matches!(v, View::Error(_))));
    // The login response arrives with the banner and the events after it are kept.
    assert_eq!(msgs[0][0], ("Response".into(), "Success".into()));
    assert_eq!(msgs[1][0], ("Event".into(), "FullyBooted".into()));
    assert_eq!(msgs[2][0], ("Event".into(), "SuccessfulAuth".into()));
}

/// Byte offsets where each message of a fixture ends (after its empty line), the
/// banner line included as the first "message".
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![];
    let banner_end = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| p + 1);
    ends.push(banner_end);
    let mut i = banner_end;
    while let Some(p) = bytes[i..].windows(4).position(|w| w == b"\r\n\r\n") {
        i += p + 4;
        ends.push(i);
    }
    ends
}

/// Every split point of every fixture. The parser's state is empty at each
/// message boundary, so splitting the whole stream at `k` parses exactly like
/// splitting the window of the messages around `k` (the one before, the one
/// holding `k` and the one after): that keeps the test linear in size.
#[test]
fn every_fixture_parses_the_same_at_every_split_point() {
    for (name, bytes) in FIXTURES {
        let ends = boundaries(bytes);
        assert_eq!(
            *ends.last().unwrap_or(&0),
            bytes.len(),
            "fixture {name} ends on a boundary"
        );
        for split in 0..=bytes.len() {
            let holder = ends.iter().position(|&e| e > split).unwrap_or(ends.len() - 1);
            let lo = if holder >= 2 { ends[holder - 2] } else { 0 };
            let hi = ends[(holder + 1).min(ends.len() - 1)];
            let window = &bytes[lo..hi];
            let new_parser = || {
                if lo == 0 {
                    Parser::default()
                } else {
                    Parser::without_banner(Limits::default())
                }
            };
            let mut whole = new_parser();
            let mut want = Vec::new();
            whole.feed(window);
            drain(&mut whole, &mut want);
            let mut parts = new_parser();
            let mut got = Vec::new();
            let (a, b) = window.split_at(split - lo);
            parts.feed(a);
            drain(&mut parts, &mut got);
            parts.feed(b);
            drain(&mut parts, &mut got);
            assert_eq!(got, want, "fixture {name} split at {split}");
            assert_eq!(parts.buffered(), 0);
        }
    }
}

#[test]
fn chunked_at_many_sizes_equals_whole() {
    for (name, bytes) in FIXTURES {
        let whole = parse_chunks(&[bytes]);
        for size in [1, 2, 3, 7, 13, 64, 100, 1000, 4096] {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(parse_chunks(&chunks), whole, "fixture {name} in chunks of {size}");
        }
    }
}

#[test]
fn bare_lf_parses_like_crlf() {
    for (name, bytes) in FIXTURES {
        let lf: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'\r').collect();
        assert_eq!(parse_chunks(&[&lf]), parse_chunks(&[bytes]), "fixture {name}");
    }
    // Mixed endings inside one message.
    let views = parse_chunks(&[b"Asterisk Call Manager/2.10.4\nEvent: A\r\nX: 1\n\r\nEvent: B\n\n"]);
    assert_eq!(views.len(), 3);
    assert_eq!(
        views[1],
        View::Message(vec![("Event".into(), "A".into()), ("X".into(), "1".into())], vec![])
    );
}

#[test]
fn repeated_headers_are_kept_in_order() {
    let mut parser = Parser::without_banner(Limits::default());
    parser.feed(b"Event: VarSet\r\nVariable: A=1\r\nChanVariable: X=y\r\nVariable: B=2\r\nvariable: C=3\r\n\r\n");
    let Some(Frame::Message(m)) = parser.next_frame() else {
        panic!("expected a message");
    };
    assert_eq!(m.get_all("Variable").collect::<Vec<_>>(), ["A=1", "B=2", "C=3"]);
    assert_eq!(m.get("chanvariable"), Some("X=y"));
    assert_eq!(m.headers().nth(2), Some(("ChanVariable", "X=y")));
    assert_eq!(m.len(), 5);
}

#[test]
fn modern_command_output_is_the_output_headers() {
    let views = parse_chunks(&[FIXTURES[0].1]);
    let mut parser = Parser::default();
    parser.feed(FIXTURES[0].1);
    let mut found = None;
    while let Some(frame) = parser.next_frame() {
        if let Frame::Message(m) = frame
            && m.action_id() == Some("a5")
        {
            found = Some(m);
        }
    }
    let m = found.expect("a5 reply");
    assert_eq!(
        m.command_output()[1..],
        ["0 active channels", "0 active calls", "0 calls processed"]
    );
    assert_eq!(views.len(), 12);
}

#[test]
fn old_style_command_output_until_end_command() {
    let wire = b"Response: Follows\r\nPrivilege: Command\r\nActionID: c1\r\n\
Channel              Location  State\n\
Name: looks like a header\n\
\n\
0 active channels\n\
--END COMMAND--\r\n\r\nEvent: After\r\n\r\n";
    for split in 0..=wire.len() {
        let mut parser = Parser::without_banner(Limits::default());
        let (a, b) = wire.split_at(split);
        let mut frames = Vec::new();
        parser.feed(a);
        while let Some(f) = parser.next_frame() {
            frames.push(f);
        }
        parser.feed(b);
        while let Some(f) = parser.next_frame() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 2, "split {split}");
        let Frame::Message(m) = &frames[0] else {
            panic!("expected the reply");
        };
        assert_eq!(m.response(), Some("Follows"));
        assert_eq!(m.action_id(), Some("c1"));
        assert_eq!(
            m.command_output(),
            [
                "Channel              Location  State",
                "Name: looks like a header",
                "",
                "0 active channels"
            ]
        );
        let Frame::Message(after) = &frames[1] else {
            panic!("expected the event");
        };
        assert_eq!(after.event(), Some("After"));
    }
    // Output ending on the same line as the marker (Asterisk 1.4 did that).
    let mut parser = Parser::without_banner(Limits::default());
    parser.feed(b"Response: Follows\r\nActionID: 9\r\nlast line--END COMMAND--\r\n\r\n");
    let Some(Frame::Message(m)) = parser.next_frame() else {
        panic!("expected the reply");
    };
    assert_eq!(m.command_output(), ["last line"]);
}

#[test]
fn long_line_is_an_error_then_parsing_resyncs() {
    let limits = Limits {
        max_line: 32,
        ..Limits::default()
    };
    let long = "X".repeat(100);
    let wire = format!("Event: A\r\n\r\nEvent: Big\r\nData: {long}\r\nMore: 1\r\n\r\nEvent: C\r\n\r\n");
    for split in 0..=wire.len() {
        let mut parser = Parser::without_banner(limits);
        let (a, b) = wire.as_bytes().split_at(split);
        let mut out = Vec::new();
        parser.feed(a);
        drain(&mut parser, &mut out);
        parser.feed(b);
        drain(&mut parser, &mut out);
        let kinds: Vec<_> = out
            .iter()
            .map(|v| match v {
                View::Message(h, _) => h[0].1.clone(),
                View::Error(k) => k.as_str().to_owned(),
                View::Banner(_) => "banner".into(),
            })
            .collect();
        assert_eq!(kinds, ["A", "line_too_long", "C"], "split {split}");
    }
}

#[test]
fn message_and_header_limits_resync() {
    let limits = Limits {
        max_line: 1024,
        max_message: 64,
        max_headers: 4,
    };
    let mut parser = Parser::without_banner(limits);
    parser.feed(b"Event: Many\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\nEvent: Ok\r\n\r\n");
    parser.feed(b"Event: Huge\r\nA: 0123456789012345678901234567890123456789\r\nB: 0123456789012345678901234567890123456789\r\n\r\n");
    parser.feed(b"garbage line\r\nmore\r\n\r\nEvent: Last\r\n\r\n");
    let mut out = Vec::new();
    drain(&mut parser, &mut out);
    let kinds: Vec<_> = out
        .iter()
        .map(|v| match v {
            View::Message(h, _) => h[0].1.clone(),
            View::Error(k) => k.as_str().to_owned(),
            View::Banner(_) => "banner".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["too_many_headers", "Ok", "message_too_big", "malformed_header", "Last"]
    );
}

#[test]
fn unterminated_garbage_is_bounded() {
    let limits = Limits {
        max_line: 100,
        ..Limits::default()
    };
    let mut parser = Parser::without_banner(limits);
    let mut errors = 0;
    for _ in 0..1000 {
        parser.feed(&[b'x'; 64]);
        while let Some(f) = parser.next_frame() {
            assert!(matches!(
                f,
                Frame::Error(ParseError {
                    kind: ErrorKind::LineTooLong,
                    ..
                })
            ));
            errors += 1;
        }
        assert!(parser.buffered() <= 200, "buffer grows: {}", parser.buffered());
    }
    assert_eq!(errors, 1);
    parser.feed(b"\r\n\r\nEvent: Back\r\n\r\n");
    let Some(Frame::Message(m)) = parser.next_frame() else {
        panic!("expected the parser to resync");
    };
    assert_eq!(m.event(), Some("Back"));
}

#[test]
fn invalid_utf8_is_replaced_not_refused() {
    let mut parser = Parser::without_banner(Limits::default());
    parser.feed(b"Event: X\r\nName: caf\xe9 \xff\r\nN2: ok\r\n\r\n");
    let Some(Frame::Message(m)) = parser.next_frame() else {
        panic!("expected a message");
    };
    assert_eq!(m.get("Name"), Some("caf\u{fffd} \u{fffd}"));
    assert_eq!(m.get("N2"), Some("ok"));
}

#[test]
fn header_without_space_and_empty_value() {
    let mut parser = Parser::without_banner(Limits::default());
    parser.feed(b"Event: X\r\nA:1\r\nB: \r\nC:\r\nD: a: b\r\n\r\n");
    let Some(Frame::Message(m)) = parser.next_frame() else {
        panic!("expected a message");
    };
    let h: Vec<_> = m.headers().collect();
    assert_eq!(h, [("Event", "X"), ("A", "1"), ("B", ""), ("C", ""), ("D", "a: b")]);
}

fn arb_message() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,40}"), 1..12)
        .prop_filter("`Response: Follows` switches to free-form output", |m| {
            !m.iter().any(|(n, _)| n.eq_ignore_ascii_case("Response"))
        })
}

proptest! {
    #[test]
    fn any_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)) {
        let limits = Limits { max_line: 64, max_message: 512, max_headers: 8 };
        let mut parser = Parser::new(limits);
        for c in &chunks {
            parser.feed(c);
            while let Some(f) = parser.next_frame() {
                if let Frame::Message(m) = f {
                    for (n, v) in m.headers() {
                        prop_assert!(!n.is_empty());
                        prop_assert!(!n.contains('\n') && !v.contains('\n'));
                    }
                }
            }
            prop_assert!(parser.buffered() <= 512 + 64 + 200);
        }
    }

    #[test]
    fn generated_messages_round_trip_at_any_chunking(
        msgs in prop::collection::vec(arb_message(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        lf_only in any::<bool>(),
    ) {
        let eol = if lf_only { "\n" } else { "\r\n" };
        let mut wire = String::new();
        for m in &msgs {
            for (n, v) in m {
                // The parser strips exactly the one separator space: values round-trip.
                wire.push_str(&format!("{n}: {v}{eol}"));
            }
            wire.push_str(eol);
        }
        let bytes = wire.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&bytes[prev..p]);
            prev = p;
        }
        chunks.push(&bytes[prev..]);
        let mut parser = Parser::without_banner(Limits::default());
        let mut got = Vec::new();
        for c in chunks {
            parser.feed(c);
            while let Some(f) = parser.next_frame() {
                got.push(view(&f));
            }
        }
        let want: Vec<View> = msgs
            .iter()
            .map(|m| {
                let headers = m
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                let output = m
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("Output"))
                    .map(|(_, v)| v.clone())
                    .collect();
                View::Message(headers, output)
            })
            .collect();
        prop_assert_eq!(got, want);
    }
}
