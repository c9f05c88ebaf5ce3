//! A veth pair between two network namespaces for the UDP scenario: the server runs in one
//! (`ip netns exec`), the generator thread enters the other with setns(2). Names carry the
//! process id so parallel runs never collide; everything is removed on drop.

use std::process::Command;

pub struct VethPair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_ip: String,
    pub client_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl VethPair {
    pub fn create() -> Result<VethPair, String> {
        let id = std::process::id();
        let pair = VethPair {
            server_ns: format!("p99par-s{id}"),
            client_ns: format!("p99par-c{id}"),
            server_if: format!("p99s{id}"),
            client_if: format!("p99c{id}"),
            server_ip: "10.199.0.1".into(),
            client_ip: "10.199.0.2".into(),
        };
        // From here on, drop removes whatever was made.
        ip(&["netns", "add", &pair.server_ns])?;
        ip(&["netns", "add", &pair.client_ns])?;
        ip(&["link", "add", &pair.server_if, "type", "veth", "peer", "name", &pair.client_if])?;
        ip(&["link", "set", &pair.server_if, "netns", &pair.server_ns])?;
        ip(&["link", "set", &pair.client_if, "netns", &pair.client_ns])?;
        for (ns, ifc, addr) in [
            (&pair.server_ns, &pair.server_if, &pair.server_ip),
            (&pair.client_ns, &pair.client_if, &pair.client_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifc])?;
            ip(&["-n", ns, "link", "set", ifc, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// The MAC address of the server's end (the AF_XDP sender's next hop), as `aa:bb:..`.
    /// Read by a short-lived thread that enters the server namespace, so the caller's stays
    /// as it is.
    pub fn server_mac(&self) -> Result<String, String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.server_ns)?;
                p99::xdp::sys::iface_mac(&self.server_if).map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "MAC lookup thread panicked".to_string())?
        })
        .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
    }

    /// Moves the calling thread into the client namespace (threads it spawns inherit it).
    pub fn enter_client(&self) -> Result<(), String> {
        enter(&self.client_ns)
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(ns: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: f is an open namespace file; setns affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
        let _ = ip(&["link", "del", &self.server_if]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_mac_is_read_inside_the_server_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let n = VethPair::create().expect("veth pair");
        let mac = n.server_mac().expect("server MAC");
        let out = Command::new("ip")
            .args(["-n", &n.server_ns, "-o", "link", "show", "dev", &n.server_if])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("link/ether {mac} ")), "{mac} not in: {text}");
        // The caller's namespace is untouched: the server end is not visible here.
        assert!(p99::xdp::sys::ifindex(&n.server_if).is_err());
    }
}
