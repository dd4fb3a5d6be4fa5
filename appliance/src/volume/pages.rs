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
