//! Replica sets: which peers hold copies of a page, who orders its writes, and how far
//! each copy is.
//!
//! A volume's record in etcd lists its sets ([`SetRecord`]) and gives every page the
//! index of its set; many pages share one set (a volume of 3 peers with 2 replicas has
//! a handful of sets, not one per page). A set names its **leader** (the member that
//! orders writes, see `replica`) and its **members**, each with the incarnation it was
//! admitted with (its etcd lease at the time) and a state:
//!
//! ```text
//!   (a move's source: Sync ──cut-over──► Leaving ──a lease TTL──► removed)
//!
//!            admitted by the coordinator (peer back, or a new replica)
//!   Out ──────────────────────────────────────────────────► Rebuild{delta|compare|full}
//!    ▲                                                            │ the leader copied what it lacked
//!    │ evicted by the coordinator                                 ▼ (promoted by the leader)
//!    └────────── Sync ◄──────────── Reconcile ◄────── (a leader change leaves the
//!                  │                    ▲               survivors to be compared)
//!                  └────────────────────┘
//! ```
//!
//! - `Sync`: has every acknowledged write and nothing else diverges: serves reads.
//! - `Reconcile`: has every acknowledged write, but may differ from the leader where
//!   writes of a leader that died were in flight; not read from until the leader has
//!   compared it.
//! - `Rebuild`: receives every write and is being copied to; not read from.
//! - `Out`: gets nothing; the leader tracks the pieces it misses (`tracker`).
//! - `Leaving`: a copy on its way out (a move's source after the cut-over, see
//!   `replica::migration`, or a copy the replication factor no longer wants):
//!   receives every write, serves no read, and leaves the set a lease TTL later (by
//!   then no peer reads from it: it has the table that says so, or it is fenced).
//!
//! The leader waits for every member but the `Out` ones before it acknowledges a
//! write, so `Sync`, `Reconcile` and `Rebuild` members never lack an acknowledged
//! write they should have (a `Rebuild` member's copy may still lack older data).
//!
//! [`SetView`] is the same set as a reactor reads it on every I/O: fixed arrays, with
//! what this peer is in it worked out once when the routing table is built.

use serde::{Deserialize, Serialize};

use crate::volume::routing::PeerId;

/// Members a set holds at most: 3 replicas and one being added (a replacement or a
/// page moving to a new peer).
pub const MEMBERS_MAX: usize = 4;
/// The highest replication factor.
pub const REPLICAS_MAX: u8 = 3;

/// How a rebuild finds what a member lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebuildMode {
    /// The leader tracked the pieces written while the member was out: copy those.
    Delta,
    /// Nobody tracked them (the leader changed or restarted, or the member may hold
    /// writes nobody else has): compare every written piece's checksum, copy those that
    /// differ.
    Compare,
    /// A new member: copy every written piece.
    Full,
}

/// Who tracked the pieces an `Out` member missed: the leader at the time, by
/// incarnation (a leader that restarted since has lost its tracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    /// The leader's routing id.
    pub peer: u16,
    /// Its incarnation.
    pub inc: i64,
}

/// How far a member's copy is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum MemberState {
    /// Has every acknowledged write; serves reads.
    Sync,
    /// Has every acknowledged write; may differ where unacknowledged writes were.
    Reconcile,
    /// Receives every write; the leader copies what it lacks.
    Rebuild {
        /// How the leader finds what it lacks.
        mode: RebuildMode,
    },
    /// Leaves the set (a move's source after the cut-over, or a copy the replication
    /// factor no longer wants): receives every write, serves no read; removed a lease
    /// TTL after `since_ms`, once every peer can have stopped reading from it.
    Leaving {
        /// Since when (coordinator's clock, ms since the Unix epoch).
        #[serde(default)]
        since_ms: u64,
    },
    /// Gets nothing.
    Out {
        /// When it was evicted (ms since the Unix epoch, coordinator's clock).
        since_ms: u64,
        /// The leader that tracks what it misses, if one does.
        #[serde(default)]
        tracker: Option<Tracker>,
        /// The member's boot id when it went out (a different one when it comes back:
        /// its volatile cache was lost with the machine).
        #[serde(default)]
        boot: String,
        /// It was the set's leader: it may hold writes that nobody else has.
        #[serde(default)]
        was_leader: bool,
    },
}

impl MemberState {
    /// The role a reactor sees.
    pub fn role(&self) -> Role {
        match self {
            MemberState::Sync => Role::Sync,
            MemberState::Reconcile | MemberState::Leaving { .. } => Role::Reconcile,
            MemberState::Rebuild { .. } => Role::Rebuild,
            MemberState::Out { .. } => Role::Out,
        }
    }
}

/// One member of a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its routing id.
    pub peer: u16,
    /// The incarnation (etcd lease) it was admitted with: another incarnation of the
    /// same peer is not this member (it restarted and may have lost what it had).
    pub inc: i64,
    /// How far its copy is.
    #[serde(flatten)]
    pub state: MemberState,
}

/// A replica set as the volume record stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    /// The member that orders writes (a routing id; always a member in `Sync`).
    pub leader: u16,
    /// The members, the leader among them; positions are stable (a replacement takes
    /// the place of the member it replaces), so that per-member state kept by position
    /// (the pieces each missed) stays with its member.
    pub members: Vec<Member>,
    /// A move of the set's pages from one member's peer to another under way.
    #[serde(default, rename = "move", skip_serializing_if = "Option::is_none")]
    pub mv: Option<Move>,
}

/// A move of a set's pages from peer `from` to peer `to` (see `replica::migration`):
/// `to` is a member being copied to, then the cut-over makes `from` `Leaving` (and
/// `to` the leader if `from` led), and a lease TTL later `from` leaves the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Names the move (when it was asked for, ms since the Unix epoch).
    pub id: u64,
    /// The peer whose copy moves.
    pub from: u16,
    /// The peer it moves to.
    pub to: u16,
    /// When the cut-over was made (coordinator's clock), once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_ms: Option<u64>,
}

impl SetRecord {
    /// A set of fresh members, the first leading.
    pub fn fresh(members: &[(u16, i64)]) -> SetRecord {
        SetRecord {
            leader: members[0].0,
            members: members.iter().map(|&(peer, inc)| Member { peer, inc, state: MemberState::Sync }).collect(),
            mv: None,
        }
    }

    /// Checks that the set holds together, or says why not.
    pub fn check(&self) -> Result<(), String> {
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(format!("a set of {} members (1 to {MEMBERS_MAX})", self.members.len()));
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|o| o.peer == m.peer) {
                return Err(format!("peer {} is a member twice", m.peer));
            }
        }
        if let Some(mv) = self.mv {
            if self.member(mv.from).is_none() || self.member(mv.to).is_none() || mv.from == mv.to {
                return Err(format!("a move from peer {} to peer {} that are not both members", mv.from, mv.to));
            }
        }
        match self.members.iter().find(|m| m.peer == self.leader) {
            Some(m) if m.state == MemberState::Sync => Ok(()),
            Some(m) => Err(format!("leader {} is {:?}, not in sync", self.leader, m.state.role())),
            None => Err(format!("leader {} is not a member", self.leader)),
        }
    }

    /// The member on `peer`.
    pub fn member(&self, peer: u16) -> Option<&Member> {
        self.members.iter().find(|m| m.peer == peer)
    }

    /// The peers of the members in order.
    pub fn peers(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.peer).collect()
    }

    /// True when every member is in sync (a move's source handing over counts: the
    /// copy it hands over to is in sync).
    pub fn healthy(&self) -> bool {
        self.members.iter().all(|m| matches!(m.state, MemberState::Sync | MemberState::Leaving { .. }))
    }
}

/// What a member is, as a reactor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// In sync: serves reads, must apply every write.
    Sync,
    /// Must apply every write; not read from.
    Reconcile,
    /// Must apply every write; being copied to; not read from.
    Rebuild,
    /// Gets nothing.
    Out,
}

/// A set as a reactor reads it: fixed-size, with this peer's place worked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetView {
    /// The member that orders writes.
    pub leader: PeerId,
    members: [(PeerId, Role, i64); MEMBERS_MAX],
    len: u8,
    /// Members the leader sends every write to (all but itself and the `Out`).
    targets: [PeerId; MEMBERS_MAX],
    ntargets: u8,
    /// Positions of the `Out` members (bit per position): the leader marks the pieces
    /// they miss.
    pub out_slots: u8,
    /// This peer's position in the set.
    pub me: Option<u8>,
    /// This peer leads the set and may order its writes now (a leader that just took
    /// over waits for its reactors to drop the old leader's writes first: `control`).
    pub lead_active: bool,
}

impl SetView {
    /// The set as peer `local`, whose incarnation is `my_inc`, sees it: in a set of
    /// several members it is a member only with the incarnation it was admitted with.
    /// `active` says whether it may order writes if it leads.
    pub fn new(r: &SetRecord, local: PeerId, my_inc: Option<i64>, active: bool) -> SetView {
        assert!(r.members.len() <= MEMBERS_MAX, "checked when decoded");
        let mut v = SetView {
            leader: PeerId(r.leader),
            members: [(PeerId(u16::MAX), Role::Out, 0); MEMBERS_MAX],
            len: u8::try_from(r.members.len()).expect("at most MEMBERS_MAX"),
            targets: [PeerId(u16::MAX); MEMBERS_MAX],
            ntargets: 0,
            out_slots: 0,
            me: None,
            lead_active: false,
        };
        for (i, m) in r.members.iter().enumerate() {
            let role = m.state.role();
            v.members[i] = (PeerId(m.peer), role, m.inc);
            let slot = u8::try_from(i).expect("at most MEMBERS_MAX");
            if PeerId(m.peer) == local && (r.members.len() == 1 || my_inc == Some(m.inc)) {
                v.me = Some(slot);
            }
            if role == Role::Out {
                v.out_slots |= 1 << slot;
            } else if m.peer != r.leader {
                v.targets[usize::from(v.ntargets)] = PeerId(m.peer);
                v.ntargets += 1;
            }
        }
        v.lead_active = active && v.leads_here();
        v
    }

    /// A set of one member (a volume without replicas).
    pub fn single(owner: PeerId, local: PeerId) -> SetView {
        SetView::new(&SetRecord::fresh(&[(owner.0, 0)]), local, None, true)
    }

    /// True when the set has more than one member: writes are ordered by the leader,
    /// reads and writes here need this peer's lease (see `replica::fence`).
    #[inline]
    pub fn replicated(&self) -> bool {
        self.len > 1
    }

    /// The members the leader sends every write to.
    #[inline]
    pub fn targets(&self) -> &[PeerId] {
        &self.targets[..usize::from(self.ntargets)]
    }

    /// The members: routing id, role, incarnation.
    pub fn members(&self) -> &[(PeerId, Role, i64)] {
        &self.members[..usize::from(self.len)]
    }

    /// The position of `peer` in the set.
    pub fn slot_of(&self, peer: PeerId) -> Option<u8> {
        self.members().iter().position(|m| m.0 == peer).map(|i| u8::try_from(i).expect("at most MEMBERS_MAX"))
    }

    /// This peer's role, if it is a member.
    #[inline]
    pub fn my_role(&self) -> Option<Role> {
        self.me.map(|s| self.members[usize::from(s)].1)
    }

    /// The incarnation this peer was admitted with (meaningful if it is a member).
    #[inline]
    pub fn my_inc(&self) -> i64 {
        self.me.map_or(0, |s| self.members[usize::from(s)].2)
    }

    /// This peer leads the set.
    #[inline]
    pub fn leads_here(&self) -> bool {
        self.me.is_some() && self.members[usize::from(self.me.unwrap_or(0))].0 == self.leader
    }

    /// This peer may serve reads of the set's pages from its own copy (its lease
    /// permitting, for a replicated set).
    #[inline]
    pub fn readable_here(&self) -> bool {
        self.my_role() == Some(Role::Sync)
    }

    /// `peer` is a member that must apply the leader's writes (a target), or the leader.
    pub fn takes_writes(&self, peer: PeerId) -> bool {
        self.members().iter().any(|m| m.0 == peer && m.1 != Role::Out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_check_their_leader() {
        let mut s = SetRecord::fresh(&[(2, 7), (5, 9)]);
        assert_eq!(s.leader, 2);
        s.members[1].state = MemberState::Out {
            since_ms: 10,
            tracker: Some(Tracker { peer: 2, inc: 7 }),
            boot: "b".into(),
            was_leader: false,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"state\":\"out\""), "{json}");
        assert_eq!(serde_json::from_str::<SetRecord>(&json).unwrap(), s);
        let rebuild = r#"{"leader":1,"members":[{"peer":1,"inc":3,"state":"sync"},{"peer":4,"inc":8,"state":"rebuild","mode":"delta"}]}"#;
        let r: SetRecord = serde_json::from_str(rebuild).unwrap();
        assert_eq!(r.members[1].state, MemberState::Rebuild { mode: RebuildMode::Delta });
        assert!(r.check().is_ok());
        let mut bad = r.clone();
        bad.leader = 4;
        assert!(bad.check().unwrap_err().contains("not in sync"));
        bad.leader = 9;
        assert!(bad.check().unwrap_err().contains("not a member"));
        let twice = SetRecord::fresh(&[(1, 1), (1, 1)]);
        assert!(twice.check().unwrap_err().contains("twice"));
    }

    #[test]
    fn a_view_knows_the_targets_and_this_peers_place() {
        let mut r = SetRecord::fresh(&[(1, 10), (2, 20), (3, 30)]);
        r.members[2].state = MemberState::Out { since_ms: 0, tracker: None, boot: String::new(), was_leader: false };
        let at_leader = SetView::new(&r, PeerId(1), Some(10), true);
        assert!(at_leader.leads_here() && at_leader.lead_active && at_leader.replicated());
        assert_eq!(at_leader.targets(), [PeerId(2)]);
        assert_eq!(at_leader.out_slots, 0b100);
        assert_eq!(at_leader.my_inc(), 10);
        let waiting = SetView::new(&r, PeerId(1), Some(10), false);
        assert!(waiting.leads_here() && !waiting.lead_active, "a new leader waits for its activation");
        let at_member = SetView::new(&r, PeerId(2), Some(20), true);
        assert!(!at_member.leads_here() && !at_member.lead_active && at_member.readable_here());
        let at_out = SetView::new(&r, PeerId(3), Some(30), true);
        assert_eq!(at_out.my_role(), Some(Role::Out));
        assert!(!at_out.readable_here() && !at_out.takes_writes(PeerId(3)));
        let stranger = SetView::new(&r, PeerId(9), Some(1), true);
        assert_eq!(stranger.me, None);
        let restarted = SetView::new(&r, PeerId(1), Some(11), true);
        assert!(!restarted.leads_here() && !restarted.readable_here(), "another incarnation is not the member");
        let one = SetView::single(PeerId(4), PeerId(4));
        assert!(!one.replicated() && one.leads_here() && one.readable_here() && one.targets().is_empty());
    }
}
