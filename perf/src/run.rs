//! The run, start to end: open the targets, give namespaces to cores as
//! `spdk_nvme_perf` does (`max(namespaces, cores)` pairs, round-robin), open `-P`
//! queues per pair, prefill under `--verify`, run the pinned workers while the main
//! thread switches phases, prints a progress line a second and keeps NVMe/TCP
//! controllers alive, then print and write the results.
//!
//! Every failure ends with a message on stderr, whatever results were measured so
//! far, and exit status 1 (2 for bad options). Ctrl-C stops the run and prints the
//! results measured so far, with exit status 130 (128 + SIGINT) so that scripts can
//! tell a cut-short run from a complete one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::args::{Args, Config};
use crate::plot;
use crate::report::{self, JsonMismatch, JsonReport, JsonRow, JsonVerify, Row};
use crate::signal;
use crate::target::{Namespace, OpenOptions, Target};
use crate::tid::format_size;
use crate::workload::{run_worker, Job, Plan, Shared, WorkerOutcome, PHASE_MEASURE, PHASE_STOP, PHASE_WARMUP};

/// Exit status: a run failure (target, I/O, verification).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status: bad options.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: stopped by Ctrl-C (the results so far were printed).
pub const EXIT_INTERRUPTED: i32 = 130;
/// Under `--verify`, the part of each namespace the run covers.
pub const VERIFY_REGION_MAX: u64 = 64 << 20;
/// Largest write of the `--verify` prefill.
const PREFILL_IO_MAX: u32 = 128 << 10;
/// How often the main thread looks at the clock and the workers.
const TICK: Duration = Duration::from_millis(5);

/// Runs the program with parsed arguments; returns the exit status.
pub fn main_with(args: Args) -> i32 {
    if let Some(files) = &args.compare {
        return compare_files(&files[0], &files[1]);
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quire-perf: {e}");
            return EXIT_USAGE;
        }
    };
    run(&cfg)
}

fn compare_files(a: &Path, b: &Path) -> i32 {
    let load = |p: &Path| -> Result<JsonReport, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a quire-perf JSON file: {e}", p.display()))
    };
    match (load(a), load(b)) {
        (Ok(x), Ok(y)) => {
            println!("A: {}\nB: {}", a.display(), b.display());
            print!("{}", report::compare(&x, &y));
            0
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("quire-perf: {e}");
            EXIT_FAILURE
        }
    }
}

/// A namespace-on-core pair and where its job sits.
struct Pair {
    ns: usize,
    worker: usize,
}

/// Runs a checked configuration; returns the exit status.
pub fn run(cfg: &Config) -> i32 {
    if let Err(m) = check_cores(&cfg.cores) {
        eprintln!("quire-perf: {m}");
        return EXIT_USAGE;
    }
    println!("Initializing NVMe Controllers");
    let mut targets: Vec<Target> = Vec::new();
    let io_buf_len = if cfg.verify { cfg.io_size.max(PREFILL_IO_MAX) } else { cfg.io_size } as usize;
    let o = OpenOptions {
        header_digest: cfg.header_digest,
        data_digest: cfg.data_digest,
        kato_ms: cfg.kato_ms,
        disable_sqflow: cfg.disable_sqflow,
        io_buf_len,
        io_bufs: cfg.cores.len() * cfg.qpairs as usize * cfg.depth as usize,
    };
    for (i, tid) in cfg.targets.iter().enumerate() {
        match Target::open(i, tid, &o) {
            Ok(t) => {
                println!("{}", t.description);
                targets.push(t);
            }
            Err(e) => {
                eprintln!("quire-perf: {}: {e}", cfg.target_strings[i]);
                close_targets(targets);
                return EXIT_FAILURE;
            }
        }
    }
    let namespaces: Vec<Namespace> = targets.iter().flat_map(|t| t.namespaces.iter().cloned()).collect();
    match prepare_and_run(cfg, &mut targets, &namespaces) {
        Ok(code) => {
            close_targets(targets);
            code
        }
        Err(m) => {
            eprintln!("quire-perf: {m}");
            close_targets(targets);
            EXIT_FAILURE
        }
    }
}

fn close_targets(targets: Vec<Target>) {
    for t in targets {
        if let Err(e) = t.close() {
            eprintln!("quire-perf: closing the target: {e}");
        }
    }
}

fn check_cores(cores: &[usize]) -> Result<(), String> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    if ids.is_empty() {
        return Ok(()); // No affinity support: run unpinned.
    }
    for c in cores {
        if !ids.iter().any(|id| id.id == *c) {
            let have: Vec<usize> = ids.iter().map(|i| i.id).collect();
            return Err(format!("core {c} of -c is not available (cores: {have:?})"));
        }
    }
    Ok(())
}

/// Blocks of `ns` the run covers.
fn region_blocks(cfg: &Config, ns: &Namespace, prefill_size: u32) -> u64 {
    if !cfg.verify {
        return ns.num_blocks;
    }
    let cap = (VERIFY_REGION_MAX / u64::from(ns.block_size)).min(ns.num_blocks);
    let unit = u64::from(prefill_size / ns.block_size);
    (cap / unit * unit).max(unit)
}

/// Size of the `--verify` prefill writes: a multiple of `-o` of at most
/// [`PREFILL_IO_MAX`] and at most what every namespace takes in one I/O.
fn prefill_size(cfg: &Config, namespaces: &[Namespace]) -> u32 {
    let cap = namespaces.iter().filter_map(|n| n.max_io_bytes).fold(u64::from(PREFILL_IO_MAX), u64::min);
    let cap = u32::try_from(cap).expect("at most PREFILL_IO_MAX, a u32");
    let size = (cap / cfg.io_size).max(1) * cfg.io_size;
    assert!(size >= cfg.io_size && size.is_multiple_of(cfg.io_size));
    size
}

/// Refuses an I/O size that a namespace's controller cannot take in one command.
fn check_io_size(cfg: &Config, ns: &Namespace) -> Result<(), String> {
    if !cfg.io_size.is_multiple_of(ns.block_size) {
        return Err(format!("-o {} is not a multiple of {}'s block size {}", cfg.io_size, ns.name, ns.block_size));
    }
    match ns.max_io_bytes {
        Some(max) if u64::from(cfg.io_size) > max => Err(format!(
            "-o {} exceeds the largest transfer {} accepts in one command ({max} bytes; NVMe: MDTS): \
             use -o {max} or less",
            cfg.io_size, ns.name
        )),
        Some(_) | None => Ok(()),
    }
}

fn prepare_and_run(cfg: &Config, targets: &mut [Target], namespaces: &[Namespace]) -> Result<i32, String> {
    if namespaces.is_empty() {
        return Err("no active namespace on the targets".into());
    }
    for ns in namespaces {
        check_io_size(cfg, ns)?;
    }
    let psize = if cfg.verify { prefill_size(cfg, namespaces) } else { cfg.io_size };
    for ns in namespaces {
        let need = u64::from(psize / ns.block_size);
        if ns.num_blocks < need {
            return Err(format!("{} ({} blocks) is smaller than one I/O", ns.name, ns.num_blocks));
        }
    }
    let nw = cfg.cores.len();
    let count = namespaces.len().max(nw);
    let pairs: Vec<Pair> = (0..count).map(|i| Pair { ns: i % namespaces.len(), worker: i % nw }).collect();
    for p in &pairs {
        println!("Associating {} with lcore {}", namespaces[p.ns].name, cfg.cores[p.worker]);
    }
    for (ti, t) in targets.iter_mut().enumerate() {
        let here = pairs.iter().filter(|p| namespaces[p.ns].target == ti).count();
        let n = u32::try_from(here)
            .ok()
            .and_then(|h| h.checked_mul(cfg.qpairs))
            .ok_or_else(|| "too many queues".to_string())?;
        if n > 0 {
            t.reserve_queues(u16::try_from(n).map_err(|_| "too many queues".to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut workers: Vec<Vec<Job>> = (0..nw).map(|_| Vec::new()).collect();
    for p in &pairs {
        let ns = &namespaces[p.ns];
        let mut queues = Vec::new();
        for _ in 0..cfg.qpairs {
            match targets[ns.target].open_queue(ns, cfg.depth, psize as usize) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    queues.into_iter().for_each(|q| q.close());
                    workers.into_iter().flatten().for_each(Job::close);
                    return Err(format!("opening an I/O queue on {}: {e}", ns.name));
                }
            }
        }
        let region_ios = region_blocks(cfg, ns, psize) / u64::from(cfg.io_size / ns.block_size);
        let seed = cfg.seed ^ (p.worker as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        workers[p.worker].push(Job::new(p.ns, ns.block_size, cfg.io_size, 0, region_ios, queues, cfg.depth, seed));
    }
    println!("Initialization complete. Launching workers.");
    if let Err(e) = signal::install() {
        eprintln!("quire-perf: Ctrl-C will not print partial results: {e}");
    }
    if cfg.verify {
        let (w, failure) = prefill(cfg, targets, namespaces, workers, psize);
        workers = w;
        if let Some(m) = failure {
            workers.into_iter().flatten().for_each(Job::close);
            return Err(format!("--verify prefill failed: {m}"));
        }
    }
    aim_main_run(cfg, namespaces, &mut workers, psize);
    let plan = Plan {
        depth: cfg.depth,
        io_size: cfg.io_size,
        random: cfg.pattern.is_random(),
        read_pct: cfg.read_pct,
        verify: cfg.verify,
        seed: cfg.seed,
        record: true,
    };
    let timing = Timing {
        warmup: Duration::from_secs(cfg.warmup_s),
        time: (cfg.time_s > 0).then(|| Duration::from_secs(cfg.time_s)),
        progress: true,
    };
    let (outcomes, admin_error) = run_phase(cfg, targets, workers, plan, timing);
    let code = finish(cfg, namespaces, &outcomes, admin_error);
    for o in outcomes {
        o.jobs.into_iter().for_each(Job::close);
    }
    Ok(code)
}

/// Jobs of each namespace, as (worker, index in the worker's list).
fn jobs_by_ns(workers: &[Vec<Job>], nns: usize) -> Vec<Vec<(usize, usize)>> {
    let mut v = vec![Vec::new(); nns];
    for (w, jobs) in workers.iter().enumerate() {
        for (j, job) in jobs.iter().enumerate() {
            v[job.ns].push((w, j));
        }
    }
    v
}

fn prefill(
    cfg: &Config,
    targets: &mut [Target],
    namespaces: &[Namespace],
    mut workers: Vec<Vec<Job>>,
    psize: u32,
) -> (Vec<Vec<Job>>, Option<String>) {
    for (n, list) in jobs_by_ns(&workers, namespaces.len()).iter().enumerate() {
        let ns = &namespaces[n];
        let units = region_blocks(cfg, ns, psize) / u64::from(psize / ns.block_size);
        println!("Writing the --verify pattern over {} of {}", format_size(units * u64::from(psize)), ns.name);
        for (k, &(w, j)) in list.iter().enumerate() {
            let start = units * k as u64 / list.len() as u64;
            let end = units * (k as u64 + 1) / list.len() as u64;
            workers[w][j].reset(psize, start, (end - start).max(1), 0, Some(end - start));
        }
    }
    let plan = Plan {
        depth: cfg.depth,
        io_size: psize,
        random: false,
        read_pct: 0,
        verify: true,
        seed: cfg.seed,
        record: false,
    };
    let timing = Timing { warmup: Duration::ZERO, time: None, progress: false };
    let (outcomes, admin_error) = run_phase(cfg, targets, workers, plan, timing);
    let mut failure = admin_error;
    if failure.is_none() && signal::interrupted() {
        failure = Some("interrupted (Ctrl-C)".into());
    }
    let mut back = Vec::new();
    for o in outcomes {
        if failure.is_none() {
            failure = o.error;
        }
        for j in &o.jobs {
            if failure.is_none() && j.stats.errors > 0 {
                failure = j.stats.first_error.clone();
            }
        }
        back.push(o.jobs);
    }
    (back, failure)
}

fn aim_main_run(cfg: &Config, namespaces: &[Namespace], workers: &mut [Vec<Job>], psize: u32) {
    for (n, list) in jobs_by_ns(workers, namespaces.len()).iter().enumerate() {
        let ns = &namespaces[n];
        let region_ios = region_blocks(cfg, ns, psize) / u64::from(cfg.io_size / ns.block_size);
        for (k, &(w, j)) in list.iter().enumerate() {
            let seq_start = region_ios * k as u64 / list.len() as u64;
            let limit = (cfg.number_ios > 0).then_some(cfg.number_ios);
            workers[w][j].reset(cfg.io_size, 0, region_ios, seq_start, limit);
        }
    }
}

#[derive(Clone, Copy)]
struct Timing {
    warmup: Duration,
    time: Option<Duration>,
    progress: bool,
}

/// Runs one phase on pinned worker threads; the calling thread keeps time, prints
/// progress and keeps controllers alive. Returns each worker's outcome (in worker
/// order) and an admin-side failure if one happened.
fn run_phase(
    cfg: &Config,
    targets: &mut [Target],
    workers: Vec<Vec<Job>>,
    plan: Plan,
    timing: Timing,
) -> (Vec<WorkerOutcome>, Option<String>) {
    let n = workers.len();
    let first = if timing.warmup.is_zero() { PHASE_MEASURE } else { PHASE_WARMUP };
    let shared = Shared::new(n, first);
    let mut admin_error = None;
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .enumerate()
            .map(|(i, jobs)| {
                let core = cfg.cores[i];
                let shared = &shared;
                s.spawn(move || {
                    // Pinning is best effort: the run is still valid unpinned.
                    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    run_worker(i, jobs, plan, shared)
                })
            })
            .collect();
        admin_error = keep_time(targets, &shared, timing, n);
        handles.into_iter().map(|h| h.join().expect("worker thread panicked")).collect()
    });
    (outcomes, admin_error)
}

fn keep_time(targets: &mut [Target], shared: &Shared, timing: Timing, n: usize) -> Option<String> {
    let start = Instant::now();
    let mut measure_start = if timing.warmup.is_zero() { Some(start) } else { None };
    let mut next_line = start + Duration::from_secs(1);
    let mut last = (0u64, 0u64, start);
    let mut error = None;
    while shared.finished.load(Ordering::Acquire) < n as u64 {
        std::thread::sleep(TICK);
        let now = Instant::now();
        if signal::interrupted() {
            shared.phase.store(PHASE_STOP, Ordering::Release);
        }
        if measure_start.is_none() && now >= start + timing.warmup {
            shared.phase.store(PHASE_MEASURE, Ordering::Release);
            measure_start = Some(now);
        }
        if let (Some(m), Some(t)) = (measure_start, timing.time) {
            if now >= m + t {
                shared.phase.store(PHASE_STOP, Ordering::Release);
            }
        }
        if error.is_none() {
            for t in targets.iter_mut() {
                if let Err(e) = t.tick() {
                    error = Some(format!("admin queue: {e}"));
                    shared.failed.store(true, Ordering::Relaxed);
                    shared.phase.store(PHASE_STOP, Ordering::Release);
                    break;
                }
            }
        }
        if timing.progress && now >= next_line {
            let ios: u64 = shared.progress.iter().map(|p| p.ios.load(Ordering::Relaxed)).sum();
            let bytes: u64 = shared.progress.iter().map(|p| p.bytes.load(Ordering::Relaxed)).sum();
            let dt = now.duration_since(last.2).as_secs_f64();
            let iops = (ios - last.0) as f64 / dt;
            let mibps = (bytes - last.1) as f64 / dt / (1024.0 * 1024.0);
            // The second that just ended was warm-up if measuring began at its end.
            let warm = measure_start.is_none_or(|m| m + Duration::from_millis(500) > now);
            let tag = if warm { " (warm-up)" } else { "" };
            println!(
                "[{:>4}s] IOPS: {iops:>12.2}  MiB/s: {mibps:>10.2}{tag}",
                now.duration_since(start).as_secs_f64().round()
            );
            last = (ios, bytes, now);
            next_line += Duration::from_secs(1);
        }
    }
    error
}

/// Prints and writes the results; returns the exit status.
fn finish(cfg: &Config, namespaces: &[Namespace], outcomes: &[WorkerOutcome], admin_error: Option<String>) -> i32 {
    let mut rows = Vec::new();
    let mut failures: Vec<String> = admin_error.into_iter().collect();
    let mut mismatch_count = 0;
    let mut mismatches = Vec::new();
    for (w, o) in outcomes.iter().enumerate() {
        if let Some(m) = &o.error {
            failures.push(format!("worker on core {}: {m}", cfg.cores[w]));
        }
        for j in &o.jobs {
            let ns = &namespaces[j.ns];
            let st = &j.stats;
            if st.errors > 0 {
                let first = st.first_error.as_deref().unwrap_or("?");
                failures
                    .push(format!("{} I/Os failed on {} (core {}); first: {first}", st.errors, ns.name, cfg.cores[w]));
            }
            mismatch_count += st.mismatch_count;
            mismatches.extend(st.mismatches.iter().map(|m| JsonMismatch::new(&ns.name, m)));
            rows.push(Row {
                name: ns.name.clone(),
                core: Some(cfg.cores[w]),
                ios: st.ios,
                bytes: st.bytes,
                seconds: o.measured.as_secs_f64(),
                hist: st.hist.clone(),
                errors: st.errors,
            });
        }
    }
    if mismatch_count > 0 {
        failures.push(format!("--verify: {mismatch_count} blocks did not hold the pattern"));
    }
    for f in &failures {
        eprintln!("quire-perf: {f}");
    }
    let interrupted = signal::interrupted();
    if !failures.is_empty() {
        println!("Partial results (the run did not complete):");
    } else if interrupted {
        let secs = outcomes.iter().map(|o| o.measured.as_secs_f64()).fold(0.0, f64::max);
        println!("Interrupted (Ctrl-C): results of the first {secs:.1} s measured");
    }
    print!("{}", report::table(&rows));
    let total = report::total(&rows);
    if cfg.latency >= 1 {
        println!();
        for r in &rows {
            println!("{}", report::percentiles(r));
        }
        if rows.len() > 1 {
            println!("{}", report::percentiles(&total));
        }
    }
    if cfg.latency >= 2 {
        for r in &rows {
            println!("{}", report::histogram(r));
        }
    }
    if cfg.verify {
        println!("Verify: {mismatch_count} mismatched blocks");
        for m in &mismatches {
            println!("  mismatch: {} LBA {} (first bad byte {})", m.device, m.lba, m.offset);
        }
    }
    let mut code = match (failures.is_empty(), interrupted) {
        (false, _) => EXIT_FAILURE,
        (true, true) => EXIT_INTERRUPTED,
        (true, false) => 0,
    };
    if interrupted {
        failures.push("interrupted (Ctrl-C)".into());
    }
    let json = JsonReport {
        tool: "quire-perf".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        config: config_json(cfg),
        complete: failures.is_empty(),
        error: (!failures.is_empty()).then(|| failures.join("; ")),
        devices: rows.iter().map(JsonRow::from_row).collect(),
        total: JsonRow::from_row(&total),
        verify: JsonVerify { enabled: cfg.verify, mismatches: mismatch_count, first: mismatches },
    };
    if let Some(p) = &cfg.json {
        let text = serde_json::to_string_pretty(&json).expect("plain data serializes");
        if let Err(e) = write_file(p, &text) {
            eprintln!("quire-perf: {e}");
            code = EXIT_FAILURE;
        }
    }
    if let Some(p) = &cfg.plot {
        let title = format!(
            "quire-perf -w {} -q {} -o {}: {:.0} IOPS, avg {:.2} us",
            cfg.pattern.name(),
            cfg.depth,
            cfg.io_size,
            total.iops(),
            total.avg_us()
        );
        if let Err(e) = write_file(p, &plot::svg(&total.hist, &title)) {
            eprintln!("quire-perf: {e}");
            code = EXIT_FAILURE;
        }
    }
    code
}

fn write_file(p: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
}

fn config_json(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "depth": cfg.depth,
        "io_size": cfg.io_size,
        "pattern": cfg.pattern,
        "read_pct": cfg.read_pct,
        "time_s": cfg.time_s,
        "warmup_s": cfg.warmup_s,
        "cores": cfg.cores,
        "targets": cfg.target_strings,
        "qpairs": cfg.qpairs,
        "number_ios": cfg.number_ios,
        "header_digest": cfg.header_digest,
        "data_digest": cfg.data_digest,
        "seed": cfg.seed,
        "verify": cfg.verify,
    })
}
