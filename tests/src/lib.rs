//! Harness for Quire's end-to-end tests: Quire on the host, the real Linux
//! NVMe/TCP host (kernel `nvme-tcp`, `nvme-cli`, `fio`, ext4) in a throw-away
//! QEMU guest.
//!
//! - [`run_guest`] / [`Guest`]: boot a guest through `tests/guest/run-guest.sh`,
//!   run a POSIX `sh` script in it (busybox), capture the serial console.
//!   [`Guest::spawn`] runs it in the background with the console streamed to a
//!   log file, so a test can [`Guest::wait_for_log`] for progress markers
//!   (`MARK ...` lines of the scripts in `tests/guest/scripts/`).
//! - [`QuireProcess`]: the `quire` binary as a child process, its output in a
//!   log file, killed on drop; [`QuireProcess::kill9`] for crash tests.
//! - [`free_port`], [`wait_for_port`]: loopback ports for Quire to listen on.
//! - [`guest_available`] / [`require_guest`] / [`require`]: whether the guest
//!   (or another prerequisite, e.g. a built `quire-perf`) is there. A test
//!   whose prerequisite is missing **fails** (panics, naming what is missing
//!   and how to provide it), whether or not `CI` is set. Only a run that asked
//!   to be partial (`QUIRE_TEST_PARTIAL=1`, which `scripts/test.sh --partial`
//!   sets) skips it instead: the test prints `SKIPPED: <test>: <reason>`,
//!   appends that line to the file named by `QUIRE_TEST_SKIP_FILE` (if set;
//!   `scripts/test.sh` sets it and lists every skipped suite in its summary)
//!   and returns.
//!
//! Inside the guest the host's `127.0.0.1` is [`HOST_FROM_GUEST`]
//! (`10.0.2.2`, QEMU user networking): the only address guest scripts may
//! connect to. Every guest script is given a copy of `tests/guest/scripts/`
//! in its working directory, so it can `. ./lib.sh` and run the shared
//! scripts. Logs of guests and Quire processes are kept under
//! `<target>/e2e-logs/` for post-mortems.
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod etcd;
pub mod group;
pub mod netns;
pub mod prometheus;

/// The host's `127.0.0.1` as the guest sees it (QEMU user networking).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// How long a killed guest or Quire gets to clean up after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Poll interval for processes, logs and ports.
const POLL: Duration = Duration::from_millis(50);

/// A loopback TCP port that answers every connection with one line, `<word> N` (the
/// current count), and closes it: how a test tells a guest script, which polls it
/// with `nc`, that it may go on (the guest reaches it at [`HOST_FROM_GUEST`]).
pub struct Counter {
    port: u16,
    value: std::sync::Arc<AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Counter {
    /// Listens on a free port; the count starts at 0.
    pub fn start(word: &'static str) -> Counter {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the counter's port");
        listener.set_nonblocking(true).expect("non-blocking counter port");
        let port = listener.local_addr().expect("counter port").port();
        let value = std::sync::Arc::new(AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (v, s) = (value.clone(), stop.clone());
        let thread = thread::spawn(move || {
            use std::io::Write as _;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                        let _ = conn.write_all(format!("{word} {}\n", v.load(Ordering::SeqCst)).as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Counter { port, value, stop, thread: Some(thread) }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the count.
    pub fn set(&self, n: u64) {
        self.value.store(n, Ordering::SeqCst);
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The workspace root (the folder above `tests/`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent folder").to_path_buf()
}

/// `tests/guest/`: the guest's scripts, `root/` (QEMU, kernel) and `out/` (initramfs).
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// `tests/guest/scripts/`: the guest-side test scripts.
pub fn guest_scripts_dir() -> PathBuf {
    guest_dir().join("scripts")
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_dir().join(dir),
        _ => workspace_dir().join("target"),
    }
}

/// `<target>/e2e-logs/`, created on demand: console logs of guests and the
/// output of Quire processes, kept after the test for post-mortems.
pub fn log_dir() -> PathBuf {
    let dir = target_dir().join("e2e-logs");
    let _ = fs::create_dir_all(&dir);
    dir
}

/// A fresh log file path `<target>/e2e-logs/<label>-<ms>-<pid>-<n>.log`.
pub(crate) fn new_log_path(label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let label: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    log_dir().join(format!("{label}-{ms}-{}-{n}.log", std::process::id()))
}

/// The environment variable that makes a run partial: set to `1` (or any
/// value but empty, `0` or `false`), a test whose prerequisite is missing is
/// skipped and recorded instead of failing. `scripts/test.sh --partial` sets it.
pub const PARTIAL_ENV: &str = "QUIRE_TEST_PARTIAL";

/// The environment variable naming the file a partial run's skips are
/// appended to, one `<test>: <reason>` line each (`scripts/test.sh` sets it).
pub const SKIP_FILE_ENV: &str = "QUIRE_TEST_SKIP_FILE";

/// True when the caller asked for a partial run ([`PARTIAL_ENV`] set to
/// anything but empty, `0` or `false`). `CI` plays no part.
pub fn partial_run() -> bool {
    env_flag(std::env::var(PARTIAL_ENV).ok().as_deref())
}

fn env_flag(v: Option<&str>) -> bool {
    match v {
        Some(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        None => false,
    }
}

/// `Ok(())` when a guest can boot here; otherwise the reason, naming the
/// missing file and the script that provides it.
///
/// Only checks that the files `scripts/install-test-deps.sh` provides exist;
/// it does not boot anything.
pub fn guest_available() -> Result<(), String> {
    check_guest_dir(&guest_dir())
}

fn check_guest_dir(dir: &Path) -> Result<(), String> {
    let fix = "run `scripts/install-test-deps.sh` as root (Debian bookworm)";
    let qemu = dir.join("root/usr/bin/qemu-system-x86_64");
    if !qemu.is_file() {
        return Err(format!("{} is missing: {fix}", qemu.display()));
    }
    let has = |sub: &str, prefix: &str, suffix: &str| -> bool {
        fs::read_dir(dir.join(sub))
            .map(|rd| {
                rd.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(prefix) && name.ends_with(suffix)
                })
            })
            .unwrap_or(false)
    };
    if !has("root/boot", "vmlinux-", "") && !has("root/boot", "vmlinuz-", "") {
        return Err(format!("no kernel under {}/root/boot: {fix}", dir.display()));
    }
    if !has("out", "initramfs-", ".cpio") {
        return Err(format!("no initramfs in {}/out: {fix}", dir.display()));
    }
    let run = dir.join("run-guest.sh");
    if !run.is_file() {
        return Err(format!("{} is missing", run.display()));
    }
    Ok(())
}

/// For the start of a guest test: `true` if the guest is available
/// ([`guest_available`]); otherwise what [`require`] does: panic, or in a
/// partial run ([`partial_run`]) record the skip and return `false`.
///
/// ```no_run
/// if !quire_tests::require_guest("my_test") {
///     return; // only in a partial run
/// }
/// ```
pub fn require_guest(test: &str) -> bool {
    require(test, guest_available())
}

/// For a prerequisite of `test` (`Err` names what is missing and how to get
/// it): `true` if it is there. If not, panics, unless the run is partial
/// ([`partial_run`]): then prints `SKIPPED: <test>: <why>` to stderr,
/// appends the same line (without `SKIPPED: `) to the file named by
/// [`SKIP_FILE_ENV`] if set, and returns `false`.
pub fn require(test: &str, prerequisite: Result<(), String>) -> bool {
    let skip_file = std::env::var_os(SKIP_FILE_ENV).filter(|f| !f.is_empty()).map(PathBuf::from);
    decide(test, prerequisite, partial_run(), skip_file.as_deref())
}

fn decide(test: &str, prerequisite: Result<(), String>, partial: bool, skip_file: Option<&Path>) -> bool {
    let why = match prerequisite {
        Ok(()) => return true,
        Err(why) => why,
    };
    if !partial {
        panic!(
            "{test} cannot run here: {why}. This is a failure, not a skip: provide what is missing, \
             or run `scripts/test.sh --partial` ({PARTIAL_ENV}=1) to skip it knowingly"
        );
    }
    eprintln!("SKIPPED: {test}: {why}");
    if let Some(file) = skip_file {
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = written {
            // a skip that cannot be recorded would be silent: fail instead
            panic!("{test}: skipped ({why}), but recording the skip in {} failed: {e}", file.display());
        }
    }
    false
}

/// A process-wide lock for tests that should not run their guests (or other
/// heavy work) in parallel with each other on this 2-core machine. Poisoning
/// (a test that panicked while holding it) is ignored.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A deadline `d` from now.
pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999 by default). A port from that
/// range can be taken between the test's probe and the server's bind by any
/// outgoing connection on the machine (a test's client, `etcd`, the guest's
/// forwarding), which is what made a peer fail with "Address already in use"
/// in CI; ports below it are taken only by something that binds them by number.
const PORTS: std::ops::Range<u16> = 20000..32768;

/// A TCP port that was free a moment ago on every address (probed by binding
/// `0.0.0.0:port`), from [`PORTS`], never the same twice in one test process.
/// Each process starts at its own offset (from its pid and the clock) so that
/// test binaries running side by side rarely probe the same ports; the probe
/// skips what another run or a left-over `quire serve` holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
    let span = u64::from(PORTS.end - PORTS.start);
    if NEXT.load(Ordering::Relaxed) == u64::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        let start = (u64::from(std::process::id()).wrapping_mul(7919) ^ nanos) % span;
        let _ = NEXT.compare_exchange(u64::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + u16::try_from(n % span).expect("n % span fits the range");
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {PORTS:?}");
}

/// Polls until something accepts TCP connections on 127.0.0.1:`port`, or
/// fails at `deadline`. Each probe connection is closed at once.
pub fn wait_for_port(port: u16, deadline: Instant) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if TcpStream::connect_timeout(&addr, left.clamp(Duration::from_millis(1), Duration::from_millis(200))).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("nothing listening on 127.0.0.1:{port} by the deadline"));
        }
        thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Reads a log file, lossily (a console may print non-UTF-8 bytes).
fn read_log(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of `text` containing `pattern` (a plain substring).
fn find_line(text: &str, pattern: &str) -> Option<String> {
    text.lines().find(|l| l.contains(pattern)).map(str::to_owned)
}

/// Sends `sig` to the process group `pgid` (spawned with `process_group(0)`).
fn kill_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group that we created for our own child.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Sends `sig` to the single process `pid`.
fn kill_pid(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own,
    // not yet reaped child, so the pid cannot have been reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` until `deadline`; `None` if it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL),
            Err(_) => return None,
        }
    }
}

/// Exit code of a finished process; `128 + signal` if a signal killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

/// Quotes `s` for a POSIX shell (single quotes).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies the regular files of `from` (one level plus subfolders) into `to`.
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// How a guest is booted. `Default` gives 2 vCPUs, 1 GiB, 300 s and the
/// kernel argument `nvme_core.admin_timeout=5` (the host's admin commands
/// otherwise wait 60 s on a target that does not answer).
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest vCPUs (`run-guest.sh -c`); use 1 beside a busy-polling target.
    pub cpus: u32,
    /// Guest memory in MiB (`-m`).
    pub mem_mib: u32,
    /// Wall-clock limit for the whole run (`-t`); the harness kills the guest
    /// if `run-guest.sh` overruns it by more than a few seconds.
    pub timeout: Duration,
    /// Kernel command-line words (`-A`). Words `KEY=VALUE` the kernel does
    /// not know become environment variables in the guest; prefer the `env`
    /// argument of [`Guest::spawn`] for those.
    pub kernel_args: Vec<String>,
    /// Extra options for QEMU's `-netdev user` (`-n`), e.g. `hostfwd=...`.
    pub netdev_opts: Vec<String>,
    /// A folder whose contents are also copied into the guest's `/guest`.
    pub files: Option<PathBuf>,
    /// Extra QEMU arguments (`-Q`, split on whitespace by `run-guest.sh`), e.g.
    /// `-device intel-iommu,intremap=on` or an emulated NVMe drive.
    pub qemu_args: Vec<String>,
    /// Name used in the log file's name.
    pub label: String,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            cpus: 2,
            mem_mib: 1024,
            timeout: Duration::from_secs(300),
            kernel_args: vec!["nvme_core.admin_timeout=5".to_owned()],
            netdev_opts: Vec::new(),
            files: None,
            qemu_args: Vec::new(),
            label: "guest".to_owned(),
        }
    }
}

impl GuestOptions {
    /// The defaults with another timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        GuestOptions { timeout, ..Default::default() }
    }
}

/// The outcome of a guest run.
#[derive(Clone, Debug)]
pub struct GuestResult {
    /// The script's exit code; 124 if the run timed out, 125 if the guest
    /// died without reporting one (e.g. a kernel panic), `128 + n` if signal
    /// `n` killed `run-guest.sh`.
    pub rc: i32,
    /// The serial console (plus `run-guest.sh`'s own messages).
    pub log: String,
    /// Where the log is kept.
    pub log_path: PathBuf,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl GuestResult {
    /// True if the script exited 0.
    pub fn success(&self) -> bool {
        self.rc == 0
    }

    /// Panics (showing the end of the console log) unless the script exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what}: guest script failed with rc={} after {:.1?}; log {}:\n{}",
            self.rc,
            self.elapsed,
            self.log_path.display(),
            tail(&self.log, 80)
        );
    }

    /// The `MARK ...` progress lines, without the `MARK ` prefix.
    pub fn marks(&self) -> Vec<&str> {
        self.log.lines().filter_map(|l| l.strip_prefix("MARK ")).collect()
    }

    /// The value of the last console line `KEY=value` (e.g.
    /// `MANIFEST_SHA256`, printed by `fs-write.sh`).
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.log.lines().rev().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned())
    }
}

/// A guest running in the background: `run-guest.sh` as a child process in
/// its own process group (with QEMU in it), its console streamed to a log
/// file. Dropping it kills the guest.
pub struct Guest {
    child: Option<Child>,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    started: Instant,
    timeout: Duration,
    _dir: tempfile::TempDir,
}

impl Guest {
    /// Boots a guest that runs the shell `script` (POSIX sh, busybox) with
    /// the environment variables `env`, in `/guest` next to a copy of
    /// `tests/guest/scripts/`.
    pub fn spawn(script: &str, env: &[(&str, &str)], opts: &GuestOptions) -> io::Result<Guest> {
        Self::spawn_inner(Some(script), "test.sh", env, opts)
    }

    /// Boots a guest that runs `tests/guest/scripts/<name>` (e.g.
    /// `"fs-write.sh"`) with the environment variables `env`.
    pub fn spawn_script(name: &str, env: &[(&str, &str)], opts: &GuestOptions) -> io::Result<Guest> {
        if !guest_scripts_dir().join(name).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no guest script {}", guest_scripts_dir().join(name).display()),
            ));
        }
        let mut opts = opts.clone();
        if opts.label == GuestOptions::default().label {
            opts.label = name.trim_end_matches(".sh").to_owned();
        }
        Self::spawn_inner(None, name, env, &opts)
    }

    fn spawn_inner(script: Option<&str>, entry: &str, env: &[(&str, &str)], opts: &GuestOptions) -> io::Result<Guest> {
        let dir = tempfile::Builder::new().prefix("quire-guest-").tempdir()?;
        let files = dir.path().join("files");
        copy_dir(&guest_scripts_dir(), &files)?;
        if let Some(extra) = &opts.files {
            copy_dir(extra, &files)?;
        }
        if let Some(script) = script {
            fs::write(files.join(entry), script)?;
        }
        // The guest's /guest/run.sh: the environment, then the script.
        let mut main = String::from("# generated by quire-tests\n");
        for (k, v) in env {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid environment variable name {k:?}"),
                ));
            }
            let _ = writeln!(main, "export {k}={}", sh_quote(v));
        }
        let _ = writeln!(main, "exec sh ./{entry}");
        let main_path = dir.path().join("main.sh");
        fs::write(&main_path, main)?;

        let log_path = new_log_path(&opts.label);
        let log = File::create(&log_path)?;
        let timeout_secs = opts.timeout.as_secs().max(1) + u64::from(opts.timeout.subsec_nanos() > 0);
        let mut cmd = Command::new("bash");
        cmd.arg(guest_dir().join("run-guest.sh"))
            .arg("-c")
            .arg(opts.cpus.to_string())
            .arg("-m")
            .arg(opts.mem_mib.to_string())
            .arg("-t")
            .arg(timeout_secs.to_string())
            .arg("-f")
            .arg(&files);
        if !opts.kernel_args.is_empty() {
            cmd.arg("-A").arg(opts.kernel_args.join(" "));
        }
        for n in &opts.netdev_opts {
            cmd.arg("-n").arg(n);
        }
        for q in &opts.qemu_args {
            cmd.arg("-Q").arg(q);
        }
        cmd.arg(&main_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // own process group: QEMU runs in it too (run-guest.sh uses
            // `timeout --foreground`), so one kill(-pgid) stops everything
            .process_group(0);
        let child = cmd.spawn()?;
        Ok(Guest {
            child: Some(child),
            status: None,
            log_path,
            started: Instant::now(),
            timeout: opts.timeout,
            _dir: dir,
        })
    }

    /// The console log file (written live).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The console log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The pid of `run-guest.sh`, which is also the id of the process group
    /// that QEMU runs in; `None` once the guest was killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the guest runs.
    pub fn is_running(&mut self) -> bool {
        self.poll();
        self.status.is_none() && self.child.is_some()
    }

    fn poll(&mut self) {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                }
            }
        }
    }

    /// Waits until a console line contains `pattern` (a plain substring) and
    /// returns that line. Fails at `deadline`, or as soon as the guest has
    /// exited without printing it.
    pub fn wait_for_log(&mut self, pattern: &str, deadline: Instant) -> Result<String, String> {
        loop {
            // check for exit first, so the log read after it is complete
            let exited = !self.is_running();
            let log = self.log();
            if let Some(line) = find_line(&log, pattern) {
                return Ok(line);
            }
            if exited {
                // The guest scripts' own verdict first: a long log may be cut short
                // where the failure is reported (CI shows excerpts).
                let verdict: Vec<&str> = log.lines().filter(|l| l.trim_start().starts_with("FAIL")).collect();
                return Err(format!(
                    "guest exited ({:?}) without printing {pattern:?}{}; log {}:\n{}",
                    self.status.map(exit_code),
                    if verdict.is_empty() { String::new() } else { format!(" [{}]", verdict.join(" | ")) },
                    self.log_path.display(),
                    tail(&log, 60)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {pattern:?} on the guest console by the deadline; log {}:\n{}",
                    self.log_path.display(),
                    tail(&log, 60)
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the guest to finish (at most its timeout plus a grace period,
    /// then kills it) and returns the result.
    pub fn wait(mut self) -> GuestResult {
        let limit = self.started + self.timeout + Duration::from_secs(30);
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = wait_until(child, limit);
            }
        }
        if self.status.is_none() {
            self.kill();
        }
        GuestResult {
            rc: self.status.map(exit_code).unwrap_or(124),
            log: self.log(),
            log_path: self.log_path.clone(),
            elapsed: self.started.elapsed(),
        }
    }

    /// Stops the guest now: SIGTERM to its process group (so `run-guest.sh`
    /// removes its temporary files), SIGKILL after a grace period.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if self.status.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                self.status = Some(status);
                return;
            }
            let pgid = child.id();
            kill_group(pgid, libc::SIGTERM);
            let status = wait_until(&mut child, deadline(TERM_GRACE)).or_else(|| {
                kill_group(pgid, libc::SIGKILL);
                child.wait().ok()
            });
            // whatever else is left in the group (QEMU if it ignored TERM)
            kill_group(pgid, libc::SIGKILL);
            self.status = status;
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Boots a guest, runs `script` (POSIX sh) in it with environment `env`,
/// and returns its exit code and console log. Never panics on a failing
/// script: check [`GuestResult::rc`] or call [`GuestResult::assert_success`].
pub fn run_guest(script: &str, env: &[(&str, &str)], timeout: Duration) -> GuestResult {
    run_guest_with(script, env, &GuestOptions::with_timeout(timeout))
}

/// [`run_guest`] with explicit [`GuestOptions`].
pub fn run_guest_with(script: &str, env: &[(&str, &str)], opts: &GuestOptions) -> GuestResult {
    Guest::spawn(script, env, opts).unwrap_or_else(|e| panic!("cannot start run-guest.sh: {e}")).wait()
}

/// Runs `tests/guest/scripts/<name>` in a fresh guest (see [`Guest::spawn_script`]).
pub fn run_guest_script(name: &str, env: &[(&str, &str)], timeout: Duration) -> GuestResult {
    Guest::spawn_script(name, env, &GuestOptions::with_timeout(timeout))
        .unwrap_or_else(|e| panic!("cannot start guest script {name}: {e}"))
        .wait()
}

/// A `quire` process for a test: stdout and stderr go to a log file under
/// `<target>/e2e-logs/`; it is killed (SIGKILL) when dropped.
pub struct QuireProcess {
    child: Option<Child>,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    bin: PathBuf,
}

impl QuireProcess {
    /// The `quire` binary: `$QUIRE_BIN` if set, else the newer of
    /// `<target>/release/quire` and `<target>/debug/quire`.
    pub fn bin_path() -> Result<PathBuf, String> {
        if let Some(bin) = std::env::var_os("QUIRE_BIN").filter(|b| !b.is_empty()) {
            let bin = PathBuf::from(bin);
            return if bin.is_file() { Ok(bin) } else { Err(format!("QUIRE_BIN={} does not exist", bin.display())) };
        }
        let target = target_dir();
        ["release", "debug"]
            .iter()
            .map(|profile| target.join(profile).join("quire"))
            .filter_map(|p| {
                let mtime = fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                Some((mtime, p))
            })
            .max_by_key(|(mtime, _)| *mtime)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                format!(
                    "no quire binary in {}/{{release,debug}}: build it (cargo build -p quire) or set QUIRE_BIN",
                    target.display()
                )
            })
    }

    /// Starts the `quire` binary ([`QuireProcess::bin_path`]) with `args`.
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> io::Result<QuireProcess> {
        let bin = Self::bin_path().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        Self::spawn_bin(&bin, args, &[])
    }

    /// Starts `quire serve` on the data directory `dir`, NVMe/TCP on `port` and
    /// discovery on `disc_port` (the embedded default otherwise).
    pub fn serve(dir: &Path, port: u16, disc_port: u16) -> io::Result<QuireProcess> {
        let dir = dir.display().to_string();
        let (port, disc_port) = (port.to_string(), disc_port.to_string());
        Self::spawn(&["serve", "--data-dir", &dir, "--port", &port, "--discovery-port", &disc_port])
    }

    /// Starts `bin` with `args` and extra environment variables `env`
    /// (e.g. `RUST_LOG`), its output captured in a new log file.
    pub fn spawn_bin<S: AsRef<OsStr>>(bin: &Path, args: &[S], env: &[(&str, &str)]) -> io::Result<QuireProcess> {
        Self::spawn_cmd(bin, Command::new(bin), args, env)
    }

    /// Starts the `quire` binary with `args` in the network namespace `netns` (`ip
    /// netns exec NETNS quire ARGS`: `ip` enters the namespace and executes `quire` in
    /// its own place, so that the process id, [`QuireProcess::kill9`] and the log are
    /// those of `quire` itself).
    pub fn spawn_in_netns<S: AsRef<OsStr>>(netns: &str, args: &[S]) -> io::Result<QuireProcess> {
        let bin = Self::bin_path().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(&bin);
        Self::spawn_cmd(&bin, cmd, args, &[])
    }

    fn spawn_cmd<S: AsRef<OsStr>>(
        bin: &Path,
        mut cmd: Command,
        args: &[S],
        env: &[(&str, &str)],
    ) -> io::Result<QuireProcess> {
        let label = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let log_path = new_log_path(&label);
        let log = File::create(&log_path)?;
        cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn()?;
        Ok(QuireProcess { child: Some(child), status: None, log_path, bin: bin.to_path_buf() })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The binary that was started.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                }
            }
        }
        self.status.is_none() && self.child.is_some()
    }

    /// The exit status once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }

    /// Polls until 127.0.0.1:`port` accepts connections; fails at `deadline`
    /// or as soon as the process exits (with the end of its log).
    pub fn wait_for_port(&mut self, port: u16, deadline: Instant) -> Result<(), String> {
        self.wait_for_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), deadline)
    }

    /// [`QuireProcess::wait_for_port`] for a listener at `addr`.
    pub fn wait_for_addr(&mut self, addr: SocketAddr, deadline: Instant) -> Result<(), String> {
        loop {
            if !self.is_running() {
                return Err(format!(
                    "{} exited ({:?}) before listening on {addr}; log {}:\n{}",
                    self.bin.display(),
                    self.status.map(exit_code),
                    self.log_path.display(),
                    tail(&self.log(), 40)
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {addr} by the deadline; log {}:\n{}",
                    self.bin.display(),
                    self.log_path.display(),
                    tail(&self.log(), 40)
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until a line of its output contains `pattern` (plain substring);
    /// fails at `deadline` or when the process exits without printing it.
    pub fn wait_for_log(&mut self, pattern: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let exited = !self.is_running();
            let log = self.log();
            if let Some(line) = find_line(&log, pattern) {
                return Ok(line);
            }
            if exited || Instant::now() >= deadline {
                return Err(format!(
                    "no {pattern:?} in the output of {} ({}); log {}:\n{}",
                    self.bin.display(),
                    if exited { "it exited" } else { "deadline" },
                    self.log_path.display(),
                    tail(&log, 40)
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// SIGKILL (a crash, as far as Quire can tell) and reap. Returns the
    /// exit status; `None` if it was never started or could not be reaped.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if self.status.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                self.status = Some(status);
            } else {
                kill_pid(child.id(), libc::SIGKILL);
                self.status = child.wait().ok();
            }
        }
        self.status
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if self.status.is_none() {
            kill_pid(child.id(), libc::SIGTERM);
            self.status = wait_until(&mut child, deadline(grace)).or_else(|| {
                kill_pid(child.id(), libc::SIGKILL);
                child.wait().ok()
            });
        }
        self.status
    }
}

impl Drop for QuireProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ----- guests with QEMU's NVMe controller behind a vIOMMU (VFIO tests) ----------------

/// VFIO kernel modules in load order (dependencies first), relative to the guest
/// kernel's module tree; the guest script `insmod`s them from `/guest`.
pub const VFIO_MODULES: [&str; 6] = [
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/vfio_virqfd.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
];

/// The newest kernel module tree of the guest kernel.
pub fn guest_modules_dir() -> PathBuf {
    let root = guest_dir().join("root/lib/modules");
    let mut versions: Vec<PathBuf> =
        fs::read_dir(&root).expect("guest module tree").filter_map(|e| e.ok().map(|e| e.path())).collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no kernel under {}", root.display()))
}

/// Builds `target_args` (e.g. `["-p", "quire", "--bin", "quire"]`) in release mode,
/// statically linked, so that it runs in the guest; returns `<target>/…/release/<path>`.
pub fn build_static(target_args: &[&str], path: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let triple = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace_dir())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", triple])
        .args(target_args)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {target_args:?} statically failed");
    let bin = target_dir().join(triple).join("release").join(path);
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// Copies `bin` into `dir` under `name`, without debug info (a smaller cpio unpacks
/// faster in the guest), and the VFIO modules plus `extra_modules` beside it.
pub fn stage_vfio_files(dir: &Path, bin: &Path, name: &str, extra_modules: &[&str]) {
    let staged = dir.join(name);
    fs::copy(bin, &staged).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    let _ = Command::new("strip").arg("--strip-debug").arg(&staged).status();
    let modules = guest_modules_dir();
    for m in VFIO_MODULES.iter().chain(extra_modules) {
        let src = modules.join(m);
        let file = src.file_name().expect("module file name");
        fs::copy(&src, dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
}

/// Guest options for a VFIO test: a vIOMMU (`intel_iommu=on`), 64 hugepages, and an
/// emulated NVMe controller with serial `serial` backed by the raw file `image`.
pub fn vfio_guest_options(image: &Path, serial: &str, files: &Path, timeout: Duration, label: &str) -> GuestOptions {
    let mut opts =
        GuestOptions { timeout, files: Some(files.to_path_buf()), label: label.into(), ..Default::default() };
    opts.kernel_args.extend(["intel_iommu=on".to_string(), "hugepages=64".to_string()]);
    // discard=unmap: deallocated blocks read back as zeroes only when the backend
    // really punches the holes.
    opts.qemu_args = vec![
        "-device intel-iommu,intremap=on".into(),
        format!("-drive file={},if=none,id=nvm0,format=raw,cache=unsafe,discard=unmap", image.display()),
        format!("-device nvme,serial={serial},drive=nvm0"),
    ];
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_outside_the_ephemeral_range_and_never_repeats() {
        let ports: Vec<u16> = (0..64).map(|_| free_port()).collect();
        for &port in &ports {
            assert!(PORTS.contains(&port), "{port} is outside {PORTS:?}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
        }
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice: {ports:?}");
    }

    #[test]
    fn wait_for_port_sees_listener_and_times_out() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        wait_for_port(port, deadline(Duration::from_secs(5))).unwrap();
        drop(l);
        let start = Instant::now();
        assert!(wait_for_port(port, deadline(Duration::from_millis(300))).is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn missing_guest_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_guest_dir(dir.path()).unwrap_err();
        assert!(err.contains("qemu-system-x86_64") && err.contains("install-test-deps.sh"), "{err}");
        assert!(decide("t", Ok(()), false, None), "present: run");
        assert!(decide("t", Ok(()), true, None), "present: run, partial or not");
    }

    #[test]
    #[should_panic(expected = "cannot run here: no guest. This is a failure, not a skip")]
    fn missing_prerequisite_fails_without_partial() {
        decide("t", Err("no guest".into()), false, None);
    }

    #[test]
    fn missing_prerequisite_is_recorded_in_a_partial_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skips");
        assert!(!decide("first_test", Err("no guest".into()), true, Some(&file)));
        assert!(!decide("second_test", Err("no quire-perf\nbuild it".into()), true, Some(&file)));
        assert!(decide("third_test", Ok(()), true, Some(&file)), "present: not recorded");
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text, "first_test: no guest\nsecond_test: no quire-perf build it\n");
        // without a skip file a partial run still skips
        assert!(!decide("t", Err("no guest".into()), true, None));
    }

    #[test]
    #[should_panic(expected = "recording the skip")]
    fn unrecordable_skip_fails() {
        let dir = tempfile::tempdir().unwrap();
        decide("t", Err("no guest".into()), true, Some(&dir.path().join("missing-dir/skips")));
    }

    #[test]
    fn partial_flag_values() {
        assert!(!env_flag(None));
        for off in ["", "0", "false", "FALSE"] {
            assert!(!env_flag(Some(off)), "{off:?}");
        }
        for on in ["1", "yes", "true"] {
            assert!(env_flag(Some(on)), "{on:?}");
        }
    }

    #[test]
    fn sh_quote_round_trips() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn guest_result_values_and_marks() {
        let r = GuestResult {
            rc: 0,
            log: "x\nMARK one\nMANIFEST_SHA256=abc\nMARK two\nMANIFEST_SHA256=def \n".into(),
            log_path: PathBuf::new(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(r.marks(), ["one", "two"]);
        assert_eq!(r.value("MANIFEST_SHA256").as_deref(), Some("def"));
        assert_eq!(r.value("NOPE"), None);
    }

    #[test]
    fn process_log_and_kill9() {
        let mut p = QuireProcess::spawn_bin(Path::new("/bin/sh"), &["-c", "echo started; exec sleep 60"], &[]).unwrap();
        assert!(p.is_running());
        let line = p.wait_for_log("started", deadline(Duration::from_secs(10))).unwrap();
        assert_eq!(line, "started");
        let status = p.kill9().expect("reaped");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!p.is_running());
        assert!(p.log_path().starts_with(log_dir()));
    }

    #[test]
    fn process_exit_is_reported_by_wait_for_port() {
        let mut p = QuireProcess::spawn_bin(Path::new("/bin/sh"), &["-c", "echo bye; exit 3"], &[]).unwrap();
        let err = p.wait_for_port(free_port(), deadline(Duration::from_secs(10))).unwrap_err();
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains("bye"), "{err}");
        assert_eq!(p.exit_status().and_then(|s| s.code()), Some(3));
    }
}
