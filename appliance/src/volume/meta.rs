//! The page store's on-device metadata format (version 2).
//!
//! Everything the page store knows lives on its device, in 4096-byte metadata blocks,
//! followed by the data region of 64 KiB units:
//!
//! ```text
//! byte 0        4 KiB               1 MiB        1 MiB + 4 KiB
//! [SB A][ never written ... ][SB B][area A: volume table, slot records][area B: same][pad][data…]
//!                                                                                      ^ 2 MiB-aligned
//! ```
//!
//! - The **superblock** says how the device is laid out and who it belongs to (the
//!   group/peer uuid, from which volume UUIDs and NGUIDs are derived) and holds the
//!   next volume id (monotonic, never reused). Copy A is at byte 0 and copy B at byte
//!   [`SB_B_OFFSET`] (1 MiB), far apart as btrfs and ZFS keep theirs: a partition
//!   table, a boot loader or a file system label written over the start of the device
//!   (GPT takes the first 17 to 24 KiB) leaves copy B and both metadata areas intact.
//!   The 1020 KiB between them is never written.
//! - The **volume table** has one 128-byte entry per volume, [`VOLUMES_MAX`] in all.
//! - The **slot records** have one 16-byte record per data unit; only the record at a
//!   slot's first unit is meaningful and says which page of which volume lives there.
//!   Free space is not stored: it is whatever no record claims.
//!
//! Every block exists in two copies, A and B, in two separate areas (so that damage to
//! one stretch of the device cannot take both). Every block starts with a 32-byte
//! [`Header`]: magic (one per kind of block), CRC32C over the whole block with the CRC
//! field zeroed, sequence number, the block's logical index and the format id. An
//! update writes the copy holding the older sequence number, with the next sequence
//! number, with FUA; at open the valid copy with the higher sequence number wins. A
//! torn write therefore only damages the copy being written, whose update was never
//! acknowledged, and the other copy still holds the previous state. An update that
//! finds the other copy invalid (never written, or torn by a crash) rewrites it too
//! before it is acknowledged, so that an acknowledged block always has two valid
//! copies: two damaged copies of one block are never the result of a crash, and the
//! page store refuses to open rather than read the block as empty.
//!
//! The logical index in the header catches a write that landed in the wrong place; the
//! format id (random at each format) makes blocks left over from an earlier format of
//! the same device count as never written, so format only has to write the two
//! superblocks. Both checks cost the header 16 bytes, which is why a block holds 254
//! slot records rather than 255.
//!
//! Format 1 (before this one) kept copy B of the superblock at byte 4096, next to copy
//! A, and the areas right after it. A device of format 1 is refused with an error
//! that says so ([`MetaError::Version`]); it is never taken for an unformatted one.
//!
//! # What counts as a blank device
//!
//! The page store formats a device without being told to only when it is blank:
//! every byte of [`Layout::blank_ranges`] reads as zero. Those are the first
//! [`BLANK_HEAD_BYTES`] (2 MiB: both superblock copies, the start of area A, and where
//! partition tables, boot sectors, LVM/LUKS/md labels and the superblocks of ext4,
//! XFS and btrfs live), the volume table of both areas (in the first 2 MiB unless the
//! device is large) and the last [`BLANK_TAIL_BYTES`] (1 MiB: GPT's backup, md 1.0 and
//! ZFS's trailing labels). That is at most about 3.3 MiB read, whatever the device's
//! size.

use std::hash::{BuildHasher, Hasher};

/// Size of a metadata block.
pub const META_BLOCK_SIZE: usize = 4096;
/// Size of the common header at the start of every metadata block.
pub const HEADER_LEN: usize = 32;
/// Log2 of the data unit (the smallest slot, the smallest page).
pub const UNIT_SHIFT: u32 = 16;
/// Size of a data unit.
pub const UNIT_BYTES: u64 = 1 << UNIT_SHIFT;
/// Size of a slot record.
pub const RECORD_LEN: usize = 16;
/// Slot records per metadata block.
pub const RECORDS_PER_BLOCK: usize = (META_BLOCK_SIZE - HEADER_LEN) / RECORD_LEN;
/// Size of a volume table entry.
pub const ENTRY_LEN: usize = 128;
/// Volume table entries per metadata block.
pub const ENTRIES_PER_BLOCK: usize = (META_BLOCK_SIZE - HEADER_LEN) / ENTRY_LEN;
/// Most volumes one page store holds.
pub const VOLUMES_MAX: usize = 1024;
/// Metadata blocks of the volume table (one copy).
pub const VOLUME_TABLE_BLOCKS: u64 = VOLUMES_MAX.div_ceil(ENTRIES_PER_BLOCK) as u64;
/// Alignment of the data region's start on the device.
pub const DATA_ALIGN: u64 = 2 << 20;
/// Version of this format.
pub const FORMAT_VERSION: u32 = 2;
/// Device byte offset of copy B of the superblock (copy A is at 0).
pub const SB_B_OFFSET: u64 = 1 << 20;
/// Bytes at the start of the device that must read as zero for it to count as blank.
pub const BLANK_HEAD_BYTES: u64 = 2 << 20;
/// Bytes at the end of the device that must read as zero for it to count as blank.
pub const BLANK_TAIL_BYTES: u64 = 1 << 20;
/// Longest volume name stored.
pub const NAME_LEN: usize = 64;

const _: () = assert!(RECORDS_PER_BLOCK == 254);
const _: () = assert!(ENTRIES_PER_BLOCK == 31);
const _: () = assert!(HEADER_LEN + RECORDS_PER_BLOCK * RECORD_LEN <= META_BLOCK_SIZE);
const _: () = assert!(HEADER_LEN + ENTRIES_PER_BLOCK * ENTRY_LEN <= META_BLOCK_SIZE);
const _: () = assert!(NAME_LEN == super::NAME_LEN_MAX);
const _: () = assert!(super::PAGE_SIZE_MIN == UNIT_BYTES);
const _: () = assert!(DATA_ALIGN.is_multiple_of(META_BLOCK_SIZE as u64) && DATA_ALIGN.is_multiple_of(UNIT_BYTES));
const _: () = assert!(SB_B_OFFSET.is_multiple_of(META_BLOCK_SIZE as u64) && SB_B_OFFSET >= 64 << 10);

/// Why a metadata block or field was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The block does not carry the magic of its kind (never written, or something else).
    #[error("bad magic {found:#010x}, expected {expected:#010x}")]
    Magic {
        /// Found.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// The checksum does not match (torn write or corruption).
    #[error("checksum mismatch")]
    Crc,
    /// The block belongs at another logical index (misdirected write).
    #[error("block carries index {found}, expected {expected}")]
    Index {
        /// Found.
        found: u64,
        /// Expected.
        expected: u64,
    },
    /// The block was written by an earlier format of the device.
    #[error("block of format {found:#x}, current format is {expected:#x}")]
    Format {
        /// Found.
        found: u64,
        /// Expected.
        expected: u64,
    },
    /// A field holds a value this format does not allow.
    #[error("bad field: {0}")]
    Field(String),
    /// The device cannot hold the metadata and at least one data unit.
    #[error("device of {0} bytes is too small for the page store")]
    TooSmall(u64),
    /// A sound superblock of another version of this format.
    #[error("Quire page store of format version {found}; this build reads version {FORMAT_VERSION} only")]
    Version {
        /// The version found.
        found: u32,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, MetaError>;

/// The kinds of metadata block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The superblock (logical block 0).
    Super,
    /// A block of the volume table.
    Volumes,
    /// A block of slot records.
    Slots,
}

impl Kind {
    /// The magic number of this kind.
    pub fn magic(self) -> u32 {
        match self {
            Kind::Super => u32::from_le_bytes(*b"QRSB"),
            Kind::Volumes => u32::from_le_bytes(*b"QRVT"),
            Kind::Slots => u32::from_le_bytes(*b"QRSR"),
        }
    }
}

/// The common header of a metadata block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sequence number of this copy (higher wins).
    pub seq: u64,
    /// Logical block index.
    pub index: u64,
    /// Format id (random at format).
    pub format_id: u64,
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn block_crc(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&block[..4]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &block[8..])
}

/// Writes `header` into `block` (whose payload is already filled) and seals it with
/// its checksum.
pub fn seal(block: &mut [u8], kind: Kind, header: Header) {
    assert_eq!(block.len(), META_BLOCK_SIZE);
    assert!(header.seq > 0, "sequence 0 means never written");
    put_u32(block, 0, kind.magic());
    put_u32(block, 4, 0);
    put_u64(block, 8, header.seq);
    put_u64(block, 16, header.index);
    put_u64(block, 24, header.format_id);
    let crc = block_crc(block);
    put_u32(block, 4, crc);
}

/// Checks a block read from the device: magic of `kind`, checksum, the format id when
/// given, and the logical `index`. Returns its header.
pub fn check(block: &[u8], kind: Kind, index: u64, format_id: Option<u64>) -> Result<Header> {
    assert_eq!(block.len(), META_BLOCK_SIZE);
    let magic = get_u32(block, 0);
    if magic != kind.magic() {
        return Err(MetaError::Magic { found: magic, expected: kind.magic() });
    }
    if get_u32(block, 4) != block_crc(block) {
        return Err(MetaError::Crc);
    }
    let header = Header { seq: get_u64(block, 8), index: get_u64(block, 16), format_id: get_u64(block, 24) };
    // The format before the index: a sound block of an earlier format (of another
    // layout) at this place is "never written", not a misdirected write.
    if let Some(expected) = format_id.filter(|&f| f != header.format_id) {
        return Err(MetaError::Format { found: header.format_id, expected });
    }
    if header.index != index {
        return Err(MetaError::Index { found: header.index, expected: index });
    }
    if header.seq == 0 {
        return Err(MetaError::Field("sequence number 0".into()));
    }
    Ok(header)
}

/// Where everything is on the device.
///
/// Logical metadata blocks: 0 is the superblock, `1 ..= volume_blocks` the volume
/// table, then `slot_blocks` blocks of slot records. Copy A of the superblock is at
/// byte 0 and copy B at [`SB_B_OFFSET`], so that open finds both without knowing the
/// layout; the other blocks' copies A and B fill one area each, A right after copy B
/// of the superblock and B right after A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Blocks of the volume table (one copy).
    pub volume_blocks: u64,
    /// Blocks of slot records (one copy).
    pub slot_blocks: u64,
    /// Byte offset of the data region.
    pub data_offset: u64,
    /// Units in the data region.
    pub data_units: u64,
}

/// Device metadata block of copy B of the superblock.
const SB_B_BLOCK: u64 = SB_B_OFFSET / META_BLOCK_SIZE as u64;

impl Layout {
    /// The layout for a device of `device_bytes`.
    pub fn for_device(device_bytes: u64) -> Result<Layout> {
        // Size the records for every unit of the device: a few more than the data region
        // needs, which breaks the circle between metadata size and data size.
        let slot_blocks = (device_bytes >> UNIT_SHIFT).div_ceil(RECORDS_PER_BLOCK as u64).max(1);
        let mut layout = Layout { volume_blocks: VOLUME_TABLE_BLOCKS, slot_blocks, data_offset: 0, data_units: 0 };
        layout.data_offset = layout.meta_end().next_multiple_of(DATA_ALIGN);
        layout.data_units = device_bytes.saturating_sub(layout.data_offset) >> UNIT_SHIFT;
        if layout.data_units == 0 {
            return Err(MetaError::TooSmall(device_bytes));
        }
        assert!(layout.data_units <= layout.slot_blocks * RECORDS_PER_BLOCK as u64);
        Ok(layout)
    }

    /// Checks a layout read from a superblock against the device.
    pub fn validate(&self, device_bytes: u64) -> Result<()> {
        let bad = |what: &str| Err(MetaError::Field(format!("layout: {what} ({self:?})")));
        if self.volume_blocks != VOLUME_TABLE_BLOCKS {
            return bad("volume table size");
        }
        if self.data_units == 0 || self.data_units > self.slot_blocks.saturating_mul(RECORDS_PER_BLOCK as u64) {
            return bad("data units and slot records disagree");
        }
        // meta_end(), without overflowing on a corrupt superblock.
        let meta_end = self
            .slot_blocks
            .checked_add(self.volume_blocks)
            .and_then(|b| b.checked_mul(2))
            .and_then(|b| b.checked_add(SB_B_BLOCK + 1))
            .and_then(|b| b.checked_mul(META_BLOCK_SIZE as u64));
        if !self.data_offset.is_multiple_of(DATA_ALIGN) || meta_end.is_none_or(|end| self.data_offset < end) {
            return bad("data region overlaps the metadata or is misaligned");
        }
        let end = self.data_units.checked_mul(UNIT_BYTES).and_then(|b| b.checked_add(self.data_offset));
        if end.is_none_or(|e| e > device_bytes) {
            return bad("data region beyond the device");
        }
        Ok(())
    }

    /// Number of logical metadata blocks.
    pub fn logical_blocks(&self) -> u64 {
        1 + self.volume_blocks + self.slot_blocks
    }

    /// Bytes of metadata on the device (both copies of every block).
    pub fn meta_bytes(&self) -> u64 {
        2 * self.logical_blocks() * META_BLOCK_SIZE as u64
    }

    /// Device byte offset just past the last metadata block (the end of area B).
    pub fn meta_end(&self) -> u64 {
        self.area_start(1) * META_BLOCK_SIZE as u64 + (self.logical_blocks() - 1) * META_BLOCK_SIZE as u64
    }

    /// Device byte offset of copy `copy` (0 = A, 1 = B) of logical block `logical`.
    pub fn offset(&self, logical: u64, copy: usize) -> u64 {
        assert!(copy < 2);
        assert!(logical < self.logical_blocks());
        let block = match (logical, copy) {
            (0, 0) => 0,
            (0, _) => SB_B_BLOCK,
            _ => self.area_start(copy) + logical - 1,
        };
        block * META_BLOCK_SIZE as u64
    }

    /// Device metadata block at which copy `copy` of logical block 1 lives.
    pub fn area_start(&self, copy: usize) -> u64 {
        SB_B_BLOCK + 1 + copy as u64 * (self.logical_blocks() - 1)
    }

    /// The byte ranges `[start, end)` of a device of `device_bytes` that must all read
    /// as zero for the device to count as blank (see the module documentation),
    /// sorted and disjoint. Without a layout (a device too small for one) the whole
    /// device is checked.
    pub fn blank_ranges(device_bytes: u64) -> Vec<(u64, u64)> {
        let Ok(layout) = Layout::for_device(device_bytes) else { return vec![(0, device_bytes)] };
        let table = layout.volume_blocks * META_BLOCK_SIZE as u64;
        let mut ranges = vec![
            (0, BLANK_HEAD_BYTES.min(device_bytes)),
            (layout.offset(1, 0), layout.offset(1, 0) + table),
            (layout.offset(1, 1), layout.offset(1, 1) + table),
            (device_bytes.saturating_sub(BLANK_TAIL_BYTES), device_bytes),
        ];
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// What logical block `logical` holds.
    pub fn kind(&self, logical: u64) -> Kind {
        assert!(logical < self.logical_blocks());
        match logical {
            0 => Kind::Super,
            l if l <= self.volume_blocks => Kind::Volumes,
            _ => Kind::Slots,
        }
    }

    /// Logical block of volume table block `t`.
    pub fn volume_block(&self, t: u64) -> u64 {
        assert!(t < self.volume_blocks);
        1 + t
    }

    /// Logical block of slot record block `s`.
    pub fn slot_block(&self, s: u64) -> u64 {
        assert!(s < self.slot_blocks);
        1 + self.volume_blocks + s
    }

    /// Logical block holding the record of `unit`.
    pub fn slot_block_of(&self, unit: u64) -> u64 {
        assert!(unit < self.data_units);
        self.slot_block(unit / RECORDS_PER_BLOCK as u64)
    }

    /// Device byte offset of data unit `unit`.
    pub fn unit_offset(&self, unit: u64) -> u64 {
        assert!(unit < self.data_units);
        self.data_offset + unit * UNIT_BYTES
    }

    /// Data unit at device byte offset `offset` (inverse of [`Layout::unit_offset`]).
    pub fn unit_at(&self, offset: u64) -> u64 {
        assert!(offset >= self.data_offset && (offset - self.data_offset).is_multiple_of(UNIT_BYTES));
        (offset - self.data_offset) >> UNIT_SHIFT
    }
}

/// The superblock's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Random at format; every block of this format carries it.
    pub format_id: u64,
    /// Device size at format.
    pub device_bytes: u64,
    /// Device block size at format.
    pub device_block_size: u32,
    /// Where everything is.
    pub layout: Layout,
    /// The group/peer identity volume UUIDs and NGUIDs derive from.
    pub uuid: [u8; 16],
    /// The id the next volume gets.
    pub next_volume_id: u32,
}

impl Superblock {
    /// Fills the payload of a superblock block (seal it afterwards).
    pub fn encode(&self, block: &mut [u8]) {
        assert_eq!(block.len(), META_BLOCK_SIZE);
        block.fill(0);
        put_u32(block, 32, FORMAT_VERSION);
        put_u32(block, 36, u32::try_from(META_BLOCK_SIZE).expect("4096"));
        put_u64(block, 40, self.device_bytes);
        put_u32(block, 48, self.device_block_size);
        put_u32(block, 52, u32::try_from(VOLUMES_MAX).expect("1024"));
        put_u64(block, 56, self.layout.data_offset);
        put_u64(block, 64, self.layout.data_units);
        block[72..88].copy_from_slice(&self.uuid);
        put_u32(block, 88, self.next_volume_id);
        put_u32(block, 92, u32::try_from(self.layout.volume_blocks).expect("VOLUME_TABLE_BLOCKS"));
        put_u64(block, 96, self.layout.slot_blocks);
        put_u64(block, 104, SB_B_OFFSET);
    }

    /// Reads a superblock from a block that passed [`check`].
    pub fn decode(block: &[u8], header: &Header) -> Result<Superblock> {
        let version = get_u32(block, 32);
        if version != FORMAT_VERSION {
            return Err(MetaError::Version { found: version });
        }
        if get_u32(block, 36) as usize != META_BLOCK_SIZE || get_u32(block, 52) as usize != VOLUMES_MAX {
            return Err(MetaError::Field("metadata block size or volume table size".into()));
        }
        if get_u64(block, 104) != SB_B_OFFSET {
            return Err(MetaError::Field(format!(
                "superblock copy B at {}, expected {SB_B_OFFSET}",
                get_u64(block, 104)
            )));
        }
        Ok(Superblock {
            format_id: header.format_id,
            device_bytes: get_u64(block, 40),
            device_block_size: get_u32(block, 48),
            layout: Layout {
                volume_blocks: u64::from(get_u32(block, 92)),
                slot_blocks: get_u64(block, 96),
                data_offset: get_u64(block, 56),
                data_units: get_u64(block, 64),
            },
            uuid: block[72..88].try_into().expect("16 bytes"),
            next_volume_id: get_u32(block, 88),
        })
    }
}

/// A volume's lifecycle state in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeState {
    /// Serving.
    Live,
    /// Being deleted: its slots are being freed; open finishes the job.
    Deleting,
}

/// One volume table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Volume id (never 0).
    pub id: u32,
    /// Lifecycle state.
    pub state: VolumeState,
    /// Name, at most [`NAME_LEN`] bytes.
    pub name: String,
    /// Log2 of the page size.
    pub page_shift: u8,
    /// Log2 of the logical block size.
    pub block_shift: u8,
    /// Number of pages.
    pub num_pages: u64,
    /// Namespace UUID.
    pub uuid: [u8; 16],
    /// Namespace NGUID.
    pub nguid: [u8; 16],
    /// Its limits (`volume::qos`): four `u32` at bytes 112..128, zero in entries
    /// written before limits existed (no limit).
    pub limits: crate::volume::qos::Limits,
}

const STATE_EMPTY: u8 = 0;
const STATE_LIVE: u8 = 1;
const STATE_DELETING: u8 = 2;

impl VolumeEntry {
    /// Writes entry `slot` of a volume table block (`None`: an empty entry).
    pub fn encode(entry: Option<&VolumeEntry>, block: &mut [u8], slot: usize) {
        assert!(slot < ENTRIES_PER_BLOCK);
        let e = &mut block[HEADER_LEN + slot * ENTRY_LEN..][..ENTRY_LEN];
        e.fill(0);
        let Some(v) = entry else { return };
        assert!(v.id != 0 && v.name.len() <= NAME_LEN);
        put_u32(e, 0, v.id);
        e[4] = match v.state {
            VolumeState::Live => STATE_LIVE,
            VolumeState::Deleting => STATE_DELETING,
        };
        e[5] = v.page_shift;
        e[6] = v.block_shift;
        e[7] = u8::try_from(v.name.len()).expect("name.len() ≤ NAME_LEN, asserted above");
        put_u64(e, 8, v.num_pages);
        e[16..16 + v.name.len()].copy_from_slice(v.name.as_bytes());
        e[80..96].copy_from_slice(&v.uuid);
        e[96..112].copy_from_slice(&v.nguid);
        let l = &v.limits;
        for (i, x) in [l.iops, l.mib_s, l.host_iops, l.host_mib_s].into_iter().enumerate() {
            put_u32(e, 112 + 4 * i, x);
        }
    }

    /// Reads entry `slot` of a volume table block.
    pub fn decode(block: &[u8], slot: usize) -> Result<Option<VolumeEntry>> {
        assert!(slot < ENTRIES_PER_BLOCK);
        let e = &block[HEADER_LEN + slot * ENTRY_LEN..][..ENTRY_LEN];
        let state = match e[4] {
            STATE_EMPTY => return Ok(None),
            STATE_LIVE => VolumeState::Live,
            STATE_DELETING => VolumeState::Deleting,
            s => return Err(MetaError::Field(format!("volume state {s}"))),
        };
        let id = get_u32(e, 0);
        let name_len = usize::from(e[7]);
        if id == 0 || name_len > NAME_LEN {
            return Err(MetaError::Field(format!("volume entry id {id} name length {name_len}")));
        }
        let name = std::str::from_utf8(&e[16..16 + name_len])
            .map_err(|_| MetaError::Field(format!("volume {id} name is not UTF-8")))?;
        Ok(Some(VolumeEntry {
            id,
            state,
            name: name.to_owned(),
            page_shift: e[5],
            block_shift: e[6],
            num_pages: get_u64(e, 8),
            uuid: e[80..96].try_into().expect("16 bytes"),
            nguid: e[96..112].try_into().expect("16 bytes"),
            limits: crate::volume::qos::Limits {
                iops: get_u32(e, 112),
                mib_s: get_u32(e, 116),
                host_iops: get_u32(e, 120),
                host_mib_s: get_u32(e, 124),
            },
        }))
    }
}

/// The `volume_id` of a spare slot's record: zeroed and durably so, owned by no
/// volume yet. No volume has this id: ids stop one short of it (the next id would
/// not fit).
pub const SPARE_VOLUME_ID: u32 = u32::MAX;

/// [`SlotRecord::flags`] of a spare slot: every byte of the slot is zero on the device.
pub const FLAG_ZEROED: u8 = 1;

/// A slot record: which page lives in the slot that starts at this unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    /// Owning volume (never 0; 0 on the device means "no slot starts here"), or
    /// [`SPARE_VOLUME_ID`].
    pub volume_id: u32,
    /// Log2 of the slot size in units.
    pub order: u8,
    /// [`FLAG_ZEROED`] on a spare's record; 0 on a page's.
    pub flags: u8,
    /// Page index inside the volume (0 for a spare).
    pub page: u64,
}

impl SlotRecord {
    /// The record of a spare slot of `order`: written only once the slot's zeroes are
    /// durable (zeroed, completed, flushed), so that the slot can be mapped to a page
    /// without zeroing it again.
    pub fn spare(order: u8) -> SlotRecord {
        SlotRecord { volume_id: SPARE_VOLUME_ID, order, flags: FLAG_ZEROED, page: 0 }
    }

    /// Whether this is a spare's record ([`SlotRecord::spare`]).
    pub fn is_spare(&self) -> bool {
        self.volume_id == SPARE_VOLUME_ID && self.flags == FLAG_ZEROED && self.page == 0
    }

    /// Writes record `slot` of a slot record block (`None`: no slot starts here).
    pub fn encode(record: Option<&SlotRecord>, block: &mut [u8], slot: usize) {
        assert!(slot < RECORDS_PER_BLOCK);
        let r = &mut block[HEADER_LEN + slot * RECORD_LEN..][..RECORD_LEN];
        r.fill(0);
        let Some(rec) = record else { return };
        assert_ne!(rec.volume_id, 0);
        put_u32(r, 0, rec.volume_id);
        r[4] = rec.order;
        r[5] = rec.flags;
        put_u64(r, 8, rec.page);
    }

    /// Reads record `slot` of a slot record block.
    pub fn decode(block: &[u8], slot: usize) -> Option<SlotRecord> {
        assert!(slot < RECORDS_PER_BLOCK);
        let r = &block[HEADER_LEN + slot * RECORD_LEN..][..RECORD_LEN];
        let volume_id = get_u32(r, 0);
        (volume_id != 0).then(|| SlotRecord { volume_id, order: r[4], flags: r[5], page: get_u64(r, 8) })
    }
}

/// Well-known signatures of what may sit at the start of a device: (byte offset,
/// bytes, what they mean). More specific entries come first (a GPT disk also carries
/// the protective MBR's 0x55AA).
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table (4 KiB sectors)"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0, b"XFSB", "an XFS file system"),
    (3, b"NTFS    ", "an NTFS file system"),
    (512, b"LABELONE", "an LVM physical volume"),
    (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "an md RAID member (metadata 1.2)"),
    (1080, &[0x53, 0xef], "an ext2/3/4 file system"),
    (4086, b"SWAPSPACE2", "Linux swap space"),
    (32769, b"CD001", "an ISO 9660 image"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (510, &[0x55, 0xaa], "an MBR partition table or boot sector"),
];

/// Bytes from the start of a device that [`identify`] looks at.
pub const IDENTIFY_BYTES: usize = 128 << 10;

/// What the first bytes of a device (`head`, up to [`IDENTIFY_BYTES`]) look like, when
/// they carry a well-known signature: e.g. `a GPT partition table: "EFI PART" at byte 512`.
pub fn identify(head: &[u8]) -> Option<String> {
    SIGNATURES.iter().find_map(|&(at, magic, what)| {
        (head.get(at..at + magic.len()) == Some(magic)).then(|| format!("{what}: {} at byte {at}", show_bytes(magic)))
    })
}

/// Bytes as a quoted string, printable ASCII as is and the rest as `\xNN`.
pub fn show_bytes(bytes: &[u8]) -> String {
    let mut text = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => text.push_str(&format!("\\{}", b as char)),
            0x20..=0x7e => text.push(b as char),
            _ => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    text.push('"');
    text
}

/// splitmix64's finaliser: a cheap bijective mixer with full avalanche.
fn mix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn derive(group: &[u8; 16], id: u32, domain: u64) -> [u8; 16] {
    let g0 = u64::from_le_bytes(group[..8].try_into().expect("8 bytes"));
    let g1 = u64::from_le_bytes(group[8..].try_into().expect("8 bytes"));
    let a = mix(g0 ^ mix(domain ^ (u64::from(id) << 8)));
    let b = mix(g1 ^ mix(a ^ domain.rotate_left(32)));
    let a = mix(a ^ b);
    let mut out = [0; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// The namespace UUID and NGUID of volume `id` in the group `group_uuid`: the same on
/// every peer, different for every volume, stable forever. The UUID carries the
/// version 8 ("custom") and RFC 4122 variant bits; the NGUID is derived separately
/// and is never all zeroes (which NVMe reads as "no NGUID").
pub fn derive_ids(group_uuid: &[u8; 16], id: u32) -> ([u8; 16], [u8; 16]) {
    let mut uuid = derive(group_uuid, id, 0x7575_6964); // "uuid"
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let mut nguid = derive(group_uuid, id, 0x006e_6775_6964); // "nguid"
    if nguid == [0; 16] {
        nguid[15] = 1;
    }
    assert_ne!(uuid, nguid);
    (uuid, nguid)
}

/// A random 64-bit value, from the standard library's per-process random hash keys,
/// the clock and a counter (no random-number crate needed for ids).
pub fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    mix(h.finish())
}

/// A random version 4 UUID.
pub fn random_uuid() -> [u8; 16] {
    let mut u = [0; 16];
    u[..8].copy_from_slice(&random_u64().to_le_bytes());
    u[8..].copy_from_slice(&random_u64().to_le_bytes());
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(kind: Kind, seq: u64, index: u64) -> Vec<u8> {
        let mut b = vec![0u8; META_BLOCK_SIZE];
        b[100] = 7;
        seal(&mut b, kind, Header { seq, index, format_id: 42 });
        b
    }

    #[test]
    fn header_round_trip_and_every_check_fires() {
        let b = sealed(Kind::Slots, 9, 5);
        assert_eq!(check(&b, Kind::Slots, 5, Some(42)), Ok(Header { seq: 9, index: 5, format_id: 42 }));
        assert!(matches!(check(&b, Kind::Volumes, 5, Some(42)), Err(MetaError::Magic { .. })));
        assert_eq!(check(&b, Kind::Slots, 6, Some(42)), Err(MetaError::Index { found: 5, expected: 6 }));
        assert_eq!(check(&b, Kind::Slots, 5, Some(43)), Err(MetaError::Format { found: 42, expected: 43 }));
        assert!(check(&b, Kind::Slots, 5, None).is_ok());
        let mut torn = b.clone();
        torn[META_BLOCK_SIZE / 2..].fill(0);
        torn[100] = 8;
        assert_eq!(check(&torn, Kind::Slots, 5, Some(42)), Err(MetaError::Crc));
        assert!(matches!(check(&[0u8; META_BLOCK_SIZE], Kind::Super, 0, None), Err(MetaError::Magic { .. })));
    }

    #[test]
    fn layout_of_an_8_gib_device() {
        let l = Layout::for_device(8 << 30).unwrap();
        assert_eq!(l.slot_blocks, (8u64 << 30 >> 16).div_ceil(254));
        assert_eq!(l.data_offset % DATA_ALIGN, 0);
        assert!(l.data_offset >= l.meta_end());
        assert!(l.meta_end() < 6 << 20, "{}", l.meta_end());
        assert_eq!(l.meta_end(), SB_B_OFFSET + l.meta_bytes() - META_BLOCK_SIZE as u64);
        assert_eq!(l.data_units, ((8u64 << 30) - l.data_offset) >> 16);
        l.validate(8 << 30).unwrap();
        assert!(l.validate(4 << 30).is_err());
        // Copies are distinct and all inside the metadata.
        let mut offs: Vec<u64> = (0..l.logical_blocks()).flat_map(|b| [l.offset(b, 0), l.offset(b, 1)]).collect();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(offs.len() as u64, 2 * l.logical_blocks());
        assert_eq!(*offs.last().unwrap() + META_BLOCK_SIZE as u64, l.meta_end());
        assert_eq!(l.kind(l.slot_block_of(l.data_units - 1)), Kind::Slots);
        assert_eq!(l.unit_at(l.unit_offset(77)), 77);
        assert_eq!(Layout::for_device(2 << 20), Err(MetaError::TooSmall(2 << 20)));
    }

    #[test]
    fn superblock_copies_are_a_mebibyte_apart_and_nothing_else_is_near_copy_a() {
        let l = Layout::for_device(64 << 20).unwrap();
        assert_eq!((l.offset(0, 0), l.offset(0, 1)), (0, 1 << 20));
        // Apart from copy A, no metadata block lies in the first MiB (where partition
        // tables and boot loaders go), and the areas do not overlap.
        for b in 1..l.logical_blocks() {
            assert!(l.offset(b, 0) > SB_B_OFFSET && l.offset(b, 1) > l.offset(l.logical_blocks() - 1, 0), "{b}");
        }
        // A corrupt layout cannot overflow the checks.
        let huge = Layout { slot_blocks: u64::MAX / 2, ..l };
        assert!(huge.validate(64 << 20).is_err());
    }

    #[test]
    fn blank_ranges_cover_both_superblocks_the_volume_tables_and_the_tail() {
        let small = Layout::blank_ranges(64 << 20);
        assert_eq!(small, vec![(0, BLANK_HEAD_BYTES), ((63 << 20), 64 << 20)]);
        let size = 16u64 << 40;
        let l = Layout::for_device(size).unwrap();
        let table = VOLUME_TABLE_BLOCKS * META_BLOCK_SIZE as u64;
        let big = Layout::blank_ranges(size);
        assert_eq!(
            big,
            vec![(0, BLANK_HEAD_BYTES), (l.offset(1, 1), l.offset(1, 1) + table), (size - (1 << 20), size)]
        );
        assert!(l.offset(1, 0) + table <= BLANK_HEAD_BYTES, "area A's volume table is in the head");
        let checked: u64 = big.iter().map(|(a, b)| b - a).sum();
        assert!(checked < 7 << 19, "{checked} bytes");
        assert_eq!(Layout::blank_ranges(1 << 20), vec![(0, 1 << 20)], "too small for a layout: all of it");
    }

    #[test]
    fn a_superblock_of_format_1_is_told_apart() {
        let sb = Superblock {
            format_id: 3,
            device_bytes: 1 << 30,
            device_block_size: 512,
            layout: Layout::for_device(1 << 30).unwrap(),
            uuid: [1; 16],
            next_volume_id: 2,
        };
        let mut b = vec![0u8; META_BLOCK_SIZE];
        sb.encode(&mut b);
        put_u32(&mut b, 32, 1);
        seal(&mut b, Kind::Super, Header { seq: 1, index: 0, format_id: 3 });
        let h = check(&b, Kind::Super, 0, None).unwrap();
        let err = Superblock::decode(&b, &h).unwrap_err();
        assert_eq!(err, MetaError::Version { found: 1 });
        assert_eq!(err.to_string(), "Quire page store of format version 1; this build reads version 2 only");
    }

    #[test]
    fn superblock_entries_and_records_round_trip() {
        let sb = Superblock {
            format_id: 3,
            device_bytes: 1 << 30,
            device_block_size: 512,
            layout: Layout::for_device(1 << 30).unwrap(),
            uuid: random_uuid(),
            next_volume_id: 17,
        };
        let mut b = vec![0u8; META_BLOCK_SIZE];
        sb.encode(&mut b);
        seal(&mut b, Kind::Super, Header { seq: 1, index: 0, format_id: 3 });
        let h = check(&b, Kind::Super, 0, None).unwrap();
        assert_eq!(Superblock::decode(&b, &h).unwrap(), sb);

        let (uuid, nguid) = derive_ids(&sb.uuid, 4);
        let e = VolumeEntry {
            id: 4,
            state: VolumeState::Deleting,
            name: "x".repeat(64),
            page_shift: 22,
            block_shift: 12,
            num_pages: 1 << 40,
            uuid,
            nguid,
            limits: crate::volume::qos::Limits { iops: 1, mib_s: u32::MAX, host_iops: 3, host_mib_s: 4 },
        };
        VolumeEntry::encode(Some(&e), &mut b, 30);
        assert_eq!(VolumeEntry::decode(&b, 30), Ok(Some(e)));
        VolumeEntry::encode(None, &mut b, 30);
        assert_eq!(VolumeEntry::decode(&b, 30), Ok(None));

        let r = SlotRecord { volume_id: 9, order: 14, flags: 0, page: u64::MAX - 1 };
        SlotRecord::encode(Some(&r), &mut b, 253);
        assert_eq!(SlotRecord::decode(&b, 253), Some(r));
        assert_eq!(SlotRecord::decode(&b, 252), None);
    }

    #[test]
    fn well_known_signatures_are_named() {
        let mut head = vec![0u8; IDENTIFY_BYTES];
        assert_eq!(identify(&head), None);
        head[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(identify(&head).unwrap(), "an MBR partition table or boot sector: \"U\\xaa\" at byte 510");
        head[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(identify(&head).unwrap(), "a GPT partition table: \"EFI PART\" at byte 512");
        let mut ext4 = vec![0u8; 2048];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert!(identify(&ext4).unwrap().starts_with("an ext2/3/4 file system"));
        assert_eq!(identify(&ext4[..1000]), None, "a short head is no match");
        assert_eq!(show_bytes(b"a\"\\\x00\x7f"), "\"a\\\"\\\\\\x00\\x7f\"");
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_versioned() {
        let g = [1u8; 16];
        let (u1, n1) = derive_ids(&g, 1);
        assert_eq!(derive_ids(&g, 1), (u1, n1));
        let (u2, n2) = derive_ids(&g, 2);
        let (u3, _) = derive_ids(&[2u8; 16], 1);
        assert!(u1 != u2 && n1 != n2 && u1 != u3 && u1 != n1);
        assert_eq!(u1[6] >> 4, 8);
        assert_eq!(u1[8] >> 6, 2);
        let r = random_uuid();
        assert_eq!(r[6] >> 4, 4);
        assert_ne!(r, random_uuid());
    }
}
