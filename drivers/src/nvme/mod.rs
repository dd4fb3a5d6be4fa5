//! Userspace NVMe driver over VFIO: polled, one hardware queue pair per reactor.
//!
//! # Primer
//! An NVMe controller is driven through memory: the host puts 64-byte commands into a
//! submission queue (SQ) in its own memory and writes the new tail index to a doorbell
//! register in the controller's BAR0; the controller fetches the commands by DMA,
//! moves the data (addresses given as PRP entries), and writes 16-byte completions into
//! a completion queue (CQ), toggling a phase bit on each pass so that the host can find
//! new ones by looking at memory alone. Queue 0 is the admin queue (identify, create
//! and delete I/O queues, features, abort); I/O queues 1..N carry reads and writes.
//!
//! Quire gives each reactor its own I/O queue pair ([`NvmeDevice::create_qpair`]), so
//! the data path takes no lock: submit writes SQ entries, kick writes one doorbell per
//! batch, poll reads the CQ by phase tag and writes one CQ doorbell per batch.
//! Interrupts stay off; a sleeping reactor wakes on a timer.
//!
//! VFIO (`vfio.rs`) lets userspace own the PCI function safely: the IOMMU translates
//! the controller's DMA addresses (IOVAs) into our memory, so the buffer pool is mapped
//! once at start-up and payload buffers go to the device as PRPs without copies.
//!
//! Files: `vfio.rs` (all the unsafe: VFIO, BAR0, DMA memory), `regs.rs` (registers),
//! `ctrlr.rs` (bring-up, admin, reset, shutdown), `ring.rs` (SQ/CQ mechanics),
//! `qpair.rs` (requests, PRPs, splitting, polling, timeouts), `prp.rs`, `identify.rs`,
//! `bind.rs` (hand a device to vfio-pci and back); in unit tests, `test_utils.rs` (a
//! software NVMe controller behind the `#[cfg(test)]` seam of `vfio.rs`, on which the
//! error paths — timeouts, Abort, resets, CSTS.CFS, a vanished device — are tested).

mod bind;
mod ctrlr;
mod identify;
mod prp;
mod qpair;
mod regs;
mod ring;
#[cfg(test)]
mod test_utils;
mod vfio;

use std::sync::Arc;
use std::time::Duration;

use crate::block::{BlockDevice, DeviceInfo, QueuePair};
use crate::dma::DmaPool;

pub use bind::{bind_vfio, current_driver, nvme_functions, BindError, Binding};
pub use ctrlr::PcieController;
pub use identify::{ControllerData, NamespaceData};
pub use qpair::NvmeQueuePair;
pub use vfio::{VfioError, VfioPci, POOL_IOVA_BASE};

use quire_wire::nvme::Status;

/// Errors of the NVMe driver outside the data path.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// Opening the device or mapping memory failed.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// A register or admin command did not answer in time.
    #[error("controller timed out waiting for {0}")]
    Timeout(&'static str),
    /// The device reads all ones: it is gone.
    #[error("controller gone (registers read all ones)")]
    Gone,
    /// CSTS.CFS: controller fatal status.
    #[error("controller fatal status (CSTS.CFS)")]
    Fatal,
    /// An admin command failed.
    #[error("{what} failed: {status}")]
    Status {
        /// The command.
        what: &'static str,
        /// Its status.
        status: Status,
    },
    /// The controller or namespace lacks something the driver needs.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The namespace does not exist or is inactive.
    #[error("namespace {0} is not active")]
    Namespace(u32),
    /// A reset happened during the operation; retry it.
    #[error("controller was reset during the operation")]
    Reset,
}

/// Options of [`NvmeDevice::open`].
#[derive(Clone, Debug)]
pub struct NvmeOptions {
    /// Namespace to serve.
    pub nsid: u32,
    /// Time a command may take before it is aborted (and after as long again, the
    /// controller reset).
    pub io_timeout: Duration,
}

impl Default for NvmeOptions {
    fn default() -> NvmeOptions {
        NvmeOptions { nsid: 1, io_timeout: Duration::from_secs(30) }
    }
}

/// A namespace of an NVMe controller driven from userspace.
pub struct NvmeDevice {
    ctrl: Arc<PcieController>,
    info: DeviceInfo,
    ns: NamespaceData,
    params: qpair::NsParams,
}

impl NvmeDevice {
    /// Opens `bdf` (bound to vfio-pci), maps `pool` into its IOMMU at
    /// [`POOL_IOVA_BASE`] (and tells the pool, so take shards only afterwards), brings
    /// the controller up and identifies namespace `opts.nsid`.
    pub fn open(bdf: &str, pool: &DmaPool, opts: NvmeOptions) -> Result<NvmeDevice, NvmeError> {
        NvmeDevice::with_pci(VfioPci::open(bdf)?, pool, opts)
    }

    /// [`NvmeDevice::open`] on a function already opened (unit tests open a model).
    fn with_pci(pci: VfioPci, pool: &DmaPool, opts: NvmeOptions) -> Result<NvmeDevice, NvmeError> {
        let iova = pci.map_pool(pool)?;
        let len = pool.region().1;
        pool.set_iova_base(iova);
        let ctrl = Arc::new(PcieController::start(pci)?);
        let ns = ctrl.identify_namespace(opts.nsid)?.ok_or(NvmeError::Namespace(opts.nsid))?;
        if ns.block_size == 0 || ns.metadata_size != 0 {
            return Err(NvmeError::Unsupported("namespace format with metadata or odd block size"));
        }
        let data = ctrl.data();
        let cmd_bytes = data.max_transfer_bytes().unwrap_or(u64::MAX).min(u64::from(prp::CMD_BYTES_MAX));
        let cmd_blocks_max = u32::try_from(cmd_bytes / u64::from(ns.block_size)).expect("under 2 MiB");
        // Saturates at u32::MAX (what DeviceInfo can say).
        let max_transfer_bytes =
            u32::try_from(u64::from(cmd_blocks_max) * u64::from(ns.block_size) * u64::from(qpair::SPLIT_MAX))
                .unwrap_or(u32::MAX);
        let info = DeviceInfo {
            name: format!("nvme:{}/ns{}", ctrl.pci().bdf(), opts.nsid),
            block_size: ns.block_size,
            num_blocks: ns.nsze,
            max_transfer_bytes,
            volatile_write_cache: data.volatile_write_cache,
            deallocate_reads_zeroes: ns.deallocate_reads_zeroes,
            // PRP entries: the first may start at any dword, the rest are page aligned
            // (the driver builds them from any dword-aligned segment).
            memory_align: 4,
        };
        let params = qpair::NsParams {
            nsid: opts.nsid,
            block_size: ns.block_size,
            num_blocks: ns.nsze,
            cmd_blocks_max,
            timeout: opts.io_timeout,
            iova_window: (iova, iova + len as u64),
        };
        Ok(NvmeDevice { ctrl, info, ns, params })
    }

    /// Identify Controller data.
    pub fn controller(&self) -> &ControllerData {
        self.ctrl.data()
    }

    /// Identify Namespace data.
    pub fn namespace(&self) -> &NamespaceData {
        &self.ns
    }

    /// I/O queue pairs the controller granted (the most [`BlockDevice::create_qpair`]
    /// can hand out at once).
    pub fn io_queues(&self) -> u16 {
        self.ctrl.io_queues()
    }

    /// Largest transfer of one NVMe command in bytes (MDTS, capped at one PRP list).
    pub fn cmd_bytes_max(&self) -> u32 {
        self.params.cmd_blocks_max * self.params.block_size
    }

    /// Resets the controller now. Queue pairs re-create their queues and resubmit what
    /// was in flight on their next poll or submit.
    pub fn reset(&self) -> Result<(), NvmeError> {
        self.ctrl.reset(self.ctrl.generation())
    }

    /// Requests resubmitted after resets so far.
    pub fn resubmitted(&self) -> u64 {
        self.ctrl.resubmitted()
    }

    /// Number of resets so far.
    pub fn resets(&self) -> u64 {
        self.ctrl.generation()
    }

    fn qpair(&self, depth: u32) -> Result<NvmeQueuePair, NvmeError> {
        let cap_entries = self.ctrl.cap().mqes.min(4096);
        let entries = (depth + 1).clamp(2, cap_entries);
        let entries = u16::try_from(entries).expect("at most 4096");
        let qid = self.ctrl.qid_get().ok_or(NvmeError::Unsupported("no I/O queue left"))?;
        let build = || -> Result<NvmeQueuePair, NvmeError> {
            let pci = self.ctrl.pci();
            let ring = ring::Ring::new(
                self.ctrl.mmio().clone(),
                self.ctrl.cap(),
                qid,
                entries,
                pci.alloc_area(ring::Ring::sq_bytes(entries))?,
                pci.alloc_area(ring::Ring::cq_bytes(entries))?,
            );
            let lists = pci.alloc_area(usize::from(entries - 1) * vfio::PAGE_SIZE)?;
            NvmeQueuePair::new(self.ctrl.clone(), ring, lists, self.params)
        };
        build().inspect_err(|_| self.ctrl.qid_put(qid))
    }
}

impl BlockDevice for NvmeDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn QueuePair>> {
        let qp = self.qpair(depth).map_err(std::io::Error::other)?;
        Ok(Box::new(qp))
    }
}
