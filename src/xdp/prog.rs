//! The built-in XDP programs, written as eBPF instructions, loaded with raw bpf(2) and
//! attached with a BPF link (detached by the kernel when the last link fd closes, which
//! includes the process dying from SIGKILL).
//!
//! Two programs:
//! * redirect: `return bpf_redirect_map(&xsks, ctx->rx_queue_index, miss_action)`, i.e. to the
//!   socket registered for the receiving queue, else `miss_action` (XDP_PASS normally);
//! * UDP port filter: the same, but only for untagged Ethernet + IPv4 without options, not
//!   fragmented, UDP, destination port P; everything else (ARP, IPv6, other ports) passes to
//!   the kernel stack.

use std::io;

use super::sys::{self, BpfAttr, Fd};
use super::{Error, Result};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Which built-in program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// Every packet on a queue with a registered socket goes to that socket.
    RedirectAll,
    /// Only IPv4/UDP to this destination port (host byte order) is redirected.
    UdpPort(u16),
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode; fails if the driver lacks it.
    Native,
    /// Generic (skb) mode; works on every device.
    Generic,
    /// Native if the driver supports it, else generic (kernel choice).
    Auto,
}

// ---- a tiny eBPF assembler ----

const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ALU64: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_ADD: u8 = 0x00;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_JGT: u8 = 0x20;
const BPF_JSET: u8 = 0x40;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FUNC_REDIRECT_MAP: i32 = 51;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst as u64 | (src as u64) << 4) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

struct Asm {
    code: Vec<u64>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Self {
        Asm { code: Vec::new(), fixups: Vec::new(), labels: Vec::new() }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.code.push(insn(BPF_LDX | BPF_MEM | size, dst, src, off, 0));
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.code.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm));
    }
    fn mov_reg(&mut self, dst: u8, src: u8) {
        self.code.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0));
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.code.push(insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm));
    }
    fn ld_map_fd(&mut self, dst: u8, fd: i32) {
        self.code.push(insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd));
        self.code.push(0);
    }
    fn jmp_imm(&mut self, op: u8, dst: u8, imm: i32, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.code.push(insn(BPF_JMP | op | BPF_K, dst, 0, 0, imm));
    }
    fn jmp_reg(&mut self, op: u8, dst: u8, src: u8, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.code.push(insn(BPF_JMP | op | BPF_X, dst, src, 0, 0));
    }
    fn call(&mut self, f: i32) {
        self.code.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, f));
    }
    fn exit(&mut self) {
        self.code.push(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
    }
    fn finish(mut self) -> Vec<u64> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l].expect("unbound label") as i64;
            let off = (target - at as i64 - 1) as i16;
            self.code[at] = (self.code[at] & !0xffff_0000) | ((off as u16 as u64) << 16);
        }
        self.code
    }
}

/// The instructions of `kind`, referring to the XSKMAP `map_fd`, returning `miss_action`
/// when the queue has no socket.
pub fn instructions(kind: ProgramKind, map_fd: i32, miss_action: u32) -> Vec<u64> {
    let mut a = Asm::new();
    match kind {
        ProgramKind::RedirectAll => {
            a.ldx(BPF_W, 2, 1, 16); // r2 = ctx->rx_queue_index
            a.ld_map_fd(1, map_fd);
            a.mov_imm(3, miss_action as i32);
            a.call(FUNC_REDIRECT_MAP);
            a.exit();
        }
        ProgramKind::UdpPort(port) => {
            let pass = a.label();
            a.mov_reg(6, 1); // r6 = ctx
            a.ldx(BPF_W, 2, 1, 0); // r2 = data
            a.ldx(BPF_W, 3, 1, 4); // r3 = data_end
            a.mov_reg(4, 2);
            a.add_imm(4, 14 + 20 + 8);
            a.jmp_reg(BPF_JGT, 4, 3, pass); // too short for eth+ip+udp
            a.ldx(BPF_H, 5, 2, 12); // ethertype (network order)
            a.jmp_imm(BPF_JNE, 5, u16::from_ne_bytes(0x0800u16.to_be_bytes()) as i32, pass);
            a.ldx(BPF_B, 5, 2, 14); // version + IHL
            a.jmp_imm(BPF_JNE, 5, 0x45, pass);
            a.ldx(BPF_B, 5, 2, 23); // protocol
            a.jmp_imm(BPF_JNE, 5, 17, pass);
            a.ldx(BPF_H, 5, 2, 20); // flags + fragment offset
            a.jmp_imm(BPF_JSET, 5, u16::from_ne_bytes(0x3fffu16.to_be_bytes()) as i32, pass);
            a.ldx(BPF_H, 5, 2, 36); // UDP destination port
            a.jmp_imm(BPF_JNE, 5, u16::from_ne_bytes(port.to_be_bytes()) as i32, pass);
            a.ldx(BPF_W, 2, 6, 16); // r2 = ctx->rx_queue_index
            a.ld_map_fd(1, map_fd);
            a.mov_imm(3, miss_action as i32);
            a.call(FUNC_REDIRECT_MAP);
            a.exit();
            a.bind(pass);
            a.mov_imm(0, XDP_PASS as i32);
            a.exit();
        }
    }
    a.finish()
}

fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, b) in n.iter_mut().zip(s.bytes().take(15)) {
        *d = b;
    }
    n
}

/// A loaded program with its XSKMAP, optionally attached to an interface with a BPF link.
pub struct Program {
    map: Fd,
    prog: Fd,
    link: Option<Fd>,
    ifindex: u32,
    mode: Option<AttachMode>,
    kind: ProgramKind,
    max_queues: u32,
}

impl Program {
    /// Creates the XSKMAP (`max_queues` slots) and loads the program. `miss_action` is
    /// XDP_PASS for normal use (tests use XDP_DROP to tell the paths apart).
    pub fn load(kind: ProgramKind, max_queues: u32, miss_action: u32) -> Result<Program> {
        if max_queues == 0 || max_queues > 4096 {
            return Err(Error::Invalid(format!("max queues {max_queues} (must be 1..=4096)")));
        }
        if miss_action > XDP_TX {
            return Err(Error::Invalid(format!("miss action {miss_action} (must be 0..=3)")));
        }
        if let ProgramKind::UdpPort(0) = kind {
            return Err(Error::Invalid("UDP port 0".into()));
        }
        let mut a = BpfAttr::new();
        a.u32_at(0, sys::BPF_MAP_TYPE_XSKMAP).u32_at(4, 4).u32_at(8, 4).u32_at(12, max_queues);
        a.0[28..44].copy_from_slice(&name16("p99_xsks"));
        let map =
            Fd(sys::bpf(sys::BPF_MAP_CREATE, &mut a).map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => {
                    Error::Os { op: "bpf(BPF_MAP_CREATE): needs CAP_BPF and CAP_NET_ADMIN", err: e }
                }
                _ => Error::os("bpf(BPF_MAP_CREATE)", e),
            })?);
        let code = instructions(kind, map.0, miss_action);
        let prog = Fd(load_prog(&code, "p99_xsk_redir")?);
        Ok(Program { map, prog, link: None, ifindex: 0, mode: None, kind, max_queues })
    }

    pub fn kind(&self) -> ProgramKind {
        self.kind
    }
    pub fn max_queues(&self) -> u32 {
        self.max_queues
    }
    pub fn prog_fd(&self) -> i32 {
        self.prog.0
    }
    pub fn map_fd(&self) -> i32 {
        self.map.0
    }
    /// The interface the program is attached to, if any.
    pub fn ifindex(&self) -> Option<u32> {
        self.link.as_ref().map(|_| self.ifindex)
    }
    /// The mode requested at attach.
    pub fn attach_mode(&self) -> Option<AttachMode> {
        self.mode
    }

    /// Attaches to `ifindex` with a BPF link.
    pub fn attach(&mut self, ifindex: u32, mode: AttachMode) -> Result<()> {
        if self.link.is_some() {
            return Err(Error::State("program already attached"));
        }
        if ifindex == 0 {
            return Err(Error::Invalid("interface index 0".into()));
        }
        let flags = match mode {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => 0,
        };
        // EBUSY is retried briefly: a link closed an instant ago can still be referenced by a
        // child process between fork and exec (it holds a copy of the fd table until exec).
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let link = loop {
            let mut a = BpfAttr::new();
            a.u32_at(0, self.prog.0 as u32)
                .u32_at(4, ifindex)
                .u32_at(8, sys::BPF_XDP)
                .u32_at(12, flags);
            match sys::bpf(sys::BPF_LINK_CREATE, &mut a) {
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => break r,
            }
        };
        let link = link.map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EEXIST) => Error::Busy {
                what: format!("XDP hook of ifindex {ifindex} (another program is attached)"),
                err: e,
            },
            Some(libc::ERANGE) => Error::MtuTooLarge(e),
            Some(libc::EOPNOTSUPP) => Error::Unsupported { op: "XDP attach in this mode", err: e },
            Some(libc::ENODEV) => Error::Os { op: "XDP attach: no such interface", err: e },
            _ => Error::os("bpf(BPF_LINK_CREATE)", e),
        })?;
        self.link = Some(Fd(link));
        self.ifindex = ifindex;
        self.mode = Some(mode);
        Ok(())
    }

    /// Detaches (BPF_LINK_DETACH, then closes the link). No-op when not attached. The explicit
    /// detach makes it immediate even if a forked child still holds a copy of the link fd.
    pub fn detach(&mut self) {
        if let Some(link) = self.link.take() {
            let mut a = BpfAttr::new();
            a.u32_at(0, link.0 as u32);
            // Errors are ignored: closing the link below detaches it in any case.
            let _ = sys::bpf(sys::BPF_LINK_DETACH, &mut a);
        }
        self.mode = None;
    }

    /// Registers the socket bound to `queue` (it must already be bound).
    pub fn register(&self, queue: u32, socket_fd: i32) -> Result<()> {
        if queue >= self.max_queues {
            return Err(Error::Invalid(format!(
                "queue {queue} beyond the map's {} slots",
                self.max_queues
            )));
        }
        let key = queue;
        let val = socket_fd as u32;
        let mut a = BpfAttr::new();
        a.u32_at(0, self.map.0 as u32)
            .u64_at(8, &key as *const u32 as u64)
            .u64_at(16, &val as *const u32 as u64)
            .u64_at(24, 0);
        sys::bpf(sys::BPF_MAP_UPDATE_ELEM, &mut a).map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EBADF) | Some(libc::EINVAL) => {
                Error::Invalid(format!("fd {socket_fd} is not a bound AF_XDP socket ({e})"))
            }
            _ => Error::os("bpf(BPF_MAP_UPDATE_ELEM)", e),
        })?;
        Ok(())
    }

    /// Removes the socket registered for `queue` (no-op if the slot is empty).
    pub fn unregister(&self, queue: u32) -> Result<()> {
        if queue >= self.max_queues {
            return Err(Error::Invalid(format!(
                "queue {queue} beyond the map's {} slots",
                self.max_queues
            )));
        }
        let key = queue;
        let mut a = BpfAttr::new();
        a.u32_at(0, self.map.0 as u32).u64_at(8, &key as *const u32 as u64);
        match sys::bpf(sys::BPF_MAP_DELETE_ELEM, &mut a) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::os("bpf(BPF_MAP_DELETE_ELEM)", e)),
        }
    }

    /// Runs the program once on `packet` with BPF_PROG_TEST_RUN (no network needed) and
    /// returns its XDP action.
    pub fn test_run(&self, packet: &[u8]) -> Result<u32> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut a = BpfAttr::new();
        a.u32_at(0, self.prog.0 as u32)
            .u32_at(8, packet.len() as u32)
            .u32_at(12, out.len() as u32)
            .u64_at(16, packet.as_ptr() as u64)
            .u64_at(24, out.as_mut_ptr() as u64)
            .u32_at(32, 1);
        sys::bpf(sys::BPF_PROG_TEST_RUN, &mut a)
            .map_err(|e| Error::os("bpf(BPF_PROG_TEST_RUN)", e))?;
        Ok(a.get_u32(4))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Loads XDP instructions; on failure reloads with the verifier log and returns it.
fn load_prog(code: &[u64], name: &str) -> Result<i32> {
    let license = b"GPL\0";
    let attempt = |log: Option<&mut Vec<u8>>| -> io::Result<i32> {
        let mut a = BpfAttr::new();
        a.u32_at(0, sys::BPF_PROG_TYPE_XDP)
            .u32_at(4, code.len() as u32)
            .u64_at(8, code.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64);
        if let Some(buf) = log {
            a.u32_at(24, 1).u32_at(28, buf.len() as u32).u64_at(32, buf.as_mut_ptr() as u64);
        }
        a.0[48..64].copy_from_slice(&name16(name));
        sys::bpf(sys::BPF_PROG_LOAD, &mut a)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Err(Error::Os { op: "bpf(BPF_PROG_LOAD): needs CAP_BPF and CAP_NET_ADMIN", err: e })
        }
        Err(e) => {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = attempt(Some(&mut buf));
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Err(Error::Verifier { err: e, log: String::from_utf8_lossy(&buf[..end]).into_owned() })
        }
    }
}

#[doc(hidden)]
/// Loads arbitrary instructions (used by tests to check that verifier logs are surfaced).
pub fn load_raw_for_test(code: &[u64]) -> Result<Fd> {
    load_prog(code, "p99_test").map(Fd)
}
