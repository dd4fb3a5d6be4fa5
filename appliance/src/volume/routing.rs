//! Per-volume routing table: page → replica set → where its reads and writes go, with
//! a group epoch.
//!
//! Every reactor holds its own immutable copy (`Arc<RoutingTable>`). The control plane
//! builds a new version and sends it to each reactor by message; a reactor swaps its
//! `Arc` between two I/Os, and the old version is freed when the last reactor has
//! dropped it (read-copy-update, with the `Arc` count as the grace period). A single
//! peer owns every page through one set of one member; in a group the sets and each
//! page's set come from the volume's record in etcd
//! ([`crate::group::keys::VolumeRecord`]), placed by [`super::placement`]. Two bytes
//! per page (the index of its set), looked up by index in constant time; the sets are
//! few and fixed-size ([`SetView`]).
//!
//! A page's writes go to its set's leader; its reads are served here when this peer
//! is an in-sync member, else by the leader (see `replica`).

use crate::cast::usize_from;
use crate::replica::set::{SetRecord, SetView};

/// Identity of a peer in the group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct PeerId(pub u16);

/// A version number of the group's routing decisions; higher is newer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Epoch(pub u64);

/// Where a page's I/O goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// This peer serves it.
    Local,
    /// Another peer does.
    Remote(PeerId),
    /// Nobody may right now (this peer leads the set but may not order writes yet, or
    /// is listed with an earlier incarnation): hold it and route it again shortly.
    Hold,
}

/// One version of a volume's routing table.
#[derive(Debug)]
pub struct RoutingTable {
    /// The version.
    pub epoch: Epoch,
    /// The peer this table was built for.
    pub local: PeerId,
    /// The set of each page.
    page_sets: Box<[u16]>,
    /// The sets, as this peer sees them.
    sets: Box<[SetView]>,
    /// The other peers that hold copies (a flush goes to each of them).
    remote: Box<[PeerId]>,
    /// Some set has more than one member.
    replicated: bool,
}

fn remote_of(local: PeerId, sets: &[SetView]) -> Box<[PeerId]> {
    let mut r: Vec<PeerId> =
        sets.iter().flat_map(|s| s.members().iter().map(|m| m.0)).filter(|&p| p != local).collect();
    r.sort_unstable_by_key(|p| p.0);
    r.dedup();
    r.into_boxed_slice()
}

impl RoutingTable {
    /// A table where `local` owns all `num_pages` pages.
    pub fn local_only(local: PeerId, num_pages: u64, epoch: Epoch) -> RoutingTable {
        RoutingTable {
            epoch,
            local,
            page_sets: vec![0; usize_from(num_pages)].into_boxed_slice(),
            sets: vec![SetView::single(local, local)].into_boxed_slice(),
            remote: Box::new([]),
            replicated: false,
        }
    }

    /// The table of the sets `sets` and the set of each page, as seen from peer
    /// `local` of incarnation `my_inc`; `active(i)` says whether this peer may order the
    /// writes of set `i` if it leads it.
    pub fn from_sets(
        (local, my_inc): (PeerId, Option<i64>),
        sets: &[SetRecord],
        page_sets: Vec<u16>,
        epoch: Epoch,
        active: &dyn Fn(usize) -> bool,
    ) -> RoutingTable {
        assert!(page_sets.iter().all(|&s| usize::from(s) < sets.len()), "every page has a set");
        let views: Vec<SetView> =
            sets.iter().enumerate().map(|(i, s)| SetView::new(s, local, my_inc, active(i))).collect();
        // Only the sets some page uses say where copies are.
        let mut used = vec![false; views.len()];
        for &s in &page_sets {
            used[usize::from(s)] = true;
        }
        let in_use: Vec<SetView> = views.iter().zip(&used).filter(|(_, &u)| u).map(|(v, _)| *v).collect();
        RoutingTable {
            epoch,
            local,
            page_sets: page_sets.into_boxed_slice(),
            remote: remote_of(local, &in_use),
            replicated: in_use.iter().any(SetView::replicated),
            sets: views.into_boxed_slice(),
        }
    }

    /// The table where page `i` is owned by `owners[i]` alone (sets of one member), as
    /// seen from peer `local`.
    pub fn from_owners(local: PeerId, owners: Vec<PeerId>, epoch: Epoch) -> RoutingTable {
        let mut distinct: Vec<PeerId> = owners.clone();
        distinct.sort_unstable_by_key(|p| p.0);
        distinct.dedup();
        let sets: Vec<SetRecord> = distinct.iter().map(|p| SetRecord::fresh(&[(p.0, 0)])).collect();
        let page_sets = owners
            .iter()
            .map(|o| u16::try_from(distinct.binary_search_by_key(&o.0, |p| p.0).expect("listed")).expect("few owners"))
            .collect();
        RoutingTable::from_sets((local, None), &sets, page_sets, epoch, &|_| true)
    }

    /// The other peers that hold copies of the volume's pages.
    pub fn remote_peers(&self) -> &[PeerId] {
        &self.remote
    }

    /// True when some page has more than one copy.
    #[inline]
    pub fn replicated(&self) -> bool {
        self.replicated
    }

    /// The set of each page.
    pub fn page_sets(&self) -> &[u16] {
        &self.page_sets
    }

    /// The sets.
    pub fn sets(&self) -> &[SetView] {
        &self.sets
    }

    /// The set of `page`.
    #[inline]
    pub fn set_of(&self, page: u64) -> &SetView {
        &self.sets[usize::from(self.page_sets[usize_from(page)])]
    }

    /// The index of the set of `page`.
    #[inline]
    pub fn set_index(&self, page: u64) -> u16 {
        self.page_sets[usize_from(page)]
    }

    /// The next version with `num_pages` pages; new pages go to `local` alone (a
    /// single peer's table).
    pub fn grown(&self, num_pages: u64) -> RoutingTable {
        assert!(num_pages >= self.len(), "routing tables only grow");
        assert!(!self.replicated && self.remote.is_empty(), "only a single peer's table grows by itself");
        RoutingTable::local_only(self.local, num_pages, Epoch(self.epoch.0 + 1))
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.page_sets.len() as u64
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.page_sets.is_empty()
    }

    /// Where writes to `page` go: its set's leader.
    #[inline]
    pub fn write_route(&self, page: u64) -> Route {
        let s = self.set_of(page);
        if s.lead_active {
            Route::Local
        } else if s.leader == self.local {
            Route::Hold
        } else {
            Route::Remote(s.leader)
        }
    }

    /// Where reads of `page` go: here if this peer is an in-sync member, else the
    /// leader.
    #[inline]
    pub fn read_route(&self, page: u64) -> Route {
        let s = self.set_of(page);
        if s.readable_here() {
            Route::Local
        } else if s.leader == self.local {
            Route::Hold
        } else {
            Route::Remote(s.leader)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::set::MemberState;

    #[test]
    fn all_local_routes_locally_and_grows_with_a_new_epoch() {
        let t = RoutingTable::local_only(PeerId(3), 4, Epoch(7));
        assert_eq!(t.write_route(3), Route::Local);
        assert_eq!(t.read_route(0), Route::Local);
        assert!(!t.replicated());
        let g = t.grown(10);
        assert_eq!(g.len(), 10);
        assert_eq!(g.epoch, Epoch(8));
        assert_eq!(g.write_route(9), Route::Local);
    }

    #[test]
    fn remote_owners_route_away() {
        let t = RoutingTable::from_owners(PeerId(1), vec![PeerId(1), PeerId(2), PeerId(1)], Epoch(3));
        assert_eq!(t.write_route(0), Route::Local);
        assert_eq!(t.write_route(1), Route::Remote(PeerId(2)));
        assert_eq!(t.read_route(1), Route::Remote(PeerId(2)));
        assert_eq!(t.remote_peers(), [PeerId(2)]);
        let many = RoutingTable::from_owners(PeerId(1), vec![PeerId(3), PeerId(1), PeerId(2), PeerId(3)], Epoch(1));
        assert_eq!(many.remote_peers(), [PeerId(2), PeerId(3)], "each other owner once");
        assert_eq!(std::mem::size_of_val(&many.page_sets[0]), 2, "two bytes of routing state per page");
    }

    #[test]
    fn replicated_pages_write_to_the_leader_and_read_from_an_in_sync_copy() {
        let mut b = SetRecord::fresh(&[(2, 20), (1, 10)]);
        let a = SetRecord::fresh(&[(1, 10), (2, 20)]);
        b.members[1].state = MemberState::Rebuild { mode: crate::replica::set::RebuildMode::Full };
        let unused = SetRecord::fresh(&[(7, 70)]);
        let t = RoutingTable::from_sets((PeerId(1), Some(10)), &[a, b, unused], vec![0, 1, 0], Epoch(4), &|_| true);
        assert!(t.replicated());
        assert_eq!(t.write_route(0), Route::Local);
        assert_eq!(t.read_route(0), Route::Local);
        assert_eq!(t.write_route(1), Route::Remote(PeerId(2)));
        assert_eq!(t.read_route(1), Route::Remote(PeerId(2)), "a copy being rebuilt is not read");
        assert_eq!(t.remote_peers(), [PeerId(2)], "a set no page uses holds nothing");
        assert_eq!(t.set_of(0).targets(), [PeerId(2)]);
        let sets = [SetRecord::fresh(&[(1, 10), (2, 20)])];
        let at2 = RoutingTable::from_sets((PeerId(2), Some(20)), &sets, vec![0, 0], Epoch(4), &|_| true);
        assert_eq!((at2.write_route(0), at2.read_route(0)), (Route::Remote(PeerId(1)), Route::Local));
        let pending = RoutingTable::from_sets((PeerId(1), Some(10)), &sets, vec![0, 0], Epoch(5), &|_| false);
        assert_eq!((pending.write_route(0), pending.read_route(0)), (Route::Hold, Route::Local));
        let stale = RoutingTable::from_sets((PeerId(1), Some(11)), &sets, vec![0, 0], Epoch(5), &|_| true);
        assert_eq!((stale.write_route(0), stale.read_route(0)), (Route::Hold, Route::Hold));
    }
}
