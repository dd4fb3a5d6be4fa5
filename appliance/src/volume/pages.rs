//! A volume's page table on this peer: page → device slot.
//!
//! The control thread is the only writer (it allocates and frees slots and persists
//! that first); reactors read entries on every I/O. Entries are atomics, so a read
//! never takes a lock; an entry goes from "unallocated" to an address only after the
//! mapping is durable on the device, and back only after the page store has persisted
//! the free. Slots are reused only after every reactor has drained the I/O that could
//! still address the old mapping (see `control`'s grace periods).

use std::sync::atomic::{AtomicU64, Ordering};

/// Page → slot map. Entry value 0 means "never written (reads zeroes)"; otherwise it is
/// the slot's byte offset on the device plus one.
#[derive(Debug)]
pub struct PageTable {
    slots: Box<[AtomicU64]>,
}

impl PageTable {
    /// A table of `num_pages` unallocated pages.
    pub fn new(num_pages: u64) -> PageTable {
        PageTable { slots: (0..num_pages).map(|_| AtomicU64::new(0)).collect() }
    }

    /// A larger table with this table's entries (growing a volume).
    pub fn grown(&self, num_pages: u64) -> PageTable {
        assert!(num_pages >= self.len());
        let t = PageTable::new(num_pages);
        for (i, s) in self.slots.iter().enumerate() {
            t.slots[i].store(s.load(Ordering::Acquire), Ordering::Relaxed);
        }
        t
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The device byte offset of `page`'s slot, or `None` if the page was never written.
    #[inline]
    pub fn get(&self, page: u64) -> Option<u64> {
        match self.slots[page as usize].load(Ordering::Acquire) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// Records that `page` lives at device byte offset `offset` (control thread only,
    /// after the mapping is durable).
    pub fn set(&self, page: u64, offset: u64) {
        self.slots[page as usize].store(offset + 1, Ordering::Release);
    }

    /// Records that `page` is unallocated again (control thread only, after the free is
    /// durable).
    pub fn clear(&self, page: u64) {
        self.slots[page as usize].store(0, Ordering::Release);
    }

    /// Number of allocated pages.
    pub fn allocated(&self) -> u64 {
        self.slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_pages_read_none_and_mapped_pages_their_slot() {
        let t = PageTable::new(4);
        assert_eq!(t.len(), 4);
        assert!((0..4).all(|p| t.get(p).is_none()));
        // Offset 0 is a valid slot: the stored value is offset + 1, so it is not "unwritten".
        t.set(0, 0);
        t.set(3, 8 << 20);
        assert_eq!(t.get(0), Some(0));
        assert_eq!(t.get(3), Some(8 << 20));
        assert_eq!(t.get(1), None);
        assert_eq!(t.allocated(), 2);
        t.clear(0);
        assert_eq!(t.get(0), None);
        assert_eq!(t.allocated(), 1);
    }

    #[test]
    fn grown_table_keeps_every_mapping_and_adds_unwritten_pages() {
        let t = PageTable::new(3);
        t.set(1, 4 << 20);
        let g = t.grown(5);
        assert_eq!(g.len(), 5);
        assert_eq!(g.get(1), Some(4 << 20));
        assert!(g.get(3).is_none() && g.get(4).is_none());
        // The old table is unaffected by changes to the new one (read-copy-update).
        g.set(4, 12 << 20);
        assert_eq!(t.len(), 3);
        assert_eq!(t.allocated(), 1);
    }

    #[test]
    #[should_panic]
    fn shrinking_is_refused() {
        PageTable::new(3).grown(2);
    }
}
