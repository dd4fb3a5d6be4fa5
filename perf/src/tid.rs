//! Transport ID strings, as `spdk_nvme_perf -r` takes them.
//!
//! A transport ID is whitespace-separated `key:value` pairs; keys are
//! case-insensitive, `trtype` says which other keys matter:
//! - `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 [subnqn:nqn…]` (without
//!   `subnqn`, the NQN is discovered);
//! - `trtype:RAM size:64M [bs:512]`: a RAM block device (quire-drivers);
//! - `trtype:FILE path:/x [size:1G] [direct:auto|on|off]`: a file or kernel block
//!   device through io_uring (`size` creates a missing file);
//! - `trtype:PCIe traddr:0000:00:04.0 [ns:1]`: a local NVMe device through VFIO (the
//!   domain may be left out: `traddr:00:04.0`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Errors in a transport ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TidError {
    /// A word is not `key:value`.
    #[error("'{0}' is not key:value")]
    NotKeyValue(String),
    /// `trtype` is missing.
    #[error("trtype is missing")]
    NoTrtype,
    /// `trtype` names no known transport.
    #[error("unknown trtype '{0}' (TCP, RAM, FILE, PCIe)")]
    UnknownTrtype(String),
    /// A key the transport needs is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A key the transport does not know.
    #[error("unknown key '{key}' for trtype {trtype}")]
    UnknownKey {
        /// The key.
        key: String,
        /// The transport.
        trtype: &'static str,
    },
    /// A value cannot be parsed.
    #[error("bad {key} '{value}'")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// The same key twice.
    #[error("{0} given twice")]
    Duplicate(String),
}

/// A parsed transport ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportId {
    /// NVMe/TCP target.
    Tcp {
        /// Address and port.
        addr: SocketAddr,
        /// Subsystem NQN, or `None` to discover it.
        subnqn: Option<String>,
    },
    /// RAM block device.
    Ram {
        /// Bytes.
        size: u64,
        /// Block size.
        block_size: u32,
    },
    /// File or kernel block device through io_uring.
    File {
        /// Path.
        path: PathBuf,
        /// Create a missing file with this size.
        size: Option<u64>,
        /// `O_DIRECT` policy: "auto", "on" or "off".
        direct: String,
    },
    /// Local NVMe device through VFIO.
    Pcie {
        /// PCI address, normalized to `dddd:bb:dd.f` (lower case).
        traddr: String,
        /// Namespace to use.
        nsid: u32,
    },
}

impl TransportId {
    /// Parses a transport ID string.
    pub fn parse(s: &str) -> Result<TransportId, TidError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for word in s.split_whitespace() {
            let (k, v) = word.split_once(':').ok_or_else(|| TidError::NotKeyValue(word.into()))?;
            if k.is_empty() || v.is_empty() {
                return Err(TidError::NotKeyValue(word.into()));
            }
            let k = k.to_ascii_lowercase();
            if pairs.iter().any(|(pk, _)| *pk == k) {
                return Err(TidError::Duplicate(k));
            }
            pairs.push((k, v.to_string()));
        }
        let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        let trtype = get("trtype").ok_or(TidError::NoTrtype)?;
        let (name, known): (&'static str, &[&str]) = match trtype.to_ascii_lowercase().as_str() {
            "tcp" => ("TCP", &["trtype", "adrfam", "traddr", "trsvcid", "subnqn"]),
            "ram" => ("RAM", &["trtype", "size", "bs"]),
            "file" => ("FILE", &["trtype", "path", "size", "direct"]),
            "pcie" => ("PCIe", &["trtype", "traddr", "ns"]),
            _ => return Err(TidError::UnknownTrtype(trtype.into())),
        };
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(TidError::UnknownKey { key: k.clone(), trtype: name });
        }
        match name {
            "TCP" => {
                let traddr = get("traddr").ok_or(TidError::Missing("traddr"))?;
                let ip: IpAddr =
                    traddr.parse().map_err(|_| TidError::BadValue { key: "traddr", value: traddr.into() })?;
                if let Some(f) = get("adrfam") {
                    let ok = match f.to_ascii_lowercase().as_str() {
                        "ipv4" => ip.is_ipv4(),
                        "ipv6" => ip.is_ipv6(),
                        _ => false,
                    };
                    if !ok {
                        return Err(TidError::BadValue { key: "adrfam", value: f.into() });
                    }
                }
                let svc = get("trsvcid").unwrap_or("4420");
                let port: u16 = svc.parse().map_err(|_| TidError::BadValue { key: "trsvcid", value: svc.into() })?;
                Ok(TransportId::Tcp { addr: SocketAddr::new(ip, port), subnqn: get("subnqn").map(String::from) })
            }
            "RAM" => {
                let sz = get("size").ok_or(TidError::Missing("size"))?;
                let size = parse_size(sz).ok_or(TidError::BadValue { key: "size", value: sz.into() })?;
                let bs = get("bs").unwrap_or("512");
                let block_size = parse_size(bs)
                    .and_then(|b| u32::try_from(b).ok())
                    .filter(|b| b.is_power_of_two() && (512..=65536).contains(b))
                    .ok_or(TidError::BadValue { key: "bs", value: bs.into() })?;
                if size < u64::from(block_size) {
                    return Err(TidError::BadValue { key: "size", value: sz.into() });
                }
                Ok(TransportId::Ram { size, block_size })
            }
            "FILE" => {
                let path = get("path").ok_or(TidError::Missing("path"))?;
                let size = match get("size") {
                    Some(v) => Some(parse_size(v).ok_or(TidError::BadValue { key: "size", value: v.into() })?),
                    None => None,
                };
                let direct = get("direct").unwrap_or("auto").to_ascii_lowercase();
                if !["auto", "on", "off"].contains(&direct.as_str()) {
                    return Err(TidError::BadValue { key: "direct", value: direct });
                }
                Ok(TransportId::File { path: path.into(), size, direct })
            }
            _ => {
                let traddr = get("traddr").ok_or(TidError::Missing("traddr"))?;
                let bdf = parse_bdf(traddr).ok_or(TidError::BadValue { key: "traddr", value: traddr.into() })?;
                let ns = get("ns").unwrap_or("1");
                let nsid = ns
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n != 0 && n != u32::MAX)
                    .ok_or(TidError::BadValue { key: "ns", value: ns.into() })?;
                Ok(TransportId::Pcie { traddr: bdf, nsid })
            }
        }
    }

    /// The device name used in reports, in `spdk_nvme_perf`'s style.
    pub fn name(&self, subnqn: Option<&str>) -> String {
        match self {
            TransportId::Tcp { addr, subnqn: given } => {
                let nqn = subnqn.or(given.as_deref()).unwrap_or("?");
                format!("TCP  (addr:{} subnqn:{})", addr.ip(), nqn)
            }
            TransportId::Ram { size, .. } => format!("RAM  (size:{})", format_size(*size)),
            TransportId::File { path, .. } => format!("FILE (path:{})", path.display()),
            TransportId::Pcie { traddr, .. } => format!("PCIE ({traddr})"),
        }
    }
}

/// Normalizes a PCI address `[domain:]bus:device.function` (hexadecimal; domain up to
/// 4 digits, bus 2, device 2 below 0x20, function 1 below 8) to `dddd:bb:dd.f`, the
/// form sysfs uses; `None` when it is not one.
pub fn parse_bdf(s: &str) -> Option<String> {
    let (rest, function) = s.rsplit_once('.')?;
    let mut parts: Vec<&str> = rest.split(':').collect();
    if parts.len() == 2 {
        parts.insert(0, "0");
    }
    let [domain, bus, device] = parts[..] else { return None };
    let hex = |t: &str, digits: usize, max: u32| {
        let ok = !t.is_empty() && t.len() <= digits && t.chars().all(|c| c.is_ascii_hexdigit());
        u32::from_str_radix(t, 16).ok().filter(|&v| ok && v <= max)
    };
    let (d, b, v, f) = (hex(domain, 4, 0xffff)?, hex(bus, 2, 0xff)?, hex(device, 2, 0x1f)?, hex(function, 1, 7)?);
    Some(format!("{d:04x}:{b:02x}:{v:02x}.{f:x}"))
}

/// Parses a byte count with an optional K/M/G/T suffix (powers of 1024; a trailing
/// `B`, `iB` is accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mul) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Formats a byte count with the largest exact binary suffix.
pub fn format_size(n: u64) -> String {
    for (shift, suffix) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{}", n >> shift, suffix);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_with_and_without_subnqn() {
        let t = TransportId::parse("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.a:b").unwrap();
        assert_eq!(t, TransportId::Tcp { addr: "127.0.0.1:4420".parse().unwrap(), subnqn: Some("nqn.a:b".into()) });
        let t = TransportId::parse("  TRTYPE:tcp   traddr:127.0.0.1 ").unwrap();
        assert_eq!(t, TransportId::Tcp { addr: "127.0.0.1:4420".parse().unwrap(), subnqn: None });
        assert_eq!(t.name(Some("nqn.x")), "TCP  (addr:127.0.0.1 subnqn:nqn.x)");
    }

    #[test]
    fn ram_file_pcie() {
        assert_eq!(
            TransportId::parse("trtype:RAM size:1G").unwrap(),
            TransportId::Ram { size: 1 << 30, block_size: 512 }
        );
        assert_eq!(
            TransportId::parse("trtype:ram size:64MiB bs:4k").unwrap(),
            TransportId::Ram { size: 64 << 20, block_size: 4096 }
        );
        assert_eq!(
            TransportId::parse("trtype:FILE path:/x").unwrap(),
            TransportId::File { path: "/x".into(), size: None, direct: "auto".into() }
        );
        assert_eq!(
            TransportId::parse("trtype:PCIe traddr:0000:00:04.0").unwrap(),
            TransportId::Pcie { traddr: "0000:00:04.0".into(), nsid: 1 }
        );
    }

    #[test]
    fn pcie_addresses_are_normalized_and_checked() {
        assert_eq!(
            TransportId::parse("trtype:pcie traddr:00:1F.7 ns:2").unwrap(),
            TransportId::Pcie { traddr: "0000:00:1f.7".into(), nsid: 2 }
        );
        assert_eq!(parse_bdf("1:a:3.1").as_deref(), Some("0001:0a:03.1"));
        for bad in ["0000:00:04", "00:04.8", "00:20.0", "0000:100:00.0", "x:00:04.0", "0:0:0:0.0", ".0", "00:04."] {
            assert_eq!(parse_bdf(bad), None, "{bad}");
        }
        assert!(matches!(
            TransportId::parse("trtype:PCIe traddr:00:04"),
            Err(TidError::BadValue { key: "traddr", .. })
        ));
        assert!(matches!(
            TransportId::parse("trtype:PCIe traddr:00:04.0 ns:0"),
            Err(TidError::BadValue { key: "ns", .. })
        ));
        assert_eq!(TransportId::parse("trtype:PCIe"), Err(TidError::Missing("traddr")));
        let t = TransportId::parse("trtype:PCIe traddr:00:04.0").unwrap();
        assert_eq!(t.name(None), "PCIE (0000:00:04.0)");
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        assert_eq!(TransportId::parse("traddr:1.2.3.4"), Err(TidError::NoTrtype));
        assert_eq!(TransportId::parse("trtype:RDMA"), Err(TidError::UnknownTrtype("RDMA".into())));
        assert_eq!(TransportId::parse("trtype:TCP"), Err(TidError::Missing("traddr")));
        assert_eq!(TransportId::parse("trtype:TCP traddr"), Err(TidError::NotKeyValue("traddr".into())));
        assert!(matches!(
            TransportId::parse("trtype:TCP traddr:localhost"),
            Err(TidError::BadValue { key: "traddr", .. })
        ));
        assert!(matches!(
            TransportId::parse("trtype:TCP traddr:127.0.0.1 trsvcid:99999"),
            Err(TidError::BadValue { key: "trsvcid", .. })
        ));
        assert!(matches!(
            TransportId::parse("trtype:TCP adrfam:IPv6 traddr:127.0.0.1"),
            Err(TidError::BadValue { key: "adrfam", .. })
        ));
        assert!(matches!(TransportId::parse("trtype:RAM size:1G foo:1"), Err(TidError::UnknownKey { .. })));
        assert!(matches!(TransportId::parse("trtype:RAM size:1X"), Err(TidError::BadValue { key: "size", .. })));
        assert!(matches!(TransportId::parse("trtype:RAM size:1G bs:1000"), Err(TidError::BadValue { key: "bs", .. })));
        assert_eq!(TransportId::parse("trtype:RAM trtype:RAM"), Err(TidError::Duplicate("trtype".into())));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
