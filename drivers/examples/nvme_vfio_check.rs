//! End-to-end check of the VFIO NVMe driver against a real (or QEMU-emulated)
//! controller. Destroys the data on the namespace.
//!
//! usage: nvme_vfio_check [BDF|auto] [--bench N]
//!
//! Binds the function to vfio-pci (and gives it back at the end), brings the controller
//! up, and runs the checks of the driver's issue, printing one PASS/FAIL line each; the
//! exit code is the number of failures (capped at 100). `--bench N` only runs N 4 KiB
//! reads at queue depth 1 on one queue pair (for instruction counting).
// Test constants are small (sizes, counts, tags of a check run); a truncation would
// fail a check.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quire_drivers::nvme::{self, NvmeDevice, NvmeOptions};
use quire_drivers::{
    BlockDevice, Completion, DmaBuf, DmaPool, IoError, IoRequest, Op, PoolShard, QueuePair, SubmitError,
};

const CHUNK: usize = 2 << 20;
const CHUNKS: usize = 40;
const DEADLINE: Duration = Duration::from_secs(60);

type Check = Result<String, String>;

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").init();
    let args: Vec<String> = std::env::args().collect();
    let bdf = match args.get(1).map(String::as_str) {
        None | Some("auto") => match nvme::nvme_functions().into_iter().next() {
            Some(b) => b,
            None => {
                println!("FAIL find: no NVMe PCI function");
                return ExitCode::from(1);
            }
        },
        Some(b) => b.to_owned(),
    };
    let binding = match nvme::bind_vfio(&bdf) {
        Ok(b) => {
            println!("PASS bind: {bdf} to vfio-pci (was {:?})", b.previous);
            b
        }
        Err(e) => {
            println!("FAIL bind: {e}");
            return ExitCode::from(1);
        }
    };
    let pool = match DmaPool::new(CHUNK, CHUNKS, true) {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL pool: {e}");
            return ExitCode::from(1);
        }
    };
    println!("INFO pool: {} x {} bytes, hugepages {}", CHUNKS, CHUNK, pool.on_hugepages());
    let failures = if let Some(n) = args.iter().position(|a| a == "--bench").and_then(|i| args.get(i + 1)) {
        bench(&bdf, &pool, n.parse().unwrap_or(10000))
    } else {
        run_checks(&bdf, &pool)
    };
    match binding.restore() {
        Ok(()) => println!("PASS restore: driver now {:?}", nvme::current_driver(&bdf)),
        Err(e) => println!("INFO restore: {e}"),
    }
    println!("RESULT: {failures} failed");
    ExitCode::from(failures.min(100) as u8)
}

fn report(name: &str, r: Check, failures: &mut u32) {
    match r {
        Ok(s) => println!("PASS {name}: {s}"),
        Err(s) => {
            println!("FAIL {name}: {s}");
            *failures += 1;
        }
    }
}

fn run_checks(bdf: &str, pool: &DmaPool) -> u32 {
    let mut failures = 0;
    let opts = NvmeOptions { io_timeout: Duration::from_secs(5), ..Default::default() };
    let dev = match NvmeDevice::open(bdf, pool, opts.clone()) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            report("open", Err(e.to_string()), &mut failures);
            return failures;
        }
    };
    let c = dev.controller();
    let info = dev.info().clone();
    report(
        "identify",
        if info.num_blocks > 0 && info.block_size >= 512 {
            Ok(format!(
                "model '{}' serial '{}' fw '{}' mdts {} ({} bytes/cmd) ns1 {} x {} B, vwc {}, dealloc-zeroes {}, {} I/O queues",
                c.model, c.serial, c.firmware, c.mdts, dev.cmd_bytes_max(), info.num_blocks, info.block_size,
                info.volatile_write_cache, info.deallocate_reads_zeroes, dev.io_queues()
            ))
        } else {
            Err(format!("{info:?}"))
        },
        &mut failures,
    );
    // Shards: one for the main thread, one per worker thread.
    let mut shards = pool.shards(5);
    let mut main_shard = shards.remove(0);
    let bs = info.block_size as usize;
    {
        let mut qp = dev.create_qpair(64).expect("queue pair");
        let qp = qp.as_mut();
        for (name, len, off) in [
            ("rw 4KiB (PRP1)", 4096, 0),
            ("rw 8KiB (PRP2 data pointer)", 8192, 0),
            ("rw 12KiB (PRP list)", 12288, 0),
            ("rw 64KiB (PRP list)", 65536, 0),
            ("rw 8KiB at page offset 512 (PRP list of 3)", 8192, 512),
            ("rw 1 block", bs, 0),
        ] {
            report(name, rw_verify(qp, &mut main_shard, 100, len, off, bs), &mut failures);
        }
        let big = (dev.cmd_bytes_max() as usize * 2 + 8192).min(CHUNK);
        report("rw above MDTS (split)", rw_verify(qp, &mut main_shard, 4096, big, 0, bs), &mut failures);
        report("rw 3 segments", rw_segments(qp, &mut main_shard, 8000, bs), &mut failures);
        report(
            "flush",
            one(qp, IoRequest::no_data(Op::Flush, 0, 0, 1)).map(|()| "ok".into()).map_err(|e| e.to_string()),
            &mut failures,
        );
        report("write zeroes", zero_check(qp, &mut main_shard, Op::WriteZeroes, 9000, bs, true), &mut failures);
        report(
            "deallocate",
            zero_check(qp, &mut main_shard, Op::Deallocate, 9200, bs, info.deallocate_reads_zeroes),
            &mut failures,
        );
        let oob = one(qp, IoRequest::no_data(Op::WriteZeroes, info.num_blocks - 1, 2, 9));
        report(
            "out of range",
            if oob == Err(IoError::OutOfRange) { Ok("OutOfRange".into()) } else { Err(format!("{oob:?}")) },
            &mut failures,
        );
        let bad = {
            let b = main_shard.get().expect("buffer");
            // SAFETY: rejected at submission; never reaches the device.
            let r = unsafe { qp.submit(&IoRequest::with_segs(Op::Read, 0, 2, 1, &[b.seg(0, bs)])) };
            main_shard.put(b);
            r
        };
        report(
            "invalid request rejected",
            if matches!(bad, Err(SubmitError::Invalid(_))) { Ok(format!("{bad:?}")) } else { Err(format!("{bad:?}")) },
            &mut failures,
        );
    }
    report("parallel queue pairs", parallel(&dev, &mut shards, 20_000, false), &mut failures);
    report("reset during I/O", reset_until_in_flight(&dev, &mut shards), &mut failures);
    // Data written before a clean shutdown reads back after re-opening.
    let persisted = {
        let mut qp = dev.create_qpair(16).expect("queue pair");
        let r = write_pattern(qp.as_mut(), &mut main_shard, 60_000, 65536, bs, 77);
        let f = one(qp.as_mut(), IoRequest::no_data(Op::Flush, 0, 0, 2));
        r.and(f.map_err(|e| e.to_string()))
    };
    drop(shards);
    let reopened = persisted.and_then(|()| {
        match Arc::try_unwrap(dev) {
            Ok(d) => drop(d),
            Err(_) => return Err("device still shared".to_string()),
        }
        let dev = NvmeDevice::open(bdf, pool, opts).map_err(|e| e.to_string())?;
        let mut qp = dev.create_qpair(16).map_err(|e| e.to_string())?;
        let r = read_pattern(qp.as_mut(), &mut main_shard, 60_000, 65536, bs, 77);
        drop(qp);
        r.map(|()| "64 KiB intact after shutdown and re-open".to_string())
    });
    report("shutdown and re-open", reopened, &mut failures);
    failures
}

/// One request, waited for.
fn one(qp: &mut dyn QueuePair, req: IoRequest) -> Result<(), IoError> {
    // SAFETY: callers keep the request's buffers alive and untouched until this returns,
    // which is after the completion was polled.
    unsafe { qp.submit(&req) }.map_err(|e| {
        println!("INFO submit: {e}");
        IoError::Aborted
    })?;
    qp.kick();
    let deadline = Instant::now() + DEADLINE;
    let mut result = None;
    while result.is_none() {
        qp.poll(8, &mut |c: Completion| {
            assert_eq!(c.tag, req.tag);
            result = Some(c.result);
        });
        assert!(Instant::now() < deadline, "request {} hung", req.tag);
    }
    result.expect("loop ends with a result")
}

fn fill(buf: &mut DmaBuf, off: usize, len: usize, lba: u64, bs: usize, seed: u64) {
    pattern(&mut buf.as_mut_slice()[off..off + len], lba, bs, seed);
}

fn pattern(bytes: &mut [u8], lba: u64, bs: usize, seed: u64) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let block = lba + (i / bs) as u64;
        *b = (block.wrapping_mul(0x9e37_79b9).wrapping_add(seed * 131 + (i % bs) as u64 * 7) >> 3) as u8;
    }
}

fn same(a: &DmaBuf, b: &DmaBuf, off: usize, len: usize) -> bool {
    a.as_slice()[off..off + len] == b.as_slice()[off..off + len]
}

fn rw_verify(qp: &mut dyn QueuePair, shard: &mut PoolShard, lba: u64, len: usize, off: usize, bs: usize) -> Check {
    let mut w = shard.get().ok_or("no buffer")?;
    let mut r = shard.get().ok_or("no buffer")?;
    fill(&mut w, off, len, lba, bs, len as u64);
    r.as_mut_slice().fill(0xee);
    let blocks = (len / bs) as u32;
    let wr = one(qp, IoRequest::with_segs(Op::Write { fua: false }, lba, blocks, 1, &[w.seg(off, len)]));
    let rd = one(qp, IoRequest::with_segs(Op::Read, lba, blocks, 2, &[r.seg(off, len)]));
    let ok = same(&w, &r, off, len);
    shard.put(w);
    shard.put(r);
    match (wr, rd, ok) {
        (Ok(()), Ok(()), true) => Ok(format!("{len} bytes at lba {lba} verified")),
        other => Err(format!("{other:?}")),
    }
}

/// A write of three segments (2 KiB ending a page, 8 KiB, 2 KiB starting a page), read
/// back as one segment.
fn rw_segments(qp: &mut dyn QueuePair, shard: &mut PoolShard, lba: u64, bs: usize) -> Check {
    if bs > 2048 {
        return Ok("skipped (block size above 2 KiB)".into());
    }
    let mut w = shard.get().ok_or("no buffer")?;
    let r = shard.get().ok_or("no buffer")?;
    fill(&mut w, 0, CHUNK, 0, bs, 5);
    let segs = [w.seg(4096 - 2048, 2048), w.seg(65536, 8192), w.seg(131072, 2048)];
    let blocks = (12288 / bs) as u32;
    let wr = one(qp, IoRequest::with_segs(Op::Write { fua: true }, lba, blocks, 3, &segs));
    let rd = one(qp, IoRequest::with_segs(Op::Read, lba, blocks, 4, &[r.seg(0, 12288)]));
    let got = r.as_slice();
    let ok = got[..2048] == w.as_slice()[2048..4096]
        && got[2048..10240] == w.as_slice()[65536..73728]
        && got[10240..12288] == w.as_slice()[131072..133120];
    shard.put(w);
    shard.put(r);
    match (wr, rd, ok) {
        (Ok(()), Ok(()), true) => Ok("gathered write verified".into()),
        other => Err(format!("{other:?}")),
    }
}

fn zero_check(qp: &mut dyn QueuePair, shard: &mut PoolShard, op: Op, lba: u64, bs: usize, expect_zero: bool) -> Check {
    let len = 16384;
    let blocks = (len / bs) as u32;
    write_pattern(qp, shard, lba, len, bs, 9)?;
    one(qp, IoRequest::no_data(op, lba, blocks, 5)).map_err(|e| format!("{op:?}: {e}"))?;
    let mut r = shard.get().ok_or("no buffer")?;
    r.as_mut_slice().fill(0xee);
    let rd = one(qp, IoRequest::with_segs(Op::Read, lba, blocks, 6, &[r.seg(0, len)]));
    let zero = r.as_slice()[..len].iter().all(|&b| b == 0);
    shard.put(r);
    rd.map_err(|e| e.to_string())?;
    if expect_zero && !zero {
        return Err("range does not read back as zeroes".into());
    }
    Ok(format!("{len} bytes, reads zeroes: {zero}"))
}

fn write_pattern(
    qp: &mut dyn QueuePair,
    shard: &mut PoolShard,
    lba: u64,
    len: usize,
    bs: usize,
    seed: u64,
) -> Result<(), String> {
    let mut w = shard.get().ok_or("no buffer")?;
    fill(&mut w, 0, len, lba, bs, seed);
    let r = one(qp, IoRequest::with_segs(Op::Write { fua: false }, lba, (len / bs) as u32, 7, &[w.seg(0, len)]));
    shard.put(w);
    r.map_err(|e| e.to_string())
}

fn read_pattern(
    qp: &mut dyn QueuePair,
    shard: &mut PoolShard,
    lba: u64,
    len: usize,
    bs: usize,
    seed: u64,
) -> Result<(), String> {
    let mut expect = shard.get().ok_or("no buffer")?;
    let r = shard.get().ok_or("no buffer")?;
    fill(&mut expect, 0, len, lba, bs, seed);
    let rd = one(qp, IoRequest::with_segs(Op::Read, lba, (len / bs) as u32, 8, &[r.seg(0, len)]));
    let ok = same(&expect, &r, 0, len);
    shard.put(expect);
    shard.put(r);
    rd.map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err("data differs".into())
    }
}

/// Runs the reset scenario until a reset lands while requests are in flight (under
/// software emulation the device sometimes drains its queues before the reset):
/// every round must verify all its data, and at least one round in five must have
/// requests resubmitted, or the scenario proved nothing.
fn reset_until_in_flight(dev: &Arc<NvmeDevice>, shards: &mut [PoolShard]) -> Check {
    const ROUNDS: u32 = 5;
    for round in 1..=ROUNDS {
        match parallel(dev, shards, 40_000, true) {
            Ok(s) => return Ok(format!("{s} (round {round})")),
            Err(e) if e.starts_with(NOTHING_IN_FLIGHT) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(format!("{NOTHING_IN_FLIGHT} in {ROUNDS} rounds"))
}

const NOTHING_IN_FLIGHT: &str = "the resets hit no request in flight";

/// Four threads, each with its own queue pair, write 4-16 KiB pieces over their own
/// region at queue depth 16, then read it all back and verify. With `reset`, the
/// controller is reset twice while the writes run: every request must still complete
/// successfully (resubmitted) and the data must be intact.
fn parallel(dev: &Arc<NvmeDevice>, shards: &mut [PoolShard], base: u64, reset: bool) -> Check {
    let bs = dev.info().block_size as usize;
    // Blocks per thread: 256 KiB, 1 MiB when a reset must land in the middle.
    let region = ((if reset { 1024 } else { 256 }) * 1024 / bs) as u64;
    let resets_before = dev.resets();
    let resubmitted_before = dev.resubmitted();
    let progress = AtomicU64::new(0);
    let progress = &progress;
    // Workers count themselves here once their queue pair exists: a reset must hit
    // I/O in flight, not a queue pair being created.
    let ready = AtomicU64::new(0);
    let ready = &ready;
    let workers = shards.len() as u64;
    let outcome = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter_mut()
            .enumerate()
            .map(|(t, shard)| {
                let dev = dev.clone();
                let start = base + t as u64 * region;
                s.spawn(move || worker(&dev, shard, start, region, bs, t as u64, (progress, ready)))
            })
            .collect();
        if reset {
            // Reset once the writes are well under way, and again during the reads.
            for threshold in [60, 500] {
                let deadline = Instant::now() + DEADLINE;
                while (ready.load(Ordering::Acquire) < workers || progress.load(Ordering::Relaxed) < threshold)
                    && Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
                if let Err(e) = dev.reset() {
                    return Err(format!("reset: {e}"));
                }
            }
        }
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| "worker panicked".to_string())??;
        }
        Ok(total)
    })?;
    let resets = dev.resets() - resets_before;
    let resubmitted = dev.resubmitted() - resubmitted_before;
    if reset && resets < 2 {
        return Err(format!("only {resets} resets happened"));
    }
    if reset && resubmitted == 0 {
        return Err(format!("{NOTHING_IN_FLIGHT}: nothing was proven"));
    }
    Ok(format!(
        "{outcome} requests over {} queue pairs verified, {resets} resets, {resubmitted} requests resubmitted",
        shards.len()
    ))
}

fn worker(
    dev: &NvmeDevice,
    shard: &mut PoolShard,
    start: u64,
    region: u64,
    bs: usize,
    seed: u64,
    (progress, ready): (&AtomicU64, &AtomicU64),
) -> Result<u64, String> {
    const QD: usize = 16;
    let mut qp = dev.create_qpair(QD as u32).map_err(|e| e.to_string())?;
    ready.fetch_add(1, Ordering::Release);
    // One pool buffer cut into QD slots of 16 KiB (the largest piece).
    const SLOT: usize = 16384;
    let mut data = shard.get().ok_or("pool too small")?;
    assert!(data.len() >= QD * SLOT);
    let mut expect = vec![0u8; SLOT];
    // Pieces of 1..4 pages cover the region in order, each written once.
    let mut pieces = Vec::new();
    let mut lba = start;
    let mut k = 0u64;
    while lba < start + region {
        let blocks = (((k % 4) + 1) * 4096 / bs as u64).min(start + region - lba);
        pieces.push((lba, blocks as u32));
        lba += blocks;
        k += 1;
    }
    let mut done = 0u64;
    for op in [Op::Write { fua: false }, Op::Read] {
        let mut next = 0;
        let mut inflight = 0;
        let mut free: Vec<usize> = (0..QD).collect();
        let mut slot_of = vec![0usize; pieces.len()];
        let deadline = Instant::now() + DEADLINE;
        let mut error = None;
        while next < pieces.len() || inflight > 0 {
            while next < pieces.len() && !free.is_empty() {
                let slot = free.pop().expect("checked");
                let (lba, blocks) = pieces[next];
                let len = blocks as usize * bs;
                if op != Op::Read {
                    fill(&mut data, slot * SLOT, len, lba, bs, seed);
                }
                let req = IoRequest::with_segs(op, lba, blocks, next as u64, &[data.seg(slot * SLOT, len)]);
                // SAFETY: the slot of `data` is untouched until its completion.
                match unsafe { qp.submit(&req) } {
                    Ok(()) => {
                        slot_of[next] = slot;
                        next += 1;
                        inflight += 1;
                    }
                    Err(SubmitError::QueueFull) => {
                        free.push(slot);
                        break;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            qp.kick();
            let mut completed = Vec::new();
            qp.poll(QD, &mut |c: Completion| completed.push(c));
            for c in completed {
                let i = c.tag as usize;
                let slot = slot_of[i];
                if let Err(e) = c.result {
                    error.get_or_insert(format!("{op:?} lba {} failed: {e}", pieces[i].0));
                } else if op == Op::Read {
                    let (lba, blocks) = pieces[i];
                    let len = blocks as usize * bs;
                    pattern(&mut expect[..len], lba, bs, seed);
                    if data.as_slice()[slot * SLOT..slot * SLOT + len] != expect[..len] {
                        error.get_or_insert(format!("data differs at lba {lba}"));
                    }
                }
                inflight -= 1;
                done += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                free.push(slot);
            }
            if Instant::now() > deadline {
                return Err(format!("{inflight} requests hung"));
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
    }
    shard.put(data);
    Ok(done)
}

/// N 4 KiB reads at queue depth 1 (for `valgrind --tool=callgrind` or `perf stat`).
fn bench(bdf: &str, pool: &DmaPool, n: u64) -> u32 {
    let dev = match NvmeDevice::open(bdf, pool, NvmeOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL open: {e}");
            return 1;
        }
    };
    let mut shard = pool.shards(1).pop().expect("one shard");
    let mut qp = dev.create_qpair(32).expect("queue pair");
    let buf = shard.get().expect("buffer");
    let blocks = 4096 / dev.info().block_size;
    let t0 = Instant::now();
    let mut polls = 0u64;
    for i in 0..n {
        let req = IoRequest::with_segs(Op::Read, (i * 8) % 8192, blocks, i, &[buf.seg(0, 4096)]);
        // SAFETY: the buffer is not touched until the completion is polled below.
        unsafe { qp.submit(&req) }.expect("submit");
        qp.kick();
        let mut got = false;
        while !got {
            polls += 1;
            qp.poll(1, &mut |c: Completion| {
                assert!(c.result.is_ok());
                got = true;
            });
        }
    }
    let dt = t0.elapsed();
    println!("PASS bench: {n} reads in {dt:?}, {:.1} polls per I/O", polls as f64 / n as f64);
    shard.put(buf);
    0
}
