//! A network namespace joined to the test's own by a veth pair, for partition tests:
//! processes run in it with `ip netns exec` (see [`crate::QuireProcess::spawn_in_netns`]
//! and `PeerSpec::netns` in [`crate::group`]), reach the test's namespace at
//! [`Netns::host_ip`] and are reached at [`Netns::inner_ip`] (a /30 of 10.233.0.0/16
//! that no interface here uses yet). [`Netns::cut`] takes the inner end of the pair
//! down: nothing passes either way (each side keeps its own address, so a process in
//! the namespace still reaches the namespace's listeners, and the test's processes
//! still reach [`Netns::host_ip`]); [`Netns::heal`] brings it up again. Dropping it
//! deletes the namespace and the pair, also when the test panics.
//!
//! Needs root and iproute2's `ip` (nothing else: no iptables, no tc).

use std::process::Command;

/// Whether network namespaces can be made here (root, `ip`), for [`crate::require`].
pub fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: network namespaces and veth pairs need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("no `ip` (iproute2): apt-get install iproute2".into()),
    }
}

/// Runs `ip ARGS`; the error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A network namespace with a veth pair to the test's namespace; deleted on drop.
pub struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
    host_ip: String,
    inner_ip: String,
}

impl Netns {
    /// Makes namespace `quire-TAG-PID` with a veth pair (`qTAG-PID` short names) on a
    /// free /30 of 10.233.0.0/16, both ends and the namespace's `lo` up.
    pub fn create(tag: &str) -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("quire-{tag}-{pid}");
        // Interface names: at most 15 bytes.
        let short = format!("{}{}", &tag[..tag.len().min(3)], pid % 1_000_000);
        let (host_if, inner_if) = (format!("q{short}h"), format!("q{short}c"));
        // Leftovers of an earlier run of this same process id, killed before its drop.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let used = ip_out(&["-o", "-4", "addr", "show"]) + &ip_out(&["-4", "route", "show", "table", "all"]);
        let x = (0..256u32)
            .map(|i| (pid + i) % 256)
            .find(|x| !used.contains(&format!("10.233.{x}.")))
            .ok_or("no free /24 in 10.233.0.0/16")?;
        let ns = Netns { name, host_if, inner_if, host_ip: format!("10.233.{x}.1"), inner_ip: format!("10.233.{x}.2") };
        // From here on, the drop cleans up whatever was made.
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.inner_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.inner_ip), "dev", &ns.inner_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns.inner_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test's namespace's address on the pair.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    /// The namespace's address on the pair.
    pub fn inner_ip(&self) -> &str {
        &self.inner_ip
    }

    /// The partition: the namespace's end of the pair down (its routes to the other
    /// side gone, the other side's carrier lost: no packet passes either way).
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "down"]).expect("cut the namespace off");
    }

    /// The end of the partition: the namespace's end of the pair up again (its address
    /// and route come back with it).
    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "up"]).expect("join the namespace again");
    }

    /// Moves the calling thread (only it) into the namespace: sockets it opens from
    /// then on are the namespace's.
    pub fn enter_this_thread(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns(2) on a file descriptor we own; it changes only the calling
        // thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the inner end and with it the pair; the
        // namespace itself lives on while a process still runs in it, so the host end
        // is deleted too.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
