//! The built-in eBPF programs run with BPF_PROG_TEST_RUN: no network needed (root for bpf(2)).

mod xdp_util;

use p99::xdp::packet::build_udp4;
use p99::xdp::prog::{self, XDP_DROP, XDP_PASS};
use p99::xdp::{Error, Program, ProgramKind};

fn udp(dport: u16) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    let n =
        build_udp4(&mut b, [2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], 5555, dport, b"PING....")
            .unwrap();
    b.truncate(n);
    b
}

fn skip() -> bool {
    if let Some(why) = xdp_util::unavailable() {
        xdp_util::skip_notice("xdp_prog", &why);
        return true;
    }
    false
}

#[test]
fn redirect_program_falls_back_to_miss_action() {
    if skip() {
        return;
    }
    // With no socket in the map, bpf_redirect_map returns the miss action.
    let p = Program::load(ProgramKind::RedirectAll, 4, XDP_PASS).unwrap();
    assert_eq!(p.test_run(&udp(9)).unwrap(), XDP_PASS);
    let d = Program::load(ProgramKind::RedirectAll, 4, XDP_DROP).unwrap();
    assert_eq!(d.test_run(&udp(9)).unwrap(), XDP_DROP);
    assert_eq!(d.test_run(&[0u8; 20]).unwrap(), XDP_DROP, "redirect-all ignores content");
}

#[test]
fn udp_filter_program_selects_only_its_port() {
    if skip() {
        return;
    }
    // Miss action DROP marks "matched the filter" (no socket registered in the test).
    let p = Program::load(ProgramKind::UdpPort(4242), 4, XDP_DROP).unwrap();
    assert_eq!(
        p.test_run(&udp(4242)).unwrap(),
        XDP_DROP,
        "matching datagram reaches the map lookup"
    );
    assert_eq!(p.test_run(&udp(4243)).unwrap(), XDP_PASS, "other port passes");
    assert_eq!(
        p.test_run(&udp(4242 << 8 & 0xff00 | 4242 >> 8)).unwrap(),
        XDP_PASS,
        "byte-swapped port passes"
    );
    let good = udp(4242);
    // Truncated frames pass (never read past data_end).
    for cut in [14, 33, 41] {
        assert_eq!(p.test_run(&good[..cut]).unwrap(), XDP_PASS, "cut at {cut}");
    }
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(p.test_run(&arp).unwrap(), XDP_PASS, "ARP passes");
    let mut tcp = good.clone();
    tcp[23] = 6;
    assert_eq!(p.test_run(&tcp).unwrap(), XDP_PASS, "TCP passes");
    let mut frag = good.clone();
    frag[20] = 0x20; // more fragments
    assert_eq!(p.test_run(&frag).unwrap(), XDP_PASS, "fragments pass");
    let mut opts = good.clone();
    opts[14] = 0x46;
    assert_eq!(p.test_run(&opts).unwrap(), XDP_PASS, "IPv4 options pass");
}

#[test]
fn bad_arguments_and_verifier_log() {
    if skip() {
        return;
    }
    assert!(matches!(Program::load(ProgramKind::UdpPort(0), 4, XDP_PASS), Err(Error::Invalid(_))));
    assert!(matches!(Program::load(ProgramKind::RedirectAll, 0, XDP_PASS), Err(Error::Invalid(_))));
    assert!(matches!(Program::load(ProgramKind::RedirectAll, 4, 9), Err(Error::Invalid(_))));
    let p = Program::load(ProgramKind::RedirectAll, 4, XDP_PASS).unwrap();
    assert!(matches!(p.register(4, 0), Err(Error::Invalid(_))));
    // A non-socket fd cannot be registered.
    assert!(p.register(0, p.prog_fd()).is_err());
    p.unregister(1).expect("removing an empty slot is a no-op");
    assert!(matches!(p.unregister(4), Err(Error::Invalid(_))));
    // A program reading an uninitialised register is rejected with the verifier's words.
    let bad = [0xbf_u64 | (0x20 << 8), 0x95]; // r0 = r2; exit
    match prog::load_raw_for_test(&bad) {
        Err(Error::Verifier { log, .. }) => assert!(log.contains("R2 !read_ok"), "log: {log}"),
        Err(e) => panic!("expected a verifier error, got {e}"),
        Ok(_) => panic!("bad program loaded"),
    }
}
