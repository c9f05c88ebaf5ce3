//! The Ethernet/IPv4/UDP helpers of `p99::xdp::packet` and the C entry point built on them
//! (`p99_xdp_udp_ping_reply`), on arbitrary frames and on well-formed frames with fuzzed
//! fields.
//!
//! Asserted: parsing never reads or points past the bytes present and agrees with the header
//! fields it reports; a frame that is not a ping is left byte for byte unchanged; a reply
//! parses back with addresses and ports swapped, `PONG` in place and a valid IPv4 header
//! checksum; building a frame and parsing it gives back what was built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p99::ffi::status::p99_status as S;
use p99::ffi::xdp::p99_xdp_udp_ping_reply;
use p99::xdp::packet::{
    build_udp4, ipv4_checksum, parse_udp4, udp_ping_reply, ETH_HLEN, IPPROTO_UDP,
};
use p99_fuzz::Bytes;

fn check_parse(frame: &[u8]) {
    let Some(p) = parse_udp4(frame) else { return };
    assert_eq!(p.ip_off, ETH_HLEN);
    assert!(p.ip_hlen >= 20 && p.ip_hlen <= 60 && p.ip_hlen % 4 == 0);
    assert_eq!(p.udp_off, p.ip_off + p.ip_hlen);
    assert_eq!(p.payload_off, p.udp_off + 8);
    assert!(p.payload_off + p.payload_len <= frame.len(), "payload runs past the frame");
    assert_eq!(frame[12..14], [0x08, 0x00]);
    assert_eq!(frame[p.ip_off] >> 4, 4);
    assert_eq!(frame[p.ip_off + 9], IPPROTO_UDP);
    let total = u16::from_be_bytes([frame[p.ip_off + 2], frame[p.ip_off + 3]]) as usize;
    assert!(p.ip_off + total <= frame.len(), "IP total length past the frame");
    assert!(p.payload_off + p.payload_len <= p.ip_off + total, "UDP length past the datagram");
    assert_eq!(p.src_port, u16::from_be_bytes([frame[p.udp_off], frame[p.udp_off + 1]]));
    assert_eq!(p.dst_port, u16::from_be_bytes([frame[p.udp_off + 2], frame[p.udp_off + 3]]));
}

fn check_reply(frame: &[u8], port: u16) {
    let before = parse_udp4(frame);
    let mut f = frame.to_vec();
    let got = udp_ping_reply(&mut f, port);
    // The C entry point must do exactly the same to its own copy.
    let mut g = frame.to_vec();
    let mut reply_len = u32::MAX;
    // SAFETY: `g` has g.len() writable bytes; `reply_len` writable.
    let st =
        unsafe { p99_xdp_udp_ping_reply(g.as_mut_ptr(), g.len() as u32, port, &mut reply_len) };
    assert_eq!(f, g, "the C entry point and the Rust helper disagree");
    match got {
        None => {
            assert_eq!(f, frame, "a frame that is not a ping was changed");
            assert_eq!(st, S::NotFound);
            assert_eq!(reply_len, u32::MAX, "output written on failure");
        }
        Some(n) => {
            assert_eq!(st, S::Ok);
            assert_eq!(reply_len as usize, n);
            let q = before.expect("a reply from a frame that does not parse");
            assert!(port == 0 || q.dst_port == port);
            assert_eq!(&frame[q.payload_off..q.payload_off + 4], b"PING");
            assert_eq!(n, q.payload_off + q.payload_len);
            assert!(n <= f.len());
            let r = parse_udp4(&f).expect("the reply does not parse");
            assert_eq!((r.src_port, r.dst_port), (q.dst_port, q.src_port));
            assert_eq!((r.src_ip, r.dst_ip), (q.dst_ip, q.src_ip));
            assert_eq!(f[0..6], frame[6..12]);
            assert_eq!(f[6..12], frame[0..6]);
            assert_eq!(&f[r.payload_off..r.payload_off + 4], b"PONG");
            assert_eq!(
                f[r.payload_off + 4..n],
                frame[q.payload_off + 4..n],
                "payload after PING changed"
            );
            assert_eq!(ipv4_checksum(&f[r.ip_off..r.ip_off + r.ip_hlen]), 0, "bad IPv4 checksum");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    match b.u8() % 3 {
        // Arbitrary bytes as a frame.
        0 => {
            let port = if b.chance(50) { 0 } else { b.u16() };
            let frame = b.rest();
            check_parse(frame);
            check_reply(frame, port);
        }
        // A well-formed frame with fuzzed fields, then corrupted in a few places.
        _ => {
            let mut mac = [[0u8; 6]; 2];
            for m in &mut mac {
                m.copy_from_slice(
                    &b.take(6).iter().copied().chain([0; 6]).take(6).collect::<Vec<_>>(),
                );
            }
            let (sip, dip) = (b.u32().to_be_bytes(), b.u32().to_be_bytes());
            let (sport, dport) = (b.u16(), b.u16());
            let cap = b.u16() as usize % 2100;
            let ping = b.chance(70);
            let any_port = b.chance(50);
            let corruptions = b.u8() % 4;
            let edits: Vec<(u16, u8)> = (0..corruptions).map(|_| (b.u16(), b.u8())).collect();
            let mut payload = if ping { b"PING".to_vec() } else { Vec::new() };
            payload.extend_from_slice(b.rest());
            let mut buf = vec![0u8; cap];
            match build_udp4(&mut buf, mac[0], mac[1], sip, dip, sport, dport, &payload) {
                None => {
                    assert!(ETH_HLEN + 28 + payload.len() > cap, "build refused a frame that fits")
                }
                Some(n) => {
                    assert_eq!(n, ETH_HLEN + 28 + payload.len());
                    let p = parse_udp4(&buf[..n]).expect("a built frame does not parse");
                    assert_eq!(
                        (p.src_ip, p.dst_ip, p.src_port, p.dst_port),
                        (sip, dip, sport, dport)
                    );
                    assert_eq!(&buf[p.payload_off..p.payload_off + p.payload_len], &payload[..]);
                    assert_eq!(ipv4_checksum(&buf[14..34]), 0);
                    // Trailing bytes (Ethernet padding) do not change the parse.
                    if cap > n {
                        assert_eq!(parse_udp4(&buf[..cap]), Some(p));
                    }
                    for (at, v) in edits {
                        let at = at as usize % cap;
                        buf[at] = v;
                    }
                    check_parse(&buf[..cap.max(n)]);
                    check_reply(&buf[..cap.max(n)], if any_port { 0 } else { dport });
                }
            }
        }
    }
});
