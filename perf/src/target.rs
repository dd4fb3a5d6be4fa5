//! What a transport ID opens: a target with namespaces, and I/O queues on them.
//!
//! The workload drives every kind of target through one small trait, [`IoQueue`]:
//! submit with a tag, poll for completions. NVMe/TCP queues are initiator
//! connections; RAM and FILE queues are quire-drivers queue pairs with buffers from
//! a DMA pool. PCIe queues are the VFIO NVMe driver's queue pairs: the device reaches
//! only memory mapped into its IOMMU, so the target maps one pool when it opens the
//! device and every queue takes its buffers from that pool. The admin side
//! (keep-alive, shutdown) stays with [`Target`], which the main thread owns.

use std::sync::Arc;

use quire_drivers::block::{BlockDevice, IoRequest, Op, QueuePair, SubmitError};
use quire_drivers::dma::{DmaBuf, DmaPool, PoolShard};
use quire_drivers::nvme::{NvmeDevice, NvmeError, NvmeOptions, VfioError};
use quire_drivers::ram::RamDevice;
use quire_drivers::uring::{DirectIo, UringDevice, UringOptions};

use crate::initiator::{self, Connection, Controller, ControllerOptions, DataDir};
use crate::tid::{format_size, TransportId};

/// Errors opening a target or its queues.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The NVMe/TCP side failed.
    #[error(transparent)]
    Nvme(#[from] initiator::Error),
    /// A local device could not be opened.
    #[error("{0}")]
    Device(String),
    /// Nothing to run on.
    #[error("{0}")]
    Unusable(String),
}

/// Why a queue refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// No free slot: poll, then retry.
    Full,
    /// The queue is dead (connection lost, protocol error).
    Fatal(String),
}

/// Direction of one benchmark I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Read.
    Read,
    /// Write.
    Write,
}

/// One benchmark I/O.
#[derive(Clone, Copy, Debug)]
pub struct Io {
    /// Direction.
    pub kind: IoKind,
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub nlb: u32,
    /// Bytes (nlb × block size).
    pub bytes: u32,
    /// Caller's tag (below the queue's depth).
    pub tag: u64,
}

/// What a queue calls for each completion: tag, result, the I/O's data buffer.
pub type OnDone<'a> = dyn FnMut(u64, Result<(), String>, &[u8]) + 'a;

/// A queue the workload submits to and polls.
pub trait IoQueue: Send {
    /// Queues `io`; for a write, `fill` writes the data into the I/O's buffer first.
    fn submit(&mut self, io: &Io, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), QueueError>;
    /// Hands each completion (tag, result, data buffer) to `on_done`.
    fn poll(&mut self, on_done: &mut OnDone<'_>) -> Result<usize, QueueError>;
    /// Closes the queue.
    fn close(self: Box<Self>);
}

/// A namespace of a target.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// Index of its target.
    pub target: usize,
    /// Namespace ID.
    pub nsid: u32,
    /// Block size.
    pub block_size: u32,
    /// Blocks.
    pub num_blocks: u64,
    /// Report name ("TCP  (addr:… subnqn:…) NSID 1").
    pub name: String,
    /// Largest transfer of one I/O the target accepts (NVMe: MDTS), `None` = no limit.
    pub max_io_bytes: Option<u64>,
}

enum Session {
    Tcp {
        ctrl: Box<Controller>,
        next_qid: u16,
    },
    /// A quire-drivers device. `dma` holds the buffers of a device that reaches memory
    /// through an IOMMU (PCIe): its queues split their buffers off it. Without it,
    /// each queue maps its own pool.
    Device {
        dev: Arc<dyn BlockDevice>,
        dma: Option<PoolShard>,
    },
}

/// An opened target.
pub struct Target {
    session: Session,
    /// Its namespaces.
    pub namespaces: Vec<Namespace>,
    /// One line describing it ("Attached to …").
    pub description: String,
}

/// How to open targets.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// NVMe/TCP header digests.
    pub header_digest: bool,
    /// NVMe/TCP data digests.
    pub data_digest: bool,
    /// Keep Alive Timeout.
    pub kato_ms: u32,
    /// Ask I/O queues to disable SQ flow control.
    pub disable_sqflow: bool,
    /// Bytes of the largest I/O of the run (sizes the buffers of a PCIe device).
    pub io_buf_len: usize,
    /// I/O buffers a PCIe device may need: cores × queues per namespace × depth.
    pub io_bufs: usize,
}

impl Target {
    /// Opens the target `tid` (index `index` in the run).
    pub fn open(index: usize, tid: &TransportId, o: &OpenOptions) -> Result<Target, TargetError> {
        match tid {
            TransportId::Tcp { addr, subnqn } => {
                let mut co = ControllerOptions::new(*addr, subnqn.clone());
                co.digests.header = o.header_digest;
                co.digests.data = o.data_digest;
                co.kato_ms = o.kato_ms;
                co.disable_sqflow = o.disable_sqflow;
                let mut ctrl = Controller::connect(&co)?;
                let base = tid.name(Some(ctrl.subnqn()));
                let mut namespaces = Vec::new();
                let max_io_bytes = ctrl.max_transfer_bytes();
                for nsid in ctrl.active_namespaces()? {
                    let ns = ctrl.identify_namespace(nsid)?;
                    if ns.is_active() {
                        namespaces.push(Namespace {
                            target: index,
                            nsid,
                            block_size: ns.block_size,
                            num_blocks: ns.id.nsze,
                            name: format!("{base} NSID {nsid}"),
                            max_io_bytes,
                        });
                    }
                }
                let ident = ctrl.identity();
                let description = format!(
                    "Attached to NVMe over Fabrics controller at {addr}: {} (cntlid {}, model '{}', serial '{}')",
                    ctrl.subnqn(),
                    ctrl.cntlid(),
                    ident.model,
                    ident.serial
                );
                let session = Session::Tcp { ctrl: Box::new(ctrl), next_qid: 1 };
                Ok(Target { session, namespaces, description })
            }
            TransportId::Ram { size, block_size } => {
                let dev =
                    RamDevice::new(*size, *block_size).map_err(|e| TargetError::Device(format!("RAM device: {e}")))?;
                let description = format!("Attached to RAM device of {}", format_size(*size));
                Ok(Target::device(index, tid, Arc::new(dev), None, description))
            }
            TransportId::File { path, size, direct } => {
                let direct = match direct.as_str() {
                    "on" => DirectIo::On,
                    "off" => DirectIo::Off,
                    _ => DirectIo::Auto,
                };
                let opts = UringOptions { direct, create_size: *size, block_size_hint: None };
                let dev = UringDevice::open(path, opts).map_err(|e| TargetError::Device(e.to_string()))?;
                let description = format!(
                    "Attached to {} through io_uring ({})",
                    path.display(),
                    if dev.is_direct() { "O_DIRECT" } else { "buffered" }
                );
                Ok(Target::device(index, tid, Arc::new(dev), None, description))
            }
            TransportId::Pcie { traddr, nsid } => {
                let (dev, shard) = open_pcie(traddr, *nsid, o)?;
                let c = dev.controller();
                let description = format!(
                    "Attached to NVMe Controller at {traddr} through VFIO: model '{}', serial '{}', {} I/O queues",
                    c.model,
                    c.serial,
                    dev.io_queues()
                );
                Ok(Target::device(index, tid, Arc::new(dev), Some(shard), description))
            }
        }
    }

    fn device(
        index: usize,
        tid: &TransportId,
        dev: Arc<dyn BlockDevice>,
        dma: Option<PoolShard>,
        description: String,
    ) -> Target {
        let info = dev.info();
        let nsid = match tid {
            TransportId::Pcie { nsid, .. } => *nsid,
            TransportId::Tcp { .. } | TransportId::Ram { .. } | TransportId::File { .. } => 1,
        };
        let ns = Namespace {
            target: index,
            nsid,
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            name: format!("{} NSID {nsid}", tid.name(None)),
            max_io_bytes: Some(u64::from(info.max_transfer_bytes)),
        };
        Target { session: Session::Device { dev, dma }, namespaces: vec![ns], description }
    }

    /// Asks for `n` I/O queues up front (NVMe/TCP: Set Features, Number of Queues).
    pub fn reserve_queues(&mut self, n: u16) -> Result<(), TargetError> {
        match &mut self.session {
            Session::Tcp { ctrl, .. } => {
                let granted = ctrl.set_num_queues(n)?;
                if granted < n {
                    return Err(TargetError::Unusable(format!(
                        "the controller grants {granted} I/O queues, the run needs {n}: lower -P or the core count"
                    )));
                }
                Ok(())
            }
            Session::Device { .. } => Ok(()),
        }
    }

    /// Opens an I/O queue on `ns` with `depth` slots of `buf_len` bytes.
    pub fn open_queue(&mut self, ns: &Namespace, depth: u32, buf_len: usize) -> Result<Box<dyn IoQueue>, TargetError> {
        match &mut self.session {
            Session::Tcp { ctrl, next_qid } => {
                let depth = u16::try_from(depth)
                    .map_err(|_| TargetError::Unusable(format!("queue depth {depth} beyond an NVMe/TCP queue")))?;
                let conn = ctrl.connect_io_queue(*next_qid, depth, buf_len)?;
                *next_qid += 1;
                Ok(Box::new(TcpQueue { conn, nsid: ns.nsid }))
            }
            Session::Device { dev, dma } => {
                let mut shard = match dma {
                    Some(all) => {
                        if all.chunk_size() < buf_len {
                            return Err(TargetError::Unusable(format!(
                                "I/O buffers of {} bytes, the device's pool has {}",
                                buf_len,
                                all.chunk_size()
                            )));
                        }
                        all.split_off(depth as usize).ok_or_else(|| {
                            TargetError::Unusable(format!(
                                "the device's buffer pool is exhausted ({} buffers left, {depth} needed)",
                                all.available()
                            ))
                        })?
                    }
                    None => {
                        let chunk = buf_len.next_power_of_two().max(4096);
                        let pool = DmaPool::new(chunk, depth as usize, false)
                            .map_err(|e| TargetError::Device(e.to_string()))?;
                        pool.shards(1).pop().expect("one shard")
                    }
                };
                let qp = dev.create_qpair(depth).map_err(|e| TargetError::Device(format!("queue pair: {e}")))?;
                let bufs = (0..depth).map(|_| shard.get().expect("shard sized to depth")).collect();
                Ok(Box::new(DeviceQueue { qp, bufs, shard, lens: vec![0; depth as usize] }))
            }
        }
    }

    /// Periodic admin work (Keep Alive when due).
    pub fn tick(&mut self) -> Result<(), TargetError> {
        match &mut self.session {
            Session::Tcp { ctrl, .. } => {
                ctrl.keep_alive_if_due()?;
                Ok(())
            }
            Session::Device { .. } => Ok(()),
        }
    }

    /// Shuts the target down (NVMe/TCP: CC.SHN, then close).
    pub fn close(self) -> Result<(), TargetError> {
        match self.session {
            Session::Tcp { ctrl, .. } => Ok(ctrl.shutdown()?),
            Session::Device { .. } => Ok(()),
        }
    }
}

/// Where the kernel lists PCI functions.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Opens the NVMe controller at `bdf` through VFIO, with a DMA pool for every I/O
/// buffer of the run mapped into its IOMMU; returns the device and the pool's buffers.
fn open_pcie(bdf: &str, nsid: u32, o: &OpenOptions) -> Result<(NvmeDevice, PoolShard), TargetError> {
    assert!(o.io_bufs > 0 && o.io_buf_len > 0, "a run has at least one I/O buffer");
    let sysfs = std::path::Path::new(SYSFS_PCI_DEVICES).join(bdf);
    if !sysfs.exists() {
        return Err(TargetError::Device(format!(
            "no PCI function {bdf} on this machine (lspci -D lists them; traddr is domain:bus:device.function)"
        )));
    }
    let chunk = o.io_buf_len.next_power_of_two().max(4096);
    let pool = DmaPool::new(chunk, o.io_bufs, true).map_err(|e| TargetError::Device(format!("DMA pool: {e}")))?;
    let opts = NvmeOptions { nsid, ..NvmeOptions::default() };
    let dev = NvmeDevice::open(bdf, &pool, opts).map_err(|e| TargetError::Device(pcie_error(bdf, &e)))?;
    // Shards only after `open`: it sets the pool's IOVA base.
    let shard = pool.shards(1).pop().expect("one shard");
    assert_eq!(shard.available(), o.io_bufs);
    Ok((dev, shard))
}

/// The driver's message, with what to do about the common set-up mistakes (the
/// caller prefixes the transport ID, which names the device).
fn pcie_error(bdf: &str, e: &NvmeError) -> String {
    let dev = format!("{SYSFS_PCI_DEVICES}/{bdf}");
    match e {
        NvmeError::Vfio(VfioError::NotVfioPci { driver, .. }) => {
            let (now, unbind) = match driver {
                Some(d) => (format!("bound to {d}"), format!("echo {bdf} > {dev}/driver/unbind; ")),
                None => ("bound to no driver".to_string(), String::new()),
            };
            format!(
                "the device is {now}, not vfio-pci; bind it with: \
                 echo vfio-pci > {dev}/driver_override; {unbind}echo {bdf} > /sys/bus/pci/drivers_probe"
            )
        }
        NvmeError::Vfio(VfioError::NoVfio) => format!("{e}: modprobe vfio-pci"),
        NvmeError::Vfio(VfioError::NoIommu(_)) => {
            format!("{e}; in a VM, give it a vIOMMU (QEMU: -device intel-iommu,intremap=on)")
        }
        _ => e.to_string(),
    }
}

/// An I/O queue over an NVMe/TCP connection.
struct TcpQueue {
    conn: Connection,
    nsid: u32,
}

impl IoQueue for TcpQueue {
    fn submit(&mut self, io: &Io, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), QueueError> {
        let (cmd, dir) = match io.kind {
            IoKind::Read => (initiator::read(self.nsid, io.lba, io.nlb), DataDir::FromController),
            IoKind::Write => (initiator::write(self.nsid, io.lba, io.nlb), DataDir::ToController),
        };
        match self.conn.submit(cmd, dir, io.bytes, io.tag, fill) {
            Ok(_) => Ok(()),
            Err(initiator::Error::QueueFull) => Err(QueueError::Full),
            Err(e) => Err(QueueError::Fatal(e.to_string())),
        }
    }

    fn poll(&mut self, on_done: &mut OnDone<'_>) -> Result<usize, QueueError> {
        self.conn
            .poll(&mut |d, data| {
                let r = if d.status.is_success() {
                    Ok(())
                } else {
                    Err(format!("NVMe status {} ({})", d.status, initiator::status_name(d.status)))
                };
                on_done(d.tag, r, data)
            })
            .map_err(|e| QueueError::Fatal(e.to_string()))
    }

    fn close(self: Box<Self>) {
        self.conn.close();
    }
}

/// An I/O queue over a quire-drivers queue pair. Field order matters: the queue
/// pair is dropped before the buffers it may still point at.
struct DeviceQueue {
    qp: Box<dyn QueuePair>,
    /// One buffer per tag.
    bufs: Vec<DmaBuf>,
    shard: PoolShard,
    /// Bytes of the I/O in flight on each tag.
    lens: Vec<u32>,
}

impl IoQueue for DeviceQueue {
    fn submit(&mut self, io: &Io, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), QueueError> {
        let tag = usize::try_from(io.tag).unwrap_or(usize::MAX);
        assert!(tag < self.bufs.len(), "tag {} beyond the queue depth", io.tag);
        let buf = &mut self.bufs[tag];
        assert!(io.bytes as usize <= buf.len());
        let op = match io.kind {
            IoKind::Read => Op::Read,
            IoKind::Write => {
                fill(&mut buf.as_mut_slice()[..io.bytes as usize]);
                Op::Write { fua: false }
            }
        };
        let req = IoRequest::with_segs(op, io.lba, io.nlb, io.tag, &[buf.seg(0, io.bytes as usize)]);
        // SAFETY: the buffer belongs to this queue and to this tag alone; the workload
        // does not reuse a tag before its completion, and nothing reads or writes the
        // buffer until `poll` reports it; `qp` is dropped before `bufs`.
        match unsafe { self.qp.submit(&req) } {
            Ok(()) => {
                self.lens[tag] = io.bytes;
                Ok(())
            }
            Err(SubmitError::QueueFull) => Err(QueueError::Full),
            Err(SubmitError::Invalid(m)) => Err(QueueError::Fatal(format!("device rejected the request: {m}"))),
        }
    }

    fn poll(&mut self, on_done: &mut OnDone<'_>) -> Result<usize, QueueError> {
        self.qp.kick();
        let bufs = &self.bufs;
        let lens = &self.lens;
        Ok(self.qp.poll(usize::MAX, &mut |c| {
            let tag = usize::try_from(c.tag).expect("tags are buffer indices (checked in submit)");
            let data = &bufs[tag].as_slice()[..lens[tag] as usize];
            on_done(c.tag, c.result.map_err(|e| e.to_string()), data)
        }))
    }

    fn close(self: Box<Self>) {
        let DeviceQueue { qp, bufs, mut shard, .. } = *self;
        drop(qp);
        for b in bufs {
            shard.put(b);
        }
    }
}
