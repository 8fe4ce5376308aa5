//! The AMI wire parser: streaming, incremental over partial reads, zero-copy.
//!
//! Bytes go in with [`Parser::feed`] as they arrive from the socket, in pieces of
//! any size; [`Parser::next_frame`] yields what is complete so far: the banner
//! line, whole messages, or a [`ParseError`] for input past a limit (after which
//! the parser resyncs at the next empty line and goes on).
//!
//! - Messages end at an empty line; `\r\n` and bare `\n` are both accepted.
//! - Headers are kept in wire order, repeats included, as ranges into one shared
//!   buffer (no copy per header): the message's bytes are split off the read
//!   buffer, not copied.
//! - `Response: Follows` ... `--END COMMAND--` (the pre-14 Command style): the
//!   free-form lines are collected as output, blank lines included. The modern
//!   style (repeated `Output:` headers) needs nothing special.
//! - Any bytes in: no panic. Invalid UTF-8 is replaced (U+FFFD), never refused.

use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// How big a line, a message and a header list may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, in bytes, without its line ending.
    pub max_line: usize,
    /// Biggest message, in bytes, line endings included.
    pub max_message: usize,
    /// Most header (and output) lines in one message.
    pub max_headers: usize,
}

impl Default for Limits {
    /// Generous for real PBXs (a `GetConfigJSON` reply of a big dialplan is a few
    /// hundred KiB), small enough that a broken peer cannot exhaust memory.
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            max_message: 4 * 1024 * 1024,
            max_headers: 16 * 1024,
        }
    }
}

/// Which limit or rule a message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A line longer than [`Limits::max_line`].
    LineTooLong,
    /// A message bigger than [`Limits::max_message`].
    MessageTooBig,
    /// More header lines than [`Limits::max_headers`].
    TooManyHeaders,
    /// A line that is not `Name: value` outside command output.
    MalformedHeader,
}

impl ErrorKind {
    /// A stable name for the bus (`ProtocolError.kind`) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LineTooLong => "line_too_long",
            Self::MessageTooBig => "message_too_big",
            Self::TooManyHeaders => "too_many_headers",
            Self::MalformedHeader => "malformed_header",
        }
    }
}

/// A message the parser dropped, and why. The parser skips to the next empty line
/// and goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Which rule was broken.
    pub kind: ErrorKind,
    /// What happened, for people.
    pub message: String,
    /// Bytes of the broken message dropped when the error was found (the rest up
    /// to the next empty line is skipped too).
    pub bytes_skipped: u64,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ParseError {}

/// One thing the parser found.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The first line of the session, e.g. `Asterisk Call Manager/11.0.0`.
    Banner(String),
    /// A complete message.
    Message(Message),
    /// A dropped message; the session goes on.
    Error(ParseError),
}

/// One AMI message: a response or an event. Cheap to clone (shares its bytes).
#[derive(Clone, PartialEq)]
pub struct Message {
    /// The message's text, checked to be UTF-8 once, when the message is made (so a
    /// header is a slice of it, not checked again).
    text: ByteString,
    /// `(name, value)` ranges into `text`, in wire order.
    headers: Vec<(Range<u32>, Range<u32>)>,
    /// Free-form lines of a `Response: Follows` command reply.
    output: Vec<Range<u32>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.headers()).finish()
    }
}

impl Message {
    /// Builds a message from headers (tests, the simulator, typed actions).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut text = String::new();
        let mut ranges = Vec::new();
        for (name, value) in headers {
            let n0 = text.len();
            text.push_str(name);
            let n1 = text.len();
            text.push_str(": ");
            let v0 = text.len();
            text.push_str(value);
            let v1 = text.len();
            text.push('\n');
            ranges.push((to_u32(n0)..to_u32(n1), to_u32(v0)..to_u32(v1)));
        }
        Self {
            text: ByteString::from(text),
            headers: ranges,
            output: Vec::new(),
        }
    }

    fn str_at(&self, range: &Range<u32>) -> &str {
        // Ranges end on ASCII delimiters, so they are on character boundaries.
        self.text
            .get(range.start as usize..range.end as usize)
            .unwrap_or_default()
    }

    /// Every header in wire order, repeats included.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.headers.iter().map(|(n, v)| (self.str_at(n), self.str_at(v)))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// True when the message has no header.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The first value of header `name` (case-insensitive, as Asterisk compares).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of header `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The `Event:` header, when this is an event.
    pub fn event(&self) -> Option<&str> {
        self.get("Event")
    }

    /// The `Response:` header, when this is a response.
    pub fn response(&self) -> Option<&str> {
        self.get("Response")
    }

    /// The `ActionID:` header.
    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// Command output in either style: the free-form lines of `Response: Follows`
    /// (pre-14), or the repeated `Output:` headers (14+).
    pub fn command_output(&self) -> Vec<&str> {
        if self.output.is_empty() {
            self.get_all("Output").collect()
        } else {
            self.output.iter().map(|r| self.str_at(r)).collect()
        }
    }

    /// The message's bytes as received (line endings normalised only where the
    /// input was not valid UTF-8).
    pub fn text(&self) -> &Bytes {
        self.text.as_bytes()
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

const END_COMMAND: &[u8] = b"--END COMMAND--";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first line.
    Banner,
    /// Reading header lines of a message (or between messages).
    Headers,
    /// Inside `Response: Follows` output, until `--END COMMAND--`.
    Output,
    /// Dropping bytes until the next empty line.
    Skip,
}

/// What the current line holds while skipping (an empty line ends the skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkipLine {
    Empty,
    Cr,
    Text,
}

/// The streaming parser of one session. See the module docs.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    buf: BytesMut,
    state: State,
    /// Where the next unscanned line starts, relative to `buf`.
    line_start: usize,
    /// Header ranges of the message being read, relative to `buf`.
    headers: Vec<(Range<u32>, Range<u32>)>,
    output: Vec<Range<u32>>,
    /// In `Skip`: what the current line holds so far.
    skip_line: SkipLine,
    /// True once a message has a `Response: Follows` header.
    follows: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Parser {
    /// A parser expecting the banner first.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: BytesMut::with_capacity(64 * 1024),
            state: State::Banner,
            line_start: 0,
            headers: Vec::new(),
            output: Vec::new(),
            skip_line: SkipLine::Empty,
            follows: false,
        }
    }

    /// A parser for a stream that has no banner (starts with messages).
    pub fn without_banner(limits: Limits) -> Self {
        let mut parser = Self::new(limits);
        parser.state = State::Headers;
        parser
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The read buffer, for reading straight into it (`AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, or `None` until more bytes are fed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.state == State::Skip {
                if !self.skip_to_empty_line() {
                    return None;
                }
                continue;
            }
            let rest = self.buf.get(self.line_start..).unwrap_or_default();
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > self.limits.max_line {
                    let message = format!("a line exceeds {} bytes", self.limits.max_line);
                    return Some(self.fail(ErrorKind::LineTooLong, message, false));
                }
                return None;
            };
            let start = self.line_start;
            let mut end = start + nl;
            self.line_start = end + 1;
            if end > start && self.buf.get(end - 1) == Some(&b'\r') {
                end -= 1;
            }
            if end - start > self.limits.max_line {
                let message = format!("a line exceeds {} bytes", self.limits.max_line);
                return Some(self.fail(ErrorKind::LineTooLong, message, true));
            }
            if let Some(frame) = self.line(start, end) {
                return Some(frame);
            }
        }
    }

    /// Handles one line `buf[start..end]` (without its ending).
    fn line(&mut self, start: usize, end: usize) -> Option<Frame> {
        match self.state {
            State::Banner => {
                self.state = State::Headers;
                let banner = lossy(self.buf.get(start..end).unwrap_or_default());
                self.consume_to(self.line_start);
                Some(Frame::Banner(banner))
            }
            State::Headers => {
                if start == end {
                    if self.headers.is_empty() {
                        // A blank line between messages: nothing to return.
                        self.consume_to(self.line_start);
                        return None;
                    }
                    return Some(self.finish(self.line_start));
                }
                if self.line_start > self.limits.max_message {
                    return Some(self.fail(
                        ErrorKind::MessageTooBig,
                        format!("a message exceeds {} bytes", self.limits.max_message),
                        true,
                    ));
                }
                if self.headers.len() + self.output.len() >= self.limits.max_headers {
                    return Some(self.fail(
                        ErrorKind::TooManyHeaders,
                        format!("a message has more than {} headers", self.limits.max_headers),
                        true,
                    ));
                }
                let line = self.buf.get(start..end).unwrap_or_default();
                let split = header_split(line).filter(|&(name_len, _)| {
                    // After `Response: Follows` Asterisk (< 14) wrote only these
                    // headers before the free-form output.
                    !self.follows
                        || line.get(..name_len).is_some_and(|n| {
                            n.eq_ignore_ascii_case(b"Privilege") || n.eq_ignore_ascii_case(b"ActionID")
                        })
                });
                match split {
                    Some((name_len, value_off)) => {
                        let name = to_u32(start)..to_u32(start + name_len);
                        let value = to_u32(start + value_off)..to_u32(end);
                        if !self.follows
                            && line
                                .get(..name_len)
                                .is_some_and(|n| n.eq_ignore_ascii_case(b"Response"))
                            && line
                                .get(value_off..)
                                .is_some_and(|v| v.eq_ignore_ascii_case(b"Follows"))
                        {
                            self.follows = true;
                        }
                        self.headers.push((name, value));
                        None
                    }
                    None if self.follows => {
                        // First free-form line of old-style command output.
                        self.state = State::Output;
                        self.output_line(start, end)
                    }
                    None => Some(self.fail(
                        ErrorKind::MalformedHeader,
                        format!("a line without `Name: value`: {:?}", preview(line)),
                        true,
                    )),
                }
            }
            State::Output => {
                if self.line_start > self.limits.max_message {
                    return Some(self.fail(
                        ErrorKind::MessageTooBig,
                        format!("a message exceeds {} bytes", self.limits.max_message),
                        true,
                    ));
                }
                if self.headers.len() + self.output.len() >= self.limits.max_headers {
                    return Some(self.fail(
                        ErrorKind::TooManyHeaders,
                        format!("a message has more than {} output lines", self.limits.max_headers),
                        true,
                    ));
                }
                self.output_line(start, end)
            }
            State::Skip => None,
        }
    }

    /// One line of `Response: Follows` output; `--END COMMAND--` ends the message.
    fn output_line(&mut self, start: usize, end: usize) -> Option<Frame> {
        let line = self.buf.get(start..end).unwrap_or_default();
        if let Some(before) = line.strip_suffix(END_COMMAND) {
            if !before.is_empty() {
                self.output.push(to_u32(start)..to_u32(start + before.len()));
            }
            return Some(self.finish(self.line_start));
        }
        self.output.push(to_u32(start)..to_u32(end));
        None
    }

    /// Completes the message ending at `buf[..end]`.
    fn finish(&mut self, end: usize) -> Frame {
        let raw = self.buf.split_to(end).freeze();
        self.line_start = 0;
        self.state = State::Headers;
        self.follows = false;
        // The next message is likely the same size: one allocation, no regrowth.
        let capacity = self.headers.len().next_power_of_two();
        let mut headers = std::mem::replace(&mut self.headers, Vec::with_capacity(capacity));
        let mut output = std::mem::take(&mut self.output);
        let text = match ByteString::try_from(raw.clone()) {
            Ok(text) => text,
            Err(_) => {
                // Rare: rebuild with replacement characters and new ranges.
                ByteString::from(Message::rebuild_lossy(&raw, &mut headers, &mut output))
            }
        };
        Frame::Message(Message { text, headers, output })
    }

    /// Drops the message being read and starts skipping to the next empty line.
    /// `line_complete`: the offending line ended (its `\n` was seen), so the
    /// bytes after it start a fresh line; otherwise everything buffered goes.
    fn fail(&mut self, kind: ErrorKind, message: String, line_complete: bool) -> Frame {
        let drop = if line_complete {
            self.line_start.min(self.buf.len())
        } else {
            self.buf.len()
        };
        let _ = self.buf.split_to(drop);
        self.headers.clear();
        self.output.clear();
        self.follows = false;
        self.line_start = 0;
        self.state = State::Skip;
        self.skip_line = if line_complete { SkipLine::Empty } else { SkipLine::Text };
        Frame::Error(ParseError {
            kind,
            message,
            bytes_skipped: drop as u64,
        })
    }

    /// In `Skip`: drops bytes up to and including the next empty line. True when
    /// found (state back to `Headers`), false when more bytes are needed.
    fn skip_to_empty_line(&mut self) -> bool {
        let mut i = 0;
        let len = self.buf.len();
        while let Some(&b) = self.buf.get(i) {
            i += 1;
            match (b, self.skip_line) {
                (b'\n', SkipLine::Empty | SkipLine::Cr) => {
                    let _ = self.buf.split_to(i);
                    self.state = State::Headers;
                    self.skip_line = SkipLine::Empty;
                    return true;
                }
                (b'\n', SkipLine::Text) => self.skip_line = SkipLine::Empty,
                (b'\r', SkipLine::Empty) => self.skip_line = SkipLine::Cr,
                _ => {
                    self.skip_line = SkipLine::Text;
                    // Jump to the end of this line without looking at each byte.
                    match memchr::memchr(b'\n', self.buf.get(i..).unwrap_or_default()) {
                        Some(nl) => i += nl,
                        None => i = len,
                    }
                }
            }
        }
        let _ = self.buf.split_to(len);
        false
    }

    fn consume_to(&mut self, end: usize) {
        let _ = self.buf.split_to(end.min(self.buf.len()));
        self.line_start = 0;
    }
}

impl Message {
    /// Rebuilds `raw` as valid UTF-8, remapping the ranges.
    fn rebuild_lossy(raw: &[u8], headers: &mut [(Range<u32>, Range<u32>)], output: &mut [Range<u32>]) -> String {
        let mut text = String::with_capacity(raw.len() + 16);
        let piece = |r: &mut Range<u32>, text: &mut String| {
            let s = raw.get(r.start as usize..r.end as usize).unwrap_or_default();
            let start = text.len();
            text.push_str(&String::from_utf8_lossy(s));
            *r = to_u32(start)..to_u32(text.len());
        };
        for (n, v) in headers.iter_mut() {
            piece(n, &mut text);
            text.push_str(": ");
            piece(v, &mut text);
            text.push('\n');
        }
        for o in output.iter_mut() {
            piece(o, &mut text);
            text.push('\n');
        }
        text
    }
}

/// Splits `Name: value` (also `Name:value`); returns the name's length and where
/// the value starts. The name is non-empty and has no space (that keeps free-form
/// command output such as `Asterisk 22.6.0 built by ...` out of the headers).
fn header_split(line: &[u8]) -> Option<(usize, usize)> {
    let colon = memchr::memchr(b':', line)?;
    let name = line.get(..colon)?;
    if name.is_empty() || name.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let mut value = colon + 1;
    if line.get(value) == Some(&b' ') {
        value += 1;
    }
    Some((colon, value))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn preview(line: &[u8]) -> String {
    let cut = line.get(..line.len().min(60)).unwrap_or_default();
    lossy(cut)
}

#[cfg(test)]
mod tests;
