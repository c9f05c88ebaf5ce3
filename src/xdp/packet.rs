//! Ethernet / IPv4 / UDP helpers for the responders and the load generator. Every length in a
//! packet is checked against the bytes actually present before it is used.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;

/// Where the parts of an Ethernet/IPv4/UDP frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp4 {
    pub ip_off: usize,
    pub ip_hlen: usize,
    pub udp_off: usize,
    pub payload_off: usize,
    pub payload_len: usize,
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an untagged Ethernet frame carrying an unfragmented IPv4/UDP datagram. Returns None
/// for anything else or for any length that does not fit the bytes present.
pub fn parse_udp4(frame: &[u8]) -> Option<Udp4> {
    if frame.len() < ETH_HLEN + 20 + 8 || be16(frame, 12) != ETH_P_IPV4 {
        return None;
    }
    let ip = ETH_HLEN;
    let vihl = frame[ip];
    if vihl >> 4 != 4 {
        return None;
    }
    let ip_hlen = (vihl & 0x0f) as usize * 4;
    if ip_hlen < 20 || ip + ip_hlen + 8 > frame.len() {
        return None;
    }
    let total = be16(frame, ip + 2) as usize;
    if total < ip_hlen + 8 || ip + total > frame.len() {
        return None;
    }
    if frame[ip + 9] != IPPROTO_UDP || be16(frame, ip + 6) & 0x3fff != 0 {
        return None;
    }
    let udp = ip + ip_hlen;
    let ulen = be16(frame, udp + 4) as usize;
    if ulen < 8 || ulen > total - ip_hlen {
        return None;
    }
    Some(Udp4 {
        ip_off: ip,
        ip_hlen,
        udp_off: udp,
        payload_off: udp + 8,
        payload_len: ulen - 8,
        src_ip: frame[ip + 12..ip + 16].try_into().unwrap(),
        dst_ip: frame[ip + 16..ip + 20].try_into().unwrap(),
        src_port: be16(frame, udp),
        dst_port: be16(frame, udp + 2),
    })
}

/// The Internet checksum of `hdr` (with its checksum field as present).
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = hdr.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of the frame described by `p`.
pub fn fix_ipv4_checksum(frame: &mut [u8], p: &Udp4) {
    let h = &mut frame[p.ip_off..p.ip_off + p.ip_hlen];
    h[10] = 0;
    h[11] = 0;
    let c = ipv4_checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Swaps MAC addresses, IPv4 addresses and UDP ports so the frame goes back where it came
/// from; refreshes the IPv4 checksum and clears the UDP checksum (0 = none, valid on IPv4),
/// since the caller usually changes the payload.
pub fn swap_udp4(frame: &mut [u8], p: &Udp4) {
    for i in 0..6 {
        frame.swap(i, i + 6);
    }
    let ip = p.ip_off;
    for i in 0..4 {
        frame.swap(ip + 12 + i, ip + 16 + i);
    }
    let u = p.udp_off;
    frame.swap(u, u + 2);
    frame.swap(u + 1, u + 3);
    frame[u + 6] = 0;
    frame[u + 7] = 0;
    fix_ipv4_checksum(frame, p);
}

/// UDP ping: if `frame` is an IPv4/UDP datagram to `port` (any port when 0) whose payload
/// starts with `PING`, turns it in place into the reply (`PONG`, addresses swapped) and
/// returns the frame length to send (the IP total length + Ethernet header, trailing padding
/// dropped). Otherwise returns None and leaves the frame unchanged.
pub fn udp_ping_reply(frame: &mut [u8], port: u16) -> Option<usize> {
    let p = parse_udp4(frame)?;
    if port != 0 && p.dst_port != port {
        return None;
    }
    if p.payload_len < 4 || &frame[p.payload_off..p.payload_off + 4] != b"PING" {
        return None;
    }
    frame[p.payload_off..p.payload_off + 4].copy_from_slice(b"PONG");
    swap_udp4(frame, &p);
    Some(p.payload_off + p.payload_len)
}

/// Writes an Ethernet/IPv4/UDP frame into `buf`; returns its length, or None if `buf` is too
/// small or the payload too large for one datagram.
#[allow(clippy::too_many_arguments)]
pub fn build_udp4(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Option<usize> {
    let total = 20 + 8 + payload.len();
    let len = ETH_HLEN + total;
    if len > buf.len() || total > 0xffff {
        return None;
    }
    let b = &mut buf[..len];
    b[0..6].copy_from_slice(&dst_mac);
    b[6..12].copy_from_slice(&src_mac);
    b[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let ip = ETH_HLEN;
    b[ip] = 0x45;
    b[ip + 1] = 0;
    b[ip + 2..ip + 4].copy_from_slice(&(total as u16).to_be_bytes());
    b[ip + 4..ip + 6].copy_from_slice(&[0, 0]);
    b[ip + 6..ip + 8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    b[ip + 8] = 64;
    b[ip + 9] = IPPROTO_UDP;
    b[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    b[ip + 12..ip + 16].copy_from_slice(&src_ip);
    b[ip + 16..ip + 20].copy_from_slice(&dst_ip);
    let c = ipv4_checksum(&b[ip..ip + 20]);
    b[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let u = ip + 20;
    b[u..u + 2].copy_from_slice(&src_port.to_be_bytes());
    b[u + 2..u + 4].copy_from_slice(&dst_port.to_be_bytes());
    b[u + 4..u + 6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    b[u + 6..u + 8].copy_from_slice(&[0, 0]);
    b[u + 8..].copy_from_slice(payload);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        let n = build_udp4(
            &mut b,
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1000,
            2000,
            payload,
        )
        .unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn build_then_parse_roundtrip_with_valid_checksum() {
        let f = sample(b"PINGhello");
        let p = parse_udp4(&f).unwrap();
        assert_eq!((p.src_port, p.dst_port, p.payload_len), (1000, 2000, 9));
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "a correct header sums to zero");
    }

    #[test]
    fn known_checksum_vector() {
        // RFC 1071-style example header (Wikipedia IPv4 header checksum example).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    #[test]
    fn ping_reply_swaps_and_rewrites() {
        let mut f = sample(b"PING1234");
        let n = udp_ping_reply(&mut f, 2000).unwrap();
        assert_eq!(n, f.len());
        let p = parse_udp4(&f).unwrap();
        assert_eq!((p.src_port, p.dst_port), (2000, 1000));
        assert_eq!(p.src_ip, [10, 0, 0, 2]);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[p.payload_off..], b"PONG1234");
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
        // Wrong port or payload: untouched.
        let mut g = sample(b"PING");
        assert_eq!(udp_ping_reply(&mut g, 2001), None);
        let mut h = sample(b"PONG");
        let before = h.clone();
        assert_eq!(udp_ping_reply(&mut h, 0), None);
        assert_eq!(h, before);
    }

    #[test]
    fn lying_lengths_are_refused() {
        let f = sample(b"PINGxx");
        for cut in 0..f.len() {
            // Truncated frames never parse past what is present.
            if let Some(p) = parse_udp4(&f[..cut]) {
                assert!(p.payload_off + p.payload_len <= cut);
            }
        }
        let mut g = f.clone();
        g[16] = 0xff; // IP total length beyond the frame
        assert!(parse_udp4(&g).is_none());
        let mut g = f.clone();
        g[14] = 0x4f; // IHL 60 bytes beyond the frame
        assert!(parse_udp4(&g).is_none());
        let mut g = f.clone();
        g[14 + 20 + 4] = 0xff; // UDP length beyond the datagram
        assert!(parse_udp4(&g).is_none());
        let mut g = f.clone();
        g[14 + 20 + 5] = 4; // UDP length below its header
        g[14 + 20 + 4] = 0;
        assert!(parse_udp4(&g).is_none());
        let mut g = f.clone();
        g[20] = 0x20; // more-fragments
        assert!(parse_udp4(&g).is_none());
        let mut g = f;
        g[12] = 0x86;
        g[13] = 0xdd;
        assert!(parse_udp4(&g).is_none());
    }
}
