//! The group's keys in etcd and the records stored under them.
//!
//! ```text
//! /quire/v1/peers/<name>     PeerRecord (JSON), attached to the peer's lease
//! /quire/v1/coordinator      the coordinator's name, attached to its lease
//! /quire/v1/group            GroupRecord (JSON): the group's uuid, from which every
//!                            volume's namespace UUID and NGUID derive; permanent
//! /quire/v1/peer-ids/<n>     the name of the peer whose routing id is n (0..=65535);
//!                            permanent: a restarted peer keeps its id
//! /quire/v1/next-volume-id   the next volume id (decimal); permanent, only grows
//! /quire/v1/volumes/<name>   VolumeRecord (JSON): identity, geometry, replication
//!                            factor, replica sets, each page's set, routing epoch;
//!                            permanent until the volume is deleted
//! /quire/v1/revoked/<name>   RevokedRecord (JSON): the lease of an earlier run of
//!                            peer <name> that its next run revoked, and when
//! /quire/v1/rebuild/<name>   RebuildReport (JSON): the rebuilds peer <name> leads and
//!                            how far they are, attached to its lease
//! /quire/v1/copied/<volume>/<set>/<member>
//!                            CopyProgress (JSON): how far the full rebuild of a member
//!                            got (pieces from the first all copied); no lease: the
//!                            next leader resumes from it; the coordinator deletes it
//!                            once the member is no longer rebuilt
//! ```
//!
//! What says a peer is alive is attached to its lease: a peer that stops (or is cut
//! off from etcd) disappears from the group when the lease expires, and with it its
//! claim on the coordinator key. What describes data (volumes, ids) is permanent and
//! changed only by transactions that compare the revision they read, so two peers
//! changing one volume at once cannot both win. Nothing secret is ever stored here
//! (the group secret stays in `group.secret_file` on each peer).

use base64::Engine as _;

use serde::{Deserialize, Serialize};

use crate::replica::set::{SetRecord, REPLICAS_MAX};

/// The prefix of every key of the group; the version is that of the key layout.
pub const ROOT: &str = "/quire/v1/";
/// The prefix of the peers' records.
pub const PEERS: &str = "/quire/v1/peers/";
/// The coordinator's key.
pub const COORDINATOR: &str = "/quire/v1/coordinator";

/// The group's record.
pub const GROUP: &str = "/quire/v1/group";
/// The prefix of peer routing ids.
pub const PEER_IDS: &str = "/quire/v1/peer-ids/";
/// The next volume id.
pub const NEXT_VOLUME_ID: &str = "/quire/v1/next-volume-id";
/// The prefix of volume records.
pub const VOLUMES: &str = "/quire/v1/volumes/";
/// The prefix of revocation records.
pub const REVOKED: &str = "/quire/v1/revoked/";
/// The prefix of rebuild reports.
pub const REBUILD: &str = "/quire/v1/rebuild/";
/// The prefix of scrub requests.
pub const SCRUB: &str = "/quire/v1/scrub/";
/// The prefix of drain marks (`quire peer drain NAME`): the peer's copies move away.
pub const DRAIN: &str = "/quire/v1/drain/";

/// The prefix of full rebuilds' progress (`replica::rebuild::CopyProgress`).
pub const COPIED: &str = "/quire/v1/copied/";

/// The key of the progress of the full rebuild of `member` in set `set` of `volume`.
pub fn copied_key(volume: &str, set: usize, member: u16) -> String {
    format!("{COPIED}{volume}/{set}/{member}")
}

/// Volume, set and member of a progress key (what follows [`COPIED`]).
pub fn parse_copied(rest: &str) -> Option<(String, usize, u16)> {
    let (rest, member) = rest.rsplit_once('/')?;
    let (volume, set) = rest.rsplit_once('/')?;
    Some((volume.to_string(), set.parse().ok()?, member.parse().ok()?))
}

/// The prefix of load reports (`volume::load`): each peer's, under its lease.
pub const LOAD: &str = "/quire/v1/load/";

/// The key of peer `name`'s load report.
pub fn load_key(name: &str) -> String {
    format!("{LOAD}{name}")
}

/// What a peer publishes of the I/O it serves (`volume::load`), every few seconds.
/// Rates are in thousandths per second (integers: a record compares exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Operations per 1000 s over every volume.
    pub ops_milli: u64,
    /// KiB per 1000 s over every volume.
    pub kib_milli: u64,
    /// Per volume name.
    pub volumes: std::collections::BTreeMap<String, VolumeLoad>,
    /// Per host on each volume it reaches through this peer.
    #[serde(default)]
    pub hosts: Vec<HostLoad>,
}

/// One host's load on one volume through one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLoad {
    /// Host NQN.
    pub host: String,
    /// Volume name.
    pub volume: String,
    /// Reads and writes per 1000 s.
    pub ops_milli: u64,
    /// KiB per 1000 s.
    pub kib_milli: u64,
    /// Mean latency, ns.
    pub latency_ns: u64,
    /// Reads and writes per 1000 s over the last seconds (`volume::load::FAST_HALF_LIFE`).
    #[serde(default)]
    pub ops_now_milli: u64,
    /// KiB per 1000 s over the last seconds.
    #[serde(default)]
    pub kib_now_milli: u64,
    /// It has a controller here (a path it may use).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connected: bool,
    /// Some of its commands here waited for the volume's limit lately (`volume::qos`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waited: bool,
    /// Some of its commands here waited for the per-host limit lately.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_waited: bool,
    /// This peer steers the host away: its path here is non-optimized to it
    /// (`control::steer`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub steered: bool,
}

/// One volume's load on one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLoad {
    /// Operations per 1000 s.
    pub ops_milli: u64,
    /// KiB per 1000 s.
    pub kib_milli: u64,
    /// Its hottest pages here, hottest first: (page, operations per 1000 s, KiB per
    /// 1000 s).
    pub top: Vec<(u64, u64, u64)>,
}

/// A rate per second as thousandths.
pub fn milli(rate: f32) -> u64 {
    let m = (f64::from(rate) * 1000.0).round();
    if m.is_nan() || m <= 0.0 {
        return 0;
    }
    // Rates of I/O are far below 2^53: the conversion is exact where it matters and
    // saturates beyond.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = m.min(u64::MAX as f64) as u64;
    m
}

/// The rebalancer's record ([`RebalanceRecord`]): paused or not, the coordinator's last
/// word, the moves it made.
pub const REBALANCE: &str = "/quire/v1/rebalance";

/// Moves the rebalance record remembers.
pub const REBALANCE_HISTORY_MAX: usize = 32;

/// What the group keeps of the rebalancer (`replica::rebalance`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceRecord {
    /// `quire rebalance pause` (until `resume`).
    #[serde(default)]
    pub paused: bool,
    /// The coordinator's last word: why nothing moves, or the last move's reason.
    #[serde(default)]
    pub state: String,
    /// The coordinator's `rebalance` configuration when it last wrote.
    #[serde(default)]
    pub enabled: bool,
    /// `rebalance.tolerance_pct`.
    #[serde(default)]
    pub tolerance_pct: u32,
    /// `rebalance.moves_max`.
    #[serde(default)]
    pub moves_max: u32,
    /// The last moves it started, oldest first.
    #[serde(default)]
    pub history: Vec<RebalanceMove>,
    /// The move for load it would make, and since when it would: it is made once it
    /// has stayed the choice for a while (`replica::rebalance::confirm_load`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_candidate: Option<crate::replica::rebalance::LoadCandidate>,
    /// Copy rates set at runtime for the whole group (`quire group set-limits`); 0:
    /// each peer's `replication` configuration.
    #[serde(default, skip_serializing_if = "CopyRates::is_none")]
    pub copy_mb_s: CopyRates,
}

/// The most a leader copies per second, MB, by kind; 0: the peer's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRates {
    /// Rebuilds (`replication.rebuild_mb_s`).
    #[serde(default)]
    pub rebuild: u32,
    /// Page moves (`replication.migration_mb_s`).
    #[serde(default)]
    pub migration: u32,
    /// Scrubs (`replication.scrub_mb_s`).
    #[serde(default)]
    pub scrub: u32,
}

impl CopyRates {
    /// Nothing set: the configuration everywhere.
    pub fn is_none(&self) -> bool {
        *self == CopyRates::default()
    }

    /// These rates where set, `config`'s (rebuild, migration, scrub) elsewhere.
    pub fn or(&self, (rebuild, migration, scrub): (u32, u32, u32)) -> (u32, u32, u32) {
        let pick = |set: u32, conf: u32| if set == 0 { conf } else { set };
        (pick(self.rebuild, rebuild), pick(self.migration, migration), pick(self.scrub, scrub))
    }
}

/// A move the rebalancer started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceMove {
    /// When (coordinator's clock, ms since the Unix epoch): also the move's id.
    pub at_ms: u64,
    /// Volume.
    pub volume: String,
    /// Its first page.
    pub page: u64,
    /// Pages it moves (of one set).
    #[serde(default)]
    pub pages: u64,
    /// From (peer name).
    pub from: String,
    /// To (peer name).
    pub to: String,
    /// Why.
    pub why: String,
    /// A move for load (a hot page), not for capacity.
    #[serde(default)]
    pub load: bool,
}

/// The key of peer `name`'s drain mark.
pub fn drain_key(name: &str) -> String {
    format!("{DRAIN}{name}")
}

/// The key of volume `name`'s scrub request.
pub fn scrub_key(name: &str) -> String {
    format!("{SCRUB}{name}")
}

/// An operator's request to scrub a volume (`quire scrub start`): every leader of its
/// sets compares its members' copies with its own once for each new `id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRequest {
    /// When it was asked (ms since the Unix epoch): newer requests have larger ids.
    pub id: u64,
}

/// The key of peer `name`'s revocation record.
pub fn revoked_key(name: &str) -> String {
    format!("{REVOKED}{name}")
}

/// The key of peer `name`'s rebuild report.
pub fn rebuild_key(name: &str) -> String {
    format!("{REBUILD}{name}")
}

/// A lease of an earlier run of a peer that its next run revoked (written before the
/// revocation): the coordinator waits a TTL after it first sees it before it evicts
/// that run's members, since the earlier run may serve until its own fence falls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    /// The revoked lease.
    pub lease: i64,
    /// When (ms since the Unix epoch, the revoking peer's clock; informative).
    pub at_ms: u64,
}

/// What one peer tells the group about the rebuilds and scrubs it leads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// Per volume name.
    pub volumes: std::collections::BTreeMap<String, RebuildProgress>,
}

/// How far a leader is with one volume's rebuilds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProgress {
    /// Pages to go through in all (of the sets it leads that have members rebuilt).
    pub pages: u64,
    /// Pages gone through.
    pub done: u64,
    /// Bytes copied so far.
    pub bytes: u64,
    /// Pieces copied so far.
    pub pieces: u64,
    /// Pieces compared instead of copied: a rebuild resumed from an earlier run's
    /// progress (`/quire/v1/copied/...`).
    #[serde(default)]
    pub compared: u64,
    /// The last scrub this leader ran of the sets it leads: pages to compare (one
    /// per member), pages compared, units found different (and repaired), running.
    #[serde(default)]
    pub scrub_pages: u64,
    /// Pages compared.
    #[serde(default)]
    pub scrub_done: u64,
    /// Units found different and repaired.
    #[serde(default)]
    pub scrub_mismatches: u64,
    /// Still running.
    #[serde(default)]
    pub scrub_running: bool,
    /// Which request it ran for (0: the periodic scrub).
    #[serde(default)]
    pub scrub_id: u64,
}

/// The most pages a volume of a group has: the set of each page (2 bytes, base64) fits one
/// etcd value well below etcd's default request limit of 1.5 MiB. 256 Ki pages are
/// 1 TiB at the default 4 MiB page size.
pub const GROUP_PAGES_MAX: u64 = 256 << 10;

/// The key of volume `name`'s record.
pub fn volume_key(name: &str) -> String {
    format!("{VOLUMES}{name}")
}

/// The key of peer routing id `id`.
pub fn peer_id_key(id: u16) -> String {
    format!("{PEER_IDS}{id}")
}

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
    /// Its routing id (`/quire/v1/peer-ids/`), the same across restarts.
    #[serde(default)]
    pub id: u16,
    /// The boot id of its machine (`/proc/sys/kernel/random/boot_id`): another one
    /// after a restart means the machine rebooted and its volatile caches were lost.
    #[serde(default)]
    pub boot: String,
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

/// What the whole group shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's uuid (hex), made by the first peer.
    pub uuid: String,
}

/// A volume of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Group-wide id, never reused.
    pub id: u32,
    /// Name (the NQN suffix).
    pub name: String,
    /// Namespace UUID (hex), the same on every peer.
    pub uuid: String,
    /// Namespace NGUID (hex), the same on every peer.
    pub nguid: String,
    /// Page size in bytes.
    pub page_size: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Number of pages.
    pub num_pages: u64,
    /// Routing epoch: grows with every change of the sets or of which set a page has.
    pub epoch: u64,
    /// Copies of each page the group keeps (1 to [`REPLICAS_MAX`]).
    #[serde(default = "one")]
    pub replicas: u8,
    /// The replica sets (see `replica::set`); only ever appended to, so that a set's
    /// index names it for the volume's whole life.
    #[serde(default)]
    pub sets: Vec<SetRecord>,
    /// The set of each page: its index in `sets`, u16 little-endian, base64.
    #[serde(default)]
    pub pages: String,
    /// Its limits (`quire volume set-limits`, `volume::qos`), group-wide.
    #[serde(default, skip_serializing_if = "crate::volume::qos::Limits::is_none")]
    pub limits: crate::volume::qos::Limits,
    /// Pages the rebalancer leaves where they are (`quire page pin`), ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<u64>,
    /// The first format's owner of each page (one routing id per page, base64): read
    /// as sets of one member, never written.
    #[serde(default, skip_serializing)]
    pub owners: String,
}

fn one() -> u8 {
    1
}

impl VolumeRecord {
    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a VolumeRecord always serializes")
    }

    /// A stored record, or why it is not one (also when it does not hold together).
    /// A record of the first format (an owner per page) comes back with a set of one
    /// member per owner.
    pub fn decode(value: &[u8]) -> Result<VolumeRecord, String> {
        let mut r: VolumeRecord = serde_json::from_slice(value).map_err(|e| format!("not a volume record: {e}"))?;
        if r.sets.is_empty() && !r.owners.is_empty() {
            let owners = u16s(&r.name, "owners", &r.owners)?;
            let mut distinct: Vec<u16> = owners.clone();
            distinct.sort_unstable();
            distinct.dedup();
            r.sets = distinct.iter().map(|&o| SetRecord::fresh(&[(o, 0)])).collect();
            let page_sets: Vec<u16> = owners
                .iter()
                .map(|o| u16::try_from(distinct.binary_search(o).expect("listed")).expect("at most 65536 owners"))
                .collect();
            r.set_page_sets(&page_sets);
            r.owners.clear();
        }
        r.pinned.sort_unstable();
        r.pinned.dedup();
        let page_sets = r.page_sets()?;
        if page_sets.len() as u64 != r.num_pages {
            return Err(format!("volume record {:?}: {} page sets for {} pages", r.name, page_sets.len(), r.num_pages));
        }
        if let Some(bad) = page_sets.iter().find(|&&s| usize::from(s) >= r.sets.len()) {
            return Err(format!("volume record {:?}: a page in set {bad} of {}", r.name, r.sets.len()));
        }
        if !(1..=REPLICAS_MAX).contains(&r.replicas) {
            return Err(format!("volume record {:?}: {} replicas (1 to {REPLICAS_MAX})", r.name, r.replicas));
        }
        for (i, s) in r.sets.iter().enumerate() {
            s.check().map_err(|e| format!("volume record {:?}: set {i}: {e}", r.name))?;
        }
        parse_hex16(&r.uuid)
            .ok_or_else(|| format!("volume record {:?}: uuid {:?} is not 32 hex digits", r.name, r.uuid))?;
        parse_hex16(&r.nguid)
            .ok_or_else(|| format!("volume record {:?}: nguid {:?} is not 32 hex digits", r.name, r.nguid))?;
        Ok(r)
    }

    /// The set of each page.
    pub fn page_sets(&self) -> Result<Vec<u16>, String> {
        u16s(&self.name, "pages", &self.pages)
    }

    /// Encodes the set of each page into the record.
    pub fn set_page_sets(&mut self, page_sets: &[u16]) {
        let bytes: Vec<u8> = page_sets.iter().flat_map(|o| o.to_le_bytes()).collect();
        self.pages = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.num_pages = page_sets.len() as u64;
    }

    /// True when every member of every set is in sync.
    pub fn healthy(&self) -> bool {
        self.sets.iter().all(SetRecord::healthy)
    }
}

/// A base64 string of u16 little-endian values.
fn u16s(name: &str, what: &str, b64: &str) -> Result<Vec<u16>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("volume record {name:?}: {what}: {e}"))?;
    if bytes.len() % 2 != 0 {
        return Err(format!("volume record {name:?}: {what}: odd length {}", bytes.len()));
    }
    Ok(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
}

/// 16 bytes as 32 hex digits.
pub fn hex16(b: &[u8; 16]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 hex digits as 16 bytes.
pub fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_records_round_trip_and_refuse_what_does_not_hold_together() {
        let mut r = VolumeRecord {
            id: 3,
            name: "db".into(),
            uuid: hex16(&[0xab; 16]),
            nguid: hex16(&[0x01; 16]),
            page_size: 4 << 20,
            block_size: 4096,
            num_pages: 0,
            epoch: 1,
            replicas: 2,
            sets: vec![SetRecord::fresh(&[(0, 5), (1, 6)]), SetRecord::fresh(&[(1, 6), (2, 7)])],
            pages: String::new(),
            limits: Default::default(),
            pinned: Vec::new(),
            owners: String::new(),
        };
        r.set_page_sets(&[0, 1, 1, 0]);
        assert_eq!(r.num_pages, 4);
        assert_eq!(VolumeRecord::decode(&r.encode()), Ok(r.clone()));
        assert_eq!(r.page_sets().unwrap(), [0, 1, 1, 0]);
        let mut short = r.clone();
        short.num_pages = 5;
        assert!(VolumeRecord::decode(&short.encode()).unwrap_err().contains("4 page sets for 5 pages"));
        let mut bad = r.clone();
        bad.uuid = "xyz".into();
        assert!(VolumeRecord::decode(&bad.encode()).unwrap_err().contains("not 32 hex digits"));
        let mut no_set = r.clone();
        no_set.set_page_sets(&[0, 2, 1, 0]);
        assert!(VolumeRecord::decode(&no_set.encode()).unwrap_err().contains("a page in set 2 of 2"));
        let mut four = r.clone();
        four.replicas = 4;
        assert!(VolumeRecord::decode(&four.encode()).unwrap_err().contains("4 replicas"));
        assert_eq!(parse_hex16(&hex16(&[7; 16])), Some([7; 16]));
        assert_eq!(volume_key("db"), "/quire/v1/volumes/db");
        assert_eq!(peer_id_key(4), "/quire/v1/peer-ids/4");
    }

    #[test]
    fn a_record_of_the_first_format_reads_as_sets_of_one() {
        let owners: Vec<u8> = [3u16, 1, 3, 65535].iter().flat_map(|o| o.to_le_bytes()).collect();
        let first = serde_json::json!({
            "id": 1, "name": "old", "uuid": hex16(&[1; 16]), "nguid": hex16(&[2; 16]),
            "page_size": 4194304, "block_size": 4096, "num_pages": 4, "epoch": 2,
            "owners": base64::engine::general_purpose::STANDARD.encode(owners),
        });
        let r = VolumeRecord::decode(&serde_json::to_vec(&first).unwrap()).unwrap();
        assert_eq!(r.replicas, 1);
        let leaders: Vec<u16> = r.page_sets().unwrap().iter().map(|&s| r.sets[usize::from(s)].leader).collect();
        assert_eq!(leaders, [3, 1, 3, 65535]);
        assert!(r.sets.iter().all(|s| s.members.len() == 1));
        let again = VolumeRecord::decode(&r.encode()).unwrap();
        assert_eq!(again, r, "written back in the new format");
        assert!(!String::from_utf8(r.encode()).unwrap().contains("owners"));
    }

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
            id: 2,
            boot: "b".into(),
        };
        assert_eq!(PeerRecord::decode(&r.encode()), Ok(r));
        assert!(PeerRecord::decode(b"{}").unwrap_err().starts_with("not a peer record"));
    }
}
