//! Per-volume routing table: page → owning peer, with a group epoch.
//!
//! Every reactor holds its own immutable copy (`Arc<RoutingTable>`). The control
//! plane builds a new version and sends it to each reactor by message; a reactor swaps
//! its `Arc` between two I/Os, and the old version is freed when the last reactor has
//! dropped it (read-copy-update, with the `Arc` count as the grace period). A single
//! peer owns every page; in a group the owners come from the volume's record in etcd
//! ([`crate::group::keys::VolumeRecord`]), placed by [`super::placement`]. Two bytes
//! per page, looked up by index in constant time.

use crate::cast::usize_from;

/// Identity of a peer in the group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerId(pub u16);

/// A version number of the group's routing decisions; higher is newer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Epoch(pub u64);

/// Where a page's I/O goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// This peer owns the page.
    Local,
    /// Another peer owns the page.
    Remote(PeerId),
}

/// One version of a volume's routing table.
#[derive(Debug)]
pub struct RoutingTable {
    /// The version.
    pub epoch: Epoch,
    /// The peer this table was built for.
    pub local: PeerId,
    /// Owner of each page.
    owners: Box<[PeerId]>,
    /// The other peers that own pages, each once (a flush goes to each of them).
    remote: Box<[PeerId]>,
}

fn remote_of(local: PeerId, owners: &[PeerId]) -> Box<[PeerId]> {
    let mut r: Vec<PeerId> = owners.iter().copied().filter(|&o| o != local).collect();
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
            owners: vec![local; usize_from(num_pages)].into_boxed_slice(),
            remote: Box::new([]),
        }
    }

    /// The table of `owners` (one per page) as seen from peer `local`.
    pub fn from_owners(local: PeerId, owners: Vec<PeerId>, epoch: Epoch) -> RoutingTable {
        let remote = remote_of(local, &owners);
        RoutingTable { epoch, local, owners: owners.into_boxed_slice(), remote }
    }

    /// The other peers that own pages of the volume.
    pub fn remote_peers(&self) -> &[PeerId] {
        &self.remote
    }

    /// The owner of every page.
    pub fn owners(&self) -> &[PeerId] {
        &self.owners
    }

    /// True when this peer owns every page of `[first, last]`.
    #[inline]
    pub fn all_local(&self, first: u64, last: u64) -> bool {
        self.owners[usize_from(first)..=usize_from(last)].iter().all(|&o| o == self.local)
    }

    /// The next version with `num_pages` pages; new pages go to `local`.
    pub fn grown(&self, num_pages: u64) -> RoutingTable {
        assert!(num_pages >= self.owners.len() as u64, "routing tables only grow");
        let mut owners = self.owners.to_vec();
        owners.resize(usize_from(num_pages), self.local);
        let remote = remote_of(self.local, &owners);
        RoutingTable { epoch: Epoch(self.epoch.0 + 1), local: self.local, owners: owners.into(), remote }
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.owners.len() as u64
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Where I/O for `page` goes.
    #[inline]
    pub fn route(&self, page: u64) -> Route {
        let owner = self.owners[usize_from(page)];
        if owner == self.local {
            Route::Local
        } else {
            Route::Remote(owner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_local_routes_locally_and_grows_with_a_new_epoch() {
        let t = RoutingTable::local_only(PeerId(3), 4, Epoch(7));
        assert!(t.all_local(0, 3));
        assert_eq!(t.route(3), Route::Local);
        let g = t.grown(10);
        assert_eq!(g.len(), 10);
        assert_eq!(g.epoch, Epoch(8));
        assert_eq!(g.route(9), Route::Local);
    }

    #[test]
    fn remote_owners_route_away() {
        let t = RoutingTable::from_owners(PeerId(1), vec![PeerId(1), PeerId(2), PeerId(1)], Epoch(3));
        assert_eq!(t.route(0), Route::Local);
        assert_eq!(t.route(1), Route::Remote(PeerId(2)));
        assert!(t.all_local(0, 0) && t.all_local(2, 2));
        assert!(!t.all_local(0, 1) && !t.all_local(1, 2));
        assert_eq!(t.remote_peers(), [PeerId(2)]);
        let many = RoutingTable::from_owners(PeerId(1), vec![PeerId(3), PeerId(1), PeerId(2), PeerId(3)], Epoch(1));
        assert_eq!(many.remote_peers(), [PeerId(2), PeerId(3)], "each other owner once");
        assert_eq!(std::mem::size_of::<PeerId>(), 2, "two bytes of routing state per page");
    }
}
