//! The loopback TCP floor: what any NVMe/TCP target on this machine could reach at
//! best for 4 KiB reads. A trivial server answers each 72-byte request (a command
//! capsule's size) with 4120 bytes (a 24-byte C2HData header and 4 KiB of data),
//! busy-polling one non-blocking socket on its own core; a pipelined client keeps
//! `--qd` requests outstanding from another core and measures responses per second
//! and the round-trip latency of each.
//!
//! A benchmark, not a test: it prints figures. The round trip at QD1 is the
//! "loopback round trip" the forwarding benchmark (`perf/bench/forward.sh`) compares
//! a forwarded I/O's added latency with.
//!
//!   cargo run --release -p quire-perf --example floor -- --qd 1 --time 5
//!   cargo run --release -p quire-perf --example floor -- --qd 32 --time 5
//!
//! Options: `--qd N` (1), `--time S` (5), `--server-core C` (0), `--client-core C` (1).

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const REQ: usize = 72;
const HDR: usize = 24;
const DATA: usize = 4096;
const RESP: usize = HDR + DATA;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}")))
        .unwrap_or(default)
}

fn pin(core: u64) {
    let id = usize::try_from(core).expect("a core number");
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        eprintln!("floor: could not pin to core {core}");
    }
}

/// Answers every whole request with one response, busy-polling.
fn serve(listener: &TcpListener, stop: &std::sync::atomic::AtomicBool) {
    let (mut s, _) = listener.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    s.set_nonblocking(true).expect("non-blocking");
    let hdr = [0x07u8; HDR];
    let data = vec![0x5au8; DATA];
    let mut inbuf = vec![0u8; 64 * 1024];
    let (mut have, mut owed) = (0usize, 0usize);
    let mut sent_of_current = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match s.read(&mut inbuf[have..]) {
            Ok(0) => return,
            Ok(n) => {
                have += n;
                owed += have / REQ;
                have %= REQ;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        // Every owed response in as few writev calls as the socket takes.
        while owed > 0 {
            let mut iov: Vec<IoSlice> = Vec::with_capacity(2 * owed.min(64));
            let mut skip = sent_of_current;
            for _ in 0..owed.min(64) {
                for part in [&hdr[..], &data[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov.push(IoSlice::new(&part[skip..]));
                    skip = 0;
                }
            }
            match s.write_vectored(&iov) {
                Ok(n) => {
                    let total = sent_of_current + n;
                    owed -= total / RESP;
                    sent_of_current = total % RESP;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let qd = usize::try_from(arg(&args, "--qd", 1)).expect("qd");
    let secs = arg(&args, "--time", 5);
    let (score, ccore) = (arg(&args, "--server-core", 0), arg(&args, "--client-core", 1));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let server = std::thread::spawn(move || {
        pin(score);
        serve(&listener, &st);
    });
    pin(ccore);
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.set_nonblocking(true).expect("non-blocking");
    let req = [0x04u8; REQ];
    let mut resp = vec![0u8; 256 * 1024];
    let mut sent_at: std::collections::VecDeque<Instant> = std::collections::VecDeque::with_capacity(qd);
    let mut lat = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let (mut got, mut done, mut pending_req) = (0usize, 0u64, 0usize);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut to_send = qd;
    loop {
        // Send what is owed (whole requests; a partial one finishes first).
        while to_send > 0 {
            match c.write(&req[pending_req..]) {
                Ok(n) => {
                    pending_req += n;
                    if pending_req == REQ {
                        pending_req = 0;
                        to_send -= 1;
                        sent_at.push_back(Instant::now());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        match c.read(&mut resp) {
            Ok(0) => panic!("the server closed"),
            Ok(n) => {
                got += n;
                let now = Instant::now();
                while got >= RESP {
                    got -= RESP;
                    let t = sent_at.pop_front().expect("a response answers a request");
                    lat.record(u64::try_from(now.duration_since(t).as_nanos()).unwrap_or(u64::MAX)).ok();
                    done += 1;
                    if now < end {
                        to_send += 1;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("receive: {e}"),
        }
        if Instant::now() >= end && sent_at.is_empty() {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(c);
    let _ = server.join();
    #[allow(clippy::cast_precision_loss)] // a count of responses, far below 2^53
    let rate = done as f64 / elapsed;
    #[allow(clippy::cast_precision_loss)] // nanoseconds of one round trip
    let us = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "floor qd={qd}: {rate:.0} responses/s, round trip p50 {:.2} us, p99 {:.2} us ({done} in {elapsed:.1} s)",
        us(0.5),
        us(0.99)
    );
}
