//! What goes on the wire: requests for ping and the memcache text protocol, the parsers for
//! their answers, key popularity (uniform or Zipf), and values that can be checked when they come
//! back (each value and its flags are a function of the key, so a value for the wrong key, a
//! truncated or corrupted value is an error, never a hit).

use crate::config::{Config, Popularity};

/// xoshiro256** seeded by splitmix64: fast, good enough for workload choices.
#[derive(Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Zipf-distributed ranks in [0, n) by the method of Gray et al. ("Quickly generating
/// billion-record synthetic databases", SIGMOD '94), as YCSB uses it: O(n) set-up, O(1) draws.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n, theta, alpha, zetan, eta }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if self.n >= 2 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

/// Key popularity: which key a request names.
pub enum Chooser {
    Uniform(u64),
    /// Ranks are scattered over the key space so the hot keys are not neighbours.
    Zipf(Zipf, u64),
}

impl Chooser {
    pub fn new(keys: u64, pop: Popularity) -> Chooser {
        match pop {
            Popularity::Uniform => Chooser::Uniform(keys),
            Popularity::Zipf(s) => Chooser::Zipf(Zipf::new(keys, s), keys),
        }
    }

    pub fn pick(&self, rng: &mut Rng) -> u64 {
        match self {
            Chooser::Uniform(n) => rng.below(*n),
            Chooser::Zipf(z, n) => {
                let rank = z.sample(rng);
                // A fixed odd multiplier permutes ranks modulo a power of two; fold into [0, n).
                scatter(rank, *n)
            }
        }
    }
}

fn scatter(rank: u64, n: u64) -> u64 {
    // Multiplication by an odd constant modulo 2^k is a bijection; cycle-walk until inside [0, n).
    let bits = 64 - (n.max(2) - 1).leading_zeros();
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let mut x = rank;
    loop {
        x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15 | 1).wrapping_add(0x632b_e59b_d9b4_e019) & mask;
        if x < n {
            return x;
        }
    }
}

/// Keys are "p99:" + the key number zero-padded to the key size; values and flags are derived
/// from the key number.
#[derive(Clone)]
pub struct KeySpace {
    pub key_size: usize,
    pub value_size: usize,
    pub keys: u64,
}

const KEY_PREFIX: &[u8] = b"p99:";

impl KeySpace {
    pub fn new(c: &Config) -> KeySpace {
        KeySpace { key_size: c.key_size, value_size: c.value_size, keys: c.keys }
    }

    /// How much of "p99:" fits in front of the widest key number.
    fn prefix_len(&self) -> usize {
        let digits = (self.keys.max(2) - 1).to_string().len();
        KEY_PREFIX.len().min(self.key_size - digits)
    }

    pub fn write_key(&self, idx: u64, out: &mut Vec<u8>) {
        let plen = self.prefix_len();
        out.extend_from_slice(&KEY_PREFIX[..plen]);
        let width = self.key_size - plen;
        let start = out.len();
        out.resize(start + width, b'0');
        let mut v = idx;
        let mut pos = start + width;
        while v > 0 && pos > start {
            pos -= 1;
            out[pos] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }

    /// The key number of a key this key space wrote, or None.
    pub fn parse_key(&self, key: &[u8]) -> Option<u64> {
        let plen = self.prefix_len();
        if key.len() != self.key_size || key[..plen] != KEY_PREFIX[..plen] {
            return None;
        }
        let mut v: u64 = 0;
        for &b in &key[plen..] {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
        }
        (v < self.keys).then_some(v)
    }

    pub fn flags_for(idx: u64) -> u32 {
        (idx.wrapping_mul(2_654_435_761) >> 7) as u32 & 0xffff
    }

    /// Appends the value of key `idx`: printable bytes from a generator seeded by the key number,
    /// starting with the key number itself so a human reading a dump sees whose value it is.
    pub fn write_value(&self, idx: u64, out: &mut Vec<u8>) {
        let start = out.len();
        let mut rng = Rng::new(idx ^ 0x5bd1_e995);
        let head = format!("{idx}:");
        out.extend_from_slice(&head.as_bytes()[..head.len().min(self.value_size)]);
        while out.len() - start < self.value_size {
            let r = rng.next_u64();
            for i in 0..8 {
                if out.len() - start == self.value_size {
                    break;
                }
                out.push(b'a' + ((r >> (i * 8)) as u8 % 26));
            }
        }
    }

    pub fn value_matches(&self, idx: u64, got: &[u8], scratch: &mut Vec<u8>) -> bool {
        if got.len() != self.value_size {
            return false;
        }
        scratch.clear();
        self.write_value(idx, scratch);
        scratch.as_slice() == got
    }
}

/// The answer to a ping; anything else (ERROR, garbage) goes through `parse_answer`.
pub const PONG: &[u8] = b"PONG\r\n";

/// A ping request.
pub const PING: &[u8] = b"PING\r\n";

/// The kind of request in flight, kept to parse and check its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Ping,
    Set,
    /// A get of this many keys; their numbers wait in the connection's key queue.
    Get(u16),
}

/// What one answer said.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    pub error: bool,
    /// The error was a set the server refused for want of memory (`SERVER_ERROR out of
    /// memory...`, memcached's answer when no room can be made): counted in the errors and,
    /// apart, as refused, since a full store is not a wrong answer.
    pub refused: bool,
    pub hits: u32,
    pub misses: u32,
}

/// Builds the next request into `out`, pushing the key numbers of a get onto `keys`.
pub struct Generator {
    pub rng: Rng,
    pub chooser: Chooser,
    pub ks: KeySpace,
    pub get_ratio: f64,
    pub multiget: usize,
    pub ping: bool,
}

impl Generator {
    pub fn new(c: &Config, seed: u64) -> Generator {
        Generator {
            rng: Rng::new(seed),
            chooser: Chooser::new(c.keys, c.popularity),
            ks: KeySpace::new(c),
            get_ratio: c.get_ratio,
            multiget: c.multiget,
            ping: c.protocol != crate::config::Protocol::Memcache,
        }
    }

    pub fn next(&mut self, out: &mut Vec<u8>, keys: &mut std::collections::VecDeque<u64>) -> Kind {
        if self.ping {
            out.extend_from_slice(PING);
            return Kind::Ping;
        }
        if self.rng.next_f64() < self.get_ratio {
            out.extend_from_slice(b"get");
            for _ in 0..self.multiget {
                let k = self.chooser.pick(&mut self.rng);
                out.push(b' ');
                self.ks.write_key(k, out);
                keys.push_back(k);
            }
            out.extend_from_slice(b"\r\n");
            Kind::Get(self.multiget as u16)
        } else {
            let k = self.chooser.pick(&mut self.rng);
            encode_set(&self.ks, k, out);
            Kind::Set
        }
    }
}

pub fn encode_set(ks: &KeySpace, k: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"set ");
    ks.write_key(k, out);
    out.extend_from_slice(
        format!(" {} 0 {}\r\n", KeySpace::flags_for(k), ks.value_size).as_bytes(),
    );
    ks.write_value(k, out);
    out.extend_from_slice(b"\r\n");
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + p;
        if at > 0 && buf[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// Buffers reused from answer to answer, so parsing does not allocate.
#[derive(Default)]
pub struct Scratch {
    value: Vec<u8>,
    /// Per VALUE block: key start, key end, flags, data start, data length.
    blocks: Vec<(usize, usize, u32, usize, usize)>,
    requested: Vec<u64>,
}

/// A line longer than this without CRLF means the stream is garbage.
pub const MAX_LINE: usize = 4096;

/// Parses one ping answer from the front of `buf`: `PONG` is an answer, any other line an error
/// answer (see `parse_answer`).
pub fn parse_ping_answer(buf: &[u8]) -> Result<Option<(usize, Outcome)>, String> {
    let Some(e) = find_crlf(buf) else {
        return if buf.len() > MAX_LINE { Err("ping: line too long".into()) } else { Ok(None) };
    };
    let ok = &buf[..e] == b"PONG";
    Ok(Some((e + 2, Outcome { error: !ok, ..Default::default() })))
}

/// Parses one answer from the front of `buf`. Returns the bytes consumed and the outcome, or
/// None when more bytes are needed. `Err` means the stream cannot be resynchronised.
/// A wrong answer in a line a person can read: what was asked, and the start of the answer
/// (bytes outside printable ASCII escaped).
pub fn describe_error(kind: Kind, answer: &[u8]) -> String {
    let asked = match kind {
        Kind::Ping => "ping".to_string(),
        Kind::Set => "set".to_string(),
        Kind::Get(n) => format!("get of {n} keys"),
    };
    let shown: String = answer[..answer.len().min(120)].escape_ascii().to_string();
    format!("{asked}: {shown}")
}

pub fn parse_answer(
    kind: Kind,
    buf: &[u8],
    keys: &mut std::collections::VecDeque<u64>,
    ks: &KeySpace,
    verify: bool,
    scratch: &mut Scratch,
) -> Result<Option<(usize, Outcome)>, String> {
    match kind {
        Kind::Ping => parse_ping_answer(buf),
        Kind::Set => {
            let Some(e) = find_crlf(buf) else {
                return if buf.len() > MAX_LINE {
                    Err("set: line too long".into())
                } else {
                    Ok(None)
                };
            };
            let line = &buf[..e];
            let ok = line == b"STORED";
            let refused = line.starts_with(b"SERVER_ERROR out of memory");
            Ok(Some((e + 2, Outcome { error: !ok, refused, ..Default::default() })))
        }
        Kind::Get(n) => parse_get(n as usize, buf, keys, ks, verify, scratch),
    }
}

fn parse_get(
    n: usize,
    buf: &[u8],
    keys: &mut std::collections::VecDeque<u64>,
    ks: &KeySpace,
    verify: bool,
    scratch: &mut Scratch,
) -> Result<Option<(usize, Outcome)>, String> {
    // First pass only checks that the whole answer is here, so `keys` is touched once.
    let mut pos = 0;
    let Scratch { value: vbuf, blocks, requested } = scratch;
    blocks.clear();
    let end = loop {
        let Some(e) = find_crlf(&buf[pos..]) else {
            return if buf.len() - pos > MAX_LINE {
                Err("get: line too long".into())
            } else {
                Ok(None)
            };
        };
        let line = &buf[pos..pos + e];
        if line == b"END" {
            break Ok(pos + e + 2);
        }
        if let Some(rest) = line.strip_prefix(b"VALUE ") {
            let mut it = rest.split(|&b| b == b' ');
            let key = it.next().unwrap_or(b"");
            let flags = it.next().and_then(|f| std::str::from_utf8(f).ok()?.parse::<u32>().ok());
            let bytes = it.next().and_then(|f| std::str::from_utf8(f).ok()?.parse::<usize>().ok());
            let (Some(flags), Some(bytes)) = (flags, bytes) else {
                return Err("get: malformed VALUE line".into());
            };
            let data = pos + e + 2;
            if buf.len() < data + bytes + 2 {
                return Ok(None);
            }
            if &buf[data + bytes..data + bytes + 2] != b"\r\n" {
                return Err("get: value not followed by CRLF".into());
            }
            let kstart = pos + 6;
            blocks.push((kstart, kstart + key.len(), flags, data, bytes));
            pos = data + bytes + 2;
            continue;
        }
        // An error line (SERVER_ERROR, CLIENT_ERROR, ERROR) ends the answer.
        break Err(pos + e + 2);
    };
    let mut out = Outcome::default();
    let consumed = match end {
        Ok(v) => v,
        Err(v) => {
            out.error = true;
            v
        }
    };
    // Walk the requested keys in order; a VALUE must name the next requested key (memcached
    // answers in request order), skipped keys are misses.
    requested.clear();
    requested.extend((0..n).filter_map(|_| keys.pop_front()));
    let mut next = 0;
    for &(ks0, ks1, flags, data, len) in blocks.iter() {
        let idx = ks.parse_key(&buf[ks0..ks1]);
        let at = idx.and_then(|i| requested[next..].iter().position(|&r| r == i));
        match (idx, at) {
            (Some(i), Some(off)) => {
                out.misses += off as u32;
                next += off + 1;
                let v = &buf[data..data + len];
                let good =
                    !verify || (flags == KeySpace::flags_for(i) && ks.value_matches(i, v, vbuf));
                if good {
                    out.hits += 1;
                } else {
                    out.error = true;
                }
            }
            _ => out.error = true,
        }
    }
    out.misses += (requested.len() - next) as u32;
    if out.error {
        // An answer with any wrong part is an error as a whole: none of it counts as hit or miss.
        out.hits = 0;
        out.misses = 0;
    }
    Ok(Some((consumed, out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn ks() -> KeySpace {
        KeySpace { key_size: 32, value_size: 100, keys: 1000 }
    }

    fn value_block(ks: &KeySpace, idx: u64, flags: u32, value: &[u8]) -> Vec<u8> {
        let mut key = Vec::new();
        ks.write_key(idx, &mut key);
        let mut b =
            format!("VALUE {} {} {}\r\n", String::from_utf8(key).unwrap(), flags, value.len())
                .into_bytes();
        b.extend_from_slice(value);
        b.extend_from_slice(b"\r\n");
        b
    }

    fn good_value(ks: &KeySpace, idx: u64) -> Vec<u8> {
        let mut v = Vec::new();
        ks.write_value(idx, &mut v);
        v
    }

    #[test]
    fn keys_are_the_requested_size_and_parse_back() {
        for size in [5, 12, 32, 250] {
            let k = KeySpace { key_size: size, value_size: 10, keys: 1000 };
            for idx in [0, 7, 999] {
                let mut out = Vec::new();
                k.write_key(idx, &mut out);
                assert_eq!(out.len(), size);
                assert_eq!(k.parse_key(&out), Some(idx));
            }
        }
    }

    #[test]
    fn a_correct_multiget_answer_counts_hits_and_misses() {
        let k = ks();
        let mut keys: VecDeque<u64> = [3, 4, 5].into();
        let mut buf = value_block(&k, 3, KeySpace::flags_for(3), &good_value(&k, 3));
        buf.extend(value_block(&k, 5, KeySpace::flags_for(5), &good_value(&k, 5)));
        buf.extend_from_slice(b"END\r\n");
        let mut s = Scratch::default();
        // Every prefix is incomplete.
        for cut in 0..buf.len() {
            let mut kk = keys.clone();
            assert_eq!(
                parse_answer(Kind::Get(3), &buf[..cut], &mut kk, &k, true, &mut s).unwrap(),
                None
            );
        }
        let (used, o) =
            parse_answer(Kind::Get(3), &buf, &mut keys, &k, true, &mut s).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(o, Outcome { error: false, refused: false, hits: 2, misses: 1 });
        assert!(keys.is_empty());
    }

    #[test]
    fn a_wrong_value_is_an_error_never_a_hit() {
        let k = ks();
        let mut s = Scratch::default();
        // Another key's value, a flipped byte, a short value, wrong flags, an unrequested key.
        let mut flipped = good_value(&k, 9);
        flipped[50] ^= 1;
        let cases: Vec<Vec<u8>> = vec![
            value_block(&k, 9, KeySpace::flags_for(9), &good_value(&k, 10)),
            value_block(&k, 9, KeySpace::flags_for(9), &flipped),
            value_block(&k, 9, KeySpace::flags_for(9), &good_value(&k, 9)[..99]),
            value_block(&k, 9, KeySpace::flags_for(9) ^ 1, &good_value(&k, 9)),
            value_block(&k, 11, KeySpace::flags_for(11), &good_value(&k, 11)),
        ];
        for mut c in cases {
            c.extend_from_slice(b"END\r\n");
            let mut keys: VecDeque<u64> = [9].into();
            let (_, o) =
                parse_answer(Kind::Get(1), &c, &mut keys, &k, true, &mut s).unwrap().unwrap();
            assert!(o.error, "accepted {}", String::from_utf8_lossy(&c));
            assert_eq!(o.hits, 0);
        }
    }

    #[test]
    fn error_lines_are_errors_and_consume_the_line() {
        let k = ks();
        let mut s = Scratch::default();
        let mut keys: VecDeque<u64> = [1].into();
        let b = b"SERVER_ERROR out of memory\r\nEND\r\n";
        let (used, o) =
            parse_answer(Kind::Get(1), b, &mut keys, &k, true, &mut s).unwrap().unwrap();
        // An out-of-memory answer to a get is an error, not a refused set.
        assert_eq!((used, o.error, o.refused), (28, true, false));
        // A set refused for want of memory is an error and counted apart; other errors are not.
        for (answer, refused) in [
            (&b"NOT_STORED\r\n"[..], false),
            (b"SERVER_ERROR out of memory storing object\r\n", true),
            (b"SERVER_ERROR out of memory\r\n", true),
            (b"SERVER_ERROR object too large for cache\r\n", false),
        ] {
            let (used, o) =
                parse_answer(Kind::Set, answer, &mut keys, &k, true, &mut s).unwrap().unwrap();
            assert_eq!((used, o.error, o.refused), (answer.len(), true, refused));
        }
        let (_, o) =
            parse_answer(Kind::Ping, b"PONG\r\n", &mut keys, &k, true, &mut s).unwrap().unwrap();
        assert!(!o.error);
        let (_, o) =
            parse_answer(Kind::Ping, b"ERROR\r\n", &mut keys, &k, true, &mut s).unwrap().unwrap();
        assert!(o.error);
    }

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let n = 1000;
        let z = Zipf::new(n, 0.99);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u64; n as usize];
        let draws = 400_000;
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        let zetan: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(0.99)).sum();
        for rank in [0usize, 1, 9, 99] {
            let want = draws as f64 / ((rank + 1) as f64).powf(0.99) / zetan;
            let got = counts[rank] as f64;
            assert!((got - want).abs() < want * 0.15 + 30.0, "rank {rank}: {got} vs {want}");
        }
        // scatter is a permutation of [0, n)
        let mut seen = vec![false; n as usize];
        for r in 0..n {
            let x = scatter(r, n) as usize;
            assert!(!seen[x]);
            seen[x] = true;
        }
    }
}
