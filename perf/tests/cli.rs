//! The command line and its output, against the RAM target: every workload, the
//! table, `-L`/`-LL`, JSON, the plot, `--verify`, `--compare`, and bad input.

use std::process::{Command, Output};

use quire_perf::report::JsonReport;

fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quire-perf")).args(args).output().expect("quire-perf runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The five numbers of a table row ("…: IOPS MiB/s Average min max").
fn numbers(line: &str) -> Vec<f64> {
    let tail = line.rsplit_once(':').expect("row has a colon").1;
    tail.split_whitespace().map(|x| x.parse().expect("number")).collect()
}

fn load(p: &std::path::Path) -> JsonReport {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn every_workload_runs_and_the_table_matches_the_json() {
    let dir = tempfile::tempdir().unwrap();
    for (w, extra) in [
        ("read", &[][..]),
        ("write", &[][..]),
        ("randread", &[][..]),
        ("randwrite", &[][..]),
        ("rw", &["-M", "30"][..]),
        ("randrw", &["-M", "70"][..]),
    ] {
        let json = dir.path().join(format!("{w}.json"));
        let mut args = vec!["-q", "8", "-o", "4096", "-w", w, "-t", "0", "-d", "3000", "-r", "trtype:RAM size:64M"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--json", json.to_str().unwrap()]);
        let o = perf(&args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{w}: {out}\n{err}");
        assert!(out.contains("Device Information"), "{out}");
        let row = out.lines().find(|l| l.contains("NSID 1 from core  0:")).expect("device row");
        let total = out.lines().find(|l| l.starts_with("Total")).expect("total row");
        let (r, t) = (numbers(row), numbers(total));
        assert_eq!(r.len(), 5);
        assert!(r[0] > 0.0 && r[1] > 0.0, "{w}: {row}");
        assert!(r[3] <= r[2] && r[2] <= r[4], "{w}: min ≤ avg ≤ max: {row}");
        assert_eq!(r, t, "one row: total equals it");
        let j = load(&json);
        assert!(j.complete);
        assert_eq!(j.total.ios, 3000, "-d 3000 stops after 3000 I/Os");
        assert_eq!(j.total.bytes, 3000 * 4096);
        assert_eq!(j.devices.len(), 1);
        assert_eq!(j.config["pattern"], w);
        assert!((j.total.iops - t[0]).abs() <= 0.01 + t[0] * 1e-9, "{w}: json {} vs table {}", j.total.iops, t[0]);
    }
}

#[test]
fn latency_summary_and_histogram_in_spdk_format() {
    let o = perf(&["-q", "4", "-w", "randread", "-t", "0", "-d", "5000", "-LL", "-r", "trtype:RAM size:16M"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("Summary latency data for RAM"), "{out}");
    let pcts: Vec<(f64, f64)> = out
        .lines()
        .filter(|l| l.contains("% :"))
        .map(|l| {
            let (p, v) = l.split_once("% :").unwrap();
            (p.trim().parse().unwrap(), v.trim().trim_end_matches("us").parse().unwrap())
        })
        .collect();
    let cut: Vec<f64> = pcts.iter().map(|p| p.0).collect();
    assert_eq!(cut, quire_perf::report::CUTOFFS.to_vec());
    assert!(pcts.windows(2).all(|w| w[0].1 <= w[1].1), "percentiles rise: {pcts:?}");
    assert!(out.contains("Range in us     Cumulative    IO count"));
    let buckets: Vec<&str> = out.lines().filter(|l| l.contains("%  (")).collect();
    assert!(!buckets.is_empty());
    assert!(buckets.last().unwrap().contains("100.0000%"), "{}", buckets.last().unwrap());
    let count: u64 = buckets
        .iter()
        .map(|l| l.rsplit_once('(').unwrap().1.trim_end_matches(')').trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(count, 5000);
}

#[test]
fn progress_lines_warm_up_and_two_queue_pairs() {
    let o = perf(&["-q", "4", "-P", "2", "-w", "randread", "-a", "1", "-t", "2", "-r", "trtype:RAM size:16M"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let progress: Vec<&str> = out.lines().filter(|l| l.starts_with('[') && l.contains("IOPS:")).collect();
    assert!(progress.len() >= 2, "{out}");
    assert!(progress[0].contains("(warm-up)"), "{}", progress[0]);
    assert!(progress.iter().all(|l| l.contains("MiB/s:")));
}

#[test]
fn verify_passes_on_ram_and_plot_and_compare_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let svg = dir.path().join("a.svg");
    let o = perf(&[
        "-q",
        "16",
        "-o",
        "8k",
        "-w",
        "randrw",
        "-M",
        "50",
        "-t",
        "0",
        "-d",
        "4000",
        "--verify",
        "--seed",
        "42",
        "-r",
        "trtype:RAM size:32M",
        "--json",
        a.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("Writing the --verify pattern over 32MiB"), "{out}");
    assert!(out.contains("Verify: 0 mismatched blocks"), "{out}");
    let ja = load(&a);
    assert!(ja.verify.enabled);
    assert_eq!(ja.verify.mismatches, 0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"), "{plot}");
    let o = perf(&[
        "-q",
        "1",
        "-w",
        "randread",
        "-t",
        "0",
        "-d",
        "2000",
        "-r",
        "trtype:RAM size:32M",
        "--json",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let o = perf(&["--compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for m in ["iops", "mibps", "avg_us", "min_us", "max_us", "p99_us"] {
        let l = out.lines().find(|l| l.starts_with(m)).unwrap_or_else(|| panic!("{m} missing: {out}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() >= 4, "{l}");
        let (x, y, ratio): (f64, f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        if x != 0.0 {
            // The printed values are rounded (2 decimals, ratio 3): compare relatively.
            let expected = y / x;
            assert!((ratio - expected).abs() <= 1e-3 + 2e-3 * expected.abs(), "{l}");
        }
    }
}

#[test]
fn file_target_through_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.img");
    let tid = format!("trtype:FILE path:{} size:16M", path.display());
    let o = perf(&["-q", "8", "-w", "randrw", "-t", "0", "-d", "2000", "--verify", "-r", &tid]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("FILE (path:"), "{out}");
    assert!(out.contains("Verify: 0 mismatched blocks"), "{out}");
}

#[test]
fn bad_input_gives_a_clear_message_and_a_non_zero_exit() {
    let o = perf(&["-w", "read", "-r", "trtype:TCP traddr:nowhere"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("bad transport ID") && err.contains("traddr"), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:nqn.x");
    let o = perf(&["-w", "read", "-t", "1", "-r", &tid]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");

    // No such PCI function: named, with where to look, before any VFIO work.
    let o = perf(&["-w", "read", "-t", "1", "-r", "trtype:PCIe traddr:ff:1f.7"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no PCI function 0000:ff:1f.7"), "{err}");
    let o = perf(&["-w", "read", "-t", "1", "-r", "trtype:PCIe traddr:00:04"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("bad traddr"), "{}", text(&o).1);

    // Larger than one command may carry (the RAM device takes 1 MiB).
    let o = perf(&["-w", "read", "-o", "2M", "-t", "1", "-r", "trtype:RAM size:16M"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("-o 2097152 exceeds the largest transfer") && err.contains("1048576 bytes"), "{err}");

    let o = perf(&["-w", "read", "-o", "4096", "-t", "1", "-r", "trtype:RAM size:1M bs:8k"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("block size"), "{}", text(&o).1);

    let o = perf(&["-w", "read", "-c", "0x8000000000", "-t", "1", "-r", "trtype:RAM size:1M"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("not available"));

    let o = perf(&["--compare", "/nonexistent/a.json", "/nonexistent/b.json"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn ctrl_c_stops_the_run_and_prints_what_was_measured() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("partial.json");
    let mut run = Command::new(env!("CARGO_BIN_EXE_quire-perf"))
        .args(["-q", "4", "-w", "randread", "-t", "60", "-L", "-r", "trtype:RAM size:16M", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let progress = l.starts_with('[') && l.contains("IOPS:");
        seen.push(l);
        if progress {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("IOPS:")), "no progress line: {seen:?}");
    let kill = Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap();
    assert!(kill.success());
    seen.extend(lines.map(|l| l.unwrap()));
    let status = run.wait().unwrap();
    let out = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("Interrupted (Ctrl-C)"), "{out}");
    let total = out.lines().find(|l| l.starts_with("Total")).expect("total row");
    assert!(numbers(total)[0] > 0.0, "{total}");
    assert!(out.contains("Summary latency data"), "-L percentiles are printed too: {out}");
    let j = load(&json);
    assert!(!j.complete);
    assert!(j.error.as_deref().is_some_and(|e| e.contains("interrupted")), "{:?}", j.error);
    assert!(j.total.ios > 0);
}
