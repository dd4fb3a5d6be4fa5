//! The page store's on-device metadata format.
//!
//! Everything the page store knows lives on its device, in 4096-byte metadata blocks
//! at the start, followed by the data region of 64 KiB units:
//!
//! ```text
//! [SB A][SB B][area A: volume table blocks, slot record blocks][area B: same][pad][data…]
//! ```
//!
//! - The **superblock** says how the device is laid out and who it belongs to (the
//!   group/peer uuid, from which volume UUIDs and NGUIDs are derived) and holds the
//!   next volume id (monotonic, never reused).
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
//! acknowledged, and the other copy still holds the previous state.
//!
//! The logical index in the header catches a write that landed in the wrong place; the
//! format id (random at each format) makes blocks left over from an earlier format of
//! the same device count as never written, so format only has to write the two
//! superblocks. Both checks cost the header 16 bytes, which is why a block holds 254
//! slot records rather than 255.

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
pub const FORMAT_VERSION: u32 = 1;
/// Longest volume name stored.
pub const NAME_LEN: usize = 64;

const _: () = assert!(RECORDS_PER_BLOCK == 254);
const _: () = assert!(ENTRIES_PER_BLOCK == 31);
const _: () = assert!(HEADER_LEN + RECORDS_PER_BLOCK * RECORD_LEN <= META_BLOCK_SIZE);
const _: () = assert!(HEADER_LEN + ENTRIES_PER_BLOCK * ENTRY_LEN <= META_BLOCK_SIZE);
const _: () = assert!(NAME_LEN == super::NAME_LEN_MAX);
const _: () = assert!(super::PAGE_SIZE_MIN == UNIT_BYTES);
const _: () = assert!(DATA_ALIGN.is_multiple_of(META_BLOCK_SIZE as u64) && DATA_ALIGN.is_multiple_of(UNIT_BYTES));

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

/// Checks a block read from the device: magic of `kind`, checksum, logical `index`
/// and, when given, the format id. Returns its header.
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
    if header.index != index {
        return Err(MetaError::Index { found: header.index, expected: index });
    }
    if let Some(expected) = format_id.filter(|&f| f != header.format_id) {
        return Err(MetaError::Format { found: header.format_id, expected });
    }
    if header.seq == 0 {
        return Err(MetaError::Field("sequence number 0".into()));
    }
    Ok(header)
}

/// Where everything is on the device.
///
/// Logical metadata blocks: 0 is the superblock, `1 ..= volume_blocks` the volume
/// table, then `slot_blocks` blocks of slot records. Copy A of the superblock is
/// device metadata block 0 and copy B block 1, so that open finds both without knowing
/// the layout; the other blocks' copies A and B fill one area each after them.
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

impl Layout {
    /// The layout for a device of `device_bytes`.
    pub fn for_device(device_bytes: u64) -> Result<Layout> {
        // Size the records for every unit of the device: a few more than the data region
        // needs, which breaks the circle between metadata size and data size.
        let slot_blocks = (device_bytes >> UNIT_SHIFT).div_ceil(RECORDS_PER_BLOCK as u64).max(1);
        let mut layout = Layout { volume_blocks: VOLUME_TABLE_BLOCKS, slot_blocks, data_offset: 0, data_units: 0 };
        layout.data_offset = layout.meta_bytes().next_multiple_of(DATA_ALIGN);
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
        if !self.data_offset.is_multiple_of(DATA_ALIGN) || self.data_offset < self.meta_bytes() {
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

    /// Bytes of metadata on the device (both copies).
    pub fn meta_bytes(&self) -> u64 {
        2 * self.logical_blocks() * META_BLOCK_SIZE as u64
    }

    /// Device byte offset of copy `copy` (0 = A, 1 = B) of logical block `logical`.
    pub fn offset(&self, logical: u64, copy: usize) -> u64 {
        assert!(copy < 2);
        assert!(logical < self.logical_blocks());
        let block = if logical == 0 { copy as u64 } else { self.area_start(copy) + logical - 1 };
        block * META_BLOCK_SIZE as u64
    }

    /// Device metadata block at which copy `copy` of logical block 1 lives.
    pub fn area_start(&self, copy: usize) -> u64 {
        2 + copy as u64 * (self.logical_blocks() - 1)
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
        put_u32(block, 36, META_BLOCK_SIZE as u32);
        put_u64(block, 40, self.device_bytes);
        put_u32(block, 48, self.device_block_size);
        put_u32(block, 52, VOLUMES_MAX as u32);
        put_u64(block, 56, self.layout.data_offset);
        put_u64(block, 64, self.layout.data_units);
        block[72..88].copy_from_slice(&self.uuid);
        put_u32(block, 88, self.next_volume_id);
        put_u32(block, 92, self.layout.volume_blocks as u32);
        put_u64(block, 96, self.layout.slot_blocks);
    }

    /// Reads a superblock from a block that passed [`check`].
    pub fn decode(block: &[u8], header: &Header) -> Result<Superblock> {
        let version = get_u32(block, 32);
        if version != FORMAT_VERSION {
            return Err(MetaError::Field(format!("format version {version}, this build reads {FORMAT_VERSION}")));
        }
        if get_u32(block, 36) as usize != META_BLOCK_SIZE || get_u32(block, 52) as usize != VOLUMES_MAX {
            return Err(MetaError::Field("metadata block size or volume table size".into()));
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
        e[7] = v.name.len() as u8;
        put_u64(e, 8, v.num_pages);
        e[16..16 + v.name.len()].copy_from_slice(v.name.as_bytes());
        e[80..96].copy_from_slice(&v.uuid);
        e[96..112].copy_from_slice(&v.nguid);
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
        }))
    }
}

/// A slot record: which page lives in the slot that starts at this unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    /// Owning volume (never 0; 0 on the device means "no slot starts here").
    pub volume_id: u32,
    /// Log2 of the slot size in units.
    pub order: u8,
    /// Reserved for copy-on-write and migration states; 0 today.
    pub flags: u8,
    /// Page index inside the volume.
    pub page: u64,
}

impl SlotRecord {
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
        assert!(l.data_offset >= l.meta_bytes());
        assert!(l.meta_bytes() < 5 << 20, "{}", l.meta_bytes());
        assert_eq!(l.data_units, ((8u64 << 30) - l.data_offset) >> 16);
        l.validate(8 << 30).unwrap();
        assert!(l.validate(4 << 30).is_err());
        // Copies are distinct and all inside the metadata.
        let mut offs: Vec<u64> = (0..l.logical_blocks()).flat_map(|b| [l.offset(b, 0), l.offset(b, 1)]).collect();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(offs.len() as u64, 2 * l.logical_blocks());
        assert_eq!(*offs.last().unwrap() + META_BLOCK_SIZE as u64, l.meta_bytes());
        assert_eq!(l.kind(l.slot_block_of(l.data_units - 1)), Kind::Slots);
        assert_eq!(l.unit_at(l.unit_offset(77)), 77);
        assert_eq!(Layout::for_device(2 << 20), Err(MetaError::TooSmall(2 << 20)));
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
