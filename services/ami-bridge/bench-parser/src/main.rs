//! Parser throughput on one core: a realistic mix (every message of the real
//! Asterisk 22.6 transcript 04, calls, lists and all) fed in 64 KiB reads, the
//! way a socket delivers them. Prints a table. `cargo run --release`.

#[path = "../../src/parser.rs"]
#[allow(dead_code, missing_docs)]
mod parser;

use std::time::Instant;

use parser::{Frame, Parser};

const MIX: &[u8] = include_bytes!("../../tests/fixtures/asterisk-22.6/04-calls-events-lists.server.raw");

fn main() {
    // The transcript without its banner, repeated to ~64 MiB.
    let body = MIX.splitn(2, |&b| b == b'\n').nth(1).unwrap_or_default();
    let copies = (64 << 20) / body.len();
    let stream: Vec<u8> = body.repeat(copies);
    let per_copy = {
        let mut p = Parser::without_banner(parser::Limits::default());
        p.feed(body);
        std::iter::from_fn(|| p.next_frame()).count()
    };
    println!("| read size | messages | bytes | seconds | messages/s | MB/s |");
    println!("|---|---|---|---|---|---|");
    for read in [4096usize, 65536] {
        let mut best = f64::MAX;
        let mut total = 0usize;
        for _ in 0..5 {
            let mut p = Parser::without_banner(parser::Limits::default());
            let start = Instant::now();
            let mut n = 0usize;
            let mut header_count = 0usize;
            for chunk in stream.chunks(read) {
                p.feed(chunk);
                while let Some(frame) = p.next_frame() {
                    if let Frame::Message(m) = frame {
                        header_count += m.len();
                        n += 1;
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(n, per_copy * copies);
            assert!(header_count > n);
            total = n;
            best = best.min(secs);
        }
        println!(
            "| {read} | {total} | {} | {best:.3} | {:.0} | {:.0} |",
            stream.len(),
            total as f64 / best,
            stream.len() as f64 / best / 1e6
        );
    }
    println!("(best of 5; avg message {} bytes)", body.len() / per_copy);
}
