//! The per-peer page store: volumes, their pages' slots on the device, and the
//! metadata that makes both survive a crash at any instant.
//!
//! The store runs on the control thread. It owns the device's metadata ([`meta`]) and
//! the slot allocator ([`alloc`]), and publishes each volume as a [`VolumeView`] whose
//! page table reactors read without locks. It does its metadata I/O synchronously
//! through its own queue pair and a small buffer pool of its own: submit, kick, poll
//! until done. Metadata changes are rare next to data I/O (a page is allocated once),
//! so the simplicity is worth more than overlapping them.
//!
//! Crash safety rests on three rules:
//! - Every metadata block has two copies; an update writes the older copy with FUA
//!   ([`meta`]), so a torn write loses only the update that was never acknowledged.
//!   Updates to one block never overlap: every call waits for its writes, and all the
//!   changes one call makes to a block go out in one write (group commit of a batch).
//! - A page is mapped only to a zeroed slot: [`PageStore::allocate_pages`] zeroes the
//!   new slots and waits for the zeroes to complete, then flushes and waits, and only
//!   then writes their records, and only then sets the page table. (Neither the queue
//!   pair nor NVMe orders a Flush after writes still in flight: a Flush covers only the
//!   writes that completed before it was submitted.) After a crash a page is either
//!   unmapped (reads zeroes, which is right: the write that wanted the page was not
//!   acknowledged) or mapped to zeroes.
//! - A request that depends on another is submitted only once that one has completed
//!   ([`MetaIo::run`] refuses a Flush inside a batch); requests of one batch are
//!   independent (the FUA copies of different blocks).
//! - A slot is a spare (zeroed ahead of demand, see below) only once its zeroes are
//!   durable: [`PageStore::refill_spares`] zeroes, waits, flushes, waits, and only then
//!   writes the spare's record ([`SlotRecord::spare`]). Mapping a spare to a page is
//!   then one record write: the page's record replaces the spare's.
//! - A page is unmapped on the device before its slot can be reused:
//!   [`PageStore::free_pages`] persists the cleared records, then clears the page
//!   table, then quarantines the slot until every reactor has drained the I/O that may
//!   still address it ([`PageStore::release_quarantine`]).
//!
//! ## Spare slots: the first write to a page costs one metadata write
//!
//! Zeroing a slot on the device, then flushing, then writing its record, each waiting
//! for the one before, is what a host's first write to a page would wait for (a flush
//! is the slow part on a file or a drive without power-loss protection). So the store
//! keeps up to [`PageStore::set_spares`] slots of the page size last asked for zeroed
//! in advance, each with a durable spare record; the control thread tops them up when
//! it has nothing else to do ([`PageStore::refill_spares`]), and
//! [`PageStore::allocate_pages`] takes a spare before it zeroes a slot itself. Spares
//! count as free space; when the allocator has no room for a slot, spares of other
//! sizes are given back first (their records cleared before the allocator sees them).
//! At open, spare records put their slots back among the spares.
//!
//! Free space is derived at open from the slot records; a volume left half-deleted by
//! a crash (marked deleting in the table) is finished at open. What no crash can
//! produce (both copies of a metadata block damaged, a slot record of a volume not in
//! the table) stops the open with [`StoreError::Corrupt`] instead of being cleaned up,
//! and a device without a Quire superblock is formatted only when it is blank and the
//! caller allows it ([`Formatting`]): nothing is erased without the operator asking.
//!
//! [`meta`]: super::meta
//! [`alloc`]: super::alloc

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use quire_drivers::{
    BlockDevice, DeviceInfo, DmaBuf, DmaPool, IoError, IoRequest, Op, PoolShard, QueuePair, SubmitError,
};

use super::alloc::{BuddyAllocator, ORDER_MAX};
use super::meta::{
    self, Header, Kind, Layout, SlotRecord, Superblock, VolumeEntry, VolumeState, ENTRIES_PER_BLOCK, META_BLOCK_SIZE,
    RECORDS_PER_BLOCK, UNIT_BYTES, UNIT_SHIFT, VOLUMES_MAX,
};
use super::qos::Limits;
use super::{check_name, PageTable, VolumeId, VolumeInfo, VolumeView, PAGE_SIZE_MAX, PAGE_SIZE_MIN};
use crate::cast::usize_from;

/// Largest metadata buffer (and so the largest metadata read at open).
pub const META_BUF_BYTES_MAX: usize = 256 << 10;
/// Metadata buffers in the store's pool: two copies of two stretches read at once.
pub const META_BUFS: usize = 4;
/// Most pages a volume may have (its page table takes 8 to 16 bytes of memory per
/// page, see [`super::pages`]).
pub const PAGES_PER_VOLUME_MAX: u64 = 1 << 26;
/// Largest Write Zeroes request: NVMe's 16-bit block count at 512-byte blocks.
pub const ZEROES_BYTES_MAX: u64 = 32 << 20;
/// A good depth for the store's queue pair.
pub const QPAIR_DEPTH: u32 = 64;

const _: () = assert!(META_BUF_BYTES_MAX.is_multiple_of(META_BLOCK_SIZE));
const _: () = assert!(META_BUFS.is_multiple_of(2) && META_BUFS >= 3);
const _: () = assert!(PAGES_PER_VOLUME_MAX == super::pages::PAGES_MAX);
const _: () = assert!(PAGE_SIZE_MAX >> UNIT_SHIFT == 1 << ORDER_MAX);
const _: () = assert!(ZEROES_BYTES_MAX.is_multiple_of(UNIT_BYTES));

/// What to do with a device that holds no Quire superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formatting {
    /// Never format: [`StoreError::NotFormatted`] (blank) or [`StoreError::NotBlank`].
    Never,
    /// Format it when it is blank: every byte of [`Layout::blank_ranges`] reads as zero
    /// (a new device, a file just created). Anything else is [`StoreError::NotBlank`].
    IfBlank,
}

/// The advice that ends every refusal to format.
const ERASE_HINT: &str =
    "run `quire store format --yes` (with the configuration or flags of `quire serve`) to erase it";

/// Why a page store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No Quire superblock on a blank device, and formatting was not allowed.
    #[error(
        "no Quire superblock and the device is blank (not formatted); run `quire store format --yes` to format it"
    )]
    NotFormatted,
    /// No Quire superblock, and the device is not blank: refusing to format it.
    #[error("no Quire superblock; {0}: refusing to format it; {ERASE_HINT}")]
    NotBlank(String),
    /// Quire superblocks that are damaged (neither copy valid).
    #[error("{0}: refusing to open or format it; if what the device holds is expendable, {ERASE_HINT}")]
    Damaged(String),
    /// A Quire page store of another format version.
    #[error(
        "the device holds a Quire page store of format version {0}; this build reads version {current} only and \
         does not convert it: refusing to open or format it; use a build that reads version {0}, or {ERASE_HINT}",
        current = meta::FORMAT_VERSION
    )]
    OtherVersion(u32),
    /// An argument is out of its allowed values.
    #[error("invalid {field} {value}: must be {allowed}")]
    Invalid {
        /// The argument's name.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A volume of that name exists.
    #[error("a volume named {0:?} already exists")]
    NameTaken(String),
    /// No volume with that id.
    #[error("no volume with id {}", .0 .0)]
    NoSuchVolume(VolumeId),
    /// The page is beyond the end of the volume.
    #[error("page {page} is beyond volume {}'s {num_pages} pages", volume.0)]
    PageOutOfRange {
        /// Volume.
        volume: VolumeId,
        /// Page asked for.
        page: u64,
        /// Pages in the volume.
        num_pages: u64,
    },
    /// The device has no free slot of the size needed.
    #[error("no free slot of {slot_bytes} bytes on the device")]
    NoSpace {
        /// Slot size asked for.
        slot_bytes: u64,
    },
    /// The volume table is full.
    #[error("the volume table is full ({VOLUMES_MAX} volumes)")]
    TooManyVolumes,
    /// The device cannot hold a page store, or no longer matches it.
    #[error("unsuitable device: {0}")]
    Device(String),
    /// The metadata on the device is inconsistent.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// A device request failed.
    #[error("device I/O failed: {0}")]
    Io(IoError),
    /// The device refused a request.
    #[error("device refused a request: {0}")]
    Submit(SubmitError),
    /// The metadata buffer pool could not be created.
    #[error("metadata buffer pool: {0}")]
    Pool(String),
    /// An earlier metadata write failed; what is on the device is no longer known.
    #[error("an earlier metadata write failed: reopen the page store")]
    Failed,
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A volume's identity when the group chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeIdentity {
    /// Group-wide id.
    pub id: u32,
    /// Namespace UUID.
    pub uuid: [u8; 16],
    /// Namespace NGUID.
    pub nguid: [u8; 16],
}

/// Space on the device's data region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Size of the data region.
    pub total_bytes: u64,
    /// In slots (including slots waiting in quarantine).
    pub used_bytes: u64,
    /// Free for new slots.
    pub free_bytes: u64,
}

/// Synchronous I/O through the store's own queue pair and buffers.
struct MetaIo {
    qpair: Box<dyn QueuePair>,
    shard: PoolShard,
    /// The store's own pool when it was not given a shard of the peer's.
    _pool: Option<DmaPool>,
    /// Bytes of one buffer (a multiple of the metadata block size).
    buf_bytes: usize,
    /// Device block size.
    block_bytes: u64,
}

impl MetaIo {
    /// Buffers come from `shard` (at least [`META_BUFS`] chunks of memory the device
    /// can reach: a shard of an IOMMU-mapped pool for a VFIO device), or from a small
    /// pool of the store's own.
    fn new(qpair: Box<dyn QueuePair>, info: &DeviceInfo, shard: Option<PoolShard>) -> Result<MetaIo> {
        let mut max = (info.max_transfer_bytes as usize).min(META_BUF_BYTES_MAX);
        if let Some(s) = &shard {
            max = max.min(s.chunk_size());
        }
        if max < 2 * META_BLOCK_SIZE {
            return Err(StoreError::Device(format!("largest transfer or buffer {max} is below 8192 bytes")));
        }
        // The largest power of two that fits: the pool wants one.
        let buf_bytes = 1usize << max.ilog2();
        let (shard, pool) = match shard {
            Some(shard) => (shard, None),
            None => {
                let pool = DmaPool::new(buf_bytes, META_BUFS, false).map_err(|e| StoreError::Pool(e.to_string()))?;
                (pool.shards(1).pop().expect("one shard"), Some(pool))
            }
        };
        if shard.available() < META_BUFS {
            return Err(StoreError::Pool(format!("{} metadata buffers given, {META_BUFS} needed", shard.available())));
        }
        Ok(MetaIo { qpair, shard, _pool: pool, buf_bytes, block_bytes: u64::from(info.block_size) })
    }

    fn buf(&mut self) -> DmaBuf {
        self.shard.get().expect("at most META_BUFS metadata buffers are in use at once")
    }

    /// A request over `len` bytes at device byte `offset`.
    fn request(&self, op: Op, offset: u64, len: u64, tag: u64, seg: Option<quire_drivers::DmaSeg>) -> IoRequest {
        assert!(offset.is_multiple_of(self.block_bytes) && len.is_multiple_of(self.block_bytes));
        let blocks = u32::try_from(len / self.block_bytes).expect("request under 4 G blocks");
        match seg {
            Some(s) => IoRequest::with_segs(op, offset / self.block_bytes, blocks, tag, &[s]),
            None => IoRequest::no_data(op, offset / self.block_bytes, blocks, tag),
        }
    }

    /// Carries out `reqs` and waits for all of them; returns each one's result.
    ///
    /// The requests of one call are not ordered: neither the queue pair nor NVMe
    /// orders one request after another that is still in flight, and a Flush covers
    /// only the writes that completed before it was submitted. A request that depends
    /// on others (a Flush that must cover writes, a record that must follow the data
    /// it describes) goes in a later call, once this one has returned. So a Flush is
    /// never part of a batch: see [`MetaIo::flush`].
    ///
    /// # Safety
    /// The memory the requests' segments describe must stay valid, and untouched by
    /// anyone else, until this call returns (it returns only when every submitted
    /// request has completed).
    unsafe fn run(&mut self, reqs: &[IoRequest]) -> Result<Vec<std::result::Result<(), IoError>>> {
        assert!(
            reqs.len() == 1 || reqs.iter().all(|r| r.op != Op::Flush),
            "a Flush is not ordered after the requests of its own batch"
        );
        let mut results: Vec<Option<std::result::Result<(), IoError>>> = vec![None; reqs.len()];
        let (mut submitted, mut completed) = (0, 0);
        let mut refused = None;
        while completed < submitted || (submitted < reqs.len() && refused.is_none()) {
            while submitted < reqs.len() && refused.is_none() {
                let mut req = reqs[submitted];
                req.tag = submitted as u64;
                // SAFETY: the caller keeps the memory valid until we return, and we
                // return only after polling every submitted request's completion.
                match unsafe { self.qpair.submit(&req) } {
                    Ok(()) => submitted += 1,
                    Err(SubmitError::QueueFull) if completed < submitted => break,
                    Err(e) => refused = Some(e),
                }
            }
            self.qpair.kick();
            let n = self.qpair.poll(reqs.len(), &mut |c| {
                let slot = &mut results[usize_from(c.tag)];
                assert!(slot.is_none(), "request {} completed twice", c.tag);
                *slot = Some(c.result);
            });
            completed += n;
            if n == 0 {
                // Nothing to do on the control thread but wait for the device.
                std::thread::yield_now();
            }
        }
        if let Some(e) = refused {
            return Err(StoreError::Submit(e));
        }
        assert_eq!(completed, reqs.len());
        Ok(results.into_iter().map(|r| r.expect("every request completed")).collect())
    }
}

impl MetaIo {
    /// Makes every write that has completed so far durable (NVMe Flush), and waits.
    fn flush(&mut self) -> Result<std::result::Result<(), IoError>> {
        let req = self.request(Op::Flush, 0, 0, 0, None);
        // SAFETY: a Flush carries no memory.
        Ok(unsafe { self.run(&[req]) }?[0])
    }

    /// Reads `len` bytes at device byte `start` (multiples of the block size) into
    /// memory, a few buffers at a time.
    fn read_range(&mut self, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize_from(len));
        let piece = self.buf_bytes as u64;
        let mut at = start;
        while at < start + len {
            let mut bufs = Vec::with_capacity(META_BUFS);
            let mut reqs = Vec::with_capacity(META_BUFS);
            while bufs.len() < META_BUFS && at < start + len {
                let n = piece.min(start + len - at);
                let buf = self.buf();
                reqs.push(self.request(Op::Read, at, n, 0, Some(buf.seg(0, usize_from(n)))));
                bufs.push((buf, usize_from(n)));
                at += n;
            }
            // SAFETY: the buffers stay in `bufs` until after `run` returns.
            let results = unsafe { self.run(&reqs) };
            let outcome = results.and_then(|r| r.into_iter().try_for_each(|r| r.map_err(StoreError::Io)));
            for (buf, n) in bufs {
                if outcome.is_ok() {
                    out.extend_from_slice(&buf.as_slice()[..n]);
                }
                self.shard.put(buf);
            }
            outcome?;
        }
        Ok(out)
    }
}

/// Which copy of a metadata block to write next, and with which sequence number.
#[derive(Clone, Copy, Debug, Default)]
struct Copies {
    /// Sequence number of copies A and B (0: not valid).
    seq: [u64; 2],
}

impl Copies {
    /// The copy holding the older state (A on a tie) and the number to write it with.
    fn next(&self) -> (usize, u64) {
        let copy = usize::from(self.seq[0] > self.seq[1]);
        (copy, self.seq[0].max(self.seq[1]) + 1)
    }
}

/// A volume as the store keeps it.
#[derive(Debug)]
struct Volume {
    /// Position in the volume table.
    pos: usize,
    /// What reactors see.
    view: Arc<VolumeView>,
}

/// A freed slot that reactors may still address.
#[derive(Clone, Copy, Debug)]
struct Quarantined {
    generation: u64,
    unit: u64,
    order: u8,
}

/// A new slot of an [`PageStore::allocate_pages`] batch.
#[derive(Clone, Copy, Debug)]
struct Fresh {
    volume: VolumeId,
    page: u64,
    unit: u64,
    order: u8,
    /// A spare: zeroed already, its spare record on the device until the page's
    /// record replaces it.
    spare: bool,
    /// Set when zeroing the slot failed.
    error: Option<IoError>,
}

/// What open read from the device's metadata blocks.
struct Loaded {
    table: Vec<Option<VolumeEntry>>,
    records: Vec<(u64, SlotRecord)>,
    copies: Vec<Copies>,
    /// Copies that carry this format's magic but failed their checks (torn writes).
    damaged: u64,
}

/// The page store of one device. See the module documentation.
pub struct PageStore {
    info: DeviceInfo,
    io: MetaIo,
    sb: Superblock,
    layout: Layout,
    /// Per logical metadata block.
    copies: Vec<Copies>,
    /// Volume table positions.
    table: Vec<Option<VolumeEntry>>,
    volumes: BTreeMap<VolumeId, Volume>,
    /// First unit → record, for every slot in use.
    records: BTreeMap<u64, SlotRecord>,
    alloc: BuddyAllocator,
    quarantine: VecDeque<Quarantined>,
    generation: u64,
    /// Spare slots by order (first units), each with its spare record in `records`.
    spares: BTreeMap<u8, Vec<u64>>,
    /// How many spares of `spare_order` to keep.
    spares_wanted: usize,
    /// The order spares are made of: the page size last allocated (or created).
    spare_order: Option<u8>,
    failed: bool,
}

impl std::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStore")
            .field("device", &self.info.name)
            .field("layout", &self.layout)
            .field("volumes", &self.volumes.len())
            .field("slots", &self.records.len())
            .field("spares", &self.spares.values().map(Vec::len).sum::<usize>())
            .field("failed", &self.failed)
            .finish()
    }
}

fn check_device(info: &DeviceInfo) -> Result<()> {
    let bs = info.block_size as usize;
    if !bs.is_power_of_two() || bs > META_BLOCK_SIZE {
        return Err(StoreError::Device(format!("block size {bs} is not a power of two up to {META_BLOCK_SIZE}")));
    }
    Ok(())
}

/// What the superblock locations of a device hold.
enum Found {
    /// A page store: the winning superblock and the state of both copies.
    Store(Superblock, Copies),
    /// No Quire superblock in either place.
    Nothing,
    /// Quire superblocks, none of them valid: what each copy holds.
    Damaged(String),
    /// A sound superblock of another format version.
    OtherVersion(u32),
}

/// Device byte offset of copy B of a format 1 superblock (next to copy A).
const FORMAT_1_SB_B_OFFSET: u64 = META_BLOCK_SIZE as u64;

/// Reads both superblock copies (and where format 1 kept its copy B) and says what
/// they hold.
fn find_superblock(io: &mut MetaIo, device_bytes: u64) -> Result<Found> {
    let block = META_BLOCK_SIZE as u64;
    // A device too small to reach copy B cannot hold a page store; its copy B reads
    // as absent.
    let places = [0, meta::SB_B_OFFSET, FORMAT_1_SB_B_OFFSET];
    let bufs: Vec<DmaBuf> = places.iter().map(|_| io.buf()).collect();
    let reqs: Vec<IoRequest> = places
        .iter()
        .zip(&bufs)
        .filter(|(&at, _)| at + block <= device_bytes)
        .map(|(&at, buf)| io.request(Op::Read, at, block, 0, Some(buf.seg(0, META_BLOCK_SIZE))))
        .collect();
    // SAFETY: the buffers live until after `run` returns.
    let result = unsafe { io.run(&reqs) };
    let outcome = result.and_then(|r| r.into_iter().try_for_each(|r| r.map_err(StoreError::Io))).and_then(|()| {
        let blank = [0u8; META_BLOCK_SIZE];
        let block_at = |i: usize| {
            if places[i] + block <= device_bytes {
                &bufs[i].as_slice()[..META_BLOCK_SIZE]
            } else {
                &blank[..]
            }
        };
        classify_superblocks(block_at(0), block_at(1), block_at(2))
    });
    for buf in bufs {
        io.shard.put(buf);
    }
    outcome
}

/// What superblock copies `a` (byte 0) and `b` (byte 1 MiB) say, with `old_b` (byte
/// 4096, where format 1 kept copy B) to recognise a format 1 device whose copy A is
/// damaged.
fn classify_superblocks(a: &[u8], b: &[u8], old_b: &[u8]) -> Result<Found> {
    match pick_superblock(a, b) {
        Ok(Some((sb, copies))) => return Ok(Found::Store(sb, copies)),
        Ok(None) => {}
        Err(StoreError::OtherVersion(v)) => return Ok(Found::OtherVersion(v)),
        Err(e) => return Err(e),
    }
    if let Ok(header) = meta::check(old_b, Kind::Super, 0, None) {
        if let Err(meta::MetaError::Version { found }) = Superblock::decode(old_b, &header) {
            return Ok(Found::OtherVersion(found));
        }
    }
    let magic = Kind::Super.magic().to_le_bytes();
    if a[..4] != magic && b[..4] != magic {
        return Ok(Found::Nothing);
    }
    let state = |block: &[u8]| match meta::check(block, Kind::Super, 0, None) {
        _ if block[..4] != magic => "no superblock".to_string(),
        Err(e) => e.to_string(),
        Ok(_) => "valid".to_string(),
    };
    Ok(Found::Damaged(format!(
        "the Quire superblocks are damaged: copy A (byte 0): {}; copy B (byte {}): {}",
        state(a),
        meta::SB_B_OFFSET,
        state(b)
    )))
}

/// Of the two superblock copies, the valid one with the higher sequence number wins.
/// A copy of another format counts as invalid, so that the next update overwrites it
/// rather than the winner.
fn pick_superblock(a: &[u8], b: &[u8]) -> Result<Option<(Superblock, Copies)>> {
    let mut found: [Option<(Header, Superblock)>; 2] = [None, None];
    for (copy, block) in [a, b].into_iter().enumerate() {
        assert_eq!(block.len(), META_BLOCK_SIZE);
        let Ok(header) = meta::check(block, Kind::Super, 0, None) else { continue };
        // A well-sealed superblock this build cannot read must stop the open: calling
        // the device unformatted could get it formatted over.
        let sb = Superblock::decode(block, &header).map_err(|e| match e {
            meta::MetaError::Version { found } => StoreError::OtherVersion(found),
            e => StoreError::Corrupt(format!("superblock copy {copy}: {e}")),
        })?;
        found[copy] = Some((header, sb));
    }
    let winner = match &found {
        [None, None] => return Ok(None),
        [Some(a), None] => a,
        [None, Some(b)] => b,
        [Some(a), Some(b)] => {
            if b.0.seq > a.0.seq {
                b
            } else {
                a
            }
        }
    };
    let mut copies = Copies::default();
    for (copy, f) in found.iter().enumerate() {
        if let Some((h, _)) = f.as_ref().filter(|(h, _)| h.format_id == winner.0.format_id) {
            copies.seq[copy] = h.seq;
        }
    }
    Ok(Some((winner.1.clone(), copies)))
}

/// What the device holds where a blank device holds zeroes ([`Layout::blank_ranges`]):
/// `None` when it is blank, else a description of the first non-zero data.
fn nonblank_data(io: &mut MetaIo, info: &DeviceInfo) -> Result<Option<String>> {
    let size = info.size_bytes();
    for (start, end) in Layout::blank_ranges(size) {
        // At most 2 MiB at a time (the ranges are at most that long, or the whole of a
        // device too small for a page store).
        let mut at = start;
        while at < end {
            let len = (end - at).min(meta::BLANK_HEAD_BYTES);
            let bytes = io.read_range(at, len)?;
            if let Some(i) = bytes.iter().position(|&b| b != 0) {
                let offset = at + i as u64;
                let head = io.read_range(0, (meta::IDENTIFY_BYTES as u64).min(size))?;
                let what = match meta::identify(&head) {
                    Some(what) => what,
                    None => {
                        let rest = &bytes[i..];
                        let n = rest.iter().take(16).rposition(|&b| b != 0).map_or(1, |p| p + 1);
                        format!("starts with {} at byte {offset}", meta::show_bytes(&rest[..n]))
                    }
                };
                let block = offset / u64::from(info.block_size);
                return Ok(Some(format!("block {block} (byte {offset}) holds non-zero data ({what})")));
            }
            at += len;
        }
    }
    Ok(None)
}

/// Reads copies A and B of every logical block after the superblock, in large
/// sequential reads of both areas side by side, and keeps the valid copy with the
/// higher sequence number of each.
fn load_blocks(io: &mut MetaIo, layout: &Layout, format_id: u64) -> Result<Loaded> {
    let n = layout.logical_blocks();
    let per_buf = (io.buf_bytes / META_BLOCK_SIZE) as u64;
    let mut loaded = Loaded {
        table: vec![None; VOLUMES_MAX],
        records: Vec::new(),
        copies: vec![Copies::default(); usize_from(n)],
        damaged: 0,
    };
    let mut start = 1;
    while start < n {
        // One wave: META_BUFS / 2 stretches of blocks, each read from both areas.
        let mut stretches: Vec<(u64, u64, [DmaBuf; 2])> = Vec::with_capacity(META_BUFS / 2);
        let mut reqs = Vec::with_capacity(META_BUFS);
        while stretches.len() < META_BUFS / 2 && start < n {
            let count = per_buf.min(n - start);
            let len = count * META_BLOCK_SIZE as u64;
            let bufs = [io.buf(), io.buf()];
            for (copy, buf) in bufs.iter().enumerate() {
                let seg = buf.seg(0, usize_from(len));
                reqs.push(io.request(Op::Read, layout.offset(start, copy), len, 0, Some(seg)));
            }
            stretches.push((start, count, bufs));
            start += count;
        }
        // SAFETY: the buffers stay in `stretches` until after `run` returns.
        let outcome = unsafe { io.run(&reqs) }
            .and_then(|results| results.into_iter().try_for_each(|r| r.map_err(StoreError::Io)))
            .and_then(|()| {
                stretches.iter().try_for_each(|(first, count, bufs)| {
                    (0..*count).try_for_each(|k| {
                        let at = usize_from(k) * META_BLOCK_SIZE;
                        let a = &bufs[0].as_slice()[at..at + META_BLOCK_SIZE];
                        let b = &bufs[1].as_slice()[at..at + META_BLOCK_SIZE];
                        loaded.take(layout, first + k, [a, b], format_id)
                    })
                })
            });
        for (_, _, bufs) in stretches {
            for buf in bufs {
                io.shard.put(buf);
            }
        }
        outcome?;
    }
    Ok(loaded)
}

impl Loaded {
    /// Takes in both copies of logical block `logical`.
    fn take(&mut self, layout: &Layout, logical: u64, blocks: [&[u8]; 2], format_id: u64) -> Result<()> {
        let kind = layout.kind(logical);
        let mut best: Option<(usize, u64)> = None;
        let mut damaged = Vec::new();
        for (copy, block) in blocks.iter().enumerate() {
            match meta::check(block, kind, logical, Some(format_id)) {
                Ok(h) => {
                    self.copies[usize_from(logical)].seq[copy] = h.seq;
                    if best.is_none_or(|(_, seq)| h.seq > seq) {
                        best = Some((copy, h.seq));
                    }
                }
                Err(e @ (meta::MetaError::Crc | meta::MetaError::Index { .. })) => damaged.push(e),
                Err(_) => {}
            }
        }
        self.damaged += damaged.len() as u64;
        // Both copies damaged is never the result of a crash (an update writes one copy
        // while the other is valid, or the first copy of a block never written): the
        // block held something, and reading it as empty would drop volumes or free the
        // slots of live pages.
        if let [a, b] = &damaged[..] {
            return Err(StoreError::Corrupt(format!(
                "both copies of metadata block {logical} ({kind:?}, at bytes {} and {}) are damaged: {a}; {b}",
                layout.offset(logical, 0),
                layout.offset(logical, 1)
            )));
        }
        // Neither copy valid: the block was never written by this format (or its first
        // write tore, and was never acknowledged): it is empty.
        let Some((copy, _)) = best else { return Ok(()) };
        let block = blocks[copy];
        match kind {
            Kind::Super => unreachable!("logical block {logical} is past the superblock"),
            Kind::Volumes => self.take_volumes(logical - 1, block),
            Kind::Slots => self.take_records(layout, logical - 1 - layout.volume_blocks, block),
        }
    }

    fn take_volumes(&mut self, t: u64, block: &[u8]) -> Result<()> {
        for slot in 0..ENTRIES_PER_BLOCK {
            let pos = usize_from(t) * ENTRIES_PER_BLOCK + slot;
            let entry = VolumeEntry::decode(block, slot)
                .map_err(|e| StoreError::Corrupt(format!("volume table entry {pos}: {e}")))?;
            match self.table.get_mut(pos) {
                Some(place) => *place = entry,
                None if entry.is_none() => {}
                None => return Err(StoreError::Corrupt(format!("volume table entry {pos} beyond {VOLUMES_MAX}"))),
            }
        }
        Ok(())
    }

    fn take_records(&mut self, layout: &Layout, s: u64, block: &[u8]) -> Result<()> {
        for slot in 0..RECORDS_PER_BLOCK {
            let Some(record) = SlotRecord::decode(block, slot) else { continue };
            let unit = s * RECORDS_PER_BLOCK as u64 + slot as u64;
            if unit >= layout.data_units {
                return Err(StoreError::Corrupt(format!("slot record at unit {unit} beyond the data region")));
            }
            self.records.push((unit, record));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, value: impl std::fmt::Display, allowed: impl Into<String>) -> StoreError {
    StoreError::Invalid { field, value: value.to_string(), allowed: allowed.into() }
}

/// A volume's facts from its table entry; `None` when the entry is malformed.
fn entry_info(e: &VolumeEntry) -> Option<VolumeInfo> {
    let page_ok = (PAGE_SIZE_MIN.ilog2()..=PAGE_SIZE_MAX.ilog2()).contains(&u32::from(e.page_shift));
    let block_ok = e.block_shift == 9 || e.block_shift == 12;
    let pages_ok = (1..=PAGES_PER_VOLUME_MAX).contains(&e.num_pages);
    (page_ok && block_ok && pages_ok && check_name(&e.name).is_ok()).then(|| VolumeInfo {
        id: VolumeId(e.id),
        name: e.name.clone(),
        uuid: e.uuid,
        nguid: e.nguid,
        page_size: 1 << e.page_shift,
        block_size: 1 << e.block_shift,
        num_pages: e.num_pages,
    })
}

/// The slot order of a page size.
fn order_of(page_size: u64) -> u8 {
    assert!(page_size.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_size));
    u8::try_from((page_size >> UNIT_SHIFT).ilog2()).expect("ilog2 of a u64 < 64")
}

impl PageStore {
    /// Opens the page store on `dev`, doing its metadata I/O through `qpair`; never
    /// formats (see [`PageStore::open_or_format_in`] for the errors).
    pub fn open(dev: &dyn BlockDevice, qpair: Box<dyn QueuePair>) -> Result<PageStore> {
        PageStore::open_or_format_in(dev, qpair, None, Formatting::Never)
    }

    /// Formats `dev` as an empty page store of the group/peer `uuid`, whatever it
    /// holds (the operator's explicit `quire store format`). Only the two superblocks
    /// are written: blocks of an earlier format no longer count.
    pub fn format(dev: &dyn BlockDevice, qpair: Box<dyn QueuePair>, uuid: [u8; 16]) -> Result<PageStore> {
        PageStore::format_in(dev, qpair, None, uuid)
    }

    /// [`PageStore::format`] with the metadata buffers taken from `shard` (see
    /// [`PageStore::open_or_format_in`]).
    pub fn format_in(
        dev: &dyn BlockDevice,
        qpair: Box<dyn QueuePair>,
        shard: Option<PoolShard>,
        uuid: [u8; 16],
    ) -> Result<PageStore> {
        let info = dev.info().clone();
        check_device(&info)?;
        let io = MetaIo::new(qpair, &info, shard)?;
        PageStore::format_with(info, io, uuid)
    }

    /// Says what `dev` holds, reading only: a page store (its uuid), nothing on a
    /// blank device, or the error [`PageStore::open`] would give. For `quire store
    /// format`, to tell the operator what it erases.
    pub fn inspect(
        dev: &dyn BlockDevice,
        qpair: Box<dyn QueuePair>,
        shard: Option<PoolShard>,
    ) -> Result<Option<[u8; 16]>> {
        let info = dev.info().clone();
        check_device(&info)?;
        let mut io = MetaIo::new(qpair, &info, shard)?;
        match find_superblock(&mut io, info.size_bytes())? {
            Found::Store(sb, _) => Ok(Some(sb.uuid)),
            Found::OtherVersion(v) => Err(StoreError::OtherVersion(v)),
            Found::Damaged(what) => Err(StoreError::Damaged(what)),
            Found::Nothing => match nonblank_data(&mut io, &info)? {
                None => Ok(None),
                Some(what) => Err(StoreError::NotBlank(what)),
            },
        }
    }

    /// Opens the page store on `dev`, doing its metadata I/O through `qpair` with its
    /// buffers taken from `shard` when given (at least [`META_BUFS`] free chunks: a
    /// device behind an IOMMU (VFIO) reaches only the peer's mapped pool, not a pool of
    /// the store's own).
    ///
    /// A device without a Quire superblock is formatted (with a random uuid) only when
    /// `formatting` allows it and the device is blank (see [`meta`]'s "What counts as
    /// a blank device"). Otherwise it is refused, and nothing is written:
    /// [`StoreError::NotFormatted`] (blank), [`StoreError::NotBlank`] (naming what
    /// was found), [`StoreError::Damaged`] (Quire superblocks, none valid),
    /// [`StoreError::OtherVersion`] (a page store of another format version).
    ///
    /// [`meta`]: super::meta
    pub fn open_or_format_in(
        dev: &dyn BlockDevice,
        qpair: Box<dyn QueuePair>,
        shard: Option<PoolShard>,
        formatting: Formatting,
    ) -> Result<PageStore> {
        let info = dev.info().clone();
        check_device(&info)?;
        let mut io = MetaIo::new(qpair, &info, shard)?;
        match find_superblock(&mut io, info.size_bytes())? {
            Found::Store(sb, copies) => {
                if let Some(lost) = copies.seq.iter().position(|&s| s == 0) {
                    // One copy does not read: a torn write, or something written over it
                    // (a partition table at the start). The store opens from the other;
                    // the operator hears which and what is there before the next metadata
                    // update writes this copy again.
                    let offset = if lost == 0 { 0 } else { meta::SB_B_OFFSET };
                    let head = io.read_range(offset, (meta::IDENTIFY_BYTES as u64).min(info.size_bytes()))?;
                    let what = meta::identify(&head).unwrap_or_else(|| "no valid superblock".to_string());
                    tracing::warn!(
                        device = %info.name,
                        "superblock copy {} (byte {offset}) does not read ({what}); the store opened from the other \
                         copy and writes this one again at its next metadata update",
                        if lost == 0 { "A" } else { "B" }
                    );
                }
                PageStore::load(info, io, sb, copies)
            }
            Found::OtherVersion(v) => Err(StoreError::OtherVersion(v)),
            Found::Damaged(what) => Err(StoreError::Damaged(what)),
            Found::Nothing => match (nonblank_data(&mut io, &info)?, formatting) {
                (Some(what), _) => Err(StoreError::NotBlank(what)),
                (None, Formatting::Never) => Err(StoreError::NotFormatted),
                (None, Formatting::IfBlank) => {
                    tracing::info!(device = %info.name, "the device is blank: formatting it");
                    PageStore::format_with(info, io, meta::random_uuid())
                }
            },
        }
    }

    fn new(info: DeviceInfo, io: MetaIo, sb: Superblock) -> PageStore {
        let layout = sb.layout;
        PageStore {
            info,
            io,
            copies: vec![Copies::default(); usize_from(layout.logical_blocks())],
            table: vec![None; VOLUMES_MAX],
            volumes: BTreeMap::new(),
            records: BTreeMap::new(),
            alloc: BuddyAllocator::new(layout.data_units),
            quarantine: VecDeque::new(),
            generation: 0,
            spares: BTreeMap::new(),
            spares_wanted: 0,
            spare_order: None,
            failed: false,
            layout,
            sb,
        }
    }

    fn format_with(info: DeviceInfo, io: MetaIo, uuid: [u8; 16]) -> Result<PageStore> {
        let layout = Layout::for_device(info.size_bytes()).map_err(|e| StoreError::Device(e.to_string()))?;
        let format_id = std::iter::repeat_with(meta::random_u64).find(|&f| f != 0).expect("endless");
        let sb = Superblock {
            format_id,
            device_bytes: info.size_bytes(),
            device_block_size: info.block_size,
            layout,
            uuid,
            next_volume_id: 1,
        };
        let mut store = PageStore::new(info, io, sb);
        store.write_superblock_pair()?;
        tracing::info!(device = %store.info.name, ?layout, "page store formatted");
        Ok(store)
    }

    /// Writes both superblock copies with sequence 1 (format only): a copy of an
    /// earlier format must not outlive this one. The two writes do not depend on each
    /// other: format is acknowledged once both are durable (FUA).
    fn write_superblock_pair(&mut self) -> Result<()> {
        let mut bufs = [self.io.buf(), self.io.buf()];
        let mut reqs = Vec::with_capacity(2);
        for (copy, buf) in bufs.iter_mut().enumerate() {
            let block = &mut buf.as_mut_slice()[..META_BLOCK_SIZE];
            self.sb.encode(block);
            meta::seal(block, Kind::Super, Header { seq: 1, index: 0, format_id: self.sb.format_id });
            let at = self.layout.offset(0, copy);
            reqs.push(self.io.request(
                Op::Write { fua: true },
                at,
                META_BLOCK_SIZE as u64,
                0,
                Some(buf.seg(0, META_BLOCK_SIZE)),
            ));
        }
        // SAFETY: `bufs` lives until after `run` returns.
        let result = unsafe { self.io.run(&reqs) };
        for buf in bufs {
            self.io.shard.put(buf);
        }
        for r in result? {
            r.map_err(StoreError::Io)?;
        }
        self.copies[0] = Copies { seq: [1, 1] };
        Ok(())
    }

    fn load(info: DeviceInfo, mut io: MetaIo, sb: Superblock, sb_copies: Copies) -> Result<PageStore> {
        let layout = sb.layout;
        layout
            .validate(info.size_bytes())
            .map_err(|e| StoreError::Device(format!("{e}; the device has {} bytes", info.size_bytes())))?;
        let loaded = load_blocks(&mut io, &layout, sb.format_id)?;
        if loaded.damaged > 0 {
            tracing::info!(
                copies = loaded.damaged,
                "metadata copies damaged by interrupted writes; using the other copies"
            );
        }
        let mut store = PageStore::new(info, io, sb);
        store.copies = loaded.copies;
        store.copies[0] = sb_copies;
        store.rebuild(loaded.table, loaded.records)?;
        tracing::info!(
            device = %store.info.name,
            volumes = store.volumes.len(),
            slots = store.records.len(),
            "page store opened"
        );
        Ok(store)
    }

    /// Builds volumes, page tables and free space from what open read, and finishes
    /// what a crash interrupted (deletions, the next volume id).
    fn rebuild(&mut self, table: Vec<Option<VolumeEntry>>, records: Vec<(u64, SlotRecord)>) -> Result<()> {
        let mut deleting = BTreeSet::new();
        let mut max_id = 0;
        for (pos, entry) in table.iter().enumerate() {
            let Some(e) = entry else { continue };
            let info = entry_info(e).ok_or_else(|| StoreError::Corrupt(format!("volume table entry {pos}: {e:?}")))?;
            if info.block_size < self.info.block_size {
                return Err(StoreError::Device(format!(
                    "volume {} has {}-byte blocks, below the device's {}",
                    info.name, info.block_size, self.info.block_size
                )));
            }
            let clash = self.volumes.values().any(|v| v.view.info.name == info.name);
            if clash || self.volumes.contains_key(&info.id) {
                return Err(StoreError::Corrupt(format!("volume {} ({}) appears twice", e.id, e.name)));
            }
            max_id = max_id.max(e.id);
            match e.state {
                VolumeState::Live => {}
                VolumeState::Deleting => {
                    deleting.insert(info.id);
                }
            }
            let pages = Arc::new(PageTable::new(info.num_pages));
            let view = Arc::new(VolumeView { info, pages, pieces: Arc::default(), qos: Arc::default() });
            self.volumes.insert(view.info.id, Volume { pos, view });
        }
        self.table = table;
        let mut dirty = BTreeSet::new();
        for (unit, record) in records {
            if record.volume_id == meta::SPARE_VOLUME_ID {
                self.take_spare_record(unit, record)?;
                continue;
            }
            let id = VolumeId(record.volume_id);
            match self.volumes.get(&id) {
                Some(_) if deleting.contains(&id) => {
                    dirty.insert(self.layout.slot_block_of(unit));
                }
                Some(v) => {
                    let view = v.view.clone();
                    self.take_record(&view, unit, record)?;
                }
                None => {
                    // Never the result of a crash (a volume's entry goes only after its
                    // records): its entry was lost. Clearing the record would destroy
                    // the page, and the volume with it, without a word.
                    return Err(StoreError::Corrupt(format!(
                        "the slot record at unit {unit} names volume {}, which is not in the volume table: {record:?}",
                        record.volume_id
                    )));
                }
            }
        }
        // Finish deletions: the records first, then the entries.
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        let mut table_dirty = BTreeSet::new();
        for id in deleting {
            let v = self.volumes.remove(&id).expect("collected above");
            self.table[v.pos] = None;
            table_dirty.insert(self.table_block(v.pos));
            tracing::info!(volume = id.0, "finished deleting a volume");
        }
        self.write_blocks(&table_dirty.into_iter().collect::<Vec<_>>())?;
        // A crash may have kept the entry of a new volume but not the superblock that
        // counted it; an id must never come back.
        let next = self.sb.next_volume_id.max(max_id.saturating_add(1));
        if next != self.sb.next_volume_id {
            self.sb.next_volume_id = next;
            self.write_blocks(&[0])?;
        }
        Ok(())
    }

    /// Maps one slot found at open.
    fn take_record(&mut self, view: &VolumeView, unit: u64, record: SlotRecord) -> Result<()> {
        let order = order_of(view.info.page_size);
        if record.order != order || record.page >= view.info.num_pages {
            return Err(StoreError::Corrupt(format!("slot record at unit {unit} does not fit its volume: {record:?}")));
        }
        self.alloc
            .mark_used(unit, order)
            .map_err(|e| StoreError::Corrupt(format!("slot record at unit {unit}: {e}")))?;
        if view.pages.get(record.page).is_some() {
            return Err(StoreError::Corrupt(format!(
                "page {} of volume {} has two slots",
                record.page, record.volume_id
            )));
        }
        view.pages.set(record.page, self.layout.unit_offset(unit));
        self.records.insert(unit, record);
        Ok(())
    }

    /// Puts a spare found at open back among the spares.
    fn take_spare_record(&mut self, unit: u64, record: SlotRecord) -> Result<()> {
        if !record.is_spare() || record.order > ORDER_MAX {
            return Err(StoreError::Corrupt(format!("slot record at unit {unit} is no valid spare: {record:?}")));
        }
        self.alloc
            .mark_used(unit, record.order)
            .map_err(|e| StoreError::Corrupt(format!("spare slot record at unit {unit}: {e}")))?;
        self.records.insert(unit, record);
        self.spares.entry(record.order).or_default().push(unit);
        Ok(())
    }

    fn table_block(&self, pos: usize) -> u64 {
        self.layout.volume_block((pos / ENTRIES_PER_BLOCK) as u64)
    }

    fn check_alive(&self) -> Result<()> {
        if self.failed {
            return Err(StoreError::Failed);
        }
        Ok(())
    }

    /// Fills `block` with the current contents of logical block `logical` (the header
    /// is sealed afterwards).
    fn encode_block(&self, logical: u64, block: &mut [u8]) {
        block.fill(0);
        match self.layout.kind(logical) {
            Kind::Super => self.sb.encode(block),
            Kind::Volumes => {
                let first = usize_from(logical - 1) * ENTRIES_PER_BLOCK;
                for slot in 0..ENTRIES_PER_BLOCK {
                    VolumeEntry::encode(self.table.get(first + slot).and_then(Option::as_ref), block, slot);
                }
            }
            Kind::Slots => {
                let first = (logical - 1 - self.layout.volume_blocks) * RECORDS_PER_BLOCK as u64;
                for (&unit, record) in self.records.range(first..first + RECORDS_PER_BLOCK as u64) {
                    SlotRecord::encode(Some(record), block, usize_from(unit - first));
                }
            }
        }
    }

    /// Persists the current contents of the given logical blocks: each goes to its
    /// older copy with the next sequence number, with FUA, all in one batch (group
    /// commit: the blocks do not depend on each other). A block whose other copy is
    /// not valid (never written, or torn by a crash) then gets that copy written too,
    /// once the first is durable, so that an acknowledged block always has two valid
    /// copies. A failure leaves the device's state unknown and fails the store.
    fn write_blocks(&mut self, logical: &[u64]) -> Result<()> {
        self.write_copies(logical)?;
        let repair: Vec<u64> =
            logical.iter().copied().filter(|&l| self.copies[usize_from(l)].seq.contains(&0)).collect();
        if !repair.is_empty() {
            self.write_copies(&repair)?;
        }
        Ok(())
    }

    /// Writes one copy (the older) of each of the given logical blocks; see
    /// [`PageStore::write_blocks`].
    fn write_copies(&mut self, logical: &[u64]) -> Result<()> {
        self.check_alive()?;
        debug_assert!(logical.iter().collect::<BTreeSet<_>>().len() == logical.len(), "duplicate blocks");
        let per_buf = self.io.buf_bytes / META_BLOCK_SIZE;
        for wave in logical.chunks(per_buf * META_BUFS) {
            let mut bufs: Vec<DmaBuf> = (0..wave.len().div_ceil(per_buf)).map(|_| self.io.buf()).collect();
            let mut reqs = Vec::with_capacity(wave.len());
            let mut targets = Vec::with_capacity(wave.len());
            for (i, &l) in wave.iter().enumerate() {
                let off = (i % per_buf) * META_BLOCK_SIZE;
                let (copy, seq) = self.copies[usize_from(l)].next();
                let block = &mut bufs[i / per_buf].as_mut_slice()[off..off + META_BLOCK_SIZE];
                self.encode_block(l, block);
                meta::seal(block, self.layout.kind(l), Header { seq, index: l, format_id: self.sb.format_id });
                let seg = bufs[i / per_buf].seg(off, META_BLOCK_SIZE);
                let at = self.layout.offset(l, copy);
                reqs.push(self.io.request(Op::Write { fua: true }, at, META_BLOCK_SIZE as u64, 0, Some(seg)));
                targets.push((usize_from(l), copy, seq));
            }
            // SAFETY: the buffers stay in `bufs` until after `run` returns.
            let results = unsafe { self.io.run(&reqs) };
            for buf in bufs {
                self.io.shard.put(buf);
            }
            let results = results.inspect_err(|_| self.failed = true)?;
            let mut first_error = None;
            for ((l, copy, seq), result) in targets.into_iter().zip(results) {
                match result {
                    Ok(()) => self.copies[l].seq[copy] = seq,
                    Err(e) => {
                        self.copies[l].seq[copy] = 0;
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                self.failed = true;
                tracing::error!(error = %e, "metadata write failed; the page store stops");
                return Err(StoreError::Io(e));
            }
        }
        Ok(())
    }

    /// Creates a volume of `size_bytes` (rounded up to whole pages; the returned view
    /// says the actual size) with pages of `page_size` and logical blocks of
    /// `block_size`. Takes no space until pages are written.
    pub fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        page_size: u64,
        block_size: u32,
    ) -> Result<Arc<VolumeView>> {
        self.create_volume_with(name, size_bytes, page_size, block_size, None)
    }

    /// Creates a volume of a group: its id, UUID and NGUID are the group's (the same on
    /// every peer), not this store's.
    pub fn create_group_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        page_size: u64,
        block_size: u32,
        identity: VolumeIdentity,
    ) -> Result<Arc<VolumeView>> {
        self.create_volume_with(name, size_bytes, page_size, block_size, Some(identity))
    }

    fn create_volume_with(
        &mut self,
        name: &str,
        size_bytes: u64,
        page_size: u64,
        block_size: u32,
        identity: Option<VolumeIdentity>,
    ) -> Result<Arc<VolumeView>> {
        self.check_alive()?;
        check_name(name).map_err(|e| invalid("name", format!("{name:?}"), e))?;
        if self.volume_by_name(name).is_some() {
            return Err(StoreError::NameTaken(name.to_owned()));
        }
        let num_pages = volume_geometry(size_bytes, page_size, block_size)?;
        let device_block = self.info.block_size;
        if block_size < device_block {
            return Err(invalid(
                "block_size",
                block_size,
                format!("512 or 4096, and at least the device's block size {device_block}"),
            ));
        }
        let pos = self.table.iter().position(Option::is_none).ok_or(StoreError::TooManyVolumes)?;
        let (id, uuid, nguid) = match identity {
            Some(g) => {
                if self.volumes.contains_key(&VolumeId(g.id)) {
                    return Err(invalid("id", g.id, "a volume of this store has that id already".to_string()));
                }
                (g.id, g.uuid, g.nguid)
            }
            None => {
                let id = self.sb.next_volume_id;
                let (uuid, nguid) = meta::derive_ids(&self.sb.uuid, id);
                (id, uuid, nguid)
            }
        };
        // Ids of this store only grow, whoever chose them.
        let next = id.checked_add(1).ok_or(StoreError::TooManyVolumes)?.max(self.sb.next_volume_id);
        let entry = VolumeEntry {
            id,
            state: VolumeState::Live,
            name: name.to_owned(),
            page_shift: u8::try_from(page_size.ilog2()).expect("ilog2 of a u64 < 64"),
            block_shift: u8::try_from(block_size.ilog2()).expect("ilog2 of a u32 < 32"),
            num_pages,
            uuid,
            nguid,
            limits: Limits::default(),
        };
        let info = entry_info(&entry).expect("validated above");
        self.table[pos] = Some(entry);
        self.sb.next_volume_id = next;
        // The entry goes before the superblock; if only the entry lands, open derives
        // the next id from it.
        self.write_blocks(&[self.table_block(pos), 0])?;
        let view = Arc::new(VolumeView {
            info,
            pages: Arc::new(PageTable::new(num_pages)),
            pieces: Arc::default(),
            qos: Arc::default(),
        });
        self.volumes.insert(VolumeId(id), Volume { pos, view: view.clone() });
        self.spare_order.get_or_insert(order_of(page_size));
        tracing::info!(volume = id, name, size_bytes = view.info.size_bytes(), page_size, "volume created");
        Ok(view)
    }

    /// Grows a volume to `size_bytes` (rounded up to whole pages). The page table grows
    /// in place: the new view and every older one share it, so a reactor that still
    /// holds an older view reads every page the store maps from now on (its view only
    /// refuses the new pages' addresses). The caller hands the new view to the reactors.
    pub fn grow_volume(&mut self, id: VolumeId, size_bytes: u64) -> Result<Arc<VolumeView>> {
        self.check_alive()?;
        let v = self.volumes.get(&id).ok_or(StoreError::NoSuchVolume(id))?;
        let old = v.view.info.clone();
        let num_pages = size_to_pages(size_bytes, old.page_size, old.block_size)?;
        if num_pages < old.num_pages {
            return Err(invalid("size_bytes", size_bytes, format!("at least the current size {}", old.size_bytes())));
        }
        if num_pages == old.num_pages {
            return Ok(v.view.clone());
        }
        let pos = v.pos;
        self.table[pos].as_mut().expect("live volume has an entry").num_pages = num_pages;
        self.write_blocks(&[self.table_block(pos)])?;
        let v = self.volumes.get_mut(&id).expect("checked above");
        v.view.pages.grow(num_pages);
        let pages = v.view.pages.clone();
        let pieces = v.view.pieces.clone();
        if !pieces.is_empty() {
            pieces.grow(num_pages);
        }
        let qos = v.view.qos.clone();
        v.view = Arc::new(VolumeView { info: VolumeInfo { num_pages, ..old }, pages, pieces, qos });
        assert_eq!(v.view.pages.len(), num_pages);
        Ok(v.view.clone())
    }

    /// The limits stored with a volume (`volume::qos`).
    pub fn limits(&self, id: VolumeId) -> Result<Limits> {
        let v = self.volumes.get(&id).ok_or(StoreError::NoSuchVolume(id))?;
        Ok(self.table[v.pos].as_ref().expect("live volume has an entry").limits)
    }

    /// Stores a volume's limits with it (one volume-table block written: the entry
    /// holds them whole, old or new, at any crash).
    pub fn set_limits(&mut self, id: VolumeId, limits: Limits) -> Result<()> {
        self.check_alive()?;
        let v = self.volumes.get(&id).ok_or(StoreError::NoSuchVolume(id))?;
        let pos = v.pos;
        let entry = self.table[pos].as_mut().expect("live volume has an entry");
        if entry.limits == limits {
            return Ok(());
        }
        entry.limits = limits;
        self.write_blocks(&[self.table_block(pos)])
    }

    /// Deletes a volume: marks it deleting, frees its slots (into quarantine, under
    /// the returned generation), then removes its entry. A crash in between is
    /// finished at the next open.
    pub fn delete_volume(&mut self, id: VolumeId) -> Result<u64> {
        self.check_alive()?;
        let v = self.volumes.get(&id).ok_or(StoreError::NoSuchVolume(id))?;
        let (pos, view) = (v.pos, v.view.clone());
        self.table[pos].as_mut().expect("live volume has an entry").state = VolumeState::Deleting;
        self.write_blocks(&[self.table_block(pos)])?;
        let units: Vec<u64> = self.records.iter().filter(|(_, r)| r.volume_id == id.0).map(|(&u, _)| u).collect();
        let generation = self.unmap(&view, &units)?;
        self.table[pos] = None;
        self.write_blocks(&[self.table_block(pos)])?;
        self.volumes.remove(&id);
        assert!(view.pages.allocated() == 0);
        tracing::info!(volume = id.0, slots = units.len(), "volume deleted");
        Ok(generation)
    }

    /// Clears the records of `units` (slots of `view`'s volume) on the device, then the
    /// page table, then quarantines the slots under a new generation.
    fn unmap(&mut self, view: &VolumeView, units: &[u64]) -> Result<u64> {
        let mut dirty = BTreeSet::new();
        let mut freed = Vec::with_capacity(units.len());
        for &unit in units {
            let record = self.records.remove(&unit).expect("unit holds a slot");
            assert_eq!(record.volume_id, view.info.id.0);
            dirty.insert(self.layout.slot_block_of(unit));
            freed.push((unit, record));
        }
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        self.generation += 1;
        for (unit, record) in freed {
            assert_eq!(view.pages.get(record.page), Some(self.layout.unit_offset(unit)));
            view.pages.clear(record.page);
            self.quarantine.push_back(Quarantined { generation: self.generation, unit, order: record.order });
        }
        Ok(self.generation)
    }

    fn check_page(&self, volume: VolumeId, page: u64) -> Result<Arc<VolumeView>> {
        let v = self.volumes.get(&volume).ok_or(StoreError::NoSuchVolume(volume))?;
        let num_pages = v.view.info.num_pages;
        if page >= num_pages {
            return Err(StoreError::PageOutOfRange { volume, page, num_pages });
        }
        Ok(v.view.clone())
    }

    /// Gives each requested page a slot: returns, per request, the slot's device byte
    /// offset (the page's existing slot if it has one) or why not. New slots are
    /// zeroed and flushed before their records are written, and the page table is set
    /// only after that.
    pub fn allocate_pages(&mut self, requests: &[(VolumeId, u64)]) -> Vec<Result<u64>> {
        let mut results: Vec<Option<Result<u64>>> = vec![None; requests.len()];
        let mut fresh: Vec<Fresh> = Vec::new();
        let mut owners: Vec<(usize, usize)> = Vec::new(); // (request, fresh)
        let mut seen: HashMap<(VolumeId, u64), usize> = HashMap::new();
        for (i, &(volume, page)) in requests.iter().enumerate() {
            let view = match self.check_alive().and_then(|()| self.check_page(volume, page)) {
                Ok(view) => view,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if let Some(offset) = view.pages.get(page) {
                results[i] = Some(Ok(offset));
            } else if let Some(&f) = seen.get(&(volume, page)) {
                owners.push((i, f));
            } else {
                let order = order_of(view.info.page_size);
                self.spare_order = Some(order);
                match self.slot_for_page(order) {
                    Ok(Some((unit, spare))) => {
                        seen.insert((volume, page), fresh.len());
                        owners.push((i, fresh.len()));
                        fresh.push(Fresh { volume, page, unit, order, spare, error: None });
                    }
                    Ok(None) => results[i] = Some(Err(StoreError::NoSpace { slot_bytes: view.info.page_size })),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
        }
        if !fresh.is_empty() {
            let outcome = self.map_fresh(&mut fresh);
            for (i, f) in owners {
                let slot = &fresh[f];
                results[i] = Some(match (&outcome, slot.error) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(()), Some(e)) => Err(StoreError::Io(e)),
                    (Ok(()), None) => Ok(self.layout.unit_offset(slot.unit)),
                });
            }
        }
        results.into_iter().map(|r| r.expect("every request answered")).collect()
    }

    /// A slot of `order` for a new page: a spare (`true`: zeroed already), else one
    /// from the allocator; when the allocator has no room, spares of other orders are
    /// given back to it first. `None`: no room.
    fn slot_for_page(&mut self, order: u8) -> Result<Option<(u64, bool)>> {
        if let Some(unit) = self.spares.get_mut(&order).and_then(Vec::pop) {
            return Ok(Some((unit, true)));
        }
        if let Some(unit) = self.alloc.allocate(order) {
            return Ok(Some((unit, false)));
        }
        if self.spares.values().all(Vec::is_empty) {
            return Ok(None);
        }
        self.drop_spares()?;
        Ok(self.alloc.allocate(order).map(|unit| (unit, false)))
    }

    /// Gives every spare back to the allocator (to make room, or when none are
    /// wanted any more): their records are cleared on the
    /// device first (a spare record over a slot the allocator hands out again as part
    /// of another would map it twice at the next open).
    fn drop_spares(&mut self) -> Result<()> {
        let units: Vec<(u64, u8)> = std::mem::take(&mut self.spares)
            .into_iter()
            .flat_map(|(o, us)| us.into_iter().map(move |u| (u, o)))
            .collect();
        let units_len = units.len();
        let mut dirty = BTreeSet::new();
        for &(unit, _) in &units {
            let record = self.records.remove(&unit).expect("a spare has a record");
            assert!(record.is_spare(), "unit {unit} is no spare: {record:?}");
            dirty.insert(self.layout.slot_block_of(unit));
        }
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        for (unit, order) in units {
            self.alloc.free(unit, order);
        }
        tracing::debug!(slots = units_len, "spare slots given back");
        Ok(())
    }

    /// Asks the store to keep `wanted` spare slots. 0 gives back every spare it has
    /// (their records cleared on the device: a build without spares can then open
    /// it). The control thread calls [`PageStore::refill_spares`] when it is idle.
    pub fn set_spares(&mut self, wanted: usize) -> Result<()> {
        self.spares_wanted = wanted;
        if wanted == 0 && self.spares() > 0 {
            self.drop_spares()?;
        }
        if self.spare_order.is_none() {
            // The size of the spares found at open, else of the first volume's pages.
            self.spare_order = self
                .spares
                .iter()
                .max_by_key(|(_, us)| us.len())
                .map(|(&o, _)| o)
                .or_else(|| self.volumes.values().next().map(|v| order_of(v.view.info.page_size)));
        }
        Ok(())
    }

    /// How many spares [`PageStore::refill_spares`] would add.
    pub fn spares_missing(&self) -> usize {
        let Some(order) = self.spare_order else { return 0 };
        if self.failed {
            return 0;
        }
        self.spares_wanted.saturating_sub(self.spares.get(&order).map_or(0, Vec::len))
    }

    /// How many spares to make now: what is missing once half of the wanted are gone
    /// (or any are missing, when `idle`: no page allocated for a while), else 0.
    pub fn spares_due(&self, idle: bool) -> usize {
        let missing = self.spares_missing();
        if idle || missing * 2 >= self.spares_wanted {
            missing
        } else {
            0
        }
    }

    /// Spare slots held now, of every order.
    pub fn spares(&self) -> usize {
        self.spares.values().map(Vec::len).sum()
    }

    /// Makes up to `max` new spares of the page size last asked for, out of free space
    /// (never the last slot the allocator has: a spare must not be what makes a page
    /// allocation fail): zeroes the slots and waits, flushes and waits, and only then
    /// writes their spare records (FUA). Returns how many were added.
    pub fn refill_spares(&mut self, max: usize) -> Result<usize> {
        self.check_alive()?;
        let n = self.spares_missing().min(max);
        let Some(order) = self.spare_order.filter(|_| n > 0) else { return Ok(0) };
        let mut fresh = Vec::with_capacity(n);
        while fresh.len() < n && self.alloc.free_units() > 2 * (1 << order) {
            let Some(unit) = self.alloc.allocate(order) else { break };
            fresh.push(Fresh {
                volume: VolumeId(meta::SPARE_VOLUME_ID),
                page: 0,
                unit,
                order,
                spare: false,
                error: None,
            });
        }
        self.zero_fresh(&mut fresh)?;
        let mut dirty = BTreeSet::new();
        for slot in fresh.iter().filter(|f| f.error.is_none()) {
            let previous = self.records.insert(slot.unit, SlotRecord::spare(order));
            assert!(previous.is_none(), "unit {} handed out twice", slot.unit);
            dirty.insert(self.layout.slot_block_of(slot.unit));
        }
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        let added: Vec<u64> = fresh.iter().filter(|f| f.error.is_none()).map(|f| f.unit).collect();
        let count = added.len();
        self.spares.entry(order).or_default().extend(added);
        Ok(count)
    }

    /// Zeroes the slots of `fresh` that are not spares, waits for the zeroes, then
    /// flushes and waits (a Flush covers only writes completed before it is
    /// submitted). A slot whose zeroing failed gets its error and goes back to the
    /// allocator; if the batch could not run at all, every slot goes back.
    fn zero_fresh(&mut self, fresh: &mut [Fresh]) -> Result<()> {
        let mut reqs = Vec::with_capacity(fresh.len());
        let mut owner = Vec::with_capacity(fresh.len());
        for (f, slot) in fresh.iter().enumerate().filter(|(_, f)| !f.spare) {
            let slot_bytes = UNIT_BYTES << slot.order;
            let piece = slot_bytes.min(ZEROES_BYTES_MAX);
            let start = self.layout.unit_offset(slot.unit);
            for k in 0..slot_bytes / piece {
                reqs.push(self.io.request(Op::WriteZeroes, start + k * piece, piece, 0, None));
                owner.push(f);
            }
        }
        if reqs.is_empty() {
            return Ok(());
        }
        // SAFETY: none of these requests carries memory.
        let zeroed = unsafe { self.io.run(&reqs) }.and_then(|results| Ok((results, self.io.flush()?)));
        let (results, flushed) = match zeroed {
            Ok(r) => r,
            Err(e) => {
                self.give_back(fresh.iter());
                return Err(e);
            }
        };
        for (&f, result) in owner.iter().zip(&results) {
            if let Err(e) = result.and(flushed) {
                fresh[f].error.get_or_insert(e);
            }
        }
        self.give_back(fresh.iter().filter(|f| f.error.is_some()));
        Ok(())
    }

    /// Zeroes (unless spares), flushes, persists and maps the new slots of a batch,
    /// each step only once the one before has completed: the Write Zeroes of every
    /// slot, and waits for them; then a Flush (which covers only writes completed
    /// before it is submitted), and waits; then the slot records (FUA), and waits; only
    /// then the page table. A spare's record is replaced by the page's in the same
    /// write. A slot whose zeroing failed gets its error and goes back to the allocator.
    fn map_fresh(&mut self, fresh: &mut [Fresh]) -> Result<()> {
        self.zero_fresh(fresh)?;
        let mut dirty = BTreeSet::new();
        for slot in fresh.iter().filter(|f| f.error.is_none()) {
            let record = SlotRecord { volume_id: slot.volume.0, order: slot.order, flags: 0, page: slot.page };
            let previous = self.records.insert(slot.unit, record);
            match previous {
                None => assert!(!slot.spare, "spare unit {} had no record", slot.unit),
                Some(p) => assert!(slot.spare && p.is_spare(), "unit {} handed out twice (held {p:?})", slot.unit),
            }
            dirty.insert(self.layout.slot_block_of(slot.unit));
        }
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        for slot in fresh.iter().filter(|f| f.error.is_none()) {
            let pages = &self.volumes[&slot.volume].view.pages;
            assert!(pages.get(slot.page).is_none());
            pages.set(slot.page, self.layout.unit_offset(slot.unit));
        }
        Ok(())
    }

    /// Returns slots of a batch that did not get their page: spares to the spares
    /// (their records never changed), the others to the allocator.
    fn give_back<'a>(&mut self, slots: impl Iterator<Item = &'a Fresh>) {
        for slot in slots {
            if slot.spare {
                self.spares.entry(slot.order).or_default().push(slot.unit);
            } else {
                self.alloc.free(slot.unit, slot.order);
            }
        }
    }

    /// Unmaps the given pages (unmapped ones are skipped): the cleared records are
    /// persisted first, then the page tables cleared; the slots wait in quarantine
    /// under the returned generation until [`PageStore::release_quarantine`].
    /// Validates every request before changing anything.
    pub fn free_pages(&mut self, pages: &[(VolumeId, u64)]) -> Result<u64> {
        self.check_alive()?;
        let mut by_volume: BTreeMap<VolumeId, (Arc<VolumeView>, BTreeSet<u64>)> = BTreeMap::new();
        for &(volume, page) in pages {
            let view = self.check_page(volume, page)?;
            if let Some(offset) = view.pages.get(page) {
                by_volume
                    .entry(volume)
                    .or_insert_with(|| (view, BTreeSet::new()))
                    .1
                    .insert(self.layout.unit_at(offset));
            }
        }
        let mut dirty = BTreeSet::new();
        let mut freed = Vec::new();
        for (view, units) in by_volume.values() {
            for &unit in units {
                let record = self.records.remove(&unit).expect("mapped page has a record");
                assert_eq!(record.volume_id, view.info.id.0);
                dirty.insert(self.layout.slot_block_of(unit));
                freed.push((view.clone(), unit, record));
            }
        }
        self.write_blocks(&dirty.into_iter().collect::<Vec<_>>())?;
        self.generation += 1;
        for (view, unit, record) in freed {
            view.pages.clear(record.page);
            self.quarantine.push_back(Quarantined { generation: self.generation, unit, order: record.order });
        }
        Ok(self.generation)
    }

    /// Returns the slots freed under generations up to `generation` to the allocator
    /// (call once no reactor can still address them); returns how many.
    pub fn release_quarantine(&mut self, generation: u64) -> usize {
        let mut released = 0;
        while let Some(q) = self.quarantine.front().copied().filter(|q| q.generation <= generation) {
            self.quarantine.pop_front();
            self.alloc.free(q.unit, q.order);
            released += 1;
        }
        released
    }

    /// Slots waiting in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Every volume, by id.
    pub fn volumes(&self) -> Vec<Arc<VolumeView>> {
        self.volumes.values().map(|v| v.view.clone()).collect()
    }

    /// The volume with id `id`.
    pub fn volume(&self, id: VolumeId) -> Option<Arc<VolumeView>> {
        self.volumes.get(&id).map(|v| v.view.clone())
    }

    /// The volume named `name`.
    pub fn volume_by_name(&self, name: &str) -> Option<Arc<VolumeView>> {
        self.volumes.values().find(|v| v.view.info.name == name).map(|v| v.view.clone())
    }

    /// Space in the data region.
    pub fn capacity(&self) -> Capacity {
        let total_bytes = self.layout.data_units * UNIT_BYTES;
        let spare_units: u64 = self.spares.iter().map(|(&o, us)| (us.len() as u64) << o).sum();
        let free_bytes = (self.alloc.free_units() + spare_units) * UNIT_BYTES;
        Capacity { total_bytes, used_bytes: total_bytes - free_bytes, free_bytes }
    }

    /// The group/peer uuid given at format.
    pub fn uuid(&self) -> [u8; 16] {
        self.sb.uuid
    }

    /// Where everything is on the device.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// True once a metadata write has failed (every change is refused until reopen).
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

/// Pages of a volume of `size_bytes`; the size must be a positive multiple of the
/// block size and hold at most [`PAGES_PER_VOLUME_MAX`] pages.
/// Checks a volume's geometry (any device's part of it): the number of pages of
/// `size_bytes` rounded up to whole pages.
pub fn volume_geometry(size_bytes: u64, page_size: u64, block_size: u32) -> Result<u64> {
    if !page_size.is_power_of_two() || !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_size) {
        return Err(invalid(
            "page_size",
            page_size,
            format!("a power of two from {PAGE_SIZE_MIN} (64 KiB) to {PAGE_SIZE_MAX} (1 GiB)"),
        ));
    }
    if !(block_size == 512 || block_size == 4096) {
        return Err(invalid("block_size", block_size, "512 or 4096"));
    }
    size_to_pages(size_bytes, page_size, block_size)
}

fn size_to_pages(size_bytes: u64, page_size: u64, block_size: u32) -> Result<u64> {
    let max = PAGES_PER_VOLUME_MAX * page_size;
    if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) || size_bytes > max {
        return Err(invalid(
            "size_bytes",
            size_bytes,
            format!("a positive multiple of the block size {block_size}, at most {max} ({PAGES_PER_VOLUME_MAX} pages)"),
        ));
    }
    Ok(size_bytes.div_ceil(page_size))
}

#[cfg(test)]
// Test geometry is small: a truncating cast would fail an assertion, not corrupt data.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use quire_drivers::ram::RamDevice;
    use quire_drivers::{Completion, DmaSeg};
    use std::sync::Mutex;

    const MIB: u64 = 1 << 20;
    const SYNC_TAG: u64 = u64::MAX;

    fn qp(dev: &dyn BlockDevice) -> Box<dyn QueuePair> {
        dev.create_qpair(QPAIR_DEPTH).unwrap()
    }

    fn format(dev: &dyn BlockDevice) -> PageStore {
        PageStore::format(dev, qp(dev), [7; 16]).unwrap()
    }

    fn reopen(dev: &dyn BlockDevice) -> PageStore {
        PageStore::open(dev, qp(dev)).unwrap()
    }

    fn allocate(store: &mut PageStore, requests: &[(VolumeId, u64)]) -> Vec<u64> {
        store.allocate_pages(requests).into_iter().map(|r| r.unwrap()).collect()
    }

    /// One synchronous request over `buf` (test-side I/O: slot contents, patterns).
    fn sync_io(qp: &mut dyn QueuePair, op: Op, lba: u64, buf: &mut [u8], block: u64, stash: &mut VecDeque<Completion>) {
        let seg = DmaSeg { addr: buf.as_mut_ptr(), iova: buf.as_ptr() as u64, len: buf.len() as u32 };
        let req = IoRequest::with_segs(op, lba, (buf.len() as u64 / block) as u32, SYNC_TAG, &[seg]);
        // SAFETY: `buf` stays borrowed until the completion is polled below.
        unsafe { qp.submit(&req) }.expect("test queue pair has room");
        qp.kick();
        let mut done = false;
        while !done {
            qp.poll(usize::MAX, &mut |c| {
                if c.tag == SYNC_TAG {
                    assert_eq!(c.result, Ok(()));
                    done = true;
                } else {
                    stash.push_back(c);
                }
            });
        }
    }

    /// What the device keeps, at a power loss, of the writes that were not durable.
    ///
    /// The device follows the NVMe rules: requests complete out of order (a seeded
    /// order among the outstanding ones, some completions held back to later polls);
    /// a write is completed only once polled as such; a Flush makes durable only the
    /// writes that had completed before it was submitted, and only once it completes
    /// itself; a FUA write is durable once it completes. At the crash every completed
    /// write that is not durable may be lost or kept, block by block, and every write
    /// in flight (submitted, not completed) may land, in part or not at all.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Loss {
        /// Every write that is not durable is lost; the writes in flight do not land.
        Unflushed,
        /// Every completed write is kept; the writes in flight do not land.
        Completed,
        /// Every completed write is kept, and every write in flight lands.
        InFlight,
        /// Every completed write is kept; each write in flight lands its first half of
        /// blocks only (torn).
        Torn,
        /// Each block on its own ends up with any content it may hold: its last durable
        /// one, one written since, or that of a write in flight to it (seeded).
        Any(u64),
    }

    /// When the power goes out: as write number `at` (counting Write, WriteZeroes and
    /// Deallocate from 0 over every queue pair of the device) is submitted. That write
    /// is in flight at the crash; later requests complete without reaching the media.
    #[derive(Clone, Copy, Debug)]
    struct Plan {
        at: u64,
        loss: Loss,
    }

    type Content = Arc<[u8]>;

    /// Per device block, the contents it may hold after the crash (the durable one
    /// first); and the blocks of each write in flight, in submission order.
    type Frozen = (BTreeMap<u64, Vec<Content>>, Vec<Vec<(u64, Content)>>);

    /// splitmix64: the seeded choices of the model.
    fn next_random(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    struct CrashState {
        writes: u64,
        /// Read requests submitted by users of the device.
        reads: u64,
        plan: Option<Plan>,
        /// The power is out (the plan's write was submitted).
        crashed: bool,
        /// Completion order.
        rng: u64,
        next_version: u64,
        next_write: u64,
        /// Device blocks written since they were last known durable: every content each
        /// may hold after a crash, oldest first, with its version; the first is the last
        /// durable one. (Tracked only when a crash is planned.)
        volatile: BTreeMap<u64, Vec<(u64, Content)>>,
        /// Writes submitted and not completed: their blocks' new contents.
        in_flight: BTreeMap<u64, Vec<(u64, Content)>>,
        /// `volatile` and `in_flight` as they were when the power went out.
        frozen: Option<Frozen>,
        zero: Content,
    }

    impl CrashState {
        fn freeze(&mut self) {
            let volatile =
                self.volatile.iter().map(|(&b, v)| (b, v.iter().map(|(_, c)| c.clone()).collect())).collect();
            self.frozen = Some((volatile, self.in_flight.values().cloned().collect()));
            self.crashed = true;
        }
    }

    /// A RAM device with a volatile write cache that follows the NVMe ordering rules
    /// and loses power as planned (see [`Loss`]). After [`CrashDevice::crash`] it is a
    /// plain device again holding what survived, for the reopen.
    struct CrashDevice {
        inner: RamDevice,
        info: DeviceInfo,
        state: Arc<Mutex<CrashState>>,
    }

    /// Runs one request on a RAM queue pair (which completes at submission).
    fn exec(inner: &mut dyn QueuePair, req: &IoRequest) -> std::result::Result<(), IoError> {
        let mut r = *req;
        r.tag = 0;
        // SAFETY: under the contract of our caller's request (its memory stays valid
        // until the completion polled just below).
        unsafe { inner.submit(&r) }.expect("the inner queue pair has room");
        inner.kick();
        let mut result = None;
        while result.is_none() {
            inner.poll(1, &mut |c| result = Some(c.result));
        }
        result.expect("polled")
    }

    /// Writes `content` to device block `lba` of a RAM queue pair.
    fn put_block(inner: &mut dyn QueuePair, lba: u64, content: &[u8]) {
        let mut buf = content.to_vec();
        let seg = DmaSeg { addr: buf.as_mut_ptr(), iova: buf.as_ptr() as u64, len: buf.len() as u32 };
        exec(inner, &IoRequest::with_segs(Op::Write { fua: true }, lba, 1, 0, &[seg])).unwrap();
    }

    /// Reads device block `lba` of a RAM queue pair.
    fn get_block(inner: &mut dyn QueuePair, lba: u64, block: u64, zero: &Content) -> Content {
        let mut buf = vec![0u8; block as usize];
        let seg = DmaSeg { addr: buf.as_mut_ptr(), iova: buf.as_ptr() as u64, len: buf.len() as u32 };
        exec(inner, &IoRequest::with_segs(Op::Read, lba, 1, 0, &[seg])).unwrap();
        if buf.iter().all(|&b| b == 0) {
            zero.clone()
        } else {
            buf.into()
        }
    }

    impl CrashDevice {
        fn new(size: u64, block: u32, plan: Option<Plan>, seed: u64) -> CrashDevice {
            let inner = RamDevice::new(size, block).unwrap();
            let info = DeviceInfo { name: "crash".into(), volatile_write_cache: true, ..inner.info().clone() };
            let state = CrashState {
                writes: 0,
                reads: 0,
                plan,
                crashed: false,
                rng: seed,
                next_version: 1,
                next_write: 0,
                volatile: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                frozen: None,
                zero: vec![0u8; block as usize].into(),
            };
            CrashDevice { inner, info, state: Arc::new(Mutex::new(state)) }
        }

        fn writes(&self) -> u64 {
            self.state.lock().unwrap().writes
        }

        /// The power goes out now (if it has not already): the media ends up as the
        /// plan's [`Loss`] says, and the device serves what remains from now on.
        fn crash(&self) {
            let mut st = self.state.lock().unwrap();
            let Some(plan) = st.plan else { return };
            if !st.crashed {
                st.freeze();
            }
            let (volatile, in_flight) = st.frozen.take().expect("frozen at the crash");
            let mut q = self.inner.create_qpair(4).unwrap();
            let block = u64::from(self.info.block_size);
            let outcome: Vec<(u64, Content)> = match plan.loss {
                Loss::Unflushed => volatile.iter().map(|(&b, v)| (b, v[0].clone())).collect(),
                Loss::Completed => Vec::new(),
                Loss::InFlight => in_flight.into_iter().flatten().collect(),
                Loss::Torn => in_flight
                    .into_iter()
                    .flat_map(|w| {
                        let half = w.len() / 2;
                        w.into_iter().take(half)
                    })
                    .collect(),
                Loss::Any(seed) => {
                    let mut rng = seed;
                    let mut choices: BTreeMap<u64, Vec<Content>> = volatile;
                    for (b, c) in in_flight.into_iter().flatten() {
                        let zero = st.zero.clone();
                        choices.entry(b).or_insert_with(|| vec![get_block(&mut *q, b, block, &zero)]).push(c);
                    }
                    choices
                        .into_iter()
                        .map(|(b, v)| {
                            let pick = next_random(&mut rng) as usize % v.len();
                            (b, v[pick].clone())
                        })
                        .collect()
                }
            };
            for (b, content) in outcome {
                put_block(&mut *q, b, &content);
            }
            st.plan = None;
            st.crashed = false;
            st.volatile.clear();
            st.in_flight.clear();
        }
    }

    impl BlockDevice for CrashDevice {
        fn info(&self) -> &DeviceInfo {
            &self.info
        }

        fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn QueuePair>> {
            Ok(Box::new(CrashQueuePair {
                inner: self.inner.create_qpair(4)?,
                state: self.state.clone(),
                block: u64::from(self.info.block_size),
                depth,
                queued: Vec::new(),
                device: Vec::new(),
            }))
        }
    }

    /// A request the device holds.
    struct Held {
        req: IoRequest,
        /// A write's key in `in_flight`.
        write: Option<u64>,
        /// A Flush: the version of each volatile block at its submission.
        cover: Option<Vec<(u64, u64)>>,
    }

    struct CrashQueuePair {
        inner: Box<dyn QueuePair>,
        state: Arc<Mutex<CrashState>>,
        block: u64,
        depth: u32,
        /// Submitted, not kicked.
        queued: Vec<Held>,
        /// Kicked, not completed.
        device: Vec<Held>,
    }

    impl CrashQueuePair {
        /// The device completes `held` now.
        fn complete(&mut self, st: &mut CrashState, held: Held) -> std::result::Result<(), IoError> {
            let req = &held.req;
            if st.crashed {
                // Nothing reaches the media any more; reads see what it showed.
                return match req.op {
                    Op::Read => exec(&mut *self.inner, req),
                    _ => Ok(()),
                };
            }
            match req.op {
                Op::Read => exec(&mut *self.inner, req),
                Op::Flush => {
                    for (b, version) in held.cover.into_iter().flatten() {
                        if let Some(v) = st.volatile.get_mut(&b) {
                            v.retain(|(n, _)| *n >= version);
                            if v.len() <= 1 {
                                st.volatile.remove(&b);
                            }
                        }
                    }
                    Ok(())
                }
                Op::Write { .. } | Op::WriteZeroes | Op::Deallocate => {
                    let fua = req.op == (Op::Write { fua: true });
                    for (b, content) in held.write.and_then(|w| st.in_flight.remove(&w)).into_iter().flatten() {
                        if fua {
                            st.volatile.remove(&b);
                            continue;
                        }
                        if !st.volatile.contains_key(&b) {
                            // The durable content, numbered after every version a Flush
                            // in flight may cover (it is newer than all of them).
                            let before = get_block(&mut *self.inner, b, self.block, &st.zero);
                            let base = st.next_version;
                            st.next_version += 1;
                            st.volatile.insert(b, vec![(base, before)]);
                        }
                        let version = st.next_version;
                        st.next_version += 1;
                        st.volatile.get_mut(&b).expect("inserted").push((version, content));
                    }
                    exec(&mut *self.inner, req)
                }
            }
        }
    }

    impl QueuePair for CrashQueuePair {
        unsafe fn submit(&mut self, req: &IoRequest) -> std::result::Result<(), SubmitError> {
            if self.outstanding() >= self.depth {
                return Err(SubmitError::QueueFull);
            }
            if matches!(req.op, Op::Read | Op::Write { .. }) && req.data_len() != u64::from(req.num_blocks) * self.block
            {
                return Err(SubmitError::Invalid("segment bytes differ from the block count"));
            }
            let state = self.state.clone();
            let mut st = state.lock().unwrap();
            let tracking = st.plan.is_some() && !st.crashed;
            let mut held = Held { req: *req, write: None, cover: None };
            match req.op {
                Op::Read => st.reads += 1,
                Op::Flush if tracking => {
                    let cover = st.volatile.iter().map(|(&b, v)| (b, v.last().expect("never empty").0)).collect();
                    held.cover = Some(cover);
                }
                Op::Flush => {}
                Op::Write { .. } | Op::WriteZeroes | Op::Deallocate => {
                    let k = st.writes;
                    st.writes += 1;
                    if tracking {
                        let n = req.num_blocks as usize;
                        let contents: Vec<(u64, Content)> = if matches!(req.op, Op::Write { .. }) {
                            let mut bytes = Vec::with_capacity(n * self.block as usize);
                            for seg in req.segs() {
                                // SAFETY: the caller keeps the segment valid and unwritten
                                // until its completion (submit's contract).
                                bytes.extend_from_slice(unsafe {
                                    std::slice::from_raw_parts(seg.addr, seg.len as usize)
                                });
                            }
                            let lbas = req.lba..;
                            lbas.zip(bytes.chunks_exact(self.block as usize).map(Content::from)).collect()
                        } else {
                            (req.lba..req.lba + n as u64).map(|b| (b, st.zero.clone())).collect()
                        };
                        let id = st.next_write;
                        st.next_write += 1;
                        st.in_flight.insert(id, contents);
                        held.write = Some(id);
                        if st.plan.is_some_and(|p| p.at == k) {
                            st.freeze();
                        }
                    }
                }
            }
            self.queued.push(held);
            Ok(())
        }

        fn kick(&mut self) {
            self.device.append(&mut self.queued);
        }

        fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
            let state = self.state.clone();
            let mut n = 0;
            // Some of the requests on the device complete, in a random order; the
            // others wait for a later poll.
            while n < max && !self.device.is_empty() {
                let mut st = state.lock().unwrap();
                let r = next_random(&mut st.rng);
                if r.is_multiple_of(3) {
                    break;
                }
                let held = self.device.swap_remove((r >> 8) as usize % self.device.len());
                let tag = held.req.tag;
                let result = self.complete(&mut st, held);
                drop(st);
                on_complete(Completion { tag, result });
                n += 1;
            }
            n
        }

        fn outstanding(&self) -> u32 {
            (self.queued.len() + self.device.len()) as u32
        }
    }

    /// What the store says it holds: volumes (name, pages) and mapped pages by id.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct State {
        volumes: BTreeMap<u32, (String, u64)>,
        maps: BTreeMap<(u32, u64), u64>,
    }

    fn state_of(store: &PageStore) -> State {
        let mut s = State::default();
        for v in store.volumes() {
            s.volumes.insert(v.info.id.0, (v.info.name.clone(), v.info.num_pages));
            for p in 0..v.info.num_pages {
                if let Some(off) = v.pages.get(p) {
                    s.maps.insert((v.info.id.0, p), off);
                }
            }
        }
        s
    }

    fn tag(volume: u32, page: u64) -> u64 {
        1 << 63 | u64::from(volume) << 32 | page
    }

    /// Writes `volume`/`page`'s tag over the first and last 4 KiB of its slot, as a
    /// host write would (FUA: acknowledged means durable).
    fn write_pattern(q: &mut dyn QueuePair, block: u64, slot: u64, slot_bytes: u64, volume: u32, page: u64) {
        let mut buf: Vec<u8> = tag(volume, page).to_le_bytes().repeat(512);
        for at in [slot, slot + slot_bytes - 4096] {
            sync_io(q, Op::Write { fua: true }, at / block, &mut buf, block, &mut VecDeque::new());
        }
    }

    /// Every word of every mapped slot is zero or the page's own tag: no page ever
    /// shows another page's (or a freed page's) data.
    fn check_slot_contents(dev: &dyn BlockDevice, store: &PageStore, ctx: &str) {
        let block = u64::from(dev.info().block_size);
        let mut q = qp(dev);
        for v in store.volumes() {
            let mut buf = vec![0u8; v.info.page_size as usize];
            for p in 0..v.info.num_pages {
                let Some(off) = v.pages.get(p) else { continue };
                sync_io(&mut *q, Op::Read, off / block, &mut buf, block, &mut VecDeque::new());
                let want = tag(v.info.id.0, p);
                for w in buf.chunks_exact(8) {
                    let w = u64::from_le_bytes(w.try_into().unwrap());
                    assert!(w == 0 || w == want, "{ctx}: page {p} of volume {} holds {w:#x}", v.info.id.0);
                }
            }
        }
    }

    /// No two mapped slots overlap, and free space is what the slots leave.
    fn check_slots_disjoint(store: &PageStore) {
        let mut slots: Vec<(u64, u64)> = Vec::new();
        for v in store.volumes() {
            slots.extend((0..v.info.num_pages).filter_map(|p| v.pages.get(p)).map(|o| (o, o + v.info.page_size)));
        }
        let used: u64 = slots.iter().map(|(a, b)| b - a).sum();
        for (&order, units) in &store.spares {
            for &u in units {
                let o = store.layout.unit_offset(u);
                slots.push((o, o + (UNIT_BYTES << order)));
                assert_eq!(store.records.get(&u), Some(&SlotRecord::spare(order)), "spare at unit {u}");
            }
        }
        slots.sort_unstable();
        for w in slots.windows(2) {
            assert!(w[0].1 <= w[1].0, "slots {:?} and {:?} overlap", w[0], w[1]);
        }
        let cap = store.capacity();
        assert_eq!(cap.used_bytes, used + store.quarantine.iter().map(|q| UNIT_BYTES << q.order).sum::<u64>());
        assert_eq!(cap.free_bytes + cap.used_bytes, cap.total_bytes);
    }

    #[test]
    fn metadata_buffers_from_a_given_shard() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let pool = DmaPool::new(64 << 10, 8, false).unwrap();
        let mut shard = pool.shards(1).pop().unwrap();
        let few = shard.split_off(META_BUFS - 1).unwrap();
        let err =
            PageStore::open_or_format_in(&dev, qp(&dev), Some(few), Formatting::IfBlank).expect_err("too few buffers");
        assert!(matches!(err, StoreError::Pool(_)), "{err:?}");
        let uuid = PageStore::open_or_format_in(&dev, qp(&dev), shard.split_off(1), Formatting::IfBlank).err();
        assert!(uuid.is_some(), "one buffer is not enough either");
        let mine = shard.split_off(META_BUFS).unwrap();
        let store = PageStore::open_or_format_in(&dev, qp(&dev), Some(mine), Formatting::IfBlank).unwrap();
        let uuid = store.uuid();
        drop(store);
        assert_eq!(reopen(&dev).uuid(), uuid, "the format written through the shard's buffers reads back");
    }

    /// Writes `bytes` at device byte `at` of `dev` (raw, behind the store's back).
    fn poke(dev: &dyn BlockDevice, at: u64, bytes: &[u8]) {
        let block = u64::from(dev.info().block_size);
        let start = at / block * block;
        let end = (at + bytes.len() as u64).div_ceil(block) * block;
        let mut buf = vec![0u8; (end - start) as usize];
        let mut q = qp(dev);
        sync_io(&mut *q, Op::Read, start / block, &mut buf, block, &mut VecDeque::new());
        buf[(at - start) as usize..][..bytes.len()].copy_from_slice(bytes);
        sync_io(&mut *q, Op::Write { fua: true }, start / block, &mut buf, block, &mut VecDeque::new());
    }

    /// `len` bytes at device byte `at` of `dev`.
    fn peek(dev: &dyn BlockDevice, at: u64, len: usize) -> Vec<u8> {
        let block = u64::from(dev.info().block_size);
        let mut buf = vec![0u8; len];
        sync_io(&mut *qp(dev), Op::Read, at / block, &mut buf, block, &mut VecDeque::new());
        buf
    }

    fn open_if_blank(dev: &dyn BlockDevice) -> Result<PageStore> {
        PageStore::open_or_format_in(dev, qp(dev), None, Formatting::IfBlank)
    }

    #[test]
    fn a_device_with_a_partition_table_is_not_formatted() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        // A protective MBR and a GPT header, as `sgdisk` leaves them.
        poke(&dev, 446, &[0, 0, 2, 0, 0xee]);
        poke(&dev, 510, &[0x55, 0xaa]);
        poke(&dev, 512, b"EFI PART");
        let before = peek(&dev, 0, 2 * MIB as usize);
        let err = open_if_blank(&dev).expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::NotBlank(_)), "{text}");
        assert_eq!(
            text,
            "no Quire superblock; block 0 (byte 448) holds non-zero data (a GPT partition table: \"EFI PART\" at \
             byte 512): refusing to format it; run `quire store format --yes` (with the configuration or flags of \
             `quire serve`) to erase it"
        );
        assert_eq!(peek(&dev, 0, 2 * MIB as usize), before, "nothing was written");
        assert_eq!(PageStore::open(&dev, qp(&dev)).err(), Some(err.clone()));
        assert_eq!(PageStore::inspect(&dev, qp(&dev), None).err(), Some(err));
        // The operator's explicit format erases it.
        drop(PageStore::format(&dev, qp(&dev), [4; 16]).unwrap());
        assert_eq!(reopen(&dev).uuid(), [4; 16]);
        assert_eq!(PageStore::inspect(&dev, qp(&dev), None), Ok(Some([4; 16])));
    }

    #[test]
    fn non_zero_data_anywhere_checked_is_not_blank() {
        let size = 64 * MIB;
        let layout = Layout::for_device(size).unwrap();
        for at in [0, 100_000, meta::SB_B_OFFSET + 17, layout.offset(1, 1) + 4094, size - 4] {
            let dev = RamDevice::new(size, 4096).unwrap();
            poke(&dev, at, b"\x7fELF");
            let text = open_if_blank(&dev).expect_err("refused").to_string();
            let want =
                format!("block {} (byte {at}) holds non-zero data (starts with \"\\x7fELF\" at byte {at})", at / 4096);
            assert!(text.contains(&want), "{text}");
        }
        // Data beyond the checked ranges (in the data region) goes unseen: a device is
        // blank by its metadata places, not read whole.
        let dev = RamDevice::new(size, 4096).unwrap();
        poke(&dev, 32 * MIB, b"data");
        assert!(open_if_blank(&dev).is_ok());
        let blank = RamDevice::new(size, 4096).unwrap();
        assert_eq!(PageStore::open(&blank, qp(&blank)).err(), Some(StoreError::NotFormatted));
        assert_eq!(PageStore::inspect(&blank, qp(&blank), None), Ok(None));
    }

    #[test]
    fn damaged_superblocks_are_reported_not_formatted_over() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        store.create_volume("keep", MIB, 64 << 10, 512).unwrap();
        drop(store);
        // Both copies torn (a crash cannot do this; a bad disk or a stray writer can).
        poke(&dev, 2000, &[0xff; 8]);
        poke(&dev, meta::SB_B_OFFSET + 3000, &[0xff; 8]);
        let before = peek(&dev, 0, 2 * MIB as usize);
        let err = open_if_blank(&dev).expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Damaged(_)), "{text}");
        assert!(
            text.starts_with(
                "the Quire superblocks are damaged: copy A (byte 0): checksum mismatch; copy B (byte 1048576): \
                 checksum mismatch: refusing to open or format it"
            ),
            "{text}"
        );
        assert!(text.contains("quire store format --yes"), "{text}");
        assert_eq!(peek(&dev, 0, 2 * MIB as usize), before, "nothing was written");
        // One copy wiped, the other torn: still damaged, and said so per copy.
        poke(&dev, 0, &[0; 4096]);
        let text = PageStore::open(&dev, qp(&dev)).err().unwrap().to_string();
        assert!(text.contains("copy A (byte 0): no superblock; copy B (byte 1048576): checksum mismatch"), "{text}");
    }

    #[test]
    fn a_partition_table_over_the_start_leaves_the_store_intact() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let v = store.create_volume("db", 4 * MIB, MIB, 512).unwrap().info.id;
        let slot = allocate(&mut store, &[(v, 2)])[0];
        let state = state_of(&store);
        drop(store);
        // `sgdisk -o` on the wrong disk: MBR and the GPT header and entries over the
        // first 17 KiB (34 sectors); a 4K-sector GPT takes 24 KiB.
        let mut gpt = vec![0x5a; 24 << 10];
        gpt[512..520].copy_from_slice(b"EFI PART");
        poke(&dev, 0, &gpt);
        let store = reopen(&dev);
        assert_eq!(state_of(&store), state);
        assert_eq!(store.volume(v).unwrap().pages.get(2), Some(slot));
    }

    #[test]
    fn a_device_of_format_1_is_refused_with_its_version() {
        // A format 1 superblock (version 1, copies at bytes 0 and 4096).
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut block = vec![0u8; META_BLOCK_SIZE];
        let sb = Superblock {
            format_id: 9,
            device_bytes: 64 * MIB,
            device_block_size: 512,
            layout: Layout::for_device(64 * MIB).unwrap(),
            uuid: [2; 16],
            next_volume_id: 3,
        };
        sb.encode(&mut block);
        block[32..36].copy_from_slice(&1u32.to_le_bytes());
        meta::seal(&mut block, Kind::Super, Header { seq: 5, index: 0, format_id: 9 });
        poke(&dev, 4096, &block);
        poke(&dev, 0, &block);
        let before = peek(&dev, 0, 2 * MIB as usize);
        let err = open_if_blank(&dev).err().unwrap();
        assert_eq!(err, StoreError::OtherVersion(1));
        assert!(
            err.to_string().starts_with(
                "the device holds a Quire page store of format version 1; this build reads version 2 only"
            ),
            "{err}"
        );
        // Copy A of format 1 damaged: copy B (at 4096) still tells the version.
        poke(&dev, 100, &[0xff]);
        assert_eq!(open_if_blank(&dev).err(), Some(StoreError::OtherVersion(1)));
        let mut after = before;
        after[100] = 0xff;
        assert_eq!(peek(&dev, 0, 2 * MIB as usize), after, "nothing was written");
    }

    #[test]
    fn both_copies_of_a_metadata_block_damaged_stop_the_open() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let v = store.create_volume("v", 4 * MIB, MIB, 512).unwrap().info.id;
        let slot = allocate(&mut store, &[(v, 0)])[0];
        let layout = *store.layout();
        let block = layout.slot_block_of(layout.unit_at(slot));
        assert!(store.copies[block as usize].seq.iter().all(|&s| s > 0), "a written block has two valid copies");
        drop(store);
        poke(&dev, layout.offset(block, 0) + 100, &[0xee]);
        assert_eq!(reopen(&dev).volume(v).unwrap().pages.allocated(), 1, "one damaged copy: the other serves");
        poke(&dev, layout.offset(block, 1) + 100, &[0xee]);
        let err = PageStore::open(&dev, qp(&dev)).err().unwrap();
        assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("both copies of metadata block")), "{err}");
    }

    #[test]
    fn a_record_of_a_volume_not_in_the_table_stops_the_open() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let v = store.create_volume("v", 4 * MIB, MIB, 512).unwrap().info.id;
        allocate(&mut store, &[(v, 1)]);
        let layout = *store.layout();
        drop(store);
        // Wipe both copies of the volume table's first block: the volume "vanishes".
        let table = layout.volume_block(0);
        for copy in 0..2 {
            poke(&dev, layout.offset(table, copy), &[0; META_BLOCK_SIZE]);
        }
        let err = PageStore::open(&dev, qp(&dev)).err().unwrap();
        assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("not in the volume table")), "{err}");
    }

    #[test]
    fn a_reactor_holding_the_view_from_before_a_grow_sees_pages_mapped_after_it() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let old = store.create_volume("v", 2 * MIB, MIB, 512).unwrap();
        let id = old.info.id;
        let new = store.grow_volume(id, 4 * MIB).unwrap();
        assert_eq!((old.info.num_pages, new.info.num_pages), (2, 4));
        // Another reactor (holding the new view) writes page 1 and page 3: the store
        // maps them; the write to page 1 is acknowledged.
        let slots = allocate(&mut store, &[(id, 1), (id, 3)]);
        assert_eq!(new.pages.get(1), Some(slots[0]));
        // A reactor that has not yet received the new view must read page 1's slot,
        // not zeroes.
        assert_eq!(old.pages.get(1), Some(slots[0]), "the old view misses an acknowledged write");
        assert!(Arc::ptr_eq(&old.pages, &new.pages));
    }

    #[test]
    fn the_crash_model_keeps_only_what_a_flush_covered() {
        // A block holding old data (durable); Write Zeroes over it, and a Flush either
        // in the same batch (covers nothing: the zeroes had not completed when it was
        // submitted) or after the zeroes completed (covers them). Then the power fails
        // losing everything not durable.
        for (wait_before_flush, zeroed) in [(false, false), (true, true)] {
            for seed in 0..20 {
                let dev = CrashDevice::new(4 * MIB, 512, Some(Plan { at: u64::MAX, loss: Loss::Unflushed }), seed);
                let mut q = qp(&dev);
                let mut old = vec![0xaa; 512];
                sync_io(&mut *q, Op::Write { fua: true }, 8, &mut old, 512, &mut VecDeque::new());
                let zero = IoRequest::no_data(Op::WriteZeroes, 8, 1, 1);
                let flush = IoRequest::no_data(Op::Flush, 0, 0, 2);
                let mut done = 0;
                // SAFETY: no memory.
                unsafe { q.submit(&zero) }.unwrap();
                q.kick();
                while wait_before_flush && done == 0 {
                    done += q.poll(8, &mut |c| assert_eq!(c.tag, 1));
                }
                // SAFETY: no memory.
                unsafe { q.submit(&flush) }.unwrap();
                q.kick();
                while done < 2 {
                    done += q.poll(8, &mut |c| assert_eq!(c.result, Ok(())));
                }
                dev.crash();
                let got = peek(&dev, 8 * 512, 512);
                assert_eq!(got.iter().all(|&b| b == 0), zeroed, "wait {wait_before_flush}, seed {seed}");
                assert!(zeroed || got.iter().all(|&b| b == 0xaa));
            }
        }
    }

    #[test]
    fn the_crash_model_completes_out_of_order_and_fua_is_durable() {
        let dev = CrashDevice::new(4 * MIB, 512, Some(Plan { at: u64::MAX, loss: Loss::Unflushed }), 5);
        let mut q = qp(&dev);
        let mut bufs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i + 1; 512]).collect();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let seg = DmaSeg { addr: buf.as_mut_ptr(), iova: 0, len: 512 };
            let req = IoRequest::with_segs(Op::Write { fua: i % 2 == 0 }, i as u64, 1, i as u64, &[seg]);
            // SAFETY: the buffers outlive the completions polled below.
            unsafe { q.submit(&req) }.unwrap();
        }
        q.kick();
        let mut order = Vec::new();
        let mut empty_polls = 0;
        while order.len() < 16 {
            if q.poll(usize::MAX, &mut |c| order.push(c.tag)) == 0 {
                empty_polls += 1;
            }
        }
        assert_ne!(order, (0..16).collect::<Vec<_>>(), "completions come out of order");
        assert!(empty_polls > 0, "some polls find nothing yet");
        dev.crash();
        for i in 0..16u64 {
            let got = peek(&dev, i * 512, 512);
            let want = if i % 2 == 0 { i as u8 + 1 } else { 0 };
            assert!(got.iter().all(|&b| b == want), "block {i}: FUA writes stay, the others are lost");
        }
    }

    #[test]
    fn format_open_round_trip() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        assert_eq!(PageStore::open(&dev, qp(&dev)).unwrap_err(), StoreError::NotFormatted);
        let store = format(&dev);
        let cap = store.capacity();
        assert_eq!(cap.total_bytes, 64 * MIB - store.layout().data_offset);
        assert_eq!((cap.used_bytes, cap.free_bytes), (0, cap.total_bytes));
        drop(store);
        let store = reopen(&dev);
        assert_eq!(store.uuid(), [7; 16]);
        assert_eq!(store.capacity(), cap);
        assert!(store.volumes().is_empty());

        let blank = RamDevice::new(64 * MIB, 4096).unwrap();
        let open_or_format = |dev: &RamDevice| PageStore::open_or_format_in(dev, qp(dev), None, Formatting::IfBlank);
        let uuid = open_or_format(&blank).unwrap().uuid();
        assert_eq!(open_or_format(&blank).unwrap().uuid(), uuid);
        assert_eq!(uuid[6] >> 4, 4, "a random v4 uuid");

        let tiny = RamDevice::new(2 * MIB, 512).unwrap();
        assert!(matches!(PageStore::format(&tiny, qp(&tiny), [1; 16]), Err(StoreError::Device(_))));
    }

    #[test]
    fn reformat_forgets_the_old_volumes() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let v = store.create_volume("old", MIB, 64 << 10, 512).unwrap();
        allocate(&mut store, &[(v.info.id, 0)]);
        // Bump the sequence numbers well above what the new format starts with.
        for i in 0..5 {
            store.grow_volume(v.info.id, MIB * (2 + i)).unwrap();
        }
        drop(store);
        drop(PageStore::format(&dev, qp(&dev), [9; 16]).unwrap());
        let store = reopen(&dev);
        assert_eq!(store.uuid(), [9; 16]);
        assert!(store.volumes().is_empty());
        assert_eq!(store.capacity().used_bytes, 0);
    }

    #[test]
    fn volumes_survive_reopen() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let a = store.create_volume("a", 10 * MIB + 512, 4 * MIB, 512).unwrap();
        assert_eq!((a.info.num_pages, a.info.size_bytes()), (3, 12 * MIB), "rounded up to whole pages");
        let b = store.create_volume("b", 1 << 40, 1 << 30, 4096).unwrap();
        let c = store.create_volume("c", MIB, 64 << 10, 4096).unwrap();
        assert_eq!((a.info.id, b.info.id, c.info.id), (VolumeId(1), VolumeId(2), VolumeId(3)));
        assert_ne!(a.info.uuid, b.info.uuid);
        assert_ne!(a.info.uuid, a.info.nguid);
        let grown = store.grow_volume(a.info.id, 20 * MIB).unwrap();
        assert_eq!(grown.info.num_pages, 5);
        assert_eq!(store.grow_volume(a.info.id, 20 * MIB).unwrap().pages.len(), 5);
        store.delete_volume(c.info.id).unwrap();
        assert!(matches!(store.grow_volume(c.info.id, MIB), Err(StoreError::NoSuchVolume(_))));
        let before: Vec<VolumeInfo> = store.volumes().iter().map(|v| v.info.clone()).collect();
        drop(store);

        let mut store = reopen(&dev);
        let after: Vec<VolumeInfo> = store.volumes().iter().map(|v| v.info.clone()).collect();
        assert_eq!(after, before);
        assert_eq!(store.volume_by_name("b").unwrap().info.size_bytes(), 1 << 40);
        assert!(store.volume_by_name("c").is_none());
        // Ids are never reused, even after the highest one was deleted and reopened.
        assert_eq!(store.create_volume("c", MIB, 64 << 10, 4096).unwrap().info.id, VolumeId(4));
        assert_eq!(store.create_volume("a", MIB, 64 << 10, 4096).unwrap_err(), StoreError::NameTaken("a".into()));
    }

    #[test]
    fn group_volumes_keep_the_groups_identity() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let g = VolumeIdentity { id: 40, uuid: [0xaa; 16], nguid: [0xbb; 16] };
        let v = store.create_group_volume("g", 8 * MIB, 4 * MIB, 512, g).unwrap();
        assert_eq!((v.info.id, v.info.uuid, v.info.nguid), (VolumeId(40), [0xaa; 16], [0xbb; 16]));
        let dup = VolumeIdentity { id: 40, uuid: [1; 16], nguid: [2; 16] };
        assert!(matches!(store.create_group_volume("h", MIB, 4 * MIB, 512, dup), Err(StoreError::Invalid { .. })));
        drop(store);
        let mut store = reopen(&dev);
        let v = store.volume_by_name("g").unwrap();
        assert_eq!((v.info.id, v.info.uuid, v.info.nguid), (VolumeId(40), [0xaa; 16], [0xbb; 16]));
        // A volume of the store's own after it gets a higher id.
        assert_eq!(store.create_volume("own", MIB, 64 << 10, 512).unwrap().info.id, VolumeId(41));
    }

    #[test]
    fn pages_survive_reopen_with_the_same_slots() {
        let dev = RamDevice::new(64 * MIB, 4096).unwrap();
        let mut store = format(&dev);
        let a = store.create_volume("a", 16 * MIB, MIB, 4096).unwrap().info.id;
        let b = store.create_volume("b", 16 * MIB, 64 << 10, 4096).unwrap().info.id;
        let slots = allocate(&mut store, &[(a, 3), (b, 0), (a, 0), (b, 200), (a, 3)]);
        assert_eq!(slots[0], slots[4], "a page asked twice gets one slot");
        assert_eq!(allocate(&mut store, &[(a, 3)]), vec![slots[0]], "allocation is idempotent");
        assert_eq!(slots[0] % MIB, store.layout().data_offset % MIB, "slots are size-aligned");
        check_slots_disjoint(&store);
        let used = store.capacity().used_bytes;
        assert_eq!(used, 2 * MIB + 2 * (64 << 10));
        let gen = store.free_pages(&[(b, 0), (b, 1)]).unwrap();
        assert_eq!(store.volume(b).unwrap().pages.get(0), None);
        assert_eq!(store.quarantined(), 1);
        assert_eq!(store.capacity().used_bytes, used, "quarantined slots are not free yet");
        let fresh = allocate(&mut store, &[(b, 5)]);
        assert_ne!(fresh[0], slots[1], "a quarantined slot is not handed out");
        assert_eq!(store.release_quarantine(gen - 1), 0);
        assert_eq!(store.release_quarantine(gen), 1);
        let state = state_of(&store);
        let cap = store.capacity();
        drop(store);

        let store = reopen(&dev);
        assert_eq!(state_of(&store), state);
        assert_eq!(store.capacity(), cap);
        check_slots_disjoint(&store);
    }

    #[test]
    fn no_space_is_reported_per_page() {
        let dev = RamDevice::new(4 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let units = store.layout().data_units;
        let v = store.create_volume("thin", 64 * MIB, 64 << 10, 512).unwrap().info.id;
        let big = store.create_volume("big", 64 * MIB, 4 * MIB, 512).unwrap().info.id;
        let requests: Vec<(VolumeId, u64)> = (0..units + 2).map(|p| (v, p)).collect();
        let results = store.allocate_pages(&requests);
        assert!(results[..units as usize].iter().all(Result::is_ok));
        assert_eq!(results[units as usize], Err(StoreError::NoSpace { slot_bytes: 64 << 10 }));
        assert_eq!(store.capacity().free_bytes, 0);
        assert_eq!(store.allocate_pages(&[(big, 0)]), vec![Err(StoreError::NoSpace { slot_bytes: 4 * MIB })]);
        let pages: Vec<(VolumeId, u64)> = (0..units).map(|p| (v, p)).collect();
        let gen = store.free_pages(&pages).unwrap();
        store.release_quarantine(gen);
        assert_eq!(store.capacity().free_bytes, units * UNIT_BYTES);
        let results = store.allocate_pages(&[(big, 0), (v, 999_999), (VolumeId(99), 0)]);
        assert_eq!(results[0].is_ok(), units >= 64);
        assert!(matches!(results[1], Err(StoreError::PageOutOfRange { page: 999_999, .. })));
        assert_eq!(results[2], Err(StoreError::NoSuchVolume(VolumeId(99))));
    }

    /// Every byte of the slot at `offset` of `bytes` is zero on the device.
    fn assert_zero(dev: &dyn BlockDevice, offset: u64, bytes: u64, ctx: &str) {
        let block = u64::from(dev.info().block_size);
        let mut buf = vec![0u8; bytes as usize];
        sync_io(&mut *qp(dev), Op::Read, offset / block, &mut buf, block, &mut VecDeque::new());
        assert!(buf.iter().all(|&b| b == 0), "{ctx}: the slot at {offset} is not zero");
    }

    #[test]
    fn a_first_write_takes_a_zeroed_spare_with_one_metadata_write() {
        let dev = CrashDevice::new(24 * MIB, 512, None, 1);
        let mut store = format(&dev);
        let v = store.create_volume("v", 8 * MIB, 64 << 10, 512).unwrap().info.id;
        // A slot that held data, freed: a spare made of it is zeroed again.
        let mut data = qp(&dev);
        let old = store.allocate_pages(&[(v, 0)])[0].clone().unwrap();
        write_pattern(&mut *data, 512, old, 64 << 10, v.0, 0);
        let gen = store.free_pages(&[(v, 0)]).unwrap();
        store.release_quarantine(gen);
        let free = store.capacity().free_bytes;
        assert_eq!(store.spares_missing(), 0, "none asked for");
        store.set_spares(3).unwrap();
        assert_eq!(store.spares_missing(), 3);
        assert_eq!(store.refill_spares(2).unwrap(), 2, "at most the number asked for per call");
        assert_eq!(store.refill_spares(8).unwrap(), 1);
        assert_eq!((store.spares(), store.spares_missing()), (3, 0));
        assert_eq!(store.capacity().free_bytes, free, "spares are free space");
        let spares: BTreeSet<u64> = store.spares[&0].iter().map(|&u| store.layout.unit_offset(u)).collect();
        assert!(spares.contains(&old), "the freed slot is among the spares");
        for &s in &spares {
            assert_zero(&dev, s, 64 << 10, "a spare");
        }
        // Taking a spare writes the record block and nothing else: no zeroes, no flush.
        let before = dev.writes();
        let got = store.allocate_pages(&[(v, 5)])[0].clone().unwrap();
        assert!(spares.contains(&got), "page 5 got slot {got}, not a spare");
        assert_eq!(dev.writes() - before, 1, "one metadata write");
        assert_eq!(store.spares_missing(), 1);
        // Spares survive a reopen, as spares, and stay clear of mapped slots.
        drop(store);
        let mut store = reopen(&dev);
        assert_eq!(store.spares(), 2);
        assert_eq!(store.volume(v).unwrap().pages.get(5), Some(got));
        check_slots_disjoint(&store);
        // Out of spares, a first write zeroes its slot as before.
        let taken = store.allocate_pages(&[(v, 6), (v, 7)]);
        assert!(taken.iter().all(|r| spares.contains(r.as_ref().unwrap())), "the spares left: {taken:?}");
        assert_eq!(store.spares(), 0);
        let before = dev.writes();
        let fresh = store.allocate_pages(&[(v, 9)])[0].clone().unwrap();
        assert!(!spares.contains(&fresh));
        assert!(dev.writes() - before >= 2, "zeroes and the record");
        assert_zero(&dev, fresh, 64 << 10, "a freshly zeroed slot");
        check_slots_disjoint(&store);
        // None wanted any more: every spare goes back, on the device too.
        store.set_spares(2).unwrap();
        assert_eq!(store.refill_spares(4).unwrap(), 2);
        let free = store.capacity().free_bytes;
        store.set_spares(0).unwrap();
        assert_eq!((store.spares(), store.capacity().free_bytes), (0, free));
        assert_eq!(store.refill_spares(4).unwrap(), 0);
        drop(store);
        let store = reopen(&dev);
        assert_eq!((store.spares(), store.capacity().free_bytes), (0, free));
        assert!(store.records.values().all(|r| !r.is_spare()));
        check_slots_disjoint(&store);
    }

    #[test]
    fn spares_make_room_when_the_space_is_needed() {
        let dev = RamDevice::new(8 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let small = store.create_volume("small", 64 * MIB, 64 << 10, 512).unwrap().info.id;
        let big = store.create_volume("big", 64 * MIB, MIB, 512).unwrap().info.id;
        store.set_spares(4).unwrap();
        assert_eq!(store.refill_spares(4).unwrap(), 4);
        // The spares are of the first volume's page size; the big volume's pages take
        // space the allocator has, then the space spares held.
        let total = store.capacity().free_bytes;
        let mut mapped = 0;
        for p in 0.. {
            match store.allocate_pages(&[(big, p)])[0] {
                Ok(_) => mapped += MIB,
                Err(StoreError::NoSpace { .. }) => break,
                Err(ref e) => panic!("{e}"),
            }
        }
        assert_eq!(store.spares(), 0, "given back for the big pages");
        let left = store.capacity().free_bytes;
        assert_eq!(left + mapped, total);
        // What is left (less than a big page) goes to small pages; none fails while
        // space remains, and refilling never takes the last slots.
        let n = left / (64 << 10);
        let results = store.allocate_pages(&(0..n).map(|p| (small, p)).collect::<Vec<_>>());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(store.capacity().free_bytes, 0);
        assert_eq!(store.refill_spares(4).unwrap(), 0);
        check_slots_disjoint(&store);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let dev = RamDevice::new(64 * MIB, 4096).unwrap();
        let mut store = format(&dev);
        let field = |r: Result<Arc<VolumeView>>| match r {
            Err(StoreError::Invalid { field, allowed, .. }) => (field, allowed),
            other => panic!("expected an invalid-argument error, got {other:?}"),
        };
        assert_eq!(field(store.create_volume("Bad Name", MIB, MIB, 4096)).0, "name");
        let (f, allowed) = field(store.create_volume("v", MIB, 3 * MIB, 4096));
        assert_eq!(f, "page_size");
        assert!(allowed.contains("65536") && allowed.contains("1073741824"), "{allowed}");
        assert_eq!(field(store.create_volume("v", MIB, 32 << 10, 4096)).0, "page_size");
        assert_eq!(field(store.create_volume("v", MIB, 2 << 30, 4096)).0, "page_size");
        let (f, allowed) = field(store.create_volume("v", MIB, MIB, 512));
        assert_eq!(f, "block_size");
        assert!(allowed.contains("512 or 4096") && allowed.contains("4096"), "{allowed}");
        assert_eq!(field(store.create_volume("v", MIB, MIB, 1024)).0, "block_size");
        assert_eq!(field(store.create_volume("v", 0, MIB, 4096)).0, "size_bytes");
        assert_eq!(field(store.create_volume("v", MIB + 512, MIB, 4096)).0, "size_bytes");
        assert_eq!(field(store.create_volume("v", 1 << 62, 64 << 10, 4096)).0, "size_bytes");
        let v = store.create_volume("v", 2 * MIB, MIB, 4096).unwrap();
        assert_eq!(field(store.grow_volume(v.info.id, MIB)).0, "size_bytes");
        let msg = store.create_volume("w", MIB, 3 * MIB, 4096).unwrap_err().to_string();
        assert!(msg.contains("page_size") && msg.contains("3145728"), "{msg}");
    }

    #[test]
    fn overlapping_records_are_refused_at_open() {
        let dev = RamDevice::new(64 * MIB, 512).unwrap();
        let mut store = format(&dev);
        let v = store.create_volume("v", 4 * MIB, MIB, 512).unwrap().info.id;
        let w = store.create_volume("w", 4 * MIB, 64 << 10, 512).unwrap().info.id;
        let slot = allocate(&mut store, &[(v, 0)])[0];
        // Forge a record for a page of `w` inside the slot of `v`'s page 0.
        let unit = store.layout().unit_at(slot) + 4;
        store.records.insert(unit, SlotRecord { volume_id: w.0, order: 0, flags: 0, page: 1 });
        let block = store.layout().slot_block_of(unit);
        store.write_blocks(&[block]).unwrap();
        drop(store);
        let err = PageStore::open(&dev, qp(&dev)).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("overlaps")), "{err}");
    }

    #[test]
    fn superblock_copies_of_another_format_do_not_count() {
        let uuid = [3; 16];
        let sb = |format_id| Superblock {
            format_id,
            device_bytes: 64 * MIB,
            device_block_size: 512,
            layout: Layout::for_device(64 * MIB).unwrap(),
            uuid,
            next_volume_id: 1,
        };
        let (mut a, mut b) = (vec![0u8; META_BLOCK_SIZE], vec![0u8; META_BLOCK_SIZE]);
        sb(5).encode(&mut a);
        meta::seal(&mut a, Kind::Super, Header { seq: 9, index: 0, format_id: 5 });
        sb(6).encode(&mut b);
        meta::seal(&mut b, Kind::Super, Header { seq: 4, index: 0, format_id: 6 });
        let (won, copies) = pick_superblock(&a, &b).unwrap().unwrap();
        assert_eq!(won.format_id, 5);
        assert_eq!(copies.seq, [9, 0]);
        assert_eq!(copies.next(), (1, 10), "the stale copy is overwritten, not the winner");
        a[100] ^= 1;
        let (won, copies) = pick_superblock(&a, &b).unwrap().unwrap();
        assert_eq!((won.format_id, copies.seq), (6, [0, 4]));
    }

    /// The scripted life of a store that the crash test cuts short everywhere. Calls
    /// `acked` after each operation returns, as the point where it is acknowledged.
    fn script(dev: &CrashDevice, acked: &mut dyn FnMut(&PageStore)) {
        let Ok(mut store) = PageStore::format(dev, qp(dev), [5; 16]) else { return };
        acked(&store);
        // Take the first 252 units out of the allocator (no records: the space is free
        // again after a reopen), so that the script's slots straddle the boundary
        // between the first two slot record blocks.
        for (unit, order) in [(0, 7), (128, 6), (192, 5), (224, 4), (240, 3), (248, 2)] {
            store.alloc.mark_used(unit, order).unwrap();
        }
        let block = u64::from(dev.info().block_size);
        let mut data = qp(dev);
        let mut alloc = |store: &mut PageStore, reqs: &[(VolumeId, u64)]| {
            for (&(v, p), r) in reqs.iter().zip(store.allocate_pages(reqs)) {
                let slot = r.unwrap();
                let page_size = store.volume(v).unwrap().info.page_size;
                write_pattern(&mut *data, block, slot, page_size, v.0, p);
            }
        };
        let a = store.create_volume("alpha", MIB, 64 << 10, 4096).unwrap().info.id;
        acked(&store);
        let b = store.create_volume("beta", MIB, 128 << 10, 512).unwrap().info.id;
        acked(&store);
        alloc(&mut store, &[(a, 0), (a, 1), (a, 2), (a, 5), (b, 0)]);
        acked(&store);
        alloc(&mut store, &[(a, 2), (b, 3), (a, 7), (a, 7)]);
        acked(&store);
        let gen = store.free_pages(&[(a, 1), (a, 5)]).unwrap();
        store.release_quarantine(gen);
        acked(&store);
        // Reuses a freed slot that still holds page 1's data.
        alloc(&mut store, &[(a, 9)]);
        acked(&store);
        store.grow_volume(a, 2 * MIB).unwrap();
        acked(&store);
        alloc(&mut store, &[(a, 20), (a, 31)]);
        acked(&store);
        let gen = store.delete_volume(b).unwrap();
        store.release_quarantine(gen);
        acked(&store);
        // Spares zeroed ahead (over slots that held beta's and alpha's data), taken by
        // gamma's first pages below, and found again at open after the crash.
        store.set_spares(3).unwrap();
        store.refill_spares(2).unwrap();
        acked(&store);
        store.refill_spares(2).unwrap();
        acked(&store);
        let c = store.create_volume("gamma", MIB / 2, 64 << 10, 4096).unwrap().info.id;
        acked(&store);
        alloc(&mut store, &(0..8).map(|p| (c, p)).collect::<Vec<_>>());
        acked(&store);
        store.free_pages(&[(c, 3)]).unwrap();
        acked(&store);
        store.delete_volume(a).unwrap();
        acked(&store);
        let d = store.create_volume("delta", MIB, 64 << 10, 512).unwrap().info.id;
        acked(&store);
        alloc(&mut store, &[(d, 0), (d, 15)]);
        acked(&store);
    }

    /// `got` must equal `before` where `before` and `after` agree, and be one of them
    /// where they differ (the operation in flight at the crash may or may not be in).
    fn check_between<K: Ord + Copy + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        what: &str,
        got: &BTreeMap<K, V>,
        before: &BTreeMap<K, V>,
        after: &BTreeMap<K, V>,
    ) {
        let keys: BTreeSet<K> = got.keys().chain(before.keys()).chain(after.keys()).copied().collect();
        for k in keys {
            let (g, b, a) = (got.get(&k), before.get(&k), after.get(&k));
            assert!(g == b || g == a, "{what} {k:?}: found {g:?}, acknowledged {b:?}, in flight {a:?}");
        }
    }

    const CRASH_DEVICE_BYTES: u64 = 24 * MIB;

    /// Cuts the script at every write, in every [`Loss`] mode, with the completion
    /// order (and the choices of [`Loss::Any`]) drawn from `seed`.
    fn crash_runs(seed: u64) {
        // The uncut run: the state acknowledged after each operation, and how many
        // writes the device had seen by then.
        let dev = CrashDevice::new(CRASH_DEVICE_BYTES, 512, None, seed);
        let mut history: Vec<(u64, State)> = Vec::new();
        script(&dev, &mut |store| history.push((dev.writes(), state_of(store))));
        let total = dev.writes();
        assert!(total > 60, "the script writes {total} times");
        let mut runs = 0;
        let mut with_spares = 0;
        for at in 0..=total {
            let cut = seed << 32 | at;
            for loss in [Loss::Unflushed, Loss::Completed, Loss::InFlight, Loss::Torn, Loss::Any(cut)] {
                let dev = CrashDevice::new(CRASH_DEVICE_BYTES, 512, Some(Plan { at, loss }), cut);
                script(&dev, &mut |_| {});
                assert_eq!(dev.writes(), total, "the script's writes do not depend on the completion order");
                dev.crash();
                with_spares += usize::from(check_crash(&dev, &history, at, loss) > 0);
                runs += 1;
            }
        }
        eprintln!("seed {seed}: {runs} crash runs over {total} writes, {with_spares} of them reopened with spares");
        assert!(with_spares >= runs / 20, "the crash points cover the spares: {with_spares} of {runs}");
    }

    #[test]
    fn every_crash_point_keeps_every_acknowledged_operation_seed_1() {
        crash_runs(1);
    }

    #[test]
    fn every_crash_point_keeps_every_acknowledged_operation_seed_2() {
        crash_runs(2);
    }

    #[test]
    fn every_crash_point_keeps_every_acknowledged_operation_seed_3() {
        crash_runs(3);
    }

    /// Returns how many spares the reopened store held.
    fn check_crash(dev: &CrashDevice, history: &[(u64, State)], at: u64, loss: Loss) -> usize {
        let ctx = format!("crash at write {at} ({loss:?})");
        // Operations acknowledged before the crash, and the one in flight.
        let Some(acked) = history.iter().rposition(|(w, _)| *w <= at) else {
            // Format itself was cut short: either no store or an empty one.
            match PageStore::open(dev, qp(dev)) {
                Err(StoreError::NotFormatted | StoreError::Damaged(_)) => {}
                Ok(store) => assert_eq!(state_of(&store), State::default(), "{ctx}"),
                Err(e) => panic!("{ctx}: {e}"),
            }
            return 0;
        };
        let before = &history[acked].1;
        let after = &history.get(acked + 1).unwrap_or(&history[acked]).1;
        let mut store = PageStore::open(dev, qp(dev)).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        let got = state_of(&store);
        check_between(&format!("{ctx}: volume"), &got.volumes, &before.volumes, &after.volumes);
        check_between(&format!("{ctx}: page"), &got.maps, &before.maps, &after.maps);
        assert!(got.maps.keys().all(|(v, _)| got.volumes.contains_key(v)), "{ctx}");
        // Deletion is all or nothing: a volume that survives keeps all its pages.
        for id in got.volumes.keys().filter(|id| !after.volumes.contains_key(id)) {
            let pages =
                |s: &State| s.maps.iter().filter(|((v, _), _)| v == id).map(|(k, o)| (*k, *o)).collect::<Vec<_>>();
            assert_eq!(pages(&got), pages(before), "{ctx}: volume {id} half deleted");
        }
        check_slots_disjoint(&store);
        check_slot_contents(dev, &store, &ctx);
        for (&order, units) in &store.spares {
            for &u in units {
                assert_zero(dev, store.layout.unit_offset(u), UNIT_BYTES << order, &ctx);
            }
        }
        let spares = store.spares();
        // The store keeps working after the crash, and never reuses an acknowledged id.
        let max_id = history[..=acked].iter().flat_map(|(_, s)| s.volumes.keys()).max().copied().unwrap_or(0);
        let v = store.create_volume("zz", MIB, 64 << 10, 512).unwrap().info.id;
        assert!(v.0 > max_id, "{ctx}: volume id {} reused", v.0);
        let slot = store.allocate_pages(&[(v, 3)])[0].clone().unwrap();
        let expected = state_of(&store);
        assert_eq!(expected.maps.get(&(v.0, 3)), Some(&slot));
        drop(store);
        let store = reopen(dev);
        assert_eq!(state_of(&store), expected, "{ctx}: after further changes");
        check_slots_disjoint(&store);
        spares
    }

    #[test]
    fn eight_gib_device_opens_with_few_large_reads() {
        let dev = CrashDevice::new(8 << 30, 4096, None, 1);
        let mut store = format(&dev);
        let v = store.create_volume("big", 64 << 30, 64 << 10, 4096).unwrap().info.id;
        // Steer the slots to the end of the device (the last record blocks): hold every
        // whole GiB while allocating, then give them back.
        let held: Vec<u64> = std::iter::from_fn(|| store.alloc.allocate(ORDER_MAX)).collect();
        assert_eq!(held.len(), 7);
        let slots = allocate(&mut store, &(0..600).map(|p| (v, p * 1000)).collect::<Vec<_>>());
        for u in held {
            store.alloc.free(u, ORDER_MAX);
        }
        assert!(slots.iter().all(|&s| s >= 7 << 30));
        let state = state_of(&store);
        let layout = *store.layout();
        drop(store);
        let reads_before = dev.state.lock().unwrap().reads;
        let t = std::time::Instant::now();
        let store = reopen(&dev);
        let elapsed = t.elapsed();
        let reads = dev.state.lock().unwrap().reads - reads_before;
        assert_eq!(state_of(&store), state);
        assert_eq!(store.capacity().used_bytes, 600 * (64 << 10));
        assert!(layout.slot_blocks > 500);
        // One batch for the superblocks, then the areas in reads of half a buffer pool.
        assert!(reads <= 3 + layout.meta_bytes() / (META_BUF_BYTES_MAX as u64 / 2), "{reads} reads");
        eprintln!("8 GiB: {} metadata bytes read in {reads} requests, open took {elapsed:?}", layout.meta_bytes());
    }
}
