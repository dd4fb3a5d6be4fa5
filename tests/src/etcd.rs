//! A real etcd for the group tests: Debian's `etcd-server` (installed by
//! `scripts/install-test-deps.sh`), on free loopback ports and a temporary data
//! directory, killed when dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{free_port, new_log_path};

/// Where Debian's `etcd-server` puts the server.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// Whether the etcd server is installed (for [`crate::require`]).
pub fn etcd_available() -> Result<(), String> {
    if Path::new(ETCD_BIN).is_file() {
        Ok(())
    } else {
        Err(format!("no {ETCD_BIN}: run scripts/install-test-deps.sh (Debian's etcd-server)"))
    }
}

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    log_path: PathBuf,
    /// Another address it serves clients at besides 127.0.0.1, and advertises.
    also_on: Option<String>,
}

impl Etcd {
    /// Starts etcd and waits until it reports healthy.
    pub fn start() -> io::Result<Etcd> {
        Etcd::start_with(None)
    }

    /// Starts etcd serving clients at `ip` as well as at 127.0.0.1 (e.g. the host's
    /// end of a veth pair, for peers in another network namespace); its
    /// [`Etcd::endpoint`] is then at `ip`.
    pub fn start_on(ip: &str) -> io::Result<Etcd> {
        Etcd::start_with(Some(ip.to_string()))
    }

    fn start_with(also_on: Option<String>) -> io::Result<Etcd> {
        // Its data on tmpfs when the machine has one: etcd syncs its log on every
        // change, and this VM's disk has stalled a sync for seconds (a CI run saw a
        // 4 s lease revoke, every peer's lease expire, and I/O fail), which tests the
        // disk, not Quire. A test that wants etcd gone kills it.
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("quire-etcd-");
        let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }?;
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            log_path: new_log_path("etcd"),
            also_on,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log_path)?;
        let loopback = format!("http://127.0.0.1:{}", self.client_port);
        let (listen, client) = match &self.also_on {
            Some(ip) => {
                let other = format!("http://{ip}:{}", self.client_port);
                (format!("{loopback},{other}"), other)
            }
            None => (loopback.clone(), loopback),
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD_BIN)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "quire-test", "--listen-client-urls", &listen, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("quire-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_healthy(Instant::now() + Duration::from_secs(30))
    }

    /// The endpoint peers are configured with.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.also_on.as_deref().unwrap_or("127.0.0.1"), self.client_port)
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Polls `GET /health` until etcd answers `"health":"true"`.
    fn wait_healthy(&self, deadline: Instant) -> io::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        loop {
            let answer = (|| -> io::Result<String> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            })();
            if answer.as_deref().is_ok_and(|t| t.contains("\"health\":\"true\"")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "etcd on port {} not healthy by the deadline (log {})",
                    self.client_port,
                    self.log_path.display()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it hard (SIGKILL): the peers lose etcd.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
