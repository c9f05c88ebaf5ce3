//! The per-item header inside a segment.
//!
//! An item is stored as `klen:u8, varint(vlen << 6 | fetched << 5 | has_meta << 4 | dead << 3 |
//! has_cas << 2 | has_exp << 1 | has_flags), [meta:u8], [flags:u32 LE], [zigzag varint(expiry -
//! segment expiry base)], [cas:u64 LE], key, value`.
//! For the common item (32-byte key, 100-byte value, flags 0, expiry equal to the segment's
//! base, CAS derived from the location) that is 3 bytes of header. Optional parts cost bytes
//! only when used: the meta byte when the item carries a meta-protocol mark (stale, win token
//! sent, key sent in base64), client flags when nonzero, an expiry delta when the item's expiry
//! differs from the first item written to the segment, and an explicit CAS only when an item
//! was moved without a client write (touch, merge eviction) and must keep its CAS, or was
//! written with a CAS chosen by the client.
//!
//! The `fetched` and `dead` bits live in the first byte of the varint, so they are set in place
//! without changing the header's length. With vlen shifted by 6 the varint is 2 bytes for values
//! under 256 bytes (as before for values from 8 to 1023 bytes; one byte more for 256..1023) and
//! at most 4 bytes for the largest value (4 MiB), so `HEADER_MAX` is unchanged.
//!
//! Items are byte-aligned and packed back to back from offset 0 of a segment, so a segment
//! can be walked item by item (eviction and expiry do that).

/// Longest key, as in memcached.
pub(crate) const KEY_MAX: usize = 250;
/// Largest header an item can have: klen, 4-byte varint (a value is under 2^22 bytes, the
/// largest segment), meta, flags, 5-byte varint, cas.
pub(crate) const HEADER_MAX: usize = 1 + 4 + 1 + 4 + 5 + 8;

const HAS_FLAGS: u64 = 1;
const HAS_EXP: u64 = 2;
const HAS_CAS: u64 = 4;
const HAS_META: u64 = 16;
/// Set (in place, under the shard lock) on an item's first read since it was written:
/// memcached's "fetched" mark. Bit 5 of the first varint byte, like `DEAD_BIT`.
pub(crate) const FETCHED_BIT: u8 = 32;
const VLEN_SHIFT: u32 = 6;

/// Meta byte: the item was marked stale (memcached's `md I`, or `ms I` with an older CAS).
pub(crate) const META_STALE: u8 = 1;
/// Meta byte: a win token (memcached's `W`) was handed out for the item.
pub(crate) const META_WIN_SENT: u8 = 2;
/// Meta byte: the key was sent base64-encoded (memcached's `b`), so replies re-encode it.
pub(crate) const META_KEY_BINARY: u8 = 4;
/// Set (in place, under the shard lock) once the item is no longer linked, so walks over a
/// segment (eviction, expiry, table rebuild) skip it without probing the hash table. It is
/// bit 3 of the first varint byte, so setting it never changes the header's length.
pub(crate) const DEAD_BIT: u8 = 8;

/// What the header says about one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ItemHeader {
    pub klen: usize,
    pub vlen: usize,
    pub flags: u32,
    /// Absolute expiry (0 = never).
    pub expiry: u32,
    /// The stored CAS, if the item carries one.
    pub cas: Option<u64>,
    /// Header length in bytes; the key starts here.
    pub header_len: usize,
    /// The item was unlinked (replaced, deleted, expired).
    pub dead: bool,
    /// Read since it was written.
    pub fetched: bool,
    /// Meta-protocol marks (`META_*`), 0 for none.
    pub meta: u8,
}

impl ItemHeader {
    /// Total bytes of the item in the segment.
    pub fn total_len(&self) -> usize {
        self.header_len + self.klen + self.vlen
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

#[inline(always)]
fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    // Every item's first varint (a value under 256 bytes with its flag bits) and most expiry
    // deltas take one or two bytes: decode those without the loop.
    match *buf {
        [b0, ..] if b0 < 0x80 => Some((u64::from(b0), 1)),
        [b0, b1, ..] if b1 < 0x80 => Some((u64::from(b0 & 0x7f) | (u64::from(b1) << 7), 2)),
        _ => get_varint_long(buf),
    }
}

/// [`get_varint`] for three bytes and more (values of 256 bytes and up, far expiry deltas).
#[inline(never)]
fn get_varint_long(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The parts of a header that `encode_header` writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderParts {
    pub klen: usize,
    pub vlen: usize,
    pub flags: u32,
    pub expiry: u32,
    pub cas: Option<u64>,
    pub fetched: bool,
    pub meta: u8,
}

/// Encodes a header into `out` (at least `HEADER_MAX` bytes) and returns its length.
/// `exp_base` is the segment's expiry base.
#[inline]
pub(crate) fn encode_header(out: &mut [u8; HEADER_MAX], p: &HeaderParts, exp_base: u32) -> usize {
    let HeaderParts { klen, vlen, flags, expiry, cas, fetched, meta } = *p;
    debug_assert!((1..=KEY_MAX).contains(&klen));
    debug_assert!(vlen < 1 << 22);
    let mut bits = (vlen as u64) << VLEN_SHIFT;
    if fetched {
        bits |= u64::from(FETCHED_BIT);
    }
    if meta != 0 {
        bits |= HAS_META;
    }
    if flags != 0 {
        bits |= HAS_FLAGS;
    }
    if expiry != exp_base {
        bits |= HAS_EXP;
    }
    if cas.is_some() {
        bits |= HAS_CAS;
    }
    out[0] = klen as u8;
    let mut n = 1 + put_varint(&mut out[1..], bits);
    if meta != 0 {
        out[n] = meta;
        n += 1;
    }
    if flags != 0 {
        out[n..n + 4].copy_from_slice(&flags.to_le_bytes());
        n += 4;
    }
    if expiry != exp_base {
        n += put_varint(&mut out[n..], zigzag(i64::from(expiry) - i64::from(exp_base)));
    }
    if let Some(c) = cas {
        out[n..n + 8].copy_from_slice(&c.to_le_bytes());
        n += 8;
    }
    n
}

/// The header length `encode_header` would produce.
pub(crate) fn header_len(p: &HeaderParts, exp_base: u32) -> usize {
    let HeaderParts { vlen, flags, expiry, cas, meta, .. } = *p;
    let mut n = 1 + varint_len((vlen as u64) << VLEN_SHIFT) + usize::from(meta != 0);
    if flags != 0 {
        n += 4;
    }
    if expiry != exp_base {
        n += varint_len(zigzag(i64::from(expiry) - i64::from(exp_base)));
    }
    if cas.is_some() {
        n += 8;
    }
    n
}

/// Decodes the header at the start of `buf`. Returns None for bytes that are not a header
/// (which would be a bug in the store: items are written whole under the shard lock).
///
/// Inlined into every lookup, optional parts included ([`decode_optional`]): items with
/// client flags or a TTL of their own are common, and a call returning the header through
/// memory would also keep the common header (no optional part, a varint of one or two bytes)
/// out of registers.
#[inline(always)]
pub(crate) fn decode_header(buf: &[u8], exp_base: u32) -> Option<ItemHeader> {
    let klen = *buf.first()? as usize;
    let (bits, n1) = get_varint(buf.get(1..)?)?;
    let n = 1 + n1;
    if bits & (HAS_META | HAS_FLAGS | HAS_EXP | HAS_CAS) != 0 {
        return decode_optional(buf, klen, bits, n, exp_base);
    }
    Some(ItemHeader {
        klen,
        vlen: (bits >> VLEN_SHIFT) as usize,
        flags: 0,
        expiry: exp_base,
        cas: None,
        header_len: n,
        dead: bits & u64::from(DEAD_BIT) != 0,
        fetched: bits & u64::from(FETCHED_BIT) != 0,
        meta: 0,
    })
}

/// The rest of [`decode_header`] for a header with optional parts (`bits`, the first varint,
/// says which), which start at byte `n`.
#[inline(always)]
fn decode_optional(
    buf: &[u8],
    klen: usize,
    bits: u64,
    mut n: usize,
    exp_base: u32,
) -> Option<ItemHeader> {
    let mut meta = 0;
    if bits & HAS_META != 0 {
        meta = *buf.get(n)?;
        n += 1;
    }
    let mut flags = 0;
    if bits & HAS_FLAGS != 0 {
        flags = u32::from_le_bytes(buf.get(n..n + 4)?.try_into().ok()?);
        n += 4;
    }
    let mut expiry = exp_base;
    if bits & HAS_EXP != 0 {
        let (z, m) = get_varint(buf.get(n..)?)?;
        expiry = (i64::from(exp_base) + unzigzag(z)) as u32;
        n += m;
    }
    let mut cas = None;
    if bits & HAS_CAS != 0 {
        cas = Some(u64::from_le_bytes(buf.get(n..n + 8)?.try_into().ok()?));
        n += 8;
    }
    Some(ItemHeader {
        klen,
        vlen: (bits >> VLEN_SHIFT) as usize,
        flags,
        expiry,
        cas,
        header_len: n,
        dead: bits & u64::from(DEAD_BIT) != 0,
        fetched: bits & u64::from(FETCHED_BIT) != 0,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_every_optional_part() {
        for &(vlen, flags, expiry, base, cas, fetched, meta) in &[
            (100usize, 0u32, 0u32, 0u32, None, false, 0u8),
            (0, 7, 1000, 990, Some(42u64), true, META_STALE),
            ((1 << 22) - 1, u32::MAX, 5, 100, Some(u64::MAX), true, 7),
            (127, 1, 100, 0, None, false, META_KEY_BINARY),
            (255, 0, u32::MAX, 0, Some(1), false, 0),
        ] {
            let p = HeaderParts { klen: 32, vlen, flags, expiry, cas, fetched, meta };
            let mut out = [0u8; HEADER_MAX];
            let n = encode_header(&mut out, &p, base);
            assert_eq!(n, header_len(&p, base));
            let h = decode_header(&out[..n], base).unwrap();
            assert_eq!(
                h,
                ItemHeader {
                    klen: 32,
                    vlen,
                    flags,
                    expiry,
                    cas,
                    header_len: n,
                    dead: false,
                    fetched,
                    meta
                }
            );
            out[1] |= DEAD_BIT | FETCHED_BIT;
            let d = decode_header(&out[..n], base).unwrap();
            assert!(d.dead && d.fetched);
            assert_eq!(ItemHeader { dead: false, fetched, ..d }, h);
        }
    }

    #[test]
    fn common_item_header_is_three_bytes_and_marks_cost_one() {
        let p = HeaderParts {
            klen: 32,
            vlen: 100,
            flags: 0,
            expiry: 0,
            cas: None,
            fetched: true,
            meta: 0,
        };
        assert_eq!(header_len(&p, 0), 3);
        assert_eq!(header_len(&HeaderParts { meta: META_WIN_SENT, ..p }, 0), 4);
    }

    #[test]
    fn largest_header_fits_header_max() {
        let p = HeaderParts {
            klen: KEY_MAX,
            vlen: (1 << 22) - 1,
            flags: 1,
            expiry: u32::MAX,
            cas: Some(u64::MAX),
            fetched: true,
            meta: 7,
        };
        assert_eq!(header_len(&p, 0), HEADER_MAX);
    }
}
