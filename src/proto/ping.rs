//! The ping protocol (DESIGN.md, "Protocols"): a line `PING` (any case) ending in `\r\n` gets
//! `PONG\r\n`; any other line gets `ERROR\r\n`. A line is everything up to and including `\n`.
//! A line longer than [`PingParser::max_line`] bytes before its `\n` closes the connection, whether its
//! bytes arrive in one packet or many, so every server answers the same bytes for the same
//! stream however the stream is split.

// Not `pub`: the C header is generated from this crate and must not carry it.
const MAX_LINE: usize = 1024;
/// Reply to a ping.
pub const PONG: &[u8] = b"PONG\r\n";
/// Reply to anything else.
pub const ERROR: &[u8] = b"ERROR\r\n";

/// What the connection should do after [`PingParser::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection open.
    Continue,
    /// A line exceeded [`PingParser::max_line`]: send the replies produced so far, then close.
    Close,
}

/// Per-connection parser state: the unfinished line carried between packets.
#[derive(Default, Debug)]
pub struct PingParser {
    partial: Vec<u8>,
}

fn is_ping(line: &[u8]) -> bool {
    line.len() == 6 && line[..4].eq_ignore_ascii_case(b"PING") && &line[4..] == b"\r\n"
}

impl PingParser {
    /// Longest line accepted, not counting its `\n`: 1 KiB.
    pub const fn max_line() -> usize {
        MAX_LINE
    }

    /// A parser with no pending bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `data`, appending one reply per complete line to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Verdict {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (line, rest) = data.split_at(nl + 1);
                    data = rest;
                    if self.partial.is_empty() {
                        if line.len() - 1 > MAX_LINE {
                            return Verdict::Close;
                        }
                        out.extend_from_slice(if is_ping(line) { PONG } else { ERROR });
                    } else {
                        if self.partial.len() + line.len() - 1 > MAX_LINE {
                            return Verdict::Close;
                        }
                        self.partial.extend_from_slice(line);
                        out.extend_from_slice(if is_ping(&self.partial) { PONG } else { ERROR });
                        self.partial.clear();
                    }
                }
                None => {
                    if self.partial.len() + data.len() > MAX_LINE {
                        return Verdict::Close;
                    }
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Verdict) {
        let mut p = PingParser::new();
        let mut out = Vec::new();
        for c in chunks {
            if p.feed(c, &mut out) == Verdict::Close {
                return (out, Verdict::Close);
            }
        }
        (out, Verdict::Continue)
    }

    #[test]
    fn ping_any_case_gets_pong() {
        assert_eq!(run(&[b"PING\r\nping\r\nPiNg\r\n"]).0, b"PONG\r\nPONG\r\nPONG\r\n");
    }

    #[test]
    fn other_lines_get_error() {
        assert_eq!(
            run(&[b"PING\n", b"PINGS\r\n", b"\r\n", b"\n", b" PING\r\n"]).0,
            [ERROR; 5].concat()
        );
    }

    #[test]
    fn split_anywhere_gives_the_same_answer() {
        let stream = b"PING\r\nfoo\r\nping\r\n";
        let whole = run(&[stream]).0;
        for i in 0..stream.len() {
            for j in i..stream.len() {
                assert_eq!(run(&[&stream[..i], &stream[i..j], &stream[j..]]).0, whole);
            }
        }
    }

    #[test]
    fn line_limit_closes_however_it_is_split() {
        let mut long = vec![b'a'; MAX_LINE + 1];
        long.extend_from_slice(b"\n");
        assert_eq!(run(&[b"PING\r\n", &long]), (PONG.to_vec(), Verdict::Close));
        assert_eq!(run(&[b"PING\r\n", &long[..10], &long[10..]]), (PONG.to_vec(), Verdict::Close));
        let mut ok = vec![b'a'; MAX_LINE];
        ok.push(b'\n');
        assert_eq!(run(&[&ok[..500], &ok[500..]]), (ERROR.to_vec(), Verdict::Continue));
        assert_eq!(run(&[&vec![b'x'; MAX_LINE + 1]]).1, Verdict::Close);
    }
}
