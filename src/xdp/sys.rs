//! Kernel interface numbers and structures for AF_XDP and bpf(2) (uapi `linux/if_xdp.h`,
//! `linux/bpf.h`), written out here so the build does not depend on the installed headers.

#![allow(dead_code)]

use std::io;

pub const AF_XDP: i32 = 44;
pub const SOL_XDP: i32 = 283;

pub const XDP_MMAP_OFFSETS: i32 = 1;
pub const XDP_RX_RING: i32 = 2;
pub const XDP_TX_RING: i32 = 3;
pub const XDP_UMEM_REG: i32 = 4;
pub const XDP_UMEM_FILL_RING: i32 = 5;
pub const XDP_UMEM_COMPLETION_RING: i32 = 6;
pub const XDP_STATISTICS: i32 = 7;
pub const XDP_OPTIONS: i32 = 8;

pub const XDP_SHARED_UMEM: u16 = 1;
pub const XDP_COPY: u16 = 2;
pub const XDP_ZEROCOPY: u16 = 4;
pub const XDP_USE_NEED_WAKEUP: u16 = 8;

pub const XDP_RING_NEED_WAKEUP: u32 = 1;
pub const XDP_OPTIONS_ZEROCOPY: u32 = 1;

pub const XDP_PGOFF_RX_RING: i64 = 0;
pub const XDP_PGOFF_TX_RING: i64 = 0x8000_0000;
pub const XDP_UMEM_PGOFF_FILL_RING: i64 = 0x1_0000_0000;
pub const XDP_UMEM_PGOFF_COMPLETION_RING: i64 = 0x1_8000_0000;

/// Bytes the kernel reserves in front of received data in every frame.
pub const XDP_PACKET_HEADROOM: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpUmemReg {
    pub addr: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub headroom: u32,
    pub flags: u32,
    pub tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpRingOffset {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpMmapOffsets {
    pub rx: XdpRingOffset,
    pub tx: XdpRingOffset,
    pub fr: XdpRingOffset,
    pub cr: XdpRingOffset,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct SockaddrXdp {
    pub family: u16,
    pub flags: u16,
    pub ifindex: u32,
    pub queue_id: u32,
    pub shared_umem_fd: u32,
}

/// One RX/TX ring descriptor, identical to the kernel's `struct xdp_desc`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// The kernel's `struct xdp_statistics` (XDP_STATISTICS).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpStatistics {
    /// Packets dropped for a reason other than invalid descriptors (e.g. too long).
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Packets dropped because the FILL ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was found empty.
    pub tx_ring_empty_descs: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct XdpOptions {
    pub flags: u32,
}

// bpf(2)
pub const BPF_MAP_CREATE: u32 = 0;
pub const BPF_MAP_LOOKUP_ELEM: u32 = 1;
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub const BPF_MAP_DELETE_ELEM: u32 = 3;
pub const BPF_PROG_LOAD: u32 = 5;
pub const BPF_PROG_TEST_RUN: u32 = 10;
pub const BPF_LINK_CREATE: u32 = 28;
pub const BPF_LINK_DETACH: u32 = 34;

pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
pub const BPF_XDP: u32 = 37;
pub const BPF_F_XDP_HAS_FRAGS: u32 = 32;

pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// A zeroed `union bpf_attr` big enough for every command used here; unused tail bytes must
/// be zero, which the kernel checks.
#[repr(C, align(8))]
pub struct BpfAttr(pub [u8; 144]);

impl Default for BpfAttr {
    fn default() -> Self {
        Self::new()
    }
}

impl BpfAttr {
    pub fn new() -> Self {
        BpfAttr([0; 144])
    }
    pub fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
}

/// Calls bpf(2); returns the non-negative result or the OS error.
pub fn bpf(cmd: u32, attr: &mut BpfAttr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size passed; every pointer
    // written into it by the callers points to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// setsockopt(SOL_XDP) with a plain-data value.
pub fn set_xdp_opt<T: Copy>(fd: i32, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    })
    .map(|_| ())
}

/// getsockopt(SOL_XDP) into a plain-data value; returns the length the kernel wrote.
pub fn get_xdp_opt<T: Copy>(fd: i32, opt: i32, val: &mut T) -> io::Result<usize> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a live, writable T of `len` bytes.
    cvt(unsafe { libc::getsockopt(fd, SOL_XDP, opt, (val as *mut T).cast(), &mut len) })?;
    Ok(len as usize)
}

/// An owned file descriptor closed on drop.
#[derive(Debug)]
pub struct Fd(pub i32);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: we own this descriptor and close it exactly once.
            unsafe { libc::close(self.0) };
        }
    }
}

/// Checks an interface name (1..IF_NAMESIZE-1 bytes, no NUL) and returns it as a C string.
fn iface_name(name: &str) -> super::Result<std::ffi::CString> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        return Err(super::Error::Invalid(format!(
            "interface name must be 1 to {} bytes, got {}",
            libc::IF_NAMESIZE - 1,
            name.len()
        )));
    }
    std::ffi::CString::new(name)
        .map_err(|_| super::Error::Invalid("interface name contains a NUL byte".into()))
}

/// Interface index of `name` in the calling thread's network namespace. The name must be
/// 1..IF_NAMESIZE-1 bytes without NUL (`Invalid` otherwise); `NoDevice` when no interface of
/// that name exists.
pub fn ifindex(name: &str) -> super::Result<u32> {
    let c = iface_name(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(super::Error::NoDevice { name: name.to_string(), err: io::Error::last_os_error() })
    } else {
        Ok(idx)
    }
}

/// Hardware (MAC) address of the Ethernet interface `name` in the calling thread's network
/// namespace (SIOCGIFHWADDR). Name rules as for [`ifindex`]; `NoDevice` when no interface of
/// that name exists; `Invalid` when it is not an Ethernet interface (e.g. loopback has
/// ARPHRD_LOOPBACK, a tun device none).
pub fn iface_mac(name: &str) -> super::Result<[u8; 6]> {
    let c = iface_name(name)?;
    // SAFETY: plain socket(2); the descriptor is owned by `Fd` and closed on drop.
    let fd = Fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) });
    if fd.0 < 0 {
        return Err(super::Error::os("socket", io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(c.as_bytes_with_nul()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel fills ifru_hwaddr.
    if unsafe { libc::ioctl(fd.0, libc::SIOCGIFHWADDR, &mut req) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::ENODEV) {
            super::Error::NoDevice { name: name.to_string(), err }
        } else {
            super::Error::os("SIOCGIFHWADDR", err)
        });
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(super::Error::Invalid(format!(
            "{name} is not an Ethernet interface (hardware type {})",
            sa.sa_family
        )));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// Waits up to `timeout_ms` (negative: forever) for POLLIN on `fd`. Ok(false) on timeout or
/// when a signal interrupted the wait (EINTR), so callers simply check again.
pub fn poll_in(fd: i32, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0 && p.revents & libc::POLLIN != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::Error;

    #[test]
    fn ifindex_checks_the_name() {
        assert!(matches!(ifindex(""), Err(Error::Invalid(_))));
        assert!(matches!(ifindex(&"x".repeat(libc::IF_NAMESIZE)), Err(Error::Invalid(_))));
        assert!(matches!(ifindex("a\0b"), Err(Error::Invalid(_))));
        match ifindex("nosuchdev0") {
            Err(e @ Error::NoDevice { .. }) => {
                assert_eq!(e.errno(), Some(libc::ENODEV));
                assert!(e.to_string().contains("no interface named nosuchdev0"), "{e}");
            }
            r => panic!("{r:?}"),
        }
        assert!(ifindex("lo").unwrap() > 0);
    }

    #[test]
    fn iface_mac_checks_the_name_and_the_type() {
        assert!(matches!(iface_mac(""), Err(Error::Invalid(_))));
        assert!(matches!(iface_mac(&"x".repeat(libc::IF_NAMESIZE)), Err(Error::Invalid(_))));
        assert!(matches!(iface_mac("a\0b"), Err(Error::Invalid(_))));
        match iface_mac("nosuchdev0") {
            Err(e @ Error::NoDevice { .. }) => assert_eq!(e.errno(), Some(libc::ENODEV)),
            r => panic!("{r:?}"),
        }
        // Loopback has no Ethernet address.
        match iface_mac("lo") {
            Err(Error::Invalid(m)) => assert!(m.contains("not an Ethernet interface"), "{m}"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn poll_in_times_out_and_sees_data() {
        let mut fds = [0i32; 2];
        // SAFETY: a valid two-int array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = (Fd(fds[0]), Fd(fds[1]));
        assert!(!poll_in(r.0, 0).unwrap());
        assert!(!poll_in(r.0, 10).unwrap());
        // SAFETY: writes one byte from a live buffer to our pipe.
        assert_eq!(unsafe { libc::write(w.0, b"x".as_ptr().cast(), 1) }, 1);
        assert!(poll_in(r.0, 0).unwrap());
        assert!(poll_in(r.0, -1).unwrap());
        assert!(poll_in(-1, 0).is_ok_and(|ready| !ready), "a negative fd is ignored by poll(2)");
    }
}
