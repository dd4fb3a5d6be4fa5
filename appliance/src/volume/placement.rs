//! Placement: which peer owns each new page of a volume.
//!
//! Pages are spread over the live peers in proportion to their weight, page by page,
//! and deterministically: the same peers, weights and existing owners always give
//! the same answer, on every peer and under the simulator. Each new page goes to the
//! peer furthest below its fair share of the pages placed so far (counting the pages
//! it already owns), ties to the lowest peer id; for a new volume this interleaves
//! the peers evenly (weights 1:1:2 give `c a b c c a b c …`), and when a volume grows
//! after a peer joined, the newcomer takes new pages until it has caught up with its
//! share. Existing pages never move here (moving them is migration's job).
//!
//! With replicas ([`place_copies`]), the first copy of each page (its set's leader)
//! is placed as above, and each further copy goes to the peer furthest below its fair
//! share of all copies placed so far, among the peers the page does not have yet: the
//! copies and the leaders both follow the weights, and no page has two copies on one
//! peer (losing a peer leaves every page a copy, when there are enough peers).

use super::routing::PeerId;

/// A peer that may receive pages, and its share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Its weight (share of new pages); 0 takes none.
    pub weight: u64,
}

/// Why pages cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// No live peer has a weight above zero.
    NoPeers,
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::NoPeers => f.write_str("no live peer can take pages"),
        }
    }
}

/// The owners of a volume of `num_pages` pages whose first `existing.len()` pages are
/// owned as `existing` says; the new pages go to `candidates`.
pub fn place(existing: &[PeerId], num_pages: u64, candidates: &[Candidate]) -> Result<Vec<PeerId>, PlacementError> {
    let total = u64::try_from(existing.len()).expect("a page count fits u64");
    assert!(num_pages >= total, "placement only adds pages");
    let mut peers: Vec<Candidate> = candidates.iter().copied().filter(|c| c.weight > 0).collect();
    peers.sort_by_key(|c| c.peer.0);
    peers.dedup_by_key(|c| c.peer);
    let mut owners = existing.to_vec();
    if num_pages == total {
        return Ok(owners);
    }
    if peers.is_empty() {
        return Err(PlacementError::NoPeers);
    }
    let weight_sum: u128 = peers.iter().map(|c| u128::from(c.weight)).sum();
    // Pages each candidate owns already, and the pages placed among them so far.
    let mut owned: Vec<u128> =
        peers.iter().map(|c| existing.iter().filter(|&&o| o == c.peer).count() as u128).collect();
    let already: u128 = owned.iter().sum();
    owners.reserve(usize::try_from(num_pages - total).expect("pages fit memory"));
    for placed in (already..).take(usize::try_from(num_pages - total).expect("pages fit memory")) {
        // Fair share after this page: weight × (placed + 1) / weight_sum. The peer with
        // the largest deficit, share − owned, scaled by weight_sum to stay in integers.
        let mut best = 0;
        let mut best_deficit = i128::MIN;
        for (i, c) in peers.iter().enumerate() {
            let share = i128::try_from(u128::from(c.weight) * (placed + 1)).expect("fits");
            let have = i128::try_from(owned[i] * weight_sum).expect("fits");
            let deficit = share - have;
            if deficit > best_deficit {
                best = i;
                best_deficit = deficit;
            }
        }
        owners.push(peers[best].peer);
        owned[best] += 1;
    }
    Ok(owners)
}

/// The copies of a volume of `num_pages` pages whose first `existing.len()` pages have
/// the copies `existing` says (each list: the leader first); the new pages get
/// `replicas` copies each on distinct `candidates` (fewer when there are fewer
/// candidates), the first one placed by [`place`].
pub fn place_copies(
    existing: &[Vec<PeerId>],
    num_pages: u64,
    candidates: &[Candidate],
    replicas: usize,
) -> Result<Vec<Vec<PeerId>>, PlacementError> {
    assert!(replicas >= 1, "a page has at least one copy");
    let leaders: Vec<PeerId> = existing.iter().map(|c| c[0]).collect();
    let placed_leaders = place(&leaders, num_pages, candidates)?;
    let mut out = existing.to_vec();
    if num_pages == existing.len() as u64 {
        return Ok(out);
    }
    let mut peers: Vec<Candidate> = candidates.iter().copied().filter(|c| c.weight > 0).collect();
    peers.sort_by_key(|c| c.peer.0);
    peers.dedup_by_key(|c| c.peer);
    let weight_sum: u128 = peers.iter().map(|c| u128::from(c.weight)).sum();
    let mut held: Vec<u128> =
        peers.iter().map(|c| existing.iter().filter(|copies| copies.contains(&c.peer)).count() as u128).collect();
    let mut placed: u128 = held.iter().sum();
    for &leader in &placed_leaders[existing.len()..] {
        let mut copies = vec![leader];
        if let Some(i) = peers.iter().position(|c| c.peer == leader) {
            held[i] += 1;
        }
        placed += 1;
        while copies.len() < replicas {
            let mut best: Option<(usize, i128)> = None;
            for (i, c) in peers.iter().enumerate() {
                if copies.contains(&c.peer) {
                    continue;
                }
                let share = i128::try_from(u128::from(c.weight) * (placed + 1)).expect("fits");
                let have = i128::try_from(held[i] * weight_sum).expect("fits");
                let deficit = share - have;
                if best.is_none_or(|(_, d)| deficit > d) {
                    best = Some((i, deficit));
                }
            }
            let Some((i, _)) = best else { break };
            copies.push(peers[i].peer);
            held[i] += 1;
            placed += 1;
        }
        out.push(copies);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(peer: u16, weight: u64) -> Candidate {
        Candidate { peer: PeerId(peer), weight }
    }

    fn counts(owners: &[PeerId], peers: u16) -> Vec<usize> {
        (0..peers).map(|p| owners.iter().filter(|o| o.0 == p).count()).collect()
    }

    #[test]
    fn pages_follow_the_weights_interleaved_and_deterministically() {
        let peers = [c(0, 1), c(1, 1), c(2, 2)];
        let owners = place(&[], 16, &peers).unwrap();
        assert_eq!(counts(&owners, 3), [4, 4, 8]);
        // Interleaved, not in runs: no peer holds three pages in a row.
        assert!(owners.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "{owners:?}");
        // The order of the candidates does not matter.
        let shuffled = [c(2, 2), c(0, 1), c(1, 1)];
        assert_eq!(place(&[], 16, &shuffled).unwrap(), owners);
        // Equal weights: round robin.
        let rr = place(&[], 6, &[c(0, 5), c(1, 5), c(2, 5)]).unwrap();
        assert_eq!(rr.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn growing_keeps_existing_pages_and_a_newcomer_catches_up() {
        let two = [c(0, 1), c(1, 1)];
        let first = place(&[], 8, &two).unwrap();
        assert_eq!(counts(&first, 2), [4, 4]);
        let three = [c(0, 1), c(1, 1), c(2, 1)];
        let grown = place(&first, 12, &three).unwrap();
        assert_eq!(&grown[..8], &first[..], "existing pages stay where they are");
        assert_eq!(counts(&grown, 3), [4, 4, 4], "the new peer takes every new page until it has its share");
        // Growing in two steps ends where growing in one does.
        let half = place(&first, 10, &three).unwrap();
        assert_eq!(place(&half, 12, &three).unwrap(), grown);
    }

    #[test]
    fn weight_zero_and_no_peers() {
        let owners = place(&[], 4, &[c(0, 0), c(1, 3)]).unwrap();
        assert!(owners.iter().all(|&o| o == PeerId(1)));
        assert_eq!(place(&[], 4, &[c(0, 0)]), Err(PlacementError::NoPeers));
        assert_eq!(place(&[PeerId(0)], 1, &[]).unwrap(), [PeerId(0)], "nothing new to place");
        // Pages of a peer that is gone are kept and not counted against the others.
        let owners = place(&[PeerId(7), PeerId(7)], 4, &[c(0, 1), c(1, 1)]).unwrap();
        assert_eq!(owners.iter().map(|p| p.0).collect::<Vec<_>>(), [7, 7, 0, 1]);
    }

    #[test]
    fn copies_go_to_distinct_peers_by_weight_and_leaders_as_without_replicas() {
        let peers = [c(0, 1), c(1, 1), c(2, 1)];
        let copies = place_copies(&[], 12, &peers, 2).unwrap();
        let leaders: Vec<PeerId> = copies.iter().map(|c| c[0]).collect();
        assert_eq!(leaders, place(&[], 12, &peers).unwrap(), "leaders are placed as single owners are");
        assert!(copies.iter().all(|c| c.len() == 2 && c[0] != c[1]), "{copies:?}");
        let held = |p: u16| copies.iter().filter(|c| c.contains(&PeerId(p))).count();
        assert_eq!([held(0), held(1), held(2)], [8, 8, 8], "every peer holds its share of the copies");
        // Losing any one peer leaves every page a copy.
        for dead in 0..3 {
            assert!(copies.iter().all(|c| c.iter().any(|p| p.0 != dead)));
        }
        // Fewer peers than replicas: as many copies as there are peers.
        let two = place_copies(&[], 4, &[c(5, 1), c(6, 1)], 3).unwrap();
        assert!(two.iter().all(|c| c.len() == 2));
        // Growing keeps what exists, and one replica is `place`.
        let grown = place_copies(&copies, 15, &peers, 2).unwrap();
        assert_eq!(&grown[..12], &copies[..]);
        let single = place_copies(&[], 16, &[c(0, 1), c(1, 1), c(2, 2)], 1).unwrap();
        assert_eq!(
            single.iter().map(|c| c[0]).collect::<Vec<_>>(),
            place(&[], 16, &[c(0, 1), c(1, 1), c(2, 2)]).unwrap()
        );
        // Weights: 1:1:2 with 2 copies each of 16 pages: 32 copies, about 8:8:16 (the
        // heaviest peer cannot take a second copy of the pages it leads).
        let weighted = place_copies(&[], 16, &[c(0, 1), c(1, 1), c(2, 2)], 2).unwrap();
        let held = |p: u16| weighted.iter().filter(|c| c.contains(&PeerId(p))).count();
        for (p, share) in [(0, 8), (1, 8), (2, 16)] {
            assert!(held(p).abs_diff(share) <= 1, "peer {p}: {} copies for a share of {share}", held(p));
        }
    }

    #[test]
    fn large_volumes_are_placed_exactly_in_proportion() {
        let peers = [c(0, 3), c(1, 5), c(2, 8)];
        let owners = place(&[], 16 * 1000, &peers).unwrap();
        assert_eq!(counts(&owners, 3), [3000, 5000, 8000]);
    }
}
