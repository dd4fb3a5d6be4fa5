//! The buddy allocator of device slots.
//!
//! The data region of a peer's device is cut into 64 KiB units. A volume's page lives
//! in a slot of `2^order` units (its page size), aligned to its own size relative to
//! the start of the data region, so that a slot never straddles a larger slot and
//! freeing everything always coalesces back into the largest blocks. Orders run from
//! 0 (64 KiB) to [`ORDER_MAX`] (1 GiB), the page sizes a volume may have.
//!
//! Free space is not stored on the device: the page store rebuilds the allocator at
//! open from the slot records with [`BuddyAllocator::mark_used`], which refuses a slot
//! that overlaps one already in use — the check that no two pages share a slot.
//!
//! Free blocks are kept per order in ordered sets, so that allocation takes the lowest
//! free address (the device fills from the front, which keeps a sparse backing file
//! compact) and finding a buddy is a set lookup.

use std::collections::BTreeSet;

/// Largest order: `2^14` units of 64 KiB = 1 GiB.
pub const ORDER_MAX: u8 = 14;

/// Number of orders (0 ..= ORDER_MAX).
const ORDERS: usize = ORDER_MAX as usize + 1;

/// Why a slot could not be marked used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The order is above [`ORDER_MAX`].
    #[error("order {0} is above the largest order {ORDER_MAX}")]
    Order(u8),
    /// The slot is not aligned to its size or lies beyond the data region.
    #[error("slot at unit {unit} of order {order} is misaligned or beyond the {units} units")]
    Range {
        /// First unit.
        unit: u64,
        /// Order.
        order: u8,
        /// Units in the data region.
        units: u64,
    },
    /// Part of the slot is already in use.
    #[error("slot at unit {unit} of order {order} overlaps a slot in use")]
    Overlap {
        /// First unit.
        unit: u64,
        /// Order.
        order: u8,
    },
}

/// Buddy allocator over `units` units; a slot is `(first unit, order)`.
///
/// Invariant: the free blocks are disjoint, each aligned to its size, inside
/// `0..units`, and no two free buddies of the same order coexist (they would have been
/// merged); `free_units` is the sum of their sizes.
#[derive(Clone, Debug)]
pub struct BuddyAllocator {
    units: u64,
    free: [BTreeSet<u64>; ORDERS],
    free_units: u64,
}

impl BuddyAllocator {
    /// An allocator over `units` units, all free.
    pub fn new(units: u64) -> BuddyAllocator {
        let mut a = BuddyAllocator { units, free: Default::default(), free_units: 0 };
        // Cover the range with the largest aligned blocks that fit: the same blocks that
        // freeing everything coalesces into.
        let mut pos = 0;
        while pos < units {
            let mut order = ORDER_MAX;
            while pos % (1 << order) != 0 || pos + (1 << order) > units {
                order -= 1;
            }
            a.free[order as usize].insert(pos);
            a.free_units += 1 << order;
            pos += 1 << order;
        }
        assert_eq!(a.free_units, units);
        a
    }

    /// Units managed.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Units free.
    pub fn free_units(&self) -> u64 {
        self.free_units
    }

    /// The free blocks as `(unit, order)`, lowest address first (for tests and
    /// diagnostics).
    pub fn free_blocks(&self) -> Vec<(u64, u8)> {
        let mut v: Vec<(u64, u8)> = (0..ORDERS)
            .flat_map(|o| self.free[o].iter().map(move |&u| (u, u8::try_from(o).expect("o ≤ ORDER_MAX"))))
            .collect();
        v.sort_unstable();
        v
    }

    /// Takes a free slot of `2^order` units (the lowest address among the smallest
    /// free blocks that fit), or `None` when there is none.
    pub fn allocate(&mut self, order: u8) -> Option<u64> {
        assert!(order <= ORDER_MAX, "order {order} above {ORDER_MAX}");
        let from = (order..=ORDER_MAX).find(|&o| !self.free[o as usize].is_empty())?;
        let unit = self.free[from as usize].pop_first().expect("checked non-empty");
        // Split down, giving the upper halves back.
        for o in (order..from).rev() {
            let inserted = self.free[o as usize].insert(unit + (1 << o));
            assert!(inserted);
        }
        self.free_units -= 1 << order;
        assert_eq!(unit % (1 << order), 0);
        Some(unit)
    }

    /// Gives back a slot taken by [`BuddyAllocator::allocate`] or
    /// [`BuddyAllocator::mark_used`]. Panics on a double free (a programming error).
    pub fn free(&mut self, unit: u64, order: u8) {
        self.check_range(unit, order).expect("freeing a slot outside the allocator");
        assert!(!self.overlaps_free(unit, order), "double free of slot {unit}/{order}");
        let (mut unit, mut order) = (unit, order);
        self.free_units += 1 << order;
        while order < ORDER_MAX {
            let buddy = unit ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            unit = unit.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(unit);
        assert!(self.free_units <= self.units);
    }

    /// Takes the given slot out of the free space (rebuilding the allocator from the
    /// slot records at open). Fails, changing nothing, when the slot is malformed or
    /// any of it is already in use.
    pub fn mark_used(&mut self, unit: u64, order: u8) -> Result<(), AllocError> {
        self.check_range(unit, order)?;
        // The free block that contains the whole slot, if any.
        let (mut block, mut o) = (order..=ORDER_MAX)
            .map(|o| (unit & !((1u64 << o) - 1), o))
            .find(|&(b, o)| self.free[o as usize].contains(&b))
            .ok_or(AllocError::Overlap { unit, order })?;
        self.free[o as usize].remove(&block);
        // Split towards the slot, freeing the halves that do not contain it.
        while o > order {
            o -= 1;
            let upper = block + (1 << o);
            if unit >= upper {
                self.free[o as usize].insert(block);
                block = upper;
            } else {
                self.free[o as usize].insert(upper);
            }
        }
        assert_eq!(block, unit);
        self.free_units -= 1 << order;
        Ok(())
    }

    fn check_range(&self, unit: u64, order: u8) -> Result<(), AllocError> {
        if order > ORDER_MAX {
            return Err(AllocError::Order(order));
        }
        let size = 1u64 << order;
        if !unit.is_multiple_of(size) || unit.checked_add(size).is_none_or(|end| end > self.units) {
            return Err(AllocError::Range { unit, order, units: self.units });
        }
        Ok(())
    }

    /// True when any unit of the slot is inside a free block.
    fn overlaps_free(&self, unit: u64, order: u8) -> bool {
        let end = unit + (1 << order);
        // A free block at least as large contains the slot iff it is an ancestor.
        let ancestor = (order..=ORDER_MAX).any(|o| self.free[o as usize].contains(&(unit & !((1u64 << o) - 1))));
        // A smaller free block overlaps iff it starts inside the slot.
        let inside = (0..order).any(|o| self.free[o as usize].range(unit..end).next().is_some());
        ancestor || inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_disjoint(slots: &[(u64, u8)], units: u64) {
        let mut v: Vec<(u64, u64)> = slots.iter().map(|&(u, o)| (u, u + (1 << o))).collect();
        v.sort_unstable();
        for w in v.windows(2) {
            assert!(w[0].1 <= w[1].0, "slots {:?} and {:?} overlap", w[0], w[1]);
        }
        if let Some(last) = v.last() {
            assert!(last.1 <= units);
        }
    }

    #[test]
    fn initial_blocks_cover_an_odd_sized_region() {
        let a = BuddyAllocator::new((1 << 14) + 5);
        assert_eq!(a.free_blocks(), vec![(0, 14), (1 << 14, 2), ((1 << 14) + 4, 0)]);
        assert_eq!(a.free_units(), (1 << 14) + 5);
    }

    #[test]
    fn allocates_lowest_first_and_runs_out() {
        let mut a = BuddyAllocator::new(8);
        assert_eq!(a.allocate(0), Some(0));
        assert_eq!(a.allocate(1), Some(2));
        assert_eq!(a.allocate(0), Some(1));
        assert_eq!(a.allocate(2), Some(4));
        assert_eq!(a.allocate(0), None);
        assert_eq!(a.free_units(), 0);
        a.free(2, 1);
        assert_eq!(a.allocate(2), None, "only 2 units are free");
        assert_eq!(a.allocate(1), Some(2));
    }

    #[test]
    fn mark_used_rejects_overlap_and_misalignment() {
        let mut a = BuddyAllocator::new(64);
        a.mark_used(8, 3).unwrap();
        assert_eq!(a.mark_used(12, 0), Err(AllocError::Overlap { unit: 12, order: 0 }));
        assert_eq!(a.mark_used(0, 4), Err(AllocError::Overlap { unit: 0, order: 4 }));
        assert!(matches!(a.mark_used(3, 1), Err(AllocError::Range { .. })));
        assert!(matches!(a.mark_used(64, 0), Err(AllocError::Range { .. })));
        assert_eq!(a.mark_used(0, 15), Err(AllocError::Order(15)));
        assert_eq!(a.free_units(), 56, "failed calls change nothing");
        a.free(8, 3);
        assert_eq!(a.free_blocks(), vec![(0, 6)]);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = BuddyAllocator::new(16);
        let u = a.allocate(1).unwrap();
        a.free(u, 1);
        a.free(u, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_alloc_free_never_overlaps_and_coalesces(
            units in 1u64..3000,
            ops in prop::collection::vec((0u8..=6, any::<bool>(), any::<prop::sample::Index>()), 1..300),
        ) {
            let mut a = BuddyAllocator::new(units);
            let initial = a.free_blocks();
            let mut held: Vec<(u64, u8)> = Vec::new();
            for (order, alloc, pick) in ops {
                if alloc || held.is_empty() {
                    if let Some(u) = a.allocate(order) {
                        held.push((u, order));
                    }
                } else {
                    let (u, o) = held.swap_remove(pick.index(held.len()));
                    a.free(u, o);
                }
                let used: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
                prop_assert_eq!(a.free_units() + used, units);
            }
            assert_disjoint(&held, units);
            for (u, o) in held.drain(..) {
                a.free(u, o);
            }
            prop_assert_eq!(a.free_units(), units);
            prop_assert_eq!(a.free_blocks(), initial);
        }

        #[test]
        fn mark_used_then_free_round_trips(
            units in 1u64..3000,
            orders in prop::collection::vec(0u8..=5, 1..120),
        ) {
            let mut source = BuddyAllocator::new(units);
            let held: Vec<(u64, u8)> =
                orders.iter().filter_map(|&o| source.allocate(o).map(|u| (u, o))).collect();
            let mut rebuilt = BuddyAllocator::new(units);
            for &(u, o) in &held {
                rebuilt.mark_used(u, o).unwrap();
            }
            prop_assert_eq!(rebuilt.free_units(), source.free_units());
            // Everything still free can be taken without touching a marked slot.
            let mut all = held.clone();
            while let Some(u) = rebuilt.allocate(0) {
                all.push((u, 0));
            }
            assert_disjoint(&all, units);
            prop_assert_eq!(all.iter().map(|&(_, o)| 1u64 << o).sum::<u64>(), units);
            for &(u, o) in &all {
                prop_assert!(rebuilt.mark_used(u, o).is_err(), "slot {}/{} is in use", u, o);
            }
            for (u, o) in all {
                rebuilt.free(u, o);
            }
            prop_assert_eq!(rebuilt.free_blocks(), BuddyAllocator::new(units).free_blocks());
        }
    }
}
