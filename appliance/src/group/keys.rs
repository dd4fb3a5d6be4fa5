//! The group's keys in etcd and the records stored under them.
//!
//! ```text
//! /quire/v1/peers/<name>     PeerRecord (JSON), attached to the peer's lease
//! /quire/v1/coordinator      the coordinator's name, attached to its lease
//! ```
//!
//! Everything a peer puts is attached to its lease: a peer that stops (or is cut off
//! from etcd) disappears from the group when the lease expires, and with it its claim
//! on the coordinator key. Nothing secret is ever stored here (the group secret stays
//! in `group.secret_file` on each peer).

use serde::{Deserialize, Serialize};

/// The prefix of every key of the group; the version is that of the key layout.
pub const ROOT: &str = "/quire/v1/";
/// The prefix of the peers' records.
pub const PEERS: &str = "/quire/v1/peers/";
/// The coordinator's key.
pub const COORDINATOR: &str = "/quire/v1/coordinator";

/// The key of peer `name`'s record.
pub fn peer_key(name: &str) -> String {
    format!("{PEERS}{name}")
}

/// The peer name a key names, if it is a peer record's key.
pub fn peer_of(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix(PEERS).filter(|n| !n.is_empty())
}

/// What a peer tells the group about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// `peer.name`, unique in the group.
    pub name: String,
    /// The page store's UUID (hex): which device this peer serves. A restarted peer
    /// keeps it; two peers must never share it.
    pub store: String,
    /// Where hosts connect for I/O (`target.advertise`, else the bound listener).
    pub target: String,
    /// Where hosts connect for discovery.
    pub discovery: String,
    /// The peer-link listener (`group.listen`).
    pub link: String,
    /// Share of new pages.
    pub weight: u64,
    /// Bytes of the page store's data region.
    pub capacity_bytes: u64,
    /// Bytes of it in use.
    pub used_bytes: u64,
    /// When this incarnation started (ms since the Unix epoch).
    pub started_ms: u64,
    /// The `quire` version it runs.
    pub version: String,
}

impl PeerRecord {
    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a PeerRecord always serializes")
    }

    /// A stored record, or why it is not one.
    pub fn decode(value: &[u8]) -> Result<PeerRecord, String> {
        serde_json::from_slice(value).map_err(|e| format!("not a peer record: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records_round_trip() {
        assert_eq!(peer_key("a-1"), "/quire/v1/peers/a-1");
        assert_eq!(peer_of(b"/quire/v1/peers/a-1"), Some("a-1"));
        assert_eq!(peer_of(b"/quire/v1/peers/"), None);
        assert_eq!(peer_of(COORDINATOR.as_bytes()), None);
        let r = PeerRecord {
            name: "a".into(),
            store: "00ff".into(),
            target: "127.0.0.1:4420".into(),
            discovery: "127.0.0.1:8009".into(),
            link: "127.0.0.1:4520".into(),
            weight: 8,
            capacity_bytes: 8 << 30,
            used_bytes: 0,
            started_ms: 1,
            version: "0.1.0".into(),
        };
        assert_eq!(PeerRecord::decode(&r.encode()), Ok(r));
        assert!(PeerRecord::decode(b"{}").unwrap_err().starts_with("not a peer record"));
    }
}
