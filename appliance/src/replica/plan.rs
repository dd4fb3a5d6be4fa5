//! The coordinator's decisions about replica sets, as a pure function of what etcd
//! says (tested here and driven by the simulator, run by the group agent of the
//! coordinator on every read of the group).
//!
//! For each set of a volume, in this order:
//! 1. **Evict** a member whose peer's incarnation is gone (its lease is not the one the
//!    member was admitted with): at once when the lease expired (the peer stopped
//!    serving before that, see `fence`), a TTL after the coordinator first saw the
//!    revocation record when a later run of the peer revoked it (the earlier run may
//!    still be serving until its own fence falls). The member becomes `Out`, with
//!    the leader that tracks what it misses. An evicted leader is replaced by a
//!    member in sync (or, failing that, one that has every acknowledged write); the
//!    other survivors become `Reconcile` and members being rebuilt restart their
//!    rebuild by comparison (the new leader does not know what they lack).
//! 2. **Admit back** an `Out` member whose peer is live again: `Rebuild`, with the
//!    new incarnation; delta when the current leader is the one that tracked what it
//!    missed, it was not the leader itself (a leader may hold writes nobody else has),
//!    and its machine did not reboot (its volatile cache is intact); else compare.
//! 3. **Replace** an `Out` member that stayed out `replace_after`: a new member on
//!    the live peer holding the fewest copies of the volume for its weight, copied in
//!    full, in the same position.
//! 4. **Resize** to the volume's replication factor: add members (copied in full), or
//!    remove the least useful (out, then being rebuilt, then in sync; never the
//!    leader).
//!
//! Every change bumps the volume's epoch, and is written with a transaction that
//! compares the record's revision (a stale plan loses, is read again, and planned
//! anew). Promotions (`Rebuild`/`Reconcile` → `Sync`) are the leader's to ask for
//! (`GroupOpKind::Promote`): only it knows when the copy is complete.

use std::collections::BTreeMap;

use super::set::{Member, MemberState, RebuildMode, SetRecord, Tracker};
use crate::group::keys::VolumeRecord;

/// What the coordinator knows of one peer (live or gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its lease when live.
    pub lease: Option<i64>,
    /// Its weight (0: takes no new copies).
    pub weight: u64,
    /// Its machine's boot id as it last said.
    pub boot: String,
    /// Being drained: takes no new copies, and its copies move to other peers.
    pub draining: bool,
}

/// The state a plan is made from.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// Now (coordinator's clock, ms since the Unix epoch).
    pub now_ms: u64,
    /// The lease TTL.
    pub ttl_ms: u64,
    /// How long a member stays out before it is replaced.
    pub replace_after_ms: u64,
    /// Every peer known, by routing id.
    pub peers: &'a BTreeMap<u16, PeerInfo>,
    /// Leases revoked by a later run of their peer: (peer, lease) → when the
    /// coordinator first saw the record (its clock, ms).
    pub revoked: &'a BTreeMap<(u16, i64), u64>,
}

impl PlanInput<'_> {
    fn live_lease(&self, peer: u16) -> Option<i64> {
        self.peers.get(&peer).and_then(|p| p.lease)
    }

    /// The member's incarnation is still its peer's.
    pub(super) fn valid(&self, m: &Member) -> bool {
        self.live_lease(m.peer) == Some(m.inc)
    }

    /// The member's incarnation is gone and can serve nothing any more.
    fn evictable(&self, m: &Member) -> bool {
        if self.valid(m) {
            return false;
        }
        match self.revoked.get(&(m.peer, m.inc)) {
            Some(&seen) => self.now_ms >= seen + self.ttl_ms,
            None => true,
        }
    }
}

/// The next record of volume `r`, with the reasons, or `None` when nothing is to
/// change.
pub fn plan_volume(r: &VolumeRecord, input: &PlanInput<'_>) -> Option<(VolumeRecord, Vec<String>)> {
    let (next, why, _) = plan_with_notes(r, input);
    next.map(|n| (n, why))
}

/// [`plan_volume`], with what it saw but could not act on (a set waiting for a peer).
pub fn plan_with_notes(r: &VolumeRecord, input: &PlanInput<'_>) -> (Option<VolumeRecord>, Vec<String>, Vec<String>) {
    let mut next = r.clone();
    let mut why = Vec::new();
    let mut notes = Vec::new();
    let Ok(page_sets) = r.page_sets() else { return (None, why, notes) };
    let mut pages_per_set = vec![0u64; r.sets.len()];
    for &s in &page_sets {
        pages_per_set[usize::from(s)] += 1;
    }
    for i in 0..next.sets.len() {
        if pages_per_set[i] == 0 {
            continue;
        }
        let draining = next.sets[i].members.iter().any(|m| input.peers.get(&m.peer).is_some_and(|p| p.draining));
        let single = next.sets[i].members.len() == 1 && r.replicas == 1;
        if single && !draining {
            // No copy to fail over to, nothing to rebuild: a page of a volume without
            // replicas waits for its one owner (unless its owner is being drained: its
            // copy moves).
            continue;
        }
        super::migration::advance(&mut next.sets[i], i, input, &mut why);
        evict(&mut next.sets[i], i, input, &mut why, &mut notes);
        admit(&mut next.sets[i], i, input, &mut why);
        let held = copies_held(&next, &pages_per_set);
        drain(&mut next.sets[i], i, input, &held, &mut why, &mut notes);
        let held = copies_held(&next, &pages_per_set);
        replace(&mut next.sets[i], i, input, &held, &mut why);
        let held = copies_held(&next, &pages_per_set);
        resize(&mut next.sets[i], i, usize::from(r.replicas), input, &held, &mut why);
        debug_assert!(next.sets[i].check().is_ok(), "{:?}", next.sets[i]);
    }
    coalesce(&mut next, &mut why);
    if next.sets == r.sets && next.pages == r.pages {
        return (None, Vec::new(), notes);
    }
    next.epoch += 1;
    (Some(next), why, notes)
}

/// A set that has settled into the same members as an older one that has pages (a
/// page moved to a peer holding others of the volume the same way) gives its pages
/// to the older one, so that a volume whose pages move keeps a few sets: set indices
/// are never reused, and a volume has at most 65536. Both sets are in sync with no
/// move, so nothing is copied or tracked for them: only the routing changes, to the
/// same members in the same positions.
fn coalesce(r: &mut VolumeRecord, why: &mut Vec<String>) {
    let Ok(mut page_sets) = r.page_sets() else { return };
    let mut count = vec![0u64; r.sets.len()];
    for &s in &page_sets {
        count[usize::from(s)] += 1;
    }
    let settled = |s: &SetRecord| s.mv.is_none() && s.members.iter().all(|m| m.state == MemberState::Sync);
    let mut into: Vec<u16> = Vec::with_capacity(r.sets.len());
    let mut changed = false;
    for j in 0..r.sets.len() {
        let sj = &r.sets[j];
        let k = (count[j] > 0 && settled(sj))
            .then(|| {
                (0..j).find(|&k| {
                    let sk = &r.sets[k];
                    count[k] > 0 && settled(sk) && sk.leader == sj.leader && sk.members == sj.members
                })
            })
            .flatten();
        match k {
            Some(k) => {
                why.push(format!("set {j}: its {} pages join set {k} (the same copies)", count[j]));
                into.push(u16::try_from(k).expect("k < j, a set index"));
                count[k] += count[j];
                count[j] = 0;
                changed = true;
            }
            None => into.push(u16::try_from(j).expect("a set index")),
        }
    }
    if changed {
        for s in &mut page_sets {
            *s = into[usize::from(*s)];
        }
        r.set_page_sets(&page_sets);
    }
}

/// Copies of the volume each peer holds (members in any state).
fn copies_held(r: &VolumeRecord, pages_per_set: &[u64]) -> BTreeMap<u16, u64> {
    let mut held = BTreeMap::new();
    for (s, &n) in r.sets.iter().zip(pages_per_set) {
        for m in &s.members {
            *held.entry(m.peer).or_default() += n;
        }
    }
    held
}

fn evict(s: &mut SetRecord, i: usize, input: &PlanInput<'_>, why: &mut Vec<String>, notes: &mut Vec<String>) {
    let gone: Vec<usize> = (0..s.members.len())
        .filter(|&k| !matches!(s.members[k].state, MemberState::Out { .. }) && input.evictable(&s.members[k]))
        .collect();
    if gone.is_empty() {
        return;
    }
    let leader_gone = gone.iter().any(|&k| s.members[k].peer == s.leader);
    let new_leader = if leader_gone {
        // Every acknowledged write is on every member in sync or in reconcile: one of
        // them takes over, in sync ones first.
        let pick = |want: fn(&MemberState) -> bool| {
            s.members.iter().position(|m| want(&m.state) && input.valid(m) && !gone.contains(&pos(s, m.peer)))
        };
        pick(|st| *st == MemberState::Sync)
            .or_else(|| pick(|st| *st == MemberState::Reconcile))
            .or_else(|| pick(|st| matches!(st, MemberState::Leaving { .. })))
    } else {
        None
    };
    if leader_gone && new_leader.is_none() {
        // Nobody left with every acknowledged write but the leader itself. Its peer
        // back under a new incarnation (restarted, or registered again after its
        // lease expired while etcd was out of reach) still holds its copy on its
        // device: it leads again, and members being rebuilt start over by comparison.
        let k = pos(s, s.leader);
        if let Some(lease) = input.live_lease(s.leader) {
            why.push(format!(
                "set {i}: leader {} back (incarnation {lease}), the only copy with every acknowledged write: it leads again",
                s.leader
            ));
            s.members[k].inc = lease;
            s.members[k].state = MemberState::Sync;
            for m in &mut s.members {
                if let MemberState::Rebuild { .. } = m.state {
                    m.state = MemberState::Rebuild { mode: RebuildMode::Compare };
                }
            }
            // Any other member whose incarnation is gone is evicted as usual.
            let others: Vec<usize> = gone.iter().copied().filter(|&g| g != k).collect();
            for g in others {
                let m = &mut s.members[g];
                why.push(format!("set {i}: member {} (incarnation {}) evicted: its lease is gone", m.peer, m.inc));
                let boot = input.peers.get(&m.peer).map(|p| p.boot.clone()).unwrap_or_default();
                m.state = MemberState::Out { since_ms: input.now_ms, tracker: None, boot, was_leader: false };
            }
            return;
        }
        // The set waits for its leader (or a member in sync) to come back; its pages
        // are unavailable meanwhile.
        notes.push(format!("set {i}: leader {} gone and no member in sync left: waiting for it", s.leader));
        return;
    }
    let leader = match new_leader {
        Some(k) => &s.members[k],
        None => s.members.iter().find(|m| m.peer == s.leader).expect("a set has its leader"),
    };
    let tracker = Some(Tracker { peer: leader.peer, inc: leader.inc });
    for &k in &gone {
        let m = &mut s.members[k];
        let boot = input.peers.get(&m.peer).map(|p| p.boot.clone()).unwrap_or_default();
        let was_leader = m.peer == s.leader;
        // What the leader tracks from now on is all it misses only if it had
        // everything before: a member evicted while being rebuilt or reconciled comes
        // back by comparison.
        let was_sync = m.state == MemberState::Sync;
        why.push(format!("set {i}: member {} (incarnation {}) evicted: its lease is gone", m.peer, m.inc));
        m.state = MemberState::Out {
            since_ms: input.now_ms,
            tracker: if was_leader || !was_sync { None } else { tracker },
            boot,
            was_leader,
        };
    }
    if let Some(k) = new_leader {
        let new = s.members[k].peer;
        why.push(format!("set {i}: member {new} leads it now (was {})", s.leader));
        s.leader = new;
        s.members[k].state = MemberState::Sync;
        for m in &mut s.members {
            match m.state {
                // They may differ from the new leader where the old one's last writes
                // were in flight.
                MemberState::Sync if m.peer != new => m.state = MemberState::Reconcile,
                // The new leader does not know what they lack.
                MemberState::Rebuild { .. } => m.state = MemberState::Rebuild { mode: RebuildMode::Compare },
                MemberState::Out { ref mut tracker, .. } => *tracker = None,
                _ => {}
            }
        }
    }
}

fn pos(s: &SetRecord, peer: u16) -> usize {
    s.members.iter().position(|m| m.peer == peer).expect("a member")
}

fn admit(s: &mut SetRecord, i: usize, input: &PlanInput<'_>, why: &mut Vec<String>) {
    let leader = s.members.iter().find(|m| m.peer == s.leader).map(|m| Tracker { peer: m.peer, inc: m.inc });
    for m in &mut s.members {
        let MemberState::Out { tracker, boot, was_leader, .. } = &m.state else { continue };
        let Some(lease) = input.live_lease(m.peer) else { continue };
        let same_boot = input.peers.get(&m.peer).is_some_and(|p| p.boot == *boot && !boot.is_empty());
        let mode = if *tracker == leader && tracker.is_some() && !was_leader && same_boot {
            RebuildMode::Delta
        } else {
            RebuildMode::Compare
        };
        why.push(format!("set {i}: member {} is back (incarnation {lease}): rebuilding it ({mode:?})", m.peer));
        m.inc = lease;
        m.state = MemberState::Rebuild { mode };
    }
}

/// The live peer, not in `s`, that takes copies and holds the fewest for its weight.
fn candidate(s: &SetRecord, input: &PlanInput<'_>, held: &BTreeMap<u16, u64>) -> Option<(u16, i64)> {
    input
        .peers
        .iter()
        .filter(|(id, p)| p.weight > 0 && !p.draining && p.lease.is_some() && s.member(**id).is_none())
        .min_by(|(a, pa), (b, pb)| {
            // held_a / weight_a < held_b / weight_b, in integers; ties to the lowest id.
            let ha = u128::from(held.get(a).copied().unwrap_or(0)) * u128::from(pb.weight);
            let hb = u128::from(held.get(b).copied().unwrap_or(0)) * u128::from(pa.weight);
            ha.cmp(&hb).then(a.cmp(b))
        })
        .map(|(&id, p)| (id, p.lease.expect("live")))
}

/// Starts moving the set's copy off a peer being drained (one move at a time per set,
/// once every copy is in sync) to the live peer holding the fewest copies.
fn drain(
    s: &mut SetRecord,
    i: usize,
    input: &PlanInput<'_>,
    held: &BTreeMap<u16, u64>,
    why: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if s.mv.is_some() || !s.members.iter().all(|m| m.state == MemberState::Sync) {
        return;
    }
    let Some(from) = s.members.iter().map(|m| m.peer).find(|p| input.peers.get(p).is_some_and(|i| i.draining)) else {
        return;
    };
    let Some(to) = candidate(s, input, held) else {
        notes.push(format!("set {i}: peer {from} is being drained, but no other peer can take its copy"));
        return;
    };
    if super::migration::start_set(s, from, to, input.now_ms).is_ok() {
        why.push(format!("set {i}: peer {from} is being drained: its copy moves to peer {}", to.0));
    }
}

fn replace(s: &mut SetRecord, i: usize, input: &PlanInput<'_>, held: &BTreeMap<u16, u64>, why: &mut Vec<String>) {
    for k in 0..s.members.len() {
        let MemberState::Out { since_ms, .. } = s.members[k].state else { continue };
        if input.now_ms < since_ms + input.replace_after_ms {
            continue;
        }
        let Some((peer, inc)) = candidate(s, input, held) else { continue };
        why.push(format!(
            "set {i}: member {} out for {} s: replaced by a new copy on peer {peer}",
            s.members[k].peer,
            (input.now_ms - since_ms) / 1000
        ));
        s.members[k] = Member { peer, inc, state: MemberState::Rebuild { mode: RebuildMode::Full } };
    }
}

fn resize(
    s: &mut SetRecord,
    i: usize,
    replicas: usize,
    input: &PlanInput<'_>,
    held: &BTreeMap<u16, u64>,
    why: &mut Vec<String>,
) {
    if s.mv.is_some() {
        // A move holds one copy more until it is done.
        return;
    }
    let staying = |s: &SetRecord| s.members.iter().filter(|m| !matches!(m.state, MemberState::Leaving { .. })).count();
    while staying(s) < replicas.min(super::set::MEMBERS_MAX) && s.members.len() < super::set::MEMBERS_MAX {
        let Some((peer, inc)) = candidate(s, input, held) else { break };
        why.push(format!("set {i}: a new copy on peer {peer} ({replicas} replicas)"));
        s.members.push(Member { peer, inc, state: MemberState::Rebuild { mode: RebuildMode::Full } });
    }
    while staying(s) > replicas {
        let rank = |m: &Member| match m.state {
            MemberState::Out { .. } => 0,
            MemberState::Rebuild { .. } => 1,
            MemberState::Reconcile => 2,
            MemberState::Sync => 3,
            MemberState::Leaving { .. } => unreachable!("filtered out"),
        };
        let Some(k) = (0..s.members.len())
            .filter(|&k| s.members[k].peer != s.leader && !matches!(s.members[k].state, MemberState::Leaving { .. }))
            .min_by_key(|&k| rank(&s.members[k]))
        else {
            break;
        };
        let peer = s.members[k].peer;
        if s.members[k].state == MemberState::Sync {
            // It may serve reads: it stops (every write still reaches it, no read is
            // served from it) and leaves a lease TTL later.
            why.push(format!("set {i}: copy on peer {peer} leaving ({replicas} replicas)"));
            s.members[k].state = MemberState::Leaving { since_ms: input.now_ms };
        } else {
            why.push(format!("set {i}: copy on peer {peer} dropped ({replicas} replicas)"));
            super::migration::remove_member(s, peer);
        }
    }
    // Copies that left long enough ago that nobody reads from them any more.
    let gone: Vec<u16> = s
        .members
        .iter()
        .filter(|m| m.peer != s.leader)
        .filter(|m| matches!(m.state, MemberState::Leaving { since_ms } if input.now_ms >= since_ms + input.ttl_ms))
        .map(|m| m.peer)
        .collect();
    for peer in gone {
        why.push(format!("set {i}: copy on peer {peer} dropped ({replicas} replicas)"));
        super::migration::remove_member(s, peer);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::group::keys::hex16;

    pub(crate) fn volume(replicas: u8, sets: Vec<SetRecord>, page_sets: &[u16]) -> VolumeRecord {
        let mut r = VolumeRecord {
            id: 1,
            name: "v".into(),
            uuid: hex16(&[1; 16]),
            nguid: hex16(&[2; 16]),
            page_size: 4 << 20,
            block_size: 4096,
            num_pages: 0,
            epoch: 5,
            replicas,
            sets,
            pages: String::new(),
            limits: Default::default(),
            pinned: Vec::new(),
            owners: String::new(),
        };
        r.set_page_sets(page_sets);
        r
    }

    pub(crate) fn peers(list: &[(u16, Option<i64>)]) -> BTreeMap<u16, PeerInfo> {
        list.iter()
            .map(|&(id, lease)| (id, PeerInfo { lease, weight: 1, boot: "boot-1".into(), draining: false }))
            .collect()
    }

    pub(crate) fn input<'a>(
        now_ms: u64,
        peers: &'a BTreeMap<u16, PeerInfo>,
        revoked: &'a BTreeMap<(u16, i64), u64>,
    ) -> PlanInput<'a> {
        PlanInput { now_ms, ttl_ms: 5_000, replace_after_ms: 60_000, peers, revoked }
    }

    fn out(m: &Member) -> bool {
        matches!(m.state, MemberState::Out { .. })
    }

    #[test]
    fn nothing_changes_while_every_member_is_alive() {
        let r = volume(2, vec![SetRecord::fresh(&[(0, 10), (1, 11)])], &[0, 0]);
        let p = peers(&[(0, Some(10)), (1, Some(11)), (2, Some(12))]);
        let none = BTreeMap::new();
        assert_eq!(plan_volume(&r, &input(1000, &p, &none)), None);
    }

    #[test]
    fn a_dead_member_is_evicted_at_once_and_a_dead_leader_replaced() {
        let r = volume(2, vec![SetRecord::fresh(&[(0, 10), (1, 11)]), SetRecord::fresh(&[(1, 11), (2, 12)])], &[0, 1]);
        let p = peers(&[(0, Some(10)), (1, None), (2, Some(12))]);
        let none = BTreeMap::new();
        let (n, why) = plan_volume(&r, &input(1000, &p, &none)).unwrap();
        assert_eq!(n.epoch, 6);
        // Set 0: member 1 out, tracked by leader 0.
        let m = &n.sets[0].members[1];
        assert_eq!(
            m.state,
            MemberState::Out {
                since_ms: 1000,
                tracker: Some(Tracker { peer: 0, inc: 10 }),
                boot: "boot-1".into(),
                was_leader: false
            }
        );
        // Set 1: leader 1 gone, 2 leads, the old leader is out untracked.
        assert_eq!(n.sets[1].leader, 2);
        assert_eq!(n.sets[1].members[1].state, MemberState::Sync);
        assert!(matches!(n.sets[1].members[0].state, MemberState::Out { tracker: None, was_leader: true, .. }));
        assert!(why.iter().any(|w| w.contains("leads it now")), "{why:?}");
        // Planned again: nothing more (not yet time to replace).
        assert_eq!(plan_volume(&n, &input(2000, &p, &none)), None);
    }

    #[test]
    fn a_revoked_incarnation_is_evicted_only_a_ttl_after_the_revocation_was_seen() {
        let r = volume(2, vec![SetRecord::fresh(&[(0, 10), (1, 11)])], &[0]);
        // Peer 1 restarted: lease 21 now; its run of lease 11 was revoked, seen at 1000.
        let p = peers(&[(0, Some(10)), (1, Some(21))]);
        let revoked = BTreeMap::from([((1, 11), 1000)]);
        assert_eq!(plan_volume(&r, &input(5_999, &p, &revoked)), None, "the earlier run may still serve");
        let (n, _) = plan_volume(&r, &input(6_000, &p, &revoked)).unwrap();
        // Evicted and, being live again, admitted back at once: delta (tracked by the
        // leader, not a leader itself, same boot).
        assert_eq!(n.sets[0].members[1].inc, 21);
        assert_eq!(n.sets[0].members[1].state, MemberState::Rebuild { mode: RebuildMode::Delta });
    }

    #[test]
    fn a_member_back_is_rebuilt_by_delta_only_when_that_is_safe() {
        let tracked = Tracker { peer: 0, inc: 10 };
        let out_member = |tracker, boot: &str, was_leader| Member {
            peer: 1,
            inc: 11,
            state: MemberState::Out { since_ms: 0, tracker, boot: boot.into(), was_leader },
        };
        let none = BTreeMap::new();
        let p = peers(&[(0, Some(10)), (1, Some(21))]);
        let mode = |m: Member| {
            let mut s = SetRecord::fresh(&[(0, 10)]);
            s.members.push(m);
            let (n, _) = plan_volume(&volume(2, vec![s], &[0]), &input(100, &p, &none)).unwrap();
            match n.sets[0].members[1].state {
                MemberState::Rebuild { mode } => mode,
                ref other => panic!("{other:?}"),
            }
        };
        assert_eq!(mode(out_member(Some(tracked), "boot-1", false)), RebuildMode::Delta);
        assert_eq!(mode(out_member(None, "boot-1", false)), RebuildMode::Compare, "nobody tracked it");
        let other_leader = Tracker { peer: 0, inc: 9 };
        assert_eq!(mode(out_member(Some(other_leader), "boot-1", false)), RebuildMode::Compare, "leader restarted");
        assert_eq!(mode(out_member(Some(tracked), "boot-0", false)), RebuildMode::Compare, "machine rebooted");
        assert_eq!(mode(out_member(Some(tracked), "boot-1", true)), RebuildMode::Compare, "it led the set");
    }

    #[test]
    fn a_member_out_too_long_is_replaced_in_place_on_the_emptiest_peer() {
        let mut s = SetRecord::fresh(&[(0, 10), (1, 11)]);
        s.members[1].state = MemberState::Out { since_ms: 0, tracker: None, boot: String::new(), was_leader: false };
        let busy = SetRecord::fresh(&[(2, 12), (0, 10)]);
        let r = volume(2, vec![s, busy], &[0, 1, 1]);
        let p = peers(&[(0, Some(10)), (1, None), (2, Some(12)), (3, Some(13))]);
        let none = BTreeMap::new();
        assert_eq!(plan_volume(&r, &input(59_999, &p, &none)), None);
        let (n, why) = plan_volume(&r, &input(60_000, &p, &none)).unwrap();
        // Peer 3 holds nothing, peer 2 two pages: 3 takes the copy, in position 1.
        assert_eq!(
            n.sets[0].members[1],
            Member { peer: 3, inc: 13, state: MemberState::Rebuild { mode: RebuildMode::Full } }
        );
        assert!(why[0].contains("replaced"), "{why:?}");
    }

    #[test]
    fn the_replication_factor_adds_and_drops_copies_never_the_leader() {
        let r = volume(3, vec![SetRecord::fresh(&[(0, 10), (1, 11)])], &[0]);
        let p = peers(&[(0, Some(10)), (1, Some(11)), (2, Some(12))]);
        let none = BTreeMap::new();
        let (up, _) = plan_volume(&r, &input(0, &p, &none)).unwrap();
        assert_eq!(up.sets[0].peers(), [0, 1, 2]);
        assert_eq!(up.sets[0].members[2].state, MemberState::Rebuild { mode: RebuildMode::Full });
        let mut down = up.clone();
        down.replicas = 1;
        let (n, _) = plan_volume(&down, &input(0, &p, &none)).unwrap();
        // The copy being built goes at once; the one in sync (it may serve reads)
        // stops serving them, and goes a lease TTL later.
        assert_eq!(n.sets[0].peers(), [0, 1], "the copy being built goes first");
        assert_eq!(n.sets[0].members[1].state, MemberState::Leaving { since_ms: 0 });
        assert!(n.sets[0].healthy(), "a copy leaving is no missing copy");
        assert_eq!(plan_volume(&n, &input(4_999, &p, &none)), None, "within a TTL");
        let (n, _) = plan_volume(&n, &input(5_000, &p, &none)).unwrap();
        assert_eq!(n.sets[0].peers(), [0], "then the one in sync");
        // No peer to add: the set stays as it is.
        let lonely = peers(&[(0, Some(10)), (1, Some(11))]);
        assert_eq!(plan_volume(&r, &input(0, &lonely, &none)), None);
    }

    #[test]
    fn a_set_whose_every_copy_in_sync_is_gone_waits() {
        let mut s = SetRecord::fresh(&[(0, 10), (1, 11)]);
        s.members[1].state = MemberState::Rebuild { mode: RebuildMode::Full };
        let r = volume(2, vec![s], &[0]);
        let p = peers(&[(0, None), (1, Some(11))]);
        let none = BTreeMap::new();
        let (next, _, notes) = plan_with_notes(&r, &input(0, &p, &none));
        assert_eq!(next, None, "a copy being rebuilt never leads");
        assert!(notes[0].contains("waiting"), "{notes:?}");
    }

    #[test]
    fn a_drained_peer_gives_its_copies_away_also_of_a_volume_without_replicas() {
        let r = volume(1, vec![SetRecord::fresh(&[(0, 10)]), SetRecord::fresh(&[(1, 11)])], &[0, 1]);
        let mut p = peers(&[(0, Some(10)), (1, Some(11)), (2, Some(12))]);
        p.get_mut(&0).unwrap().draining = true;
        let none = BTreeMap::new();
        let (n, why) = plan_volume(&r, &input(100, &p, &none)).unwrap();
        assert!(why[0].contains("being drained"), "{why:?}");
        let mv = n.sets[0].mv.expect("a move of set 0");
        assert_eq!((mv.from, mv.to), (0, 2), "to the peer with the fewest copies");
        assert_eq!(n.sets[1], r.sets[1], "the other set stays");
    }

    #[test]
    fn a_volume_without_replicas_is_left_alone() {
        let r = volume(1, vec![SetRecord::fresh(&[(0, 10)])], &[0]);
        let p = peers(&[(0, None), (1, Some(11))]);
        let none = BTreeMap::new();
        assert_eq!(plan_volume(&r, &input(0, &p, &none)), None);
    }

    #[test]
    fn three_copies_lose_their_leader_and_the_survivors_reconcile() {
        let mut s = SetRecord::fresh(&[(0, 10), (1, 11), (2, 12)]);
        s.members[2].state = MemberState::Rebuild { mode: RebuildMode::Delta };
        let r = volume(3, vec![s], &[0]);
        let p = peers(&[(0, None), (1, Some(11)), (2, Some(12)), (3, Some(13))]);
        let none = BTreeMap::new();
        let (n, _) = plan_volume(&r, &input(0, &p, &none)).unwrap();
        let st: Vec<&MemberState> = n.sets[0].members.iter().map(|m| &m.state).collect();
        assert_eq!(n.sets[0].leader, 1);
        assert!(out(&n.sets[0].members[0]));
        assert_eq!(st[1], &MemberState::Sync);
        assert_eq!(st[2], &MemberState::Rebuild { mode: RebuildMode::Compare });
    }
}
