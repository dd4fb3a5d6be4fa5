//! The one low-level module of the NVMe driver: VFIO, MMIO and DMA memory.
//!
//! VFIO hands a PCI function to userspace safely: the kernel's `vfio-pci` driver owns
//! the device, a *group* (`/dev/vfio/N`) is the smallest set of devices the IOMMU can
//! isolate, and a *container* (`/dev/vfio/vfio`) holds the IOMMU page tables that
//! translate the device's DMA addresses (IOVAs) into our memory. Opening the device
//! gives a file descriptor whose regions (BARs, PCI config space) are reached with
//! `mmap` or `pread`/`pwrite` at fixed offsets.
//!
//! Everything that needs `unsafe` or `libc` in the driver lives here and nowhere else:
//! - [`Mmio`]: a mapped register window (BAR0, or plain memory in unit tests) with
//!   volatile 32/64-bit accessors;
//! - [`DmaArea`]: page-aligned memory of the driver's own (queues, PRP lists, Identify
//!   buffers), mapped into the IOMMU, accessed only through raw pointers because the
//!   device may write it at any time;
//! - [`VfioPci`]: container + group + device, BAR0, bus mastering, IOMMU maps.
//!
//! The test seam (a `#[cfg(test)]` twin, in the manner of rust-vmm's `vfio-ioctls`):
//! in unit-test builds only, [`Mmio`] may forward its accesses to a [`DeviceModel`]
//! (a software NVMe controller, `test_utils.rs`), and [`VfioPci`] may stand for such a
//! model instead of a VFIO device, its DMA areas being plain memory with IOVA =
//! virtual address that the model is told about. Outside `cfg(test)` the model field
//! and the model variant do not exist, so the register accessors of the real path
//! compile to exactly what they were: the seam costs nothing there.
//!
//! IOVA layout (one container per controller): the peer's buffer pool is mapped at
//! [`POOL_IOVA_BASE`] in every container, so that one `DmaSeg::iova` is valid for every
//! controller; the driver's own areas come from a bump allocator starting at
//! [`AREA_IOVA_BASE`]. Both lie below 2^39, the smallest address width of the IOMMUs
//! we meet (QEMU's intel-iommu default).

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

/// IOVA at which the buffer pool's region is mapped.
pub const POOL_IOVA_BASE: u64 = 1 << 32;
/// Largest pool region the IOVA layout leaves room for.
pub const POOL_BYTES_MAX: u64 = AREA_IOVA_BASE - POOL_IOVA_BASE;
/// First IOVA of the driver's own DMA areas.
pub const AREA_IOVA_BASE: u64 = 1 << 37;
/// The controller's memory page size (CC.MPS = 0): PRP entries and queues use it.
pub const PAGE_SIZE: usize = 4096;

const _: () = assert!(POOL_IOVA_BASE < AREA_IOVA_BASE);
const _: () = assert!(AREA_IOVA_BASE < (1 << 39));

/// VFIO region index of BAR0 and of the PCI configuration space (`linux/vfio.h`).
const REGION_BAR0: u32 = 0;
const REGION_CONFIG: u32 = 7;
/// PCI command register: memory space enable, bus master enable, INTx disable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Errors opening a device or mapping memory.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// `/dev/vfio/vfio` is missing: the vfio modules are not loaded.
    #[error("/dev/vfio/vfio missing: load the vfio, vfio_iommu_type1 and vfio-pci modules")]
    NoVfio,
    /// The PCI function does not exist.
    #[error("no PCI function {0} in /sys/bus/pci/devices")]
    NoDevice(String),
    /// The device has no IOMMU group: the machine has no (enabled) IOMMU.
    #[error("{0} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)")]
    NoIommu(String),
    /// The device is not bound to `vfio-pci`.
    #[error("{bdf} is bound to {driver:?}, not vfio-pci (see nvme::bind)")]
    NotVfioPci {
        /// PCI address.
        bdf: String,
        /// Its current driver, if any.
        driver: Option<String>,
    },
    /// Opening the group failed with EBUSY: another process holds it.
    #[error("VFIO group {0} is in use by another process")]
    InUse(String),
    /// Opening the group or container was refused.
    #[error("permission denied opening {0}: run as root or give the user the group device")]
    Permission(String),
    /// The group holds devices not bound to vfio-pci.
    #[error("VFIO group of {0} is not viable: bind every device of the group to vfio-pci")]
    NotViable(String),
    /// Another VFIO failure.
    #[error("VFIO: {0}")]
    Vfio(#[source] vfio_ioctls::VfioError),
    /// BAR0 is not memory-mappable or too small.
    #[error("BAR0 of {bdf} cannot be mapped ({size} bytes, flags {flags:#x})")]
    Bar {
        /// PCI address.
        bdf: String,
        /// Region size.
        size: u64,
        /// Region flags.
        flags: u32,
    },
    /// Bus mastering could not be enabled.
    #[error("could not enable bus mastering on {0}")]
    BusMaster(String),
    /// An `mmap` failed.
    #[error("mmap of {bytes} bytes failed: {source}")]
    Map {
        /// Size asked for.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The IOVA space is exhausted, or a region is too large for it.
    #[error("IOVA space exhausted ({0} bytes asked)")]
    IovaSpace(u64),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, VfioError>;

/// A software device behind a register window and an IOMMU (unit tests only).
///
/// [`Mmio`] forwards every register access to it; [`VfioPci::model`] tells it which
/// IOVA ranges are mapped (the IOVA of test memory is its virtual address), so that it
/// can refuse DMA anywhere else, as an IOMMU would.
#[cfg(test)]
pub trait DeviceModel: Send + Sync {
    /// A 32-bit register read at `off`.
    fn read32(&self, off: usize) -> u32;
    /// A 32-bit register write at `off`.
    fn write32(&self, off: usize, value: u32);
    /// `iova..iova+len` is mapped (IOVA = virtual address).
    fn dma_map(&self, iova: u64, len: usize);
    /// `iova..iova+len` is no longer mapped.
    fn dma_unmap(&self, iova: u64, len: usize);
}

/// A mapped register window read and written with volatile accesses.
///
/// Invariant: `ptr..ptr+len` is mapped for as long as `_owner` lives.
pub struct Mmio {
    ptr: *mut u8,
    len: usize,
    _owner: MmapRaw,
    /// Unit tests: the software device that answers instead of the memory.
    #[cfg(test)]
    model: Option<Arc<dyn DeviceModel>>,
}

// SAFETY: MMIO registers are accessed only with volatile loads and stores of naturally
// aligned u32/u64 (never through references), which are sound from any thread; the
// mapping lives as long as the Mmio.
unsafe impl Send for Mmio {}
// SAFETY: as above; concurrent volatile accesses to distinct registers (doorbells of
// different queues) are what the hardware expects.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Plain anonymous memory posing as registers (unit tests of the queue logic).
    pub fn anonymous(len: usize) -> Result<Mmio> {
        let map = MmapOptions::new().len(len).map_anon().map_err(|source| VfioError::Map { bytes: len, source })?;
        let raw = MmapRaw::from(map);
        Ok(Mmio {
            ptr: raw.as_mut_ptr(),
            len,
            _owner: raw,
            #[cfg(test)]
            model: None,
        })
    }

    /// A window of `len` bytes whose accesses go to `model` (unit tests).
    #[cfg(test)]
    pub fn model(len: usize, model: Arc<dyn DeviceModel>) -> Result<Mmio> {
        let mut mmio = Mmio::anonymous(len)?;
        mmio.model = Some(model);
        Ok(mmio)
    }

    /// Size of the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a window has registers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the 32-bit register at `off`.
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "register {off:#x} outside BAR");
        #[cfg(test)]
        if let Some(model) = &self.model {
            return model.read32(off);
        }
        // SAFETY: aligned and inside the mapping (asserted); volatile because the
        // device changes registers behind the compiler's back.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    /// Writes the 32-bit register at `off`.
    #[inline]
    pub fn write32(&self, off: usize, value: u32) {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "register {off:#x} outside BAR");
        // Everything written to queue memory before this register write (SQ entries,
        // PRP lists) must be visible to the device first.
        std::sync::atomic::fence(Ordering::Release);
        #[cfg(test)]
        if let Some(model) = &self.model {
            return model.write32(off, value);
        }
        // SAFETY: aligned and inside the mapping (asserted); a volatile store is a
        // single MMIO write.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), value) }
    }

    /// Reads a 64-bit register as two 32-bit halves (low first), as the spec allows.
    pub fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }

    /// Writes a 64-bit register as two 32-bit halves (low first).
    pub fn write64(&self, off: usize, value: u64) {
        self.write32(off, quire_wire::lo32(value));
        self.write32(off + 4, quire_wire::hi32(value));
    }
}

/// Page-aligned memory of the driver's own, shared with the device.
///
/// Never turned into a Rust reference: the device may write it at any time, so
/// every access is a raw-pointer volatile access or copy (the rule of
/// `VfioContainer::vfio_dma_map`).
pub struct DmaArea {
    ptr: *mut u8,
    len: usize,
    iova: u64,
    /// The container it is mapped into (None: unit tests, IOVA = virtual address).
    container: Option<Arc<VfioContainer>>,
    /// Unit tests: the software device it is mapped into.
    #[cfg(test)]
    model: Option<Arc<dyn DeviceModel>>,
    _map: MmapRaw,
}

// SAFETY: the area is plain memory accessed through raw pointers by its single owner
// (a queue pair or the admin queue); moving it moves that ownership.
unsafe impl Send for DmaArea {}

impl DmaArea {
    /// Zeroed memory with IOVA = virtual address and no IOMMU mapping (unit tests).
    pub fn anonymous(len: usize) -> Result<DmaArea> {
        let map = map_zeroed(len)?;
        let ptr = map.as_mut_ptr();
        Ok(DmaArea {
            ptr,
            len: map.len(),
            iova: ptr as u64,
            container: None,
            #[cfg(test)]
            model: None,
            _map: map,
        })
    }

    /// The virtual address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The device address.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Size in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets every byte to zero.
    pub fn zero(&self) {
        // SAFETY: the whole range is our mapping; no reference to it exists.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len) }
    }

    /// Copies `src` into the area at `off`.
    #[inline]
    pub fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len, "write {off}+{} beyond area {}", src.len(), self.len);
        // SAFETY: in bounds (asserted); `src` is ordinary memory that cannot overlap
        // this mapping because no reference into the mapping is ever created.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    /// Writes one little-endian u64 at `off` (PRP list entries).
    #[inline]
    pub fn write_u64(&self, off: usize, value: u64) {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "u64 write at {off} beyond area");
        // SAFETY: aligned and in bounds (asserted).
        unsafe { std::ptr::write(self.ptr.add(off).cast::<u64>(), value.to_le()) }
    }

    /// Copies `dst.len()` bytes at `off` out of the area, volatile (the device writes it).
    #[inline]
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.len, "read {off}+{} beyond area {}", dst.len(), self.len);
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds (asserted); a volatile byte load of device-written memory.
            *b = unsafe { std::ptr::read_volatile(self.ptr.add(off + i)) };
        }
    }

    /// Reads the u16 at `off`, volatile (a completion entry's status and phase).
    #[inline]
    pub fn read_u16(&self, off: usize) -> u16 {
        assert!(off.is_multiple_of(2) && off + 2 <= self.len, "u16 read at {off} beyond area");
        // SAFETY: aligned and in bounds (asserted); volatile: the device writes it.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u16>()) })
    }

    /// Reads the 16 bytes at `off` (one completion entry) with two volatile u64 loads.
    #[inline]
    pub fn read16(&self, off: usize) -> [u8; 16] {
        assert!(off.is_multiple_of(16) && off + 16 <= self.len, "entry at {off} beyond area");
        // SAFETY: aligned and in bounds (asserted); volatile: the device writes it.
        let (lo, hi) = unsafe {
            let p = self.ptr.add(off).cast::<u64>();
            (std::ptr::read_volatile(p), std::ptr::read_volatile(p.add(1)))
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_ne_bytes());
        out[8..].copy_from_slice(&hi.to_ne_bytes());
        out
    }
}

impl Drop for DmaArea {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            // The mapping must go before the memory does (the MmapRaw field drops after
            // this body). A failure leaves pages pinned until the container closes.
            if let Err(e) = container.vfio_dma_unmap(self.iova, self.len) {
                tracing::warn!(iova = self.iova, len = self.len, "IOMMU unmap failed: {e}");
            }
        }
        #[cfg(test)]
        if let Some(model) = &self.model {
            model.dma_unmap(self.iova, self.len);
        }
    }
}

fn map_zeroed(len: usize) -> Result<MmapRaw> {
    assert!(len > 0);
    let bytes = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let map = MmapOptions::new().len(bytes).populate().map_anon().map_err(|source| VfioError::Map { bytes, source })?;
    Ok(MmapRaw::from(map))
}

/// An NVMe controller (any PCI function) opened through VFIO.
pub struct VfioPci {
    bdf: String,
    /// BAR0: the controller's registers and doorbells.
    bar0: Arc<Mmio>,
    /// Next free IOVA for a driver area.
    next_iova: AtomicU64,
    /// Pool regions mapped through [`VfioPci::map_pool`] (IOVA, length).
    pool_maps: std::sync::Mutex<Vec<(u64, usize)>>,
    backend: Backend,
}

/// What stands behind a [`VfioPci`]: a VFIO device, or (unit tests) a software model.
enum Backend {
    Vfio {
        /// Held for the device's file descriptor: it keeps the function ours.
        _device: VfioDevice,
        container: Arc<VfioContainer>,
    },
    #[cfg(test)]
    Model(Arc<dyn DeviceModel>),
}

impl VfioPci {
    /// Opens `bdf` (e.g. `0000:00:04.0`), which must be bound to `vfio-pci`: container,
    /// group, device, BAR0 mapping, memory space and bus mastering on.
    pub fn open(bdf: &str) -> Result<VfioPci> {
        let sysfs = PathBuf::from("/sys/bus/pci/devices").join(bdf);
        precheck(bdf, &sysfs)?;
        let container = Arc::new(VfioContainer::new(None).map_err(|e| open_error(bdf, e))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(&sysfs, ops, false).map_err(|e| open_error(bdf, e))?;
        let bar0 = map_bar0(bdf, &device)?;
        enable_bus_master(bdf, &device)?;
        Ok(VfioPci {
            bdf: bdf.to_owned(),
            bar0: Arc::new(bar0),
            next_iova: AtomicU64::new(AREA_IOVA_BASE),
            pool_maps: std::sync::Mutex::new(Vec::new()),
            backend: Backend::Vfio { _device: device, container },
        })
    }

    /// A function whose BAR0 and IOMMU are `model` (unit tests): DMA areas are plain
    /// memory with IOVA = virtual address, announced to the model.
    #[cfg(test)]
    pub fn model(name: &str, bar_len: usize, model: Arc<dyn DeviceModel>) -> Result<VfioPci> {
        Ok(VfioPci {
            bdf: name.to_owned(),
            bar0: Arc::new(Mmio::model(bar_len, model.clone())?),
            next_iova: AtomicU64::new(0),
            pool_maps: std::sync::Mutex::new(Vec::new()),
            backend: Backend::Model(model),
        })
    }

    /// PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// BAR0 registers.
    pub fn bar0(&self) -> &Arc<Mmio> {
        &self.bar0
    }

    /// A zeroed DMA area of at least `len` bytes mapped into this device's IOMMU.
    pub fn alloc_area(&self, len: usize) -> Result<DmaArea> {
        let container = match &self.backend {
            Backend::Vfio { container, .. } => container,
            #[cfg(test)]
            Backend::Model(model) => {
                let mut area = DmaArea::anonymous(len)?;
                model.dma_map(area.iova, area.len);
                area.model = Some(model.clone());
                return Ok(area);
            }
        };
        let map = map_zeroed(len)?;
        let bytes = map.len();
        let iova = self.next_iova.fetch_add(bytes as u64, Ordering::Relaxed);
        if iova + bytes as u64 > (1 << 39) {
            return Err(VfioError::IovaSpace(bytes as u64));
        }
        let ptr = map.as_mut_ptr();
        // SAFETY: `ptr..ptr+bytes` is a fresh anonymous mapping owned by the DmaArea we
        // return, which unmaps the IOVA range before the memory (Drop), and which never
        // creates Rust references into it (raw-pointer accessors only).
        unsafe { container.vfio_dma_map(iova, bytes, ptr) }.map_err(VfioError::Vfio)?;
        Ok(DmaArea {
            ptr,
            len: bytes,
            iova,
            container: Some(container.clone()),
            #[cfg(test)]
            model: None,
            _map: map,
        })
    }

    /// Maps the buffer pool's region at [`POOL_IOVA_BASE`] and returns that IOVA.
    ///
    /// The pages are pinned by the mapping until [`VfioPci`] is dropped; the pool must
    /// outlive the device for its buffers to keep meaning anything to the device.
    pub fn map_pool(&self, pool: &crate::dma::DmaPool) -> Result<u64> {
        let (addr, len) = pool.region();
        assert!(!addr.is_null());
        assert!((addr as usize).is_multiple_of(PAGE_SIZE), "pool region must be page aligned");
        if len as u64 > POOL_BYTES_MAX {
            return Err(VfioError::IovaSpace(len as u64));
        }
        let bytes = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let container = match &self.backend {
            Backend::Vfio { container, .. } => container,
            #[cfg(test)]
            Backend::Model(model) => {
                // No IOMMU translation: the pool's IOVA is its virtual address.
                model.dma_map(addr as u64, bytes);
                self.pool_maps.lock().expect("not poisoned").push((addr as u64, bytes));
                return Ok(addr as u64);
            }
        };
        // SAFETY: the kernel pins the pages, so the device can only ever reach this
        // pool's memory. The pool hands its chunks out as raw-pointer DmaBufs whose
        // CPU access is fenced by the submit/poll contract of the queue pair, the
        // exclusion vfio_dma_map asks for.
        unsafe { container.vfio_dma_map(POOL_IOVA_BASE, bytes, addr) }.map_err(VfioError::Vfio)?;
        self.pool_maps.lock().expect("not poisoned").push((POOL_IOVA_BASE, bytes));
        Ok(POOL_IOVA_BASE)
    }
}

impl Drop for VfioPci {
    fn drop(&mut self) {
        let maps = std::mem::take(&mut *self.pool_maps.lock().expect("not poisoned"));
        let container = match &self.backend {
            Backend::Vfio { container, .. } => container,
            #[cfg(test)]
            Backend::Model(model) => {
                maps.iter().for_each(|&(iova, len)| model.dma_unmap(iova, len));
                return;
            }
        };
        for (iova, len) in maps {
            if let Err(e) = container.vfio_dma_unmap(iova, len) {
                tracing::warn!(iova, len, "IOMMU unmap of the pool failed: {e}");
            }
        }
    }
}

fn precheck(bdf: &str, sysfs: &std::path::Path) -> Result<()> {
    if !std::path::Path::new("/dev/vfio/vfio").exists() {
        return Err(VfioError::NoVfio);
    }
    if !sysfs.exists() {
        return Err(VfioError::NoDevice(bdf.to_owned()));
    }
    let group = fs::read_link(sysfs.join("iommu_group")).map_err(|_| VfioError::NoIommu(bdf.to_owned()))?;
    let driver =
        fs::read_link(sysfs.join("driver")).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(VfioError::NotVfioPci { bdf: bdf.to_owned(), driver });
    }
    let group_dev = PathBuf::from("/dev/vfio").join(group.file_name().unwrap_or_default());
    match fs::OpenOptions::new().read(true).write(true).open(&group_dev) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(VfioError::InUse(group_dev.display().to_string())),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Err(VfioError::Permission(group_dev.display().to_string()))
        }
        Err(_) => Ok(()), // let vfio-ioctls report it with its own words
    }
}

fn enable_bus_master(bdf: &str, device: &VfioDevice) -> Result<()> {
    let mut word = [0u8; 2];
    device.region_read(REGION_CONFIG, &mut word, PCI_COMMAND);
    let command = u16::from_le_bytes(word) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    device.region_write(REGION_CONFIG, &command.to_le_bytes(), PCI_COMMAND);
    device.region_read(REGION_CONFIG, &mut word, PCI_COMMAND);
    let back = u16::from_le_bytes(word);
    if back & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER) != PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER {
        return Err(VfioError::BusMaster(bdf.to_owned()));
    }
    Ok(())
}

fn open_error(bdf: &str, e: vfio_ioctls::VfioError) -> VfioError {
    match e {
        vfio_ioctls::VfioError::GroupViable => VfioError::NotViable(bdf.to_owned()),
        vfio_ioctls::VfioError::OpenContainer(io) if io.kind() == ErrorKind::PermissionDenied => {
            VfioError::Permission("/dev/vfio/vfio".into())
        }
        vfio_ioctls::VfioError::OpenGroup(io, g) if io.raw_os_error() == Some(libc::EBUSY) => VfioError::InUse(g),
        other => VfioError::Vfio(other),
    }
}

fn map_bar0(bdf: &str, device: &VfioDevice) -> Result<Mmio> {
    use std::os::fd::AsRawFd;
    let size = device.get_region_size(REGION_BAR0);
    let flags = device.get_region_flags(REGION_BAR0);
    let offset = device.get_region_offset(REGION_BAR0);
    const FLAG_MMAP: u32 = 1 << 2; // VFIO_REGION_INFO_FLAG_MMAP
    if size < 0x2000 || flags & FLAG_MMAP == 0 {
        return Err(VfioError::Bar { bdf: bdf.to_owned(), size, flags });
    }
    let len = usize::try_from(size).map_err(|_| VfioError::Bar { bdf: bdf.to_owned(), size, flags })?;
    let map = MmapOptions::new()
        .offset(offset)
        .len(len)
        .map_raw(device.as_raw_fd())
        .map_err(|source| VfioError::Map { bytes: len, source })?;
    Ok(Mmio {
        ptr: map.as_mut_ptr(),
        len,
        _owner: map,
        #[cfg(test)]
        model: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_and_area_accessors_round_trip() {
        let m = Mmio::anonymous(8192).unwrap();
        m.write64(0x28, 0x1234_5678_9abc_def0);
        assert_eq!(m.read32(0x28), 0x9abc_def0);
        assert_eq!(m.read64(0x28), 0x1234_5678_9abc_def0);
        let a = DmaArea::anonymous(100).unwrap();
        assert_eq!(a.len(), PAGE_SIZE);
        assert_eq!(a.iova(), a.ptr() as u64);
        a.write(16, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xaa, 0xbb]);
        assert_eq!(a.read_u16(30), 0xbbaa);
        assert_eq!(a.read16(16)[0..3], [1, 2, 3]);
        a.write_u64(8, 0x0102);
        let mut b = [0u8; 2];
        a.read(8, &mut b);
        assert_eq!(b, [2, 1]);
        a.zero();
        assert_eq!(a.read_u16(30), 0);
    }

    #[test]
    fn open_reports_missing_device_or_vfio_clearly() {
        let e = VfioPci::open("0000:ff:1f.7").err().expect("no such device");
        assert!(matches!(e, VfioError::NoVfio | VfioError::NoDevice(_)), "{e}");
    }
}
