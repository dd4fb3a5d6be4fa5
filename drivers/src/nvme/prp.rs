//! Physical Region Page entries: how a PCIe NVMe command points at its data.
//!
//! A command carries two 8-byte pointers, PRP1 and PRP2. PRP1 addresses the first
//! byte (any dword-aligned offset inside a page). If the data spans two pages, PRP2
//! addresses the second page; if it spans more, PRP2 addresses a *PRP list*: a page of
//! 8-byte entries, each the address of the next data page. Every entry after the first
//! is page aligned, so a memory segment may only start mid-page if it is the first one,
//! and only end mid-page if it is the last one — [`check_segs`] enforces exactly that,
//! which also makes every block-aligned sub-range of a request (an MDTS split) valid on
//! its own.
//!
//! Pure functions over `(iova, len)` segments; the queue pair writes the entries into
//! its per-command list page.

use crate::dma::DmaSeg;

use super::vfio::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;

/// Entries one PRP list page holds; with PRP1 this covers 2 MiB at any offset.
pub const LIST_ENTRIES_MAX: usize = PAGE_SIZE / 8;
/// The largest transfer one command may carry with a single list page.
// 512 entries of 4 KiB pages: 2 MiB, far below u32::MAX (the assertion below).
#[allow(clippy::cast_possible_truncation)]
pub const CMD_BYTES_MAX: u32 = (LIST_ENTRIES_MAX * PAGE_SIZE) as u32;
const _: () = assert!(LIST_ENTRIES_MAX * PAGE_SIZE <= u32::MAX as usize);

/// Checks that `segs` can be described by one PRP chain.
pub fn check_segs(segs: &[DmaSeg]) -> Result<(), &'static str> {
    let last = segs.len().checked_sub(1).ok_or("no data segments")?;
    for (i, s) in segs.iter().enumerate() {
        if s.len == 0 {
            return Err("empty segment");
        }
        if i == 0 && s.iova % 4 != 0 {
            return Err("first segment is not dword aligned");
        }
        if i > 0 && s.iova % PAGE != 0 {
            return Err("a segment after the first does not start on a page boundary");
        }
        if i < last && (s.iova + u64::from(s.len)) % PAGE != 0 {
            return Err("a segment before the last does not end on a page boundary");
        }
    }
    Ok(())
}

/// Calls `emit(index, address)` for each PRP entry of the bytes `pos..pos+len` of the
/// data described by `segs` (already checked), and returns the number of entries.
pub fn entries(segs: &[DmaSeg], pos: u64, len: u32, mut emit: impl FnMut(usize, u64)) -> usize {
    assert!(len > 0);
    let (mut seg_i, mut off) = locate(segs, pos);
    let mut remaining = u64::from(len);
    let mut n = 0;
    while remaining > 0 {
        let seg = segs[seg_i];
        let addr = seg.iova + off;
        let take = (PAGE - addr % PAGE).min(u64::from(seg.len) - off).min(remaining);
        emit(n, addr);
        n += 1;
        remaining -= take;
        off += take;
        if off == u64::from(seg.len) {
            seg_i += 1;
            off = 0;
        }
    }
    assert!(n <= LIST_ENTRIES_MAX + 1, "{n} PRP entries exceed one list page");
    n
}

fn locate(segs: &[DmaSeg], pos: u64) -> (usize, u64) {
    let mut start = 0u64;
    for (i, s) in segs.iter().enumerate() {
        let end = start + u64::from(s.len);
        if pos < end {
            return (i, pos - start);
        }
        start = end;
    }
    panic!("position {pos} beyond the {start} bytes of the segments");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(iova: u64, len: u32) -> DmaSeg {
        DmaSeg { addr: std::ptr::null_mut(), iova, len }
    }

    fn collect(segs: &[DmaSeg], pos: u64, len: u32) -> Vec<u64> {
        let mut v = Vec::new();
        let n = entries(segs, pos, len, |i, a| {
            assert_eq!(i, v.len());
            v.push(a)
        });
        assert_eq!(n, v.len());
        v
    }

    #[test]
    fn one_two_and_many_pages() {
        let base = 0x10_0000;
        assert_eq!(collect(&[seg(base, 4096)], 0, 4096), vec![base]);
        assert_eq!(collect(&[seg(base, 8192)], 0, 8192), vec![base, base + 4096]);
        assert_eq!(collect(&[seg(base, 12288)], 0, 12288), vec![base, base + 4096, base + 8192]);
        // An offset into the first page pushes the tail into one more page.
        assert_eq!(collect(&[seg(base + 512, 8192)], 0, 8192), vec![base + 512, base + 4096, base + 8192]);
        // 512-byte block inside one page.
        assert_eq!(collect(&[seg(base + 1024, 512)], 0, 512), vec![base + 1024]);
    }

    #[test]
    fn several_segments_and_sub_ranges() {
        let segs = [seg(0x1000_0800, 2048), seg(0x2000_0000, 8192), seg(0x3000_0000, 1024)];
        check_segs(&segs).unwrap();
        assert_eq!(collect(&segs, 0, 2048 + 8192 + 1024), vec![0x1000_0800, 0x2000_0000, 0x2000_1000, 0x3000_0000]);
        // The second half of a split starts mid-segment (PRP1 with an offset).
        assert_eq!(collect(&segs, 2048 + 4096 + 512, 4096), vec![0x2000_1200, 0x3000_0000]);
        // 2 MiB at an offset needs exactly one full list page after PRP1.
        let big = [seg(0x4000_0200, CMD_BYTES_MAX)];
        assert_eq!(collect(&big, 0, CMD_BYTES_MAX).len(), LIST_ENTRIES_MAX + 1);
    }

    #[test]
    fn rejects_chains_prps_cannot_express() {
        assert!(check_segs(&[]).is_err());
        assert!(check_segs(&[seg(0x1002, 512)]).is_err());
        assert!(check_segs(&[seg(0x1000, 512), seg(0x3000, 4096)]).is_err());
        assert!(check_segs(&[seg(0x1000, 4096), seg(0x3200, 512)]).is_err());
        assert!(check_segs(&[seg(0x1000, 0)]).is_err());
        assert!(check_segs(&[seg(0x1200, 3584), seg(0x3000, 4096), seg(0x9000, 100)]).is_ok());
    }
}
