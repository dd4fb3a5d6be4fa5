//! Cutting a logical block range into per-page parts.
//!
//! A host I/O may cross page boundaries; each page may live in a different slot (or on
//! a different peer), so the I/O is split into parts, one per page, that complete
//! independently; the request completes when every part has. Parts come out in LBA
//! order with their byte offset inside the request's data, so that each part can be
//! pointed at its own slice of the request's buffers without copying.

/// Most parts one request can be split into: MDTS (4 MiB at most) over the smallest
/// page (64 KiB), plus one for an unaligned start.
pub const PARTS_MAX: usize = 65;

/// One page's share of a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Part {
    /// Page index.
    pub page: u64,
    /// First block of the part, relative to the start of the page.
    pub block_in_page: u64,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Offset of the part's data in the request's data, in bytes.
    pub data_offset: u64,
}

/// Iterator over the parts of `num_blocks` blocks starting at `lba`.
#[derive(Clone, Debug)]
pub struct Splitter {
    lba: u64,
    remaining: u64,
    blocks_per_page: u64,
    block_size: u64,
    data_offset: u64,
}

/// Splits `[lba, lba + num_blocks)` at multiples of `blocks_per_page`.
pub fn split(lba: u64, num_blocks: u64, blocks_per_page: u64, block_size: u64) -> Splitter {
    assert!(blocks_per_page > 0 && blocks_per_page.is_power_of_two());
    assert!(block_size.is_power_of_two());
    Splitter { lba, remaining: num_blocks, blocks_per_page, block_size, data_offset: 0 }
}

impl Iterator for Splitter {
    type Item = Part;

    fn next(&mut self) -> Option<Part> {
        if self.remaining == 0 {
            return None;
        }
        let page = self.lba / self.blocks_per_page;
        let block_in_page = self.lba % self.blocks_per_page;
        let num_blocks = self.remaining.min(self.blocks_per_page - block_in_page);
        let part = Part { page, block_in_page, num_blocks, data_offset: self.data_offset };
        self.lba += num_blocks;
        self.remaining -= num_blocks;
        self.data_offset += num_blocks * self.block_size;
        debug_assert!(part.block_in_page + part.num_blocks <= self.blocks_per_page);
        Some(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn inside_one_page_is_one_part() {
        let parts: Vec<Part> = split(5, 3, 16, 4096).collect();
        assert_eq!(parts, vec![Part { page: 0, block_in_page: 5, num_blocks: 3, data_offset: 0 }]);
    }

    #[test]
    fn crossing_two_boundaries_gives_three_parts() {
        let parts: Vec<Part> = split(14, 20, 16, 512).collect();
        assert_eq!(
            parts,
            vec![
                Part { page: 0, block_in_page: 14, num_blocks: 2, data_offset: 0 },
                Part { page: 1, block_in_page: 0, num_blocks: 16, data_offset: 1024 },
                Part { page: 2, block_in_page: 0, num_blocks: 2, data_offset: 9216 },
            ]
        );
    }

    proptest! {
        #[test]
        fn parts_tile_the_range_exactly(lba in 0u64..1_000_000, n in 1u64..5000, shift in 0u32..12) {
            let bpp = 1u64 << shift;
            let parts: Vec<Part> = split(lba, n, bpp, 4096).collect();
            let mut next = lba;
            let mut off = 0;
            for p in &parts {
                prop_assert_eq!(p.page * bpp + p.block_in_page, next);
                prop_assert!(p.num_blocks > 0);
                prop_assert!(p.block_in_page + p.num_blocks <= bpp);
                prop_assert_eq!(p.data_offset, off);
                next += p.num_blocks;
                off += p.num_blocks * 4096;
            }
            prop_assert_eq!(next, lba + n);
            // Only the first and last part may be partial pages.
            for p in parts.iter().skip(1).take(parts.len().saturating_sub(2)) {
                prop_assert_eq!(p.num_blocks, bpp);
            }
        }
    }
}
