//! What a peer knows of its group, as plain state without I/O.
//!
//! The etcd side ([`super::etcd`]) reads the group's keys and hands them here as a
//! [`GroupView`] at one etcd revision; [`Membership`] installs views in revision order
//! (an older one is refused, never applied over a newer one) and says what changed.
//! [`GroupView::admit`] decides whether a peer may register under its name. Being
//! free of I/O, all of it runs under tests as it runs in a peer.

use std::collections::BTreeMap;

use super::keys::{self, GroupRecord, PeerRecord, VolumeRecord};
use crate::volume::placement::{self, Candidate};
use crate::volume::routing::PeerId;

/// One live peer: its record and the etcd facts about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it registered.
    pub record: PeerRecord,
    /// The lease its record is attached to.
    pub lease: i64,
    /// The etcd revision that last wrote its record.
    pub mod_revision: i64,
}

/// One key and value of the group's prefix, as etcd returned them.
#[derive(Clone, Copy, Debug)]
pub struct Kv<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    /// The revision of its last write.
    pub mod_revision: i64,
}

/// The group at one etcd revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The etcd revision the view was read at.
    pub revision: i64,
    /// Live peers by name.
    pub peers: BTreeMap<String, Entry>,
    /// The coordinator's name, when one is elected.
    pub coordinator: Option<String>,
    /// The group's uuid, once the first peer made it.
    pub group_uuid: Option<[u8; 16]>,
    /// Peer routing ids → names (permanent).
    pub peer_ids: BTreeMap<u16, String>,
    /// The next volume id and the revision that wrote it (0, 0 when absent).
    pub next_volume_id: (u32, i64),
    /// Volumes by name, with the revision that last wrote each.
    pub volumes: BTreeMap<String, (VolumeRecord, i64)>,
    /// Names under the volumes' prefix whose record does not read: not to be taken
    /// for deleted (their data stays), nor changed.
    pub unreadable_volumes: std::collections::BTreeSet<String>,
    /// Keys under the group's prefix that hold no valid record, with the reason
    /// (shown in `quire group status`, never acted upon).
    pub ignored: Vec<String>,
    /// Leases revoked by a later run of their peer, by peer name.
    pub revoked: BTreeMap<String, keys::RevokedRecord>,
    /// What each live peer reports of the rebuilds it leads, by peer name.
    pub rebuilds: BTreeMap<String, keys::RebuildReport>,
    /// Scrub requests by volume name.
    pub scrubs: BTreeMap<String, u64>,
    /// Peers being drained (their copies move to other peers), by name.
    pub draining: std::collections::BTreeSet<String>,
    /// The rebalancer's record and its revision (0: none yet).
    pub rebalance: (keys::RebalanceRecord, i64),
    /// Each live peer's load report, by name.
    pub loads: BTreeMap<String, keys::LoadReport>,
    /// How far full rebuilds got, by (volume, set, member).
    pub copied: BTreeMap<(String, usize, u16), crate::replica::rebuild::CopyProgress>,
}

/// Whether a peer may register, from the view it read first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The name is free.
    Fresh,
    /// The name is held by an earlier run of this very peer (same page store), whose
    /// lease has not expired yet (a restart, e.g. after `kill -9`): take it over.
    Restart {
        /// The earlier run's lease, to revoke.
        lease: i64,
    },
    /// Refused: another peer holds the name, the page store or an address.
    Clash(String),
}

impl GroupView {
    /// The view of the keys `kvs` read at `revision`.
    pub fn from_kvs<'a>(revision: i64, kvs: impl IntoIterator<Item = Kv<'a>>) -> GroupView {
        let mut view = GroupView { revision, ..GroupView::default() };
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key).into_owned();
            if key == keys::COORDINATOR {
                match std::str::from_utf8(kv.value) {
                    Ok(name) if !name.is_empty() => view.coordinator = Some(name.to_string()),
                    _ => view.ignored.push(format!("{key}: not a peer name")),
                }
                continue;
            }
            if key == keys::GROUP {
                match serde_json::from_slice::<GroupRecord>(kv.value).ok().and_then(|g| keys::parse_hex16(&g.uuid)) {
                    Some(uuid) => view.group_uuid = Some(uuid),
                    None => view.ignored.push(format!("{key}: not a group record")),
                }
                continue;
            }
            if key == keys::NEXT_VOLUME_ID {
                match std::str::from_utf8(kv.value).ok().and_then(|v| v.parse::<u32>().ok()) {
                    Some(next) => view.next_volume_id = (next, kv.mod_revision),
                    None => view.ignored.push(format!("{key}: not a volume id")),
                }
                continue;
            }
            if let Some(id) = key.strip_prefix(keys::PEER_IDS) {
                match (id.parse::<u16>(), std::str::from_utf8(kv.value)) {
                    (Ok(id), Ok(name)) if !name.is_empty() => {
                        view.peer_ids.insert(id, name.to_string());
                    }
                    _ => view.ignored.push(format!("{key}: not a peer id")),
                }
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::REVOKED) {
                match serde_json::from_slice::<keys::RevokedRecord>(kv.value) {
                    Ok(r) => {
                        view.revoked.insert(name.to_string(), r);
                    }
                    Err(e) => view.ignored.push(format!("{key}: not a revocation record: {e}")),
                }
                continue;
            }
            if let Some(rest) = key.strip_prefix(keys::COPIED) {
                match (keys::parse_copied(rest), serde_json::from_slice(kv.value)) {
                    (Some(k), Ok(p)) => {
                        view.copied.insert(k, p);
                    }
                    _ => view.ignored.push(format!("{key}: not a copy progress record")),
                }
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::LOAD) {
                match serde_json::from_slice::<keys::LoadReport>(kv.value) {
                    Ok(r) => {
                        view.loads.insert(name.to_string(), r);
                    }
                    Err(e) => view.ignored.push(format!("{key}: not a load report: {e}")),
                }
                continue;
            }
            if key == keys::REBALANCE {
                match serde_json::from_slice::<keys::RebalanceRecord>(kv.value) {
                    Ok(r) => view.rebalance = (r, kv.mod_revision),
                    Err(e) => view.ignored.push(format!("{key}: not a rebalance record: {e}")),
                }
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::DRAIN) {
                view.draining.insert(name.to_string());
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::SCRUB) {
                match serde_json::from_slice::<keys::ScrubRequest>(kv.value) {
                    Ok(r) => {
                        view.scrubs.insert(name.to_string(), r.id);
                    }
                    Err(e) => view.ignored.push(format!("{key}: not a scrub request: {e}")),
                }
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::REBUILD) {
                match serde_json::from_slice::<keys::RebuildReport>(kv.value) {
                    Ok(r) => {
                        view.rebuilds.insert(name.to_string(), r);
                    }
                    Err(e) => view.ignored.push(format!("{key}: not a rebuild report: {e}")),
                }
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::VOLUMES) {
                match VolumeRecord::decode(kv.value) {
                    Ok(r) if r.name == name => {
                        view.volumes.insert(name.to_string(), (r, kv.mod_revision));
                    }
                    Ok(r) => {
                        view.unreadable_volumes.insert(name.to_string());
                        view.ignored.push(format!("{key}: names volume {:?}", r.name));
                    }
                    Err(e) => {
                        view.unreadable_volumes.insert(name.to_string());
                        view.ignored.push(format!("{key}: {e}"));
                    }
                }
                continue;
            }
            let Some(name) = keys::peer_of(kv.key) else {
                view.ignored.push(format!("{key}: not a key of this version"));
                continue;
            };
            match PeerRecord::decode(kv.value) {
                Ok(record) if record.name == name => {
                    let entry = Entry { record, lease: kv.lease, mod_revision: kv.mod_revision };
                    view.peers.insert(name.to_string(), entry);
                }
                Ok(record) => view.ignored.push(format!("{key}: names peer {:?}", record.name)),
                Err(e) => view.ignored.push(format!("{key}: {e}")),
            }
        }
        view
    }

    /// The routing id of peer `name`, if it has one (the lowest, should a race
    /// have given it two).
    pub fn peer_id(&self, name: &str) -> Option<u16> {
        self.peer_ids.iter().find(|(_, n)| n.as_str() == name).map(|(&id, _)| id)
    }

    /// The lowest routing id nobody holds.
    pub fn free_peer_id(&self) -> Option<u16> {
        // One past the highest first: the id of a removed peer (`quire peer remove`)
        // is not handed to a new one while any is left (peers may still hold state
        // under it, e.g. a link being torn down).
        match self.peer_ids.keys().next_back() {
            Some(&top) if top < u16::MAX => Some(top + 1),
            _ => (0..=u16::MAX).find(|id| !self.peer_ids.contains_key(id)),
        }
    }

    /// The live peers that take new pages, by routing id.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.peers
            .values()
            .filter(|e| !self.draining.contains(&e.record.name))
            .filter_map(|e| {
                let id = self.peer_id(&e.record.name)?;
                Some(Candidate { peer: PeerId(id), weight: e.record.weight })
            })
            .collect()
    }

    /// The lease (incarnation) of live peer `id`.
    pub fn lease_of(&self, id: u16) -> Option<i64> {
        let name = self.peer_ids.get(&id)?;
        self.peers.get(name).map(|e| e.lease)
    }

    /// The replication factor a new volume gets when none is asked for: 2 when the
    /// group has at least two live peers that take pages, else 1.
    pub fn default_replicas(&self) -> u8 {
        if self.candidates().iter().filter(|c| c.weight > 0).count() >= 2 {
            2
        } else {
            1
        }
    }

    /// The record of a new volume `name` of `num_pages` pages (geometry already
    /// checked) with `replicas` copies of each page (`None`: the default), placed over
    /// the live peers; the id is the next free one.
    pub fn new_volume(
        &self,
        name: &str,
        num_pages: u64,
        (page_size, block_size): (u64, u32),
        replicas: Option<u8>,
    ) -> Result<VolumeRecord, String> {
        let group_uuid = self.group_uuid.ok_or("the group has no uuid yet")?;
        if self.volumes.contains_key(name) {
            return Err(format!("volume {name:?} exists"));
        }
        check_group_pages(num_pages)?;
        let replicas = replicas.unwrap_or_else(|| self.default_replicas());
        check_replicas(replicas, self)?;
        let id = self.next_volume_id.0.max(1);
        let (uuid, nguid) = crate::volume::meta::derive_ids(&group_uuid, id);
        let mut r = VolumeRecord {
            id,
            name: name.to_string(),
            uuid: keys::hex16(&uuid),
            nguid: keys::hex16(&nguid),
            page_size,
            block_size,
            num_pages: 0,
            epoch: 1,
            replicas,
            sets: Vec::new(),
            pages: String::new(),
            limits: Default::default(),
            pinned: Vec::new(),
            owners: String::new(),
        };
        self.place_new_pages(&mut r, num_pages)?;
        Ok(r)
    }

    /// Places pages `r.num_pages .. num_pages` of `r` over the live peers: each gets
    /// an existing set with the same members in the same order, or a new one.
    fn place_new_pages(&self, r: &mut VolumeRecord, num_pages: u64) -> Result<(), String> {
        let mut page_sets = r.page_sets()?;
        let existing: Vec<Vec<PeerId>> = page_sets
            .iter()
            .map(|&s| r.sets[usize::from(s)].members.iter().map(|m| PeerId(m.peer)).collect())
            .collect();
        let copies = placement::place_copies(&existing, num_pages, &self.candidates(), usize::from(r.replicas))
            .map_err(|e| e.to_string())?;
        for c in &copies[existing.len()..] {
            let peers: Vec<u16> = c.iter().map(|p| p.0).collect();
            // A set of live members that are all in sync, in this order, takes the page.
            let found = r.sets.iter().position(|s| {
                s.peers() == peers
                    && s.members.iter().all(|m| {
                        m.state == crate::replica::set::MemberState::Sync && self.lease_of(m.peer) == Some(m.inc)
                    })
            });
            let index = match found {
                Some(i) => i,
                None => {
                    let members: Vec<(u16, i64)> =
                        peers.iter().map(|&p| (p, self.lease_of(p).expect("a candidate is live"))).collect();
                    r.sets.push(crate::replica::set::SetRecord::fresh(&members));
                    r.sets.len() - 1
                }
            };
            page_sets.push(u16::try_from(index).map_err(|_| "more than 65536 replica sets".to_string())?);
        }
        r.set_page_sets(&page_sets);
        Ok(())
    }

    /// The record of volume `name` grown to `num_pages`, the new pages placed over the
    /// live peers, with the revision the change must compare against.
    pub fn grown_volume(&self, name: &str, num_pages: u64) -> Result<(VolumeRecord, i64), String> {
        let (old, revision) = self.volumes.get(name).ok_or_else(|| format!("no volume named {name:?}"))?;
        check_group_pages(num_pages)?;
        let mut r = old.clone();
        self.place_new_pages(&mut r, num_pages)?;
        r.epoch += 1;
        Ok((r, *revision))
    }

    /// May `me` register (as read before registering)?
    pub fn admit(&self, me: &PeerRecord) -> Admission {
        let mut admission = Admission::Fresh;
        for (name, entry) in &self.peers {
            let other = &entry.record;
            if *name == me.name {
                if other.store != me.store {
                    return Admission::Clash(format!(
                        "peer name {:?} is taken by a live peer at {} (page store {}); peer.name must be unique in the group",
                        me.name, other.target, other.store
                    ));
                }
                admission = Admission::Restart { lease: entry.lease };
                continue;
            }
            if other.store == me.store {
                return Admission::Clash(format!(
                    "page store {} is already served by peer {:?} at {}: two peers on one device",
                    me.store, name, other.target
                ));
            }
            for (what, mine, theirs) in [
                ("I/O address", &me.target, &other.target),
                ("discovery address", &me.discovery, &other.discovery),
                ("peer-link address", &me.link, &other.link),
            ] {
                if mine == theirs {
                    return Admission::Clash(format!("{what} {mine} is already used by peer {name:?}"));
                }
            }
        }
        admission
    }
}

/// Checks a replication factor against the limit and the live peers.
pub fn check_replicas(replicas: u8, view: &GroupView) -> Result<(), String> {
    use crate::replica::set::REPLICAS_MAX;
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(format!("{replicas} replicas: a volume has 1 to {REPLICAS_MAX}"));
    }
    let peers = view.candidates().iter().filter(|c| c.weight > 0).count();
    if usize::from(replicas) > peers {
        return Err(format!("{replicas} replicas need {replicas} live peers that take pages; the group has {peers}"));
    }
    Ok(())
}

fn check_group_pages(num_pages: u64) -> Result<(), String> {
    if num_pages > keys::GROUP_PAGES_MAX {
        return Err(format!(
            "{num_pages} pages: a volume of a group holds at most {} pages for now (its page owners are one etcd value)",
            keys::GROUP_PAGES_MAX
        ));
    }
    Ok(())
}

/// A change [`Membership::install`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A peer appeared.
    Joined(String),
    /// A peer's record changed (capacity, weight, a restart).
    Updated(String),
    /// A peer's record is gone (its lease expired or it left).
    Left(String),
    /// The coordinator is now this peer (or none).
    Coordinator(Option<String>),
}

/// A peer that has left, kept for `quire group status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    /// Its last record.
    pub record: PeerRecord,
    /// When this peer saw it go (ms since the Unix epoch).
    pub since_ms: u64,
}

/// The installed view of the group, and the peers that left it.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    view: GroupView,
    gone: BTreeMap<String, Gone>,
}

impl Membership {
    /// The installed view.
    pub fn view(&self) -> &GroupView {
        &self.view
    }

    /// Peers that were in an installed view and are not any more.
    pub fn gone(&self) -> &BTreeMap<String, Gone> {
        &self.gone
    }

    /// Installs `view` (read at `now_ms`) and returns what changed. A view older than
    /// the installed one is refused with an error and changes nothing.
    pub fn install(&mut self, view: GroupView, now_ms: u64) -> Result<Vec<Change>, String> {
        if view.revision < self.view.revision {
            return Err(format!(
                "group view of etcd revision {} is older than the installed one ({}): not installed",
                view.revision, self.view.revision
            ));
        }
        let mut changes = Vec::new();
        for (name, entry) in &self.view.peers {
            match view.peers.get(name) {
                None => {
                    changes.push(Change::Left(name.clone()));
                    self.gone.insert(name.clone(), Gone { record: entry.record.clone(), since_ms: now_ms });
                }
                Some(new) if new.mod_revision != entry.mod_revision => changes.push(Change::Updated(name.clone())),
                Some(_) => {}
            }
        }
        for name in view.peers.keys() {
            if !self.view.peers.contains_key(name) {
                changes.push(Change::Joined(name.clone()));
            }
            self.gone.remove(name);
        }
        // A peer removed from the group (`quire peer remove`: its routing id deleted)
        // is not gone any more: it is no longer there at all.
        self.gone.retain(|name, _| view.peer_ids.values().any(|n| n == name));
        if view.coordinator != self.view.coordinator {
            changes.push(Change::Coordinator(view.coordinator.clone()));
        }
        self.view = view;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, store: &str, port: u16) -> PeerRecord {
        PeerRecord {
            name: name.into(),
            store: store.into(),
            target: format!("127.0.0.1:{port}"),
            discovery: format!("127.0.0.1:{}", port + 1),
            link: format!("127.0.0.1:{}", port + 2),
            weight: 1,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            started_ms: 0,
            version: "test".into(),
            id: 0,
            boot: "b".into(),
        }
    }

    fn view(revision: i64, peers: &[(&PeerRecord, i64)], coordinator: Option<&str>) -> GroupView {
        let encoded: Vec<(String, Vec<u8>, i64)> =
            peers.iter().map(|(r, lease)| (keys::peer_key(&r.name), r.encode(), *lease)).collect();
        let mut kvs: Vec<Kv<'_>> = encoded
            .iter()
            .map(|(k, v, lease)| Kv { key: k.as_bytes(), value: v, lease: *lease, mod_revision: *lease })
            .collect();
        if let Some(c) = coordinator {
            kvs.push(Kv { key: keys::COORDINATOR.as_bytes(), value: c.as_bytes(), lease: 1, mod_revision: 1 });
        }
        // Routing ids outlive leases: every peer of these tests has one.
        let ids: Vec<(String, &str)> =
            ["a", "b", "c", "d"].iter().zip(0u16..).map(|(n, i)| (keys::peer_id_key(i), *n)).collect();
        kvs.extend(ids.iter().map(|(k, n)| Kv { key: k.as_bytes(), value: n.as_bytes(), lease: 0, mod_revision: 1 }));
        GroupView::from_kvs(revision, kvs)
    }

    #[test]
    fn records_coordinator_and_junk_are_read_apart() {
        let a = record("a", "s1", 4000);
        let (key_a, wrong, value) = (keys::peer_key("a"), keys::peer_key("x"), a.encode());
        let kvs = [
            Kv { key: key_a.as_bytes(), value: &value, lease: 7, mod_revision: 3 },
            Kv { key: wrong.as_bytes(), value: &value, lease: 7, mod_revision: 3 },
            Kv { key: b"/quire/v1/peers/y", value: b"garbage", lease: 0, mod_revision: 4 },
            Kv { key: b"/quire/v1/other", value: b"", lease: 0, mod_revision: 4 },
            Kv { key: b"/quire/v1/peer-ids/2", value: b"a", lease: 0, mod_revision: 2 },
            Kv { key: b"/quire/v1/next-volume-id", value: b"4", lease: 0, mod_revision: 6 },
            Kv { key: b"/quire/v1/volumes/db", value: b"{\"id\": 1}", lease: 0, mod_revision: 7 },
            Kv { key: keys::COORDINATOR.as_bytes(), value: b"a", lease: 7, mod_revision: 5 },
        ];
        let v = GroupView::from_kvs(9, kvs);
        assert_eq!(v.revision, 9);
        assert_eq!(v.peers.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(v.peers["a"].lease, 7);
        assert_eq!(v.coordinator.as_deref(), Some("a"));
        assert_eq!(v.ignored.len(), 4, "{:?}", v.ignored);
        assert!(v.volumes.is_empty());
        assert!(v.unreadable_volumes.contains("db"), "an unreadable record is not a deleted volume");
        assert!(v.ignored[0].contains("names peer \"a\""), "{:?}", v.ignored);
        assert_eq!(v.peer_id("a"), Some(2));
        assert_eq!(v.free_peer_id(), Some(3), "one past the highest: a removed peer's id is not reused at once");
        assert_eq!(v.next_volume_id, (4, 6));
    }

    #[test]
    fn new_and_grown_volumes_are_placed_over_the_live_peers_by_weight() {
        let mut a = record("a", "s1", 4000);
        let mut b = record("b", "s2", 5000);
        a.weight = 1;
        b.weight = 3;
        let geo = (4 << 20, 4096);
        let mut v = view(5, &[(&a, 11), (&b, 12)], Some("a"));
        v.peer_ids.clear();
        assert!(v.new_volume("db", 8, geo, Some(1)).unwrap_err().contains("no uuid"));
        v.group_uuid = Some([9; 16]);
        // Peers without a routing id take no pages.
        assert!(v.new_volume("db", 8, geo, Some(1)).unwrap_err().contains("the group has 0"));
        v.peer_ids.insert(0, "a".into());
        v.peer_ids.insert(1, "b".into());
        v.peer_ids.insert(2, "gone".into());
        v.next_volume_id = (7, 30);
        let r = v.new_volume("db", 8, geo, Some(1)).unwrap();
        assert_eq!((r.id, r.epoch, r.num_pages, r.replicas), (7, 1, 8, 1));
        let leaders: Vec<u16> = r.page_sets().unwrap().iter().map(|&s| r.sets[usize::from(s)].leader).collect();
        assert_eq!(leaders.iter().filter(|&&o| o == 0).count(), 2);
        assert_eq!(leaders.iter().filter(|&&o| o == 1).count(), 6);
        assert_eq!(r.sets.len(), 2, "pages share the sets of equal members");
        let of_a = r.sets.iter().find(|s| s.leader == 0).unwrap();
        assert_eq!(of_a.members[0].inc, 11, "members are admitted with their peer's lease");
        let (uuid, nguid) = crate::volume::meta::derive_ids(&[9; 16], 7);
        assert_eq!((r.uuid.as_str(), r.nguid.as_str()), (keys::hex16(&uuid).as_str(), keys::hex16(&nguid).as_str()));
        assert!(v.new_volume("db", keys::GROUP_PAGES_MAX + 1, geo, None).unwrap_err().contains("at most"));
        assert!(v.new_volume("db", 8, geo, Some(3)).unwrap_err().contains("3 replicas need 3 live peers"));
        assert!(v.new_volume("db", 8, geo, Some(0)).unwrap_err().contains("1 to 3"));

        // Two live peers: two copies of every page by default, on distinct peers.
        let two = v.new_volume("two", 8, geo, None).unwrap();
        assert_eq!(two.replicas, 2);
        assert!(two.sets.iter().all(|s| s.members.len() == 2 && s.members[0].peer != s.members[1].peer));

        v.volumes.insert("db".into(), (r.clone(), 31));
        assert!(v.new_volume("db", 8, geo, None).unwrap_err().contains("exists"));
        let (g, revision) = v.grown_volume("db", 12).unwrap();
        assert_eq!((revision, g.epoch, g.num_pages, g.id), (31, 2, 12, 7));
        assert_eq!(&g.page_sets().unwrap()[..8], &r.page_sets().unwrap()[..], "grown: the old pages keep their sets");
        assert!(v.grown_volume("nope", 12).unwrap_err().contains("no volume named"));
    }

    #[test]
    fn admission_refuses_every_clash_and_lets_a_restart_in() {
        let a = record("a", "s1", 4000);
        let b = record("b", "s2", 5000);
        let v = view(5, &[(&a, 11), (&b, 12)], Some("a"));
        assert_eq!(v.admit(&record("c", "s3", 6000)), Admission::Fresh);
        assert_eq!(v.admit(&a), Admission::Restart { lease: 11 });
        let msg = |r: &PeerRecord| match v.admit(r) {
            Admission::Clash(m) => m,
            other => panic!("admitted {other:?}"),
        };
        assert!(msg(&record("a", "s9", 6000)).starts_with("peer name \"a\" is taken by a live peer at 127.0.0.1:4000"));
        assert!(msg(&record("c", "s2", 6000)).starts_with("page store s2 is already served by peer \"b\""));
        assert_eq!(msg(&record("c", "s3", 5000)), "I/O address 127.0.0.1:5000 is already used by peer \"b\"");
        let mut link = record("c", "s3", 6000);
        link.link = b.link.clone();
        assert_eq!(msg(&link), "peer-link address 127.0.0.1:5002 is already used by peer \"b\"");
    }

    #[test]
    fn membership_reports_joins_leaves_and_refuses_older_views() {
        let a = record("a", "s1", 4000);
        let b = record("b", "s2", 5000);
        let mut m = Membership::default();
        let changes = m.install(view(3, &[(&a, 1)], Some("a")), 100).unwrap();
        assert_eq!(changes, [Change::Joined("a".into()), Change::Coordinator(Some("a".into()))]);
        let changes = m.install(view(5, &[(&a, 1), (&b, 2)], Some("a")), 200).unwrap();
        assert_eq!(changes, [Change::Joined("b".into())]);
        let err = m.install(view(4, &[(&a, 1)], Some("a")), 300).unwrap_err();
        assert!(err.contains("older than the installed one (5)"), "{err}");
        assert_eq!(m.view().peers.len(), 2, "a refused view changes nothing");
        let changes = m.install(view(8, &[(&b, 2)], None), 400).unwrap();
        assert_eq!(changes, [Change::Left("a".into()), Change::Coordinator(None)]);
        assert_eq!(m.gone()["a"].since_ms, 400);
        let changes = m.install(view(9, &[(&a, 9), (&b, 2)], Some("b")), 500).unwrap();
        assert_eq!(changes, [Change::Joined("a".into()), Change::Coordinator(Some("b".into()))]);
        assert!(m.gone().is_empty(), "a peer that is back is not gone");
        // Gone again, then removed (`quire peer remove`: its routing id deleted): not
        // listed as gone any more.
        m.install(view(10, &[(&b, 2)], Some("b")), 600).unwrap();
        assert!(m.gone().contains_key("a"));
        let mut removed = view(11, &[(&b, 2)], Some("b"));
        removed.peer_ids.retain(|_, n| n != "a");
        m.install(removed, 700).unwrap();
        assert!(m.gone().is_empty(), "a removed peer is not gone, it is no more");
    }
}
