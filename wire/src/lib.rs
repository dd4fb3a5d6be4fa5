//! Wire formats that every part of Quire speaks.
//!
//! The PCIe driver, the NVMe/TCP target and the perf initiator all exchange the same
//! 64-byte NVMe submission queue entries and 16-byte completion queue entries; the
//! target and the initiator also share the NVMe/TCP PDU framing. Keeping those formats
//! in one crate means one encoder, one decoder and one set of property tests.
//!
//! - [`nvme`]: commands, completions, status codes, opcodes, Identify and log pages.
//! - [`tcp`]: NVMe/TCP PDUs (NVMe/TCP transport specification 1.0), digests.
//!
//! Everything here is plain data and pure functions: no I/O, no allocation on the
//! decode path, no `unsafe`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod nvme;
pub mod tcp;

/// The low 32 bits of `v`: the first dword of a 64-bit field split across two dwords
/// (an LBA in CDW10/11, a log offset in CDW12/13, a 64-bit register written as two
/// halves). Dropping the high half is the point; [`hi32`] carries it.
#[inline]
pub fn lo32(v: u64) -> u32 {
    // Deliberate split of a 64-bit field into dwords: the high half goes in `hi32`.
    #[allow(clippy::cast_possible_truncation)]
    let lo = v as u32;
    lo
}

/// The high 32 bits of `v` (the second dword of a split 64-bit field, see [`lo32`]).
#[inline]
pub fn hi32(v: u64) -> u32 {
    // A u64 shifted right by 32 has at most 32 significant bits: nothing is lost.
    (v >> 32) as u32
}

/// Reads a little-endian `u16` at `off`.
#[inline]
pub fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Reads a little-endian `u32` at `off`.
#[inline]
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Reads a little-endian `u64` at `off`.
#[inline]
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Writes a little-endian `u16` at `off`.
#[inline]
pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u32` at `off`.
#[inline]
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u64` at `off`.
#[inline]
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copies `s` into `dst`, padding with ASCII spaces (NVMe string fields).
pub fn put_str_padded(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Copies `s` into `dst`, padding with NUL bytes (NQN fields).
pub fn put_str_nul(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL- or space-terminated ASCII string field.
pub fn get_str(src: &[u8]) -> String {
    let end = src.iter().position(|&c| c == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).trim_end().to_string()
}
