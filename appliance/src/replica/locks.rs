//! Per-page replica state on one peer: which pieces have a write or a copy in flight,
//! which pieces each member missed, which pieces the last scrub vouched for.
//!
//! A page is cut into at most 64 **pieces** (a 4 MiB page: 64 pieces of 64 KiB; never
//! smaller than a block). Each page has one cache line of atomics here, shared by this
//! peer's reactors and its control thread:
//!
//! ```text
//! word 0        pieces with a write or a copy in flight here (the piece locks)
//! word 1        pieces whose scrub reference still holds (no write since the scrub)
//! word 2 + k    pieces the member at position k of the page's set missed (leader only)
//! ```
//!
//! **Piece locks.** Every write to a replicated page takes the pieces it covers before
//! it touches a device, and gives them back once it has completed everywhere: on the
//! leader, a second write to a piece waits, so overlapping writes reach every member
//! one after the other, in the same order; on a member, a replica write takes them
//! too, which is what lets a peer that just became leader wait for the old leader's
//! writes it accepted. A rebuild copy of a piece takes it for the whole copy. A request
//! takes all its pieces at once or none (no hold-and-wait: no deadlock); one that
//! cannot waits in `WaitingOrder` and tries again on its reactor's next pass.
//!
//! **Missed pieces.** The leader marks the pieces a write did not reach on a member
//! that is `Out` (by position in the set); a delta rebuild copies them and clears
//! them.
//!
//! The table costs 64 bytes per page and exists only for volumes that have had
//! replicas (it grows in place, as the page table does, and is allocated when a
//! volume's routing first has a set of several members).

use std::sync::atomic::Ordering;

use crate::replica::set::MEMBERS_MAX;
use crate::volume::pages::Words;

/// Pieces a page is cut into at most.
pub const PIECES_MAX: u64 = 64;
const WORD_LOCK: usize = 0;
const WORD_SCRUB: usize = 1;
const WORD_MISSED: usize = 2;
/// Words per page: one cache line.
const STRIDE: usize = 8;
const _: () = assert!(WORD_MISSED + MEMBERS_MAX <= STRIDE);

/// How a page is cut into pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pieces {
    /// Blocks per piece.
    pub blocks: u64,
    /// Pieces per page (at most [`PIECES_MAX`]).
    pub count: u64,
}

impl Pieces {
    /// The pieces of a page of `blocks_per_page` blocks.
    pub fn of(blocks_per_page: u64) -> Pieces {
        assert!(blocks_per_page > 0);
        let count = blocks_per_page.min(PIECES_MAX);
        assert!(blocks_per_page.is_multiple_of(count), "pages hold a power of two of blocks");
        Pieces { blocks: blocks_per_page / count, count }
    }

    /// Every piece of a page.
    pub fn all(&self) -> u64 {
        if self.count == 64 {
            u64::MAX
        } else {
            (1 << self.count) - 1
        }
    }

    /// The pieces that blocks `[first, first + n)` of a page touch.
    #[inline]
    pub fn mask(&self, first: u64, n: u64) -> u64 {
        debug_assert!(n > 0 && first + n <= self.blocks * self.count);
        let a = first / self.blocks;
        let b = (first + n - 1) / self.blocks;
        let width = b - a + 1;
        let ones = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
        ones << a
    }
}

/// The replica state of every page of one volume on this peer.
pub struct PieceTable {
    words: Words,
}

impl std::fmt::Debug for PieceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceTable").field("len", &self.len()).finish()
    }
}

impl Default for PieceTable {
    fn default() -> PieceTable {
        PieceTable::new()
    }
}

impl PieceTable {
    /// An empty table (a volume that never had replicas costs nothing).
    pub fn new() -> PieceTable {
        PieceTable { words: Words::new(0, STRIDE) }
    }

    /// Grows the table in place to `num_pages` (control thread, before it publishes a
    /// routing table that replicates any of them).
    pub fn grow(&self, num_pages: u64) {
        if num_pages > self.len() {
            self.words.grow(num_pages);
        }
    }

    /// Pages covered.
    pub fn len(&self) -> u64 {
        self.words.len()
    }

    /// True when no page is covered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the pieces `mask` of `page` if none of them is taken; true if it did.
    #[inline]
    pub fn try_lock(&self, page: u64, mask: u64) -> bool {
        let w = &self.words.words(page)[WORD_LOCK];
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & mask != 0 {
                return false;
            }
            match w.compare_exchange_weak(cur, cur | mask, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back pieces `mask` of `page` (taken by [`PieceTable::try_lock`]).
    #[inline]
    pub fn unlock(&self, page: u64, mask: u64) {
        let before = self.words.words(page)[WORD_LOCK].fetch_and(!mask, Ordering::AcqRel);
        assert_eq!(before & mask, mask, "page {page}: pieces {mask:#x} given back but not all taken ({before:#x})");
    }

    /// The pieces of `page` taken now.
    pub fn locked(&self, page: u64) -> u64 {
        self.words.words(page)[WORD_LOCK].load(Ordering::Acquire)
    }

    /// Marks pieces `mask` of `page` as missed by the members at positions `slots`
    /// (a bit per position).
    #[inline]
    pub fn mark_missed(&self, page: u64, slots: u8, mask: u64) {
        let w = self.words.words(page);
        for slot in 0..MEMBERS_MAX {
            if slots & (1 << slot) != 0 {
                w[WORD_MISSED + slot].fetch_or(mask, Ordering::AcqRel);
            }
        }
    }

    /// The pieces of `page` the member at position `slot` missed.
    pub fn missed(&self, page: u64, slot: u8) -> u64 {
        self.words.words(page)[WORD_MISSED + usize::from(slot)].load(Ordering::Acquire)
    }

    /// The member at position `slot` has pieces `mask` of `page` again.
    pub fn clear_missed(&self, page: u64, slot: u8, mask: u64) {
        self.words.words(page)[WORD_MISSED + usize::from(slot)].fetch_and(!mask, Ordering::AcqRel);
    }

    /// Forgets what every position missed on every page and marks every page's pieces
    /// `all` as missed by `slots` (a set's members changed places: what was tracked by
    /// position is merged, erring on the side of copying more).
    pub fn merge_missed(&self, pages: impl Iterator<Item = u64>, slots: u8) {
        for page in pages {
            let w = self.words.words(page);
            let any = (0..MEMBERS_MAX).fold(0, |a, k| a | w[WORD_MISSED + k].load(Ordering::Acquire));
            for k in 0..MEMBERS_MAX {
                let v = if slots & (1 << k) != 0 { any } else { 0 };
                w[WORD_MISSED + k].store(v, Ordering::Release);
            }
        }
    }

    /// A write covers pieces `mask` of `page`: the scrub's reference for them no longer
    /// holds. One load when there is none (the common case).
    #[inline]
    pub fn written(&self, page: u64, mask: u64) {
        let w = &self.words.words(page)[WORD_SCRUB];
        if w.load(Ordering::Relaxed) & mask != 0 {
            w.fetch_and(!mask, Ordering::AcqRel);
        }
    }

    /// The scrub vouches for pieces `mask` of `page` (they agreed, or were repaired).
    pub fn vouch(&self, page: u64, mask: u64) {
        self.words.words(page)[WORD_SCRUB].fetch_or(mask, Ordering::AcqRel);
    }

    /// The pieces of `page` the scrub's reference still holds for.
    pub fn vouched(&self, page: u64) -> u64 {
        self.words.words(page)[WORD_SCRUB].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_ranges_of_blocks() {
        let p = Pieces::of(1024); // 4 MiB of 4 KiB blocks
        assert_eq!((p.blocks, p.count), (16, 64));
        assert_eq!(p.all(), u64::MAX);
        assert_eq!(p.mask(0, 1), 1);
        assert_eq!(p.mask(15, 2), 0b11);
        assert_eq!(p.mask(16, 16), 0b10);
        assert_eq!(p.mask(0, 1024), u64::MAX);
        assert_eq!(p.mask(1008, 16), 1 << 63);
        let small = Pieces::of(16); // a 64 KiB page of 4 KiB blocks
        assert_eq!((small.blocks, small.count, small.all()), (1, 16, 0xffff));
    }

    #[test]
    fn locks_are_all_or_nothing_and_missed_pieces_are_kept_by_position() {
        let t = PieceTable::new();
        t.grow(4);
        assert!(t.try_lock(1, 0b0110));
        assert!(!t.try_lock(1, 0b0011), "one piece of it is taken");
        assert_eq!(t.locked(1), 0b0110, "a refused lock takes nothing");
        assert!(t.try_lock(1, 0b1000));
        assert!(t.try_lock(2, 0b0110), "pages are apart");
        t.unlock(1, 0b0110);
        assert!(t.try_lock(1, 0b0011));
        t.mark_missed(3, 0b10, 0xf0);
        t.mark_missed(3, 0b11, 0x01);
        assert_eq!((t.missed(3, 0), t.missed(3, 1)), (0x01, 0xf1));
        t.clear_missed(3, 1, 0x30);
        assert_eq!(t.missed(3, 1), 0xc1);
        t.merge_missed(0..4, 0b100);
        assert_eq!((t.missed(3, 0), t.missed(3, 1), t.missed(3, 2)), (0, 0, 0xc1));
        t.vouch(0, 0xff);
        t.written(0, 0x0f);
        assert_eq!(t.vouched(0), 0xf0);
        t.grow(600);
        assert_eq!(t.locked(1), 0b1011, "growing keeps every word");
    }

    #[test]
    #[should_panic(expected = "given back but not all taken")]
    fn giving_back_what_was_not_taken_panics() {
        let t = PieceTable::new();
        t.grow(1);
        t.unlock(0, 1);
    }
}
