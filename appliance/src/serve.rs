//! `quire serve`: bring a peer up from its configuration, run it, bring it down.
//!
//! Order of bring-up: the buffer pool, the backing device (a VFIO NVMe controller maps
//! the pool into its IOMMU as it opens, so the pool must exist first and be split into
//! shards only afterwards), the page store on it (formatted only when the device is blank or a
//! file this run created, see `PageStore::open_or_format_in`; on an NVMe device its
//! metadata buffers are a few chunks of the mapped pool), the registry, the
//! listening sockets, the reactors (each with its own device queue pair and buffer
//! shard), the control thread's state with the configured volumes, and the management
//! socket. Then reactors run on their threads and the control thread runs on this one
//! until SIGINT or SIGTERM. A controller that `quire` bound to vfio-pci itself
//! (`bind_vfio = true`) goes back to its previous driver once everything has stopped.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quire_config::{Config, DeviceKind, PollMode as CfgPoll};
use quire_drivers::nvme::{self, Binding, NvmeDevice, NvmeError, NvmeOptions, VfioError};
use quire_drivers::uring::{DirectIo, UringDevice, UringOptions};
use quire_drivers::{BlockDevice, DmaPool};

use crate::cast::usize_from;
use crate::control::{Control, ControlParts};
use crate::nvmf::subsystem::{Listener, Registry};
use crate::nvmf::TargetParams;
use crate::reactor::msg::control_inbox_capacity;
use crate::reactor::{ControlMsg, ListenerKind, PollMode, Reactor, ReactorParts};
use crate::volume::store::{Formatting, PageStore, StoreError, META_BUFS};

/// Depth of the page store's own queue pair.
const STORE_QUEUE_DEPTH: u32 = 64;

/// Why the peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something in the configuration cannot be served.
    #[error("{0}")]
    Config(String),
    /// The backing device could not be opened.
    #[error("device {path}: {reason}")]
    Device {
        /// Which device.
        path: String,
        /// Why.
        reason: String,
    },
    /// The group (etcd) refused this peer or could not be reached.
    #[error("group: {0}")]
    Group(String),
    /// The page store on the device could not be opened or formatted.
    #[error("page store on {device}: {reason}")]
    Store {
        /// Which device.
        device: String,
        /// Why.
        reason: String,
    },
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source} (is another quire or nvmet serving there?)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Anything else at start-up.
    #[error("{0}")]
    Io(String),
}

/// The opened backing device.
struct Opened {
    dev: Arc<dyn BlockDevice>,
    /// For the banner and errors.
    desc: String,
    /// The driver binding to give back at exit (`bind_vfio = true`).
    binding: Option<Binding>,
    /// The device reaches only the IOMMU-mapped pool (VFIO): the page store must take
    /// its metadata buffers from it.
    mapped_pool_only: bool,
    /// What the page store may do with a device that holds no page store.
    formatting: Formatting,
    /// An advisory lock (`flock`) on a file or block device, held while it is in use:
    /// a second `quire serve` or `quire store format` on the same device is refused.
    lock: Option<std::fs::File>,
}

/// The page store's formatting policy for a configured device: a file this run has
/// just created is always formatted (it holds nothing); otherwise `[[device]] format`.
fn formatting_of(policy: quire_config::Formatting, created: bool) -> Formatting {
    match (policy, created) {
        (_, true) | (quire_config::Formatting::IfBlank, _) => Formatting::IfBlank,
        (quire_config::Formatting::Never, false) => Formatting::Never,
    }
}

/// Takes the advisory lock of the device at `path`, or says who holds it.
fn lock_device(path: &std::path::Path) -> Result<std::fs::File, ServeError> {
    use std::os::fd::AsRawFd;
    let fail = |reason: String| ServeError::Device { path: path.display().to_string(), reason };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it to lock it: {e}")))?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(fail("in use: another quire (serve or store format) holds its lock".into()));
        }
        // A file system without locks: carry on unprotected rather than refuse to serve.
        tracing::warn!(path = %path.display(), "cannot lock the device ({e}); another quire could open it too");
    }
    Ok(file)
}

/// Depth of each reactor's device queue pair: `[[device]] queue_depth` of the first
/// (only) device, or its default when none is configured (a device given by a test).
fn device_queue_depth(cfg: &Config) -> u32 {
    cfg.devices.first().map_or_else(quire_config::Device::queue_depth_default, |d| d.queue_depth)
}

fn open_device(cfg: &Config, pool: &DmaPool) -> Result<Opened, ServeError> {
    if cfg.devices.len() != 1 {
        return Err(ServeError::Config(format!(
            "device: {} devices configured; this version serves exactly one device per peer",
            cfg.devices.len()
        )));
    }
    let d = &cfg.devices[0];
    let direct = match d.direct_io {
        quire_config::DirectIo::Auto => DirectIo::Auto,
        quire_config::DirectIo::On => DirectIo::On,
        quire_config::DirectIo::Off => DirectIo::Off,
    };
    let formatting = |created| formatting_of(d.format, created);
    let plain = |dev: Arc<dyn BlockDevice>, desc: String, created: bool, lock: Option<std::fs::File>| Opened {
        dev,
        desc,
        binding: None,
        mapped_pool_only: false,
        formatting: formatting(created),
        lock,
    };
    match d.kind {
        DeviceKind::File | DeviceKind::Block => {
            let path = cfg.resolve(d.path.as_deref().expect("validated: file and block devices have a path"));
            let create_size = if d.kind == DeviceKind::File { d.size.map(|s| s.bytes()) } else { None };
            // Missing (or empty) before the open: this run creates it, sparse and blank.
            let created = d.kind == DeviceKind::File && std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
            let dev = UringDevice::open(&path, UringOptions { direct, create_size, block_size_hint: Some(512) })
                .map_err(|e| ServeError::Device { path: path.display().to_string(), reason: e.to_string() })?;
            let lock = lock_device(&path)?;
            let desc = format!(
                "{} {} ({}, {} bytes)",
                if d.kind == DeviceKind::File { "file" } else { "block device" },
                path.display(),
                if dev.is_direct() { "O_DIRECT" } else { "buffered" },
                dev.info().size_bytes()
            );
            Ok(plain(Arc::new(dev), desc, created, Some(lock)))
        }
        DeviceKind::Ram => {
            let size = d.size.expect("validated: ram devices have a size").bytes();
            let dev = if d.prefault {
                quire_drivers::ram::RamDevice::committed(size, 512)
            } else {
                quire_drivers::ram::RamDevice::new(size, 512)
            }
            .map_err(|e| ServeError::Device { path: "ram".into(), reason: e.to_string() })?;
            Ok(plain(Arc::new(dev), format!("ram ({size} bytes, lost at exit)"), true, None))
        }
        DeviceKind::Nvme => {
            let bdf = d.pci_address.as_deref().expect("validated: nvme devices have a PCI address");
            // The VFIO group is exclusive: a second user is refused as it opens.
            let mut opened = open_nvme(bdf, d.bind_vfio, pool)?;
            opened.formatting = formatting(false);
            Ok(opened)
        }
    }
}

/// Opens the NVMe controller at `bdf` through VFIO (binding it to vfio-pci first when
/// `bind` is set, and giving it back if opening fails), mapping `pool` into its IOMMU.
fn open_nvme(bdf: &str, bind: bool, pool: &DmaPool) -> Result<Opened, ServeError> {
    let fail = |reason: String| ServeError::Device { path: format!("nvme {bdf}"), reason };
    let binding = if bind {
        let b =
            nvme::bind_vfio(bdf).map_err(|e| fail(format!("cannot bind it to vfio-pci: {e} (see docs/vfio.md)")))?;
        tracing::info!(bdf, previous = ?b.previous, "bound to vfio-pci");
        Some(b)
    } else {
        None
    };
    let dev = match NvmeDevice::open(bdf, pool, NvmeOptions::default()) {
        Ok(dev) => dev,
        Err(e) => {
            let reason = nvme_hint(&e, bind);
            if let Some(b) = binding {
                give_back(b);
            }
            return Err(fail(reason));
        }
    };
    let info = dev.info();
    let c = dev.controller();
    let desc = format!(
        "nvme {bdf} through VFIO ('{}' serial '{}', namespace 1: {} blocks of {} bytes, {} I/O queues)",
        c.model.trim(),
        c.serial.trim(),
        info.num_blocks,
        info.block_size,
        dev.io_queues()
    );
    Ok(Opened { dev: Arc::new(dev), desc, binding, mapped_pool_only: true, formatting: Formatting::Never, lock: None })
}

/// The driver's reason, with what the operator can do about it.
fn nvme_hint(e: &NvmeError, bound_by_us: bool) -> String {
    match e {
        NvmeError::Vfio(VfioError::NotVfioPci { bdf, driver }) => {
            let now = match driver {
                Some(d) => format!("the kernel driver {d}"),
                None => "no driver".to_string(),
            };
            let todo = if bound_by_us {
                "something re-bound it while quire was starting"
            } else {
                "set bind_vfio = true in its [[device]] table, or bind it to vfio-pci by hand (docs/vfio.md)"
            };
            format!("{bdf} is bound to {now}, not vfio-pci: {todo}")
        }
        NvmeError::Vfio(VfioError::InUse(_)) => format!("{e}; is another quire (or a VM) using it?"),
        NvmeError::Vfio(_) => format!("{e} (docs/vfio.md)"),
        _ => e.to_string(),
    }
}

/// Gives a controller back to the driver it had before `quire` bound it to vfio-pci.
fn give_back(binding: Binding) {
    let bdf = binding.bdf.clone();
    let previous = binding.previous.clone();
    match binding.restore() {
        Ok(()) => tracing::info!(bdf, ?previous, "given back to its previous driver"),
        Err(e) => tracing::warn!(bdf, "could not give the device back to {previous:?}: {e}"),
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })
}

/// A running peer: its threads, its bound addresses and a way to stop it.
pub struct Running {
    control_tx: crossbeam_channel::Sender<ControlMsg>,
    control: Option<std::thread::JoinHandle<()>>,
    reactors: Vec<std::thread::JoinHandle<()>>,
    socket: PathBuf,
    _rpc: crate::rpc::RpcServerHandle,
    /// The I/O listener's address (the real port when 0 was asked for).
    pub io_addr: SocketAddr,
    /// The discovery listener's address (the I/O one when there is no separate one).
    pub discovery_addr: SocketAddr,
    /// Description of the backing device.
    pub device: String,
    /// The device itself, dropped only after every queue pair (on the threads): the
    /// last owner of a VFIO controller shuts it down and closes its files, which must
    /// happen after the queue pairs' doorbell mappings are gone.
    dev: Option<Arc<dyn BlockDevice>>,
    /// A controller `quire` bound to vfio-pci, given back once everything stopped.
    binding: Option<Binding>,
    /// The device's advisory lock, released when the peer is gone.
    _device_lock: Option<std::fs::File>,
    /// The page store's UUID.
    pub store_uuid: [u8; 16],
    /// Bytes of the page store's data region.
    pub capacity_bytes: u64,
    /// The peer-link listener's address (a group peer).
    pub link_addr: Option<SocketAddr>,
    /// The group agent, in a group; leaves the group first at shutdown.
    group: Option<crate::group::Group>,
    /// The metrics endpoint, when configured.
    metrics: Option<crate::metrics::http::MetricsServer>,
}

impl Running {
    /// The management socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The metrics endpoint's address, when it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(crate::metrics::http::MetricsServer::addr)
    }

    /// Asks the peer to stop.
    pub fn request_stop(&self) {
        let _ = self.control_tx.send(ControlMsg::Shutdown);
    }

    /// Waits until the peer has stopped (after [`Running::request_stop`] or a signal);
    /// an error names the threads that panicked.
    pub fn wait(mut self) -> Result<(), String> {
        let mut panicked = Vec::new();
        if let Some(c) = self.control.take() {
            if c.join().is_err() {
                panicked.push("control".to_string());
            }
        }
        // The control thread that renders scrapes is gone: so is the endpoint.
        drop(self.metrics.take());
        // Out of the group before the listeners go: the others see this peer leave
        // now rather than a lease TTL later.
        if let Some(g) = self.group.take() {
            g.leave();
        }
        for (i, t) in self.reactors.drain(..).enumerate() {
            if t.join().is_err() {
                panicked.push(format!("reactor {i}"));
            }
        }
        // Every queue pair lived on those threads. Dropping the device now shuts an
        // NVMe controller down (CC.SHN) and closes its VFIO files, so that the kernel
        // can take it back.
        drop(self.dev.take());
        if let Some(b) = self.binding.take() {
            give_back(b);
        }
        tracing::info!("stopped");
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(format!("threads that panicked: {}", panicked.join(", ")))
        }
    }

    /// Stops the peer and waits for it (see [`Running::wait`]).
    pub fn shutdown(self) -> Result<(), String> {
        self.request_stop();
        self.wait()
    }
}

/// Runs a peer until SIGINT or SIGTERM.
pub fn serve(cfg: Config) -> Result<(), ServeError> {
    let running = start(cfg.clone())?;
    // SIGINT / SIGTERM: ask the control thread to stop.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| ServeError::Io(format!("signal handler: {e}")))?;
    }
    let stop_tx = running.control_tx.clone();
    std::thread::Builder::new()
        .name("quire-signals".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!("signal received: shutting down");
            let _ = stop_tx.send(ControlMsg::Shutdown);
        })
        .map_err(|e| ServeError::Io(e.to_string()))?;
    print_banner(
        &cfg,
        running.io_addr,
        running.discovery_addr,
        running.socket(),
        &running.device,
        cfg.reactors.count() as usize,
    );
    running.wait().map_err(ServeError::Io)
}

/// Brings a peer up and returns once it serves.
pub fn start(cfg: Config) -> Result<Running, ServeError> {
    // The pool first: a VFIO device maps it into its IOMMU as it opens.
    let (n, pool) = prepare(&cfg)?;
    // In a group, etcd must answer before anything is opened or served.
    let joining =
        if cfg.group.enabled() { Some(crate::group::connect(&cfg).map_err(ServeError::Group)?) } else { None };
    let shared = joining.as_ref().map(|j| crate::group::Shared::new(&cfg.peer.name, &cfg.group.etcd, j.secret()));
    let opened = open_device(&cfg, &pool)?;
    let binding = opened.binding.clone();
    match start_on(cfg.clone(), pool, n, opened, shared.clone()) {
        Ok(mut running) => {
            if let (Some(joining), Some(shared)) = (joining, shared) {
                let record = peer_record(&cfg, &running);
                match joining.join(record, shared) {
                    Ok(group) => running.group = Some(group),
                    Err(e) => {
                        let _ = running.shutdown();
                        return Err(ServeError::Group(e));
                    }
                }
            }
            Ok(running)
        }
        Err(e) => {
            // start_on has dropped the device and its queue pairs by now.
            if let Some(b) = binding {
                give_back(b);
            }
            Err(e)
        }
    }
}

/// Validates `cfg`, makes its data directory and its buffer pool: the reactor count
/// and the pool.
fn prepare(cfg: &Config) -> Result<(usize, DmaPool), ServeError> {
    cfg.validate().map_err(|e| ServeError::Config(e.to_string()))?;
    std::fs::create_dir_all(&cfg.peer.data_dir)
        .map_err(|e| ServeError::Io(format!("cannot create data_dir {}: {e}", cfg.peer.data_dir.display())))?;
    let pool = DmaPool::new(
        usize_from(cfg.buffers.chunk_size.bytes()),
        usize_from(cfg.buffers.count.into()),
        cfg.buffers.hugepages,
    )
    .map_err(|e| ServeError::Io(format!("buffer pool: {e}")))?;
    Ok((cfg.reactors.count() as usize, pool))
}

/// Brings a peer up on a device the caller made (tests: a RAM device behind a
/// fault-injecting one); the configuration's `[[device]]` is not used.
pub fn start_with_device(cfg: Config, dev: Arc<dyn BlockDevice>, desc: &str) -> Result<Running, ServeError> {
    let (n, pool) = prepare(&cfg)?;
    if cfg.group.enabled() {
        return Err(ServeError::Config("start_with_device: a peer on a test device cannot join a group".into()));
    }
    let formatting = formatting_of(cfg.devices.first().map_or(quire_config::Formatting::IfBlank, |d| d.format), false);
    let opened = Opened { dev, desc: desc.to_string(), binding: None, mapped_pool_only: false, formatting, lock: None };
    start_on(cfg, pool, n, opened, None)
}

/// Buffers of a reactor's shard kept for inbound peer links: an eighth of it, and at
/// least two of the largest requests a link carries (`peer::proto::PART_MAX`), so
/// that links always make progress.
fn link_shard_chunks(total: usize, chunk: u64) -> usize {
    let per_request = usize_from(u64::from(crate::peer::proto::PART_MAX).div_ceil(chunk));
    (total / 8).max(2 * per_request)
}

/// What this peer tells its group about itself.
fn peer_record(cfg: &Config, running: &Running) -> crate::group::keys::PeerRecord {
    let io = running.io_addr;
    let target = match cfg.target.advertise.as_deref() {
        Some(a) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, io.port()).to_string(),
            Err(_) => a.to_string(),
        },
        None => io.to_string(),
    };
    let discovery = match cfg.target.advertise.as_deref().and_then(|a| a.parse::<std::net::IpAddr>().ok()) {
        Some(ip) => SocketAddr::new(ip, running.discovery_addr.port()).to_string(),
        None => running.discovery_addr.to_string(),
    };
    // Weight: as configured, else the capacity in GiB (at least 1).
    let weight = cfg.group.weight.unwrap_or((running.capacity_bytes >> 30).max(1));
    crate::group::keys::PeerRecord {
        name: cfg.peer.name.clone(),
        store: running.store_uuid.iter().map(|b| format!("{b:02x}")).collect(),
        target,
        discovery,
        link: running.link_addr.map_or_else(|| cfg.group.listen.clone(), |a| a.to_string()),
        weight,
        capacity_bytes: running.capacity_bytes,
        used_bytes: 0,
        started_ms: crate::group::now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default(),
        // Chosen by the group at registration.
        id: 0,
    }
}

/// What `quire store format` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Formatted {
    /// The device, as `quire serve` describes it.
    pub device: String,
    /// What it held before.
    pub previous: String,
    /// Bytes of the new, empty page store's data region.
    pub data_bytes: u64,
}

/// `quire store format`: erases the configured device and formats it as an empty page
/// store with a new identity, offline. Refuses while a peer serves this
/// configuration (its management socket answers) or holds the device (its lock, or
/// the VFIO group of an NVMe device), and for a RAM device (nothing to keep).
pub fn format_store(cfg: &Config) -> Result<Formatted, ServeError> {
    cfg.validate().map_err(|e| ServeError::Config(e.to_string()))?;
    if cfg.devices.len() != 1 {
        return Err(ServeError::Config(format!(
            "device: {} devices configured; this version serves exactly one device per peer",
            cfg.devices.len()
        )));
    }
    if cfg.devices[0].kind == DeviceKind::Ram {
        return Err(ServeError::Config("device[0].kind = \"ram\": a RAM device is blank at every start".into()));
    }
    let socket = cfg.rpc_socket_path();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(ServeError::Io(format!(
            "a peer is serving this configuration (its management socket {} answers): stop it first",
            socket.display()
        )));
    }
    std::fs::create_dir_all(&cfg.peer.data_dir)
        .map_err(|e| ServeError::Io(format!("cannot create data_dir {}: {e}", cfg.peer.data_dir.display())))?;
    // Buffers for the metadata only (an NVMe device maps them into its IOMMU).
    let pool = DmaPool::new(usize_from(cfg.buffers.chunk_size.bytes()), 4 * META_BUFS, cfg.buffers.hugepages)
        .map_err(|e| ServeError::Io(format!("buffer pool: {e}")))?;
    let opened = open_device(cfg, &pool)?;
    let binding = opened.binding.clone();
    let result = format_opened(&pool, &opened);
    drop(opened);
    if let Some(b) = binding {
        give_back(b);
    }
    result
}

fn format_opened(pool: &DmaPool, opened: &Opened) -> Result<Formatted, ServeError> {
    let fail = |e: &dyn std::fmt::Display| ServeError::Store { device: opened.desc.clone(), reason: e.to_string() };
    let mut shard = pool.shards(1).pop().expect("one shard");
    let mut shard = || if opened.mapped_pool_only { shard.split_off(META_BUFS) } else { None };
    let qp = || opened.dev.create_qpair(STORE_QUEUE_DEPTH).map_err(|e| ServeError::Io(format!("device queue: {e}")));
    let previous = match PageStore::inspect(&*opened.dev, qp()?, shard()) {
        Ok(Some(uuid)) => format!("a Quire page store (peer uuid {})", crate::control::uuid_string(&uuid)),
        Ok(None) => "blank".to_string(),
        Err(StoreError::NotBlank(what) | StoreError::Damaged(what)) => what,
        Err(StoreError::OtherVersion(v)) => format!("a Quire page store of format version {v}"),
        Err(StoreError::Corrupt(what)) => format!("a Quire superblock that does not make sense ({what})"),
        Err(e) => return Err(fail(&e)),
    };
    let store =
        PageStore::format_in(&*opened.dev, qp()?, shard(), crate::volume::meta::random_uuid()).map_err(|e| fail(&e))?;
    tracing::info!(device = %opened.desc, %previous, "page store formatted by the operator");
    Ok(Formatted { device: opened.desc.clone(), previous, data_bytes: store.capacity().total_bytes })
}

/// The rest of [`start`] once the pool and the device exist.
fn start_on(
    cfg: Config,
    pool: DmaPool,
    n: usize,
    opened: Opened,
    group: Option<Arc<crate::group::Shared>>,
) -> Result<Running, ServeError> {
    let Opened { dev, desc: device_desc, binding, mapped_pool_only, formatting, lock } = opened;
    let metrics_listener = match &cfg.metrics.listen {
        Some(listen) => {
            let addr: SocketAddr = listen.parse().expect("validated: metrics.listen is IP:PORT");
            Some(crate::metrics::http::MetricsListener::bind(addr).map_err(ServeError::Config)?)
        }
        None => None,
    };
    let mut shards = pool.shards(n);
    let store_shard = if mapped_pool_only {
        let shard = shards[0].split_off(META_BUFS).ok_or_else(|| {
            ServeError::Config(format!("buffers.count: too few chunks for the page store's {META_BUFS} buffers"))
        })?;
        Some(shard)
    } else {
        None
    };
    let store_qp = dev.create_qpair(STORE_QUEUE_DEPTH).map_err(|e| ServeError::Io(format!("device queue: {e}")))?;
    let mut store = PageStore::open_or_format_in(&*dev, store_qp, store_shard, formatting)
        .map_err(|e| ServeError::Store { device: device_desc.clone(), reason: e.to_string() })?;
    store
        .set_spares(cfg.devices.first().map_or(0, |d| d.zeroed_spares as usize))
        .map_err(|e| ServeError::Store { device: device_desc.clone(), reason: e.to_string() })?;
    let (store_uuid, capacity_bytes) = (store.uuid(), store.capacity().total_bytes);

    let t = &cfg.target;
    let params = TargetParams {
        // All validated (config/src/validate.rs): depth ≤ 1024, queues ≤ 256, sizes ≤ 4M.
        max_queue_depth: u16::try_from(t.max_queue_depth).expect("validated ≤ 1024"),
        max_io_queues: u16::try_from(t.max_io_queues).expect("validated ≤ 256"),
        in_capsule_data_size: u32::try_from(t.in_capsule_data_size.bytes()).expect("validated ≤ 128K"),
        max_transfer_size: u32::try_from(t.max_transfer_size.bytes()).expect("validated ≤ 4M"),
        max_h2c_data: u32::try_from(t.max_h2c_data.bytes()).expect("validated ≤ max_transfer_size"),
        peer_name: cfg.peer.name.clone(),
        zero_copy_send: t.zero_copy_send,
        advertise: t.advertise.as_deref().map(|a| match a.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => (a.parse().expect("validated: target.advertise is IP or IP:PORT"), None),
        }),
    };
    let registry = Arc::new(Registry::new(params));

    let io_listener = bind(SocketAddr::new(t.listen, t.port))?;
    let mut listeners = vec![(io_listener, ListenerKind::Io)];
    if t.discovery_port != 0 && t.discovery_port != t.port {
        listeners.push((bind(SocketAddr::new(t.listen, t.discovery_port))?, ListenerKind::Discovery));
    }
    let mut bound = Vec::new();
    for (l, kind) in &listeners {
        let addr = l.local_addr().map_err(|e| ServeError::Io(e.to_string()))?;
        bound.push(Listener { addr, discovery: *kind == ListenerKind::Discovery });
    }
    registry.lock().listeners = bound.clone();
    // The peer-link listener (a group peer): other peers forward I/O here.
    let mut link_addr = None;
    if group.is_some() {
        let addr: SocketAddr = cfg.group.listen.parse().expect("validated: group.listen is IP:PORT");
        let l = bind(addr)?;
        link_addr = Some(l.local_addr().map_err(|e| ServeError::Io(e.to_string()))?);
        listeners.push((l, ListenerKind::Link));
    }

    let cores = cfg.reactors.cores();
    let available: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    let mode = match cfg.reactors.poll {
        CfgPoll::Busy => PollMode::Busy,
        CfgPoll::Hybrid => PollMode::Hybrid { spin: Duration::from_micros(u64::from(cfg.reactors.spin_us)) },
    };
    let credits = cfg.reactors.control_credits;
    let (control_tx, control_rx) = crossbeam_channel::bounded(control_inbox_capacity(n, credits));
    let info = dev.info().clone();
    let mut reactors = Vec::new();
    let mut handles = Vec::new();
    let mut listeners = Some(listeners);
    for (i, mut shard) in shards.into_iter().enumerate() {
        let link_pool = if group.is_some() {
            let n = link_shard_chunks(shard.total(), cfg.buffers.chunk_size.bytes());
            Some(shard.split_off(n).ok_or_else(|| {
                ServeError::Config(format!(
                    "buffers.count: reactor {i} has {} buffers, too few to keep {n} for peer links",
                    shard.total()
                ))
            })?)
        } else {
            None
        };
        let core = cores.get(i).map(|&c| c as usize).filter(|c| available.contains(c));
        let (r, h) = Reactor::new(ReactorParts {
            id: i,
            core,
            mode,
            dev: dev.create_qpair(device_queue_depth(&cfg)).map_err(|e| {
                ServeError::Io(format!("device queue (device[0].queue_depth = {}): {e}", device_queue_depth(&cfg)))
            })?,
            dev_block_size: u64::from(info.block_size),
            dev_dealloc_zeroes: info.deallocate_reads_zeroes,
            dev_memory_align: info.memory_align,
            pool: shard,
            registry: registry.clone(),
            control: control_tx.clone(),
            listeners: if i == 0 { listeners.take().expect("first reactor") } else { Vec::new() },
            link_pool,
            control_credits: credits,
            fence: group.as_ref().map(|g| g.fence()).unwrap_or_default(),
        })
        .map_err(|e| ServeError::Io(format!("reactor {i}: {e}")))?;
        reactors.push(r);
        handles.push(h);
    }
    reactors[0].set_peers(handles.clone());

    let allowed_hosts: HashMap<String, Vec<String>> =
        cfg.volumes.iter().map(|v| (v.name.clone(), v.allowed_hosts.clone())).collect();
    if let Some(g) = &group {
        g.set_control(control_tx.clone());
    }
    let mut control = Control::new(ControlParts {
        store,
        registry: registry.clone(),
        reactors: handles.clone(),
        rx: control_rx,
        allowed_hosts,
        device: device_desc.clone(),
        peer_name: cfg.peer.name.clone(),
        group,
        hold: Duration::from_millis(u64::from(cfg.group.hold_ms)),
        replication: cfg.replication.clone(),
        rebalance: cfg.rebalance.clone(),
        leave_grace: Duration::from_millis(u64::from(cfg.group.leave_grace_ms)),
    });
    for v in &cfg.volumes {
        control.ensure_volume(&v.name, v.size.bytes(), v.page_size.bytes(), v.block_size).map_err(|e| {
            ServeError::Store { device: device_desc.clone(), reason: format!("volume {}: {e}", v.name) }
        })?;
    }

    // Management socket: calls reach the control thread through its channel.
    let socket = cfg.rpc_socket_path();
    let (rpc_tx, rpc_rx) = crossbeam_channel::bounded::<crate::rpc::RpcCall>(64);
    let rpc = crate::rpc::spawn(&socket, rpc_tx)
        .map_err(|e| ServeError::Io(format!("RPC socket {}: {e}", socket.display())))?;
    let bridge_tx = control_tx.clone();
    std::thread::Builder::new()
        .name("quire-rpc-bridge".into())
        .spawn(move || {
            for call in rpc_rx {
                if bridge_tx.send(ControlMsg::Rpc(call)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ServeError::Io(e.to_string()))?;

    let mut threads = Vec::new();
    for r in reactors {
        let name = format!("quire-reactor-{}", r.id());
        threads.push(
            std::thread::Builder::new().name(name).spawn(move || r.run()).map_err(|e| ServeError::Io(e.to_string()))?,
        );
    }
    let control = std::thread::Builder::new()
        .name("quire-control".into())
        .spawn(move || control.run())
        .map_err(|e| ServeError::Io(e.to_string()))?;
    let io_addr = bound.iter().find(|l| !l.discovery).expect("an I/O listener").addr;
    let discovery_addr = bound.iter().find(|l| l.discovery).map(|l| l.addr).unwrap_or(io_addr);
    let mut running = Running {
        control_tx,
        control: Some(control),
        reactors: threads,
        socket,
        _rpc: rpc,
        io_addr,
        discovery_addr,
        device: device_desc,
        dev: Some(dev),
        binding,
        _device_lock: lock,
        store_uuid,
        capacity_bytes,
        link_addr,
        group: None,
        metrics: None,
    };
    if let Some(listener) = metrics_listener {
        match crate::metrics::http::MetricsServer::start(listener, running.control_tx.clone()) {
            Ok(m) => running.metrics = Some(m),
            Err(e) => {
                let _ = running.shutdown();
                return Err(ServeError::Io(e));
            }
        }
    }
    Ok(running)
}

fn print_banner(
    cfg: &Config,
    io: SocketAddr,
    disc: SocketAddr,
    socket: &std::path::Path,
    device: &str,
    reactors: usize,
) {
    use std::fmt::Write as _;
    let host = if io.ip().is_unspecified() { "<this host's address>".to_string() } else { io.ip().to_string() };
    let mut text = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ =
        writeln!(text, "quire {version} serving on {io} (discovery {disc}), {reactors} reactor(s), device: {device}");
    for v in &cfg.volumes {
        let _ = writeln!(text, "volume {:?}: nqn.2026-11.io.quire:{}", v.name, v.name);
    }
    let _ = writeln!(text, "Connect from a Linux host (nvme-cli):");
    let _ = writeln!(text, "  nvme discover -t tcp -a {host} -s {}", disc.port());
    if let Some(v) = cfg.volumes.first() {
        let _ = writeln!(text, "  nvme connect -t tcp -a {host} -s {} -n nqn.2026-11.io.quire:{}", io.port(), v.name);
    }
    let _ = writeln!(text, "Manage: quire --socket {} volume list", socket.display());
    // A closed stdout (the shell that started the daemon went away, a reader that
    // stopped reading) must not take the peer down: `println!` would panic.
    let mut out = std::io::stdout().lock();
    if let Err(e) = std::io::Write::write_all(&mut out, text.as_bytes()).and_then(|()| std::io::Write::flush(&mut out))
    {
        tracing::warn!("cannot print the start-up banner to stdout: {e}");
    }
}

/// The data directory a command-line override gives.
pub fn apply_overrides(cfg: &mut Config, o: &Overrides) {
    if let Some(d) = &o.data_dir {
        cfg.peer.data_dir = d.clone();
    }
    if let Some(ip) = o.listen {
        cfg.target.listen = ip;
    }
    if let Some(p) = o.port {
        cfg.target.port = p;
    }
    if let Some(p) = o.discovery_port {
        cfg.target.discovery_port = p;
    }
    if let Some(n) = o.reactors {
        cfg.reactors.count = Some(n);
        cfg.reactors.cores.clear();
    }
    if let Some(p) = o.poll {
        cfg.reactors.poll = p;
    }
    if let Some(s) = &o.socket {
        cfg.peer.rpc_socket = Some(s.clone());
    }
}

/// Command-line overrides of configuration keys.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Overrides peer.data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides target.listen.
    #[arg(long)]
    pub listen: Option<std::net::IpAddr>,
    /// Overrides target.port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Overrides target.discovery_port (0 = none).
    #[arg(long)]
    pub discovery_port: Option<u16>,
    /// Overrides reactors.count (reactors are then pinned to cores 0..N).
    #[arg(long)]
    pub reactors: Option<u32>,
    /// Overrides reactors.poll: busy or hybrid.
    #[arg(long, value_parser = parse_poll)]
    pub poll: Option<CfgPoll>,
    /// Overrides peer.rpc_socket.
    #[arg(long = "rpc-socket")]
    pub socket: Option<PathBuf>,
}

fn parse_poll(s: &str) -> Result<CfgPoll, String> {
    match s {
        "busy" => Ok(CfgPoll::Busy),
        "hybrid" => Ok(CfgPoll::Hybrid),
        _ => Err(format!("{s:?}: expected busy or hybrid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_errors_say_what_to_do() {
        let unbound =
            NvmeError::Vfio(VfioError::NotVfioPci { bdf: "0000:01:00.0".into(), driver: Some("nvme".into()) });
        let text = nvme_hint(&unbound, false);
        assert_eq!(
            text,
            "0000:01:00.0 is bound to the kernel driver nvme, not vfio-pci: set bind_vfio = true in its [[device]] \
             table, or bind it to vfio-pci by hand (docs/vfio.md)"
        );
        let none = NvmeError::Vfio(VfioError::NotVfioPci { bdf: "0000:01:00.0".into(), driver: None });
        assert!(nvme_hint(&none, true).contains("bound to no driver"));
        let iommu = nvme_hint(&NvmeError::Vfio(VfioError::NoIommu("0000:01:00.0".into())), false);
        assert!(iommu.contains("intel_iommu=on") && iommu.ends_with("(docs/vfio.md)"), "{iommu}");
        assert_eq!(nvme_hint(&NvmeError::Timeout("CSTS.RDY"), true), "controller timed out waiting for CSTS.RDY");
    }

    #[test]
    fn missing_nvme_device_fails_to_start_with_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::from_str(&text_of(&dir)).unwrap();
        let err = start(cfg).err().expect("no such device");
        let text = err.to_string();
        assert!(matches!(err, ServeError::Device { .. }), "{text}");
        assert!(text.starts_with("device nvme 0000:ff:1f.7: "), "{text}");
        // Either VFIO is missing on this machine or the function is: both say so.
        assert!(text.contains("/dev/vfio/vfio missing") || text.contains("no PCI function 0000:ff:1f.7"), "{text}");
        let cfg = Config::from_str(&format!("{}bind_vfio = true\n", text_of(&dir))).unwrap();
        let text = start(cfg).err().expect("no such device").to_string();
        assert_eq!(
            text,
            "device nvme 0000:ff:1f.7: cannot bind it to vfio-pci: no PCI function 0000:ff:1f.7 (see docs/vfio.md)"
        );
    }

    fn text_of(dir: &tempfile::TempDir) -> String {
        format!(
            "[peer]\ndata_dir = {:?}\n[buffers]\ncount = 64\n[[device]]\nkind = \"nvme\"\npci_address = \"0000:ff:1f.7\"\n",
            dir.path().display().to_string()
        )
    }

    /// A configuration of one reactor on a 64 MiB file device `dev.img` in `dir`, on
    /// ports the OS picks.
    fn file_config(dir: &std::path::Path, extra_device_keys: &str) -> Config {
        let text = format!(
            "[peer]\ndata_dir = {:?}\n[target]\nport = 0\ndiscovery_port = 0\n[reactors]\ncount = 1\n\
             [buffers]\ncount = 64\nhugepages = false\n[log]\nlevel = \"warn\"\n\
             [[device]]\nkind = \"file\"\npath = \"dev.img\"\nsize = \"64M\"\n{extra_device_keys}\n",
            dir.display().to_string()
        );
        Config::from_str(&text).unwrap()
    }

    #[test]
    fn a_file_created_at_first_start_is_formatted_and_reopened_after() {
        let dir = tempfile::tempdir().unwrap();
        // Even with format = "never": the file that quire creates is its own.
        let cfg = file_config(dir.path(), "format = \"never\"");
        start(cfg.clone()).unwrap().shutdown().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("dev.img")).unwrap().len(), 64 << 20);
        let running = start(cfg).unwrap();
        let volumes = crate::rpc::client::call(running.socket(), "volume_list", serde_json::json!({})).unwrap();
        assert_eq!(volumes[0]["name"], "demo");
        running.shutdown().unwrap();
    }

    #[test]
    fn a_file_holding_other_data_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        let mut image = vec![0u8; 64 << 20];
        image[510..512].copy_from_slice(&[0x55, 0xaa]);
        image[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(&path, &image).unwrap();
        let err = start(file_config(dir.path(), "")).err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, ServeError::Store { .. }), "{text}");
        assert!(text.starts_with(&format!("page store on file {} (", path.display())), "{text}");
        assert!(
            text.ends_with(
                "no Quire superblock; block 0 (byte 510) holds non-zero data (a GPT partition table: \"EFI PART\" \
                 at byte 512): refusing to format it; run `quire store format --yes` (with the configuration or \
                 flags of `quire serve`) to erase it"
            ),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), image, "nothing was written");
        // The operator's command erases it; then the peer starts.
        let done = format_store(&file_config(dir.path(), "")).unwrap();
        assert!(done.previous.contains("EFI PART"), "{done:?}");
        assert!(done.data_bytes > 0);
        start(file_config(dir.path(), "")).unwrap().shutdown().unwrap();
    }

    #[test]
    fn a_blank_file_is_formatted_unless_format_is_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        std::fs::File::create(&path).unwrap().set_len(64 << 20).unwrap();
        let err = start(file_config(dir.path(), "format = \"never\"")).err().expect("refused").to_string();
        assert!(err.ends_with("no Quire superblock and the device is blank (not formatted); run `quire store format --yes` to format it"), "{err}");
        start(file_config(dir.path(), "format = \"if-blank\"")).unwrap().shutdown().unwrap();
    }

    #[test]
    fn a_device_in_use_is_neither_served_twice_nor_formatted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(dir.path(), "");
        let running = start(cfg.clone()).unwrap();
        // The management socket answers: refused before the device is touched.
        let err = format_store(&cfg).expect_err("refused").to_string();
        assert!(err.starts_with("a peer is serving this configuration"), "{err}");
        // Another configuration (other socket) on the same file: the lock refuses it.
        let mut other = cfg.clone();
        other.peer.rpc_socket = Some(dir.path().join("other.sock"));
        let err = format_store(&other).expect_err("refused").to_string();
        assert!(err.ends_with("in use: another quire (serve or store format) holds its lock"), "{err}");
        let err = start(other).err().expect("refused").to_string();
        assert!(err.ends_with("in use: another quire (serve or store format) holds its lock"), "{err}");
        running.shutdown().unwrap();
        let ram = Config::from_str("[[device]]\nkind = \"ram\"\nsize = \"64M\"\n").unwrap();
        assert!(format_store(&ram).err().unwrap().to_string().contains("blank at every start"));
    }

    /// A RAM device that records the depth of every queue pair asked of it.
    struct DepthRecorder {
        inner: quire_drivers::ram::RamDevice,
        depths: std::sync::Mutex<Vec<u32>>,
    }

    impl BlockDevice for DepthRecorder {
        fn info(&self) -> &quire_drivers::DeviceInfo {
            self.inner.info()
        }

        fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn quire_drivers::QueuePair>> {
            self.depths.lock().unwrap().push(depth);
            self.inner.create_qpair(depth)
        }
    }

    #[test]
    fn reactors_open_their_device_queue_pairs_at_the_configured_depth() {
        for (keys, want) in [("queue_depth = 3\n", 3), ("", 1024)] {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "[peer]\ndata_dir = {:?}\n[target]\nport = 0\ndiscovery_port = 0\n[reactors]\ncount = 2\n\
                 [buffers]\ncount = 64\nhugepages = false\n[log]\nlevel = \"warn\"\n\
                 [[device]]\nkind = \"ram\"\nsize = \"64M\"\n{keys}",
                dir.path().display().to_string()
            );
            let cfg = Config::from_str(&text).unwrap();
            let inner = quire_drivers::ram::RamDevice::new(64 << 20, 512).unwrap();
            let dev = Arc::new(DepthRecorder { inner, depths: Default::default() });
            start_with_device(cfg, dev.clone(), "recorder").unwrap().shutdown().unwrap();
            // The page store's own queue pair, then one per reactor.
            assert_eq!(*dev.depths.lock().unwrap(), vec![STORE_QUEUE_DEPTH, want, want], "{keys:?}");
        }
    }

    #[test]
    fn the_configured_io_uring_depth_limit_is_the_drivers() {
        assert_eq!(quire_config::validate::URING_QUEUE_DEPTH_MAX, quire_drivers::uring::DEPTH_MAX);
    }
}
