//! AF_XDP on a veth pair, copy mode, in native and generic XDP mode (the themes of the
//! kernel's xskxceiver self-test). Each test creates its own network namespace.

mod xdp_util;

use std::time::Duration;

use p99::xdp::AttachMode;
use xdp_util::*;

const MODES: [AttachMode; 2] = [AttachMode::Native, AttachMode::Generic];

#[test]
fn smoke_queue_mapping() {
    with_net("smoke_queue_mapping", |net| {
        for mode in MODES {
            let (mut rx, prog) = receiver(net, 1, mode, small_umem(4096, 2048));
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 256));
            send_seq(&mut tx, 0..10, 32, 7777);
            let mut seen = vec![];
            let got = recv_n(&mut rx, 10, Duration::from_secs(2), |f| seen.push(seq_of(f, 32)));
            eprintln!("{mode:?}: got {got} {seen:?} stats {:?}", rx.sock.stats().unwrap());
            assert_eq!(got, 10);
            drop(prog);
        }
    });
}
