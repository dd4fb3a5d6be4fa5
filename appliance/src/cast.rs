//! Integer conversions that cannot lose bits silently.
//!
//! A truncated length, LBA or offset is data corruption, so the workspace denies
//! `clippy::cast_possible_truncation` and `clippy::cast_sign_loss`. Each narrowing in
//! the appliance is one of three kinds:
//! - lossless by platform: `u64` → `usize` ([`usize_from`]); Quire runs on 64-bit
//!   Linux only (io_uring, VFIO), and the assertion below makes a 32-bit build fail
//!   instead of truncating;
//! - bounded by an invariant (a validated config value, a spec limit, a queue index):
//!   `T::try_from(x).expect("why it fits")`, so that a broken invariant stops the peer
//!   instead of corrupting data;
//! - a deliberate split of a 64-bit value into dwords: [`lo32`], [`hi32`];
//! - a counter reported to an operator: [`sat_u32`], saturating (a statistic that
//!   pins at `u32::MAX` is visibly wrong, never silently small).

const _: () = assert!(usize::BITS == 64, "Quire supports 64-bit targets only");

/// `x` as a `usize`: lossless, `usize` is 64 bits (asserted at compile time).
#[inline(always)]
#[allow(clippy::cast_possible_truncation)] // usize::BITS == 64, asserted above
pub const fn usize_from(x: u64) -> usize {
    x as usize
}

/// The low dword of `x`: a deliberate split of a 64-bit value into NVMe dwords.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)] // the truncation is the point
pub const fn lo32(x: u64) -> u32 {
    x as u32
}

/// The high dword of `x`.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)] // `x >> 32` fits in 32 bits
pub const fn hi32(x: u64) -> u32 {
    (x >> 32) as u32
}

/// `x` as a `u32`, saturating at `u32::MAX`: for counts shown to an operator.
#[inline]
pub fn sat_u32<T: TryInto<u32>>(x: T) -> u32 {
    x.try_into().unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(usize_from(u64::MAX), usize::MAX);
        assert_eq!(sat_u32(7usize), 7);
        assert_eq!((lo32(0x1234_5678_9abc_def0), hi32(0x1234_5678_9abc_def0)), (0x9abc_def0, 0x1234_5678));
        assert_eq!(sat_u32(u64::from(u32::MAX) + 1), u32::MAX);
    }
}
