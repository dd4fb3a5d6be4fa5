//! Volumes and pages.
//!
//! A volume is `num_pages × page_size` bytes, exposed as NVMe namespace 1 of its own
//! subsystem. Each page is owned by one peer ([`routing`]); on the owning peer the
//! page store ([`store`]) keeps it in a slot of the backing device, allocated on first
//! write (thin provisioning). Reactors read a volume through a [`VolumeView`]: the
//! volume's fixed facts plus its page table ([`pages`]), which the control thread
//! updates and reactors only read.
//!
//! - [`split`]: cutting an I/O that crosses page boundaries into per-page parts.
//! - [`meta`]: the on-device metadata format (superblock, volume table, slot records).
//! - [`alloc`]: the buddy allocator of device slots.

pub mod alloc;
pub mod io;
pub mod load;
pub mod meta;
pub mod pages;
pub mod placement;
pub mod qos;
pub mod routing;
pub mod split;
pub mod store;

use std::sync::Arc;

pub use pages::PageTable;

/// Smallest page size.
pub const PAGE_SIZE_MIN: u64 = 64 << 10;
/// Largest page size.
pub const PAGE_SIZE_MAX: u64 = 1 << 30;
/// Default page size.
pub const PAGE_SIZE_DEFAULT: u64 = 4 << 20;
/// Longest volume name.
pub const NAME_LEN_MAX: usize = 64;

/// A volume's identity inside one group: never reused after deletion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct VolumeId(pub u32);

/// A page index inside a volume.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct PageIndex(pub u64);

/// The fixed facts of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Identity.
    pub id: VolumeId,
    /// Name (the NQN suffix): `[a-z0-9._-]{1,64}`.
    pub name: String,
    /// Namespace UUID, derived from the id and the group's identity; stable forever.
    pub uuid: [u8; 16],
    /// Namespace NGUID, derived likewise.
    pub nguid: [u8; 16],
    /// Page size in bytes (power of two, 64 KiB ..= 1 GiB).
    pub page_size: u64,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Number of pages (volume size = num_pages × page_size).
    pub num_pages: u64,
}

impl VolumeInfo {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.num_pages * self.page_size
    }

    /// Size in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.size_bytes() / u64::from(self.block_size)
    }

    /// Logical blocks per page.
    pub fn blocks_per_page(&self) -> u64 {
        self.page_size / u64::from(self.block_size)
    }

    /// The subsystem NQN that serves this volume.
    pub fn nqn(&self) -> String {
        format!("{}{}", NQN_PREFIX, self.name)
    }
}

/// Prefix of every Quire subsystem NQN.
pub const NQN_PREFIX: &str = "nqn.2026-11.io.quire:";

/// What a reactor holds for a volume: its facts and its page table.
///
/// A grown volume gets a new view (new facts) over the same page table, which grows
/// in place: every view of a volume, old or new, reads the same entries, so a reactor
/// that has not yet received the new view never misses a page mapped after the grow.
#[derive(Debug)]
pub struct VolumeView {
    /// The volume's facts.
    pub info: VolumeInfo,
    /// Page → slot on this peer's device; one table for the volume's whole life.
    pub pages: Arc<PageTable>,
    /// Per page: piece locks and what members missed (`replica::locks`); empty until
    /// the volume has replicas, then one table for its whole life, like `pages`.
    pub pieces: Arc<crate::replica::locks::PieceTable>,
    /// Its limiter on this peer (`qos`); one for the volume's whole life, like `pages`.
    pub qos: Arc<qos::Limiter>,
}

/// Checks a volume name: 1 to 64 characters of `[a-z0-9._-]`, not starting with `.`/`-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
    if name.is_empty() || name.len() > NAME_LEN_MAX || !ok_chars || name.starts_with(['.', '-']) {
        return Err(format!(
            "volume name {name:?} must be 1 to {NAME_LEN_MAX} characters of a-z, 0-9, '.', '_', '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}
