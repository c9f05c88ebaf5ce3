//! The ping protocol's input path (`p99::proto::ping::PingParser`, used by pingserver-rs on
//! the engine): a byte stream split into receive buffers anywhere must get exactly the
//! replies, and the close, that a whole-stream reference reading of DESIGN.md's rule gives.
//!
//! Input: one byte of split count, that many split points (u16 each), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p99::proto::ping::{PingParser, Verdict, ERROR, PONG};
use p99_fuzz::Bytes;

/// The rule read off the whole stream at once: each `\n`-terminated line gets PONG if it is
/// exactly `PING\r\n` in any case, else ERROR; a line (or unfinished tail) longer than
/// `max_line` bytes before its `\n` closes the connection after the replies before it.
fn reference(stream: &[u8]) -> (Vec<u8>, Verdict) {
    let max = PingParser::max_line();
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
            return (out, if rest.len() > max { Verdict::Close } else { Verdict::Continue });
        };
        if nl > max {
            return (out, Verdict::Close);
        }
        let line = &rest[..=nl];
        let ping =
            line.len() == 6 && line[..4].eq_ignore_ascii_case(b"PING") && &line[4..] == b"\r\n";
        out.extend_from_slice(if ping { PONG } else { ERROR });
        rest = &rest[nl + 1..];
    }
    (out, Verdict::Continue)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let nsplits = b.u8() as usize % 16;
    let mut cuts: Vec<usize> = (0..nsplits).map(|_| b.u16() as usize).collect();
    let stream = b.rest();
    for c in &mut cuts {
        *c %= stream.len() + 1;
    }
    cuts.sort_unstable();
    cuts.push(stream.len());

    let mut parser = PingParser::new();
    let mut out = Vec::new();
    let mut verdict = Verdict::Continue;
    let mut at = 0;
    for &c in &cuts {
        if parser.feed(&stream[at..c], &mut out) == Verdict::Close {
            verdict = Verdict::Close;
            break;
        }
        at = c;
    }
    let (want, want_verdict) = reference(stream);
    assert_eq!(verdict, want_verdict, "close decision differs for splits {cuts:?}");
    assert_eq!(out, want, "replies differ for splits {cuts:?}");
});
