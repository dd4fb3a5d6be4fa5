//! Results: the final table, percentiles and histogram in `spdk_nvme_perf`'s format,
//! the JSON document, and the comparison of two JSON documents.
//!
//! The table's shape follows `print_performance()` of `spdk_nvme_perf`: a
//! "Device Information" header, one row per namespace per core (IOPS, MiB/s,
//! average, min and max latency in microseconds), then "Total". `-L` adds
//! "Summary latency data" with the same cut-offs (1 % … 99.99999 %), `-LL` the
//! histogram buckets. Latencies are kept in nanoseconds in `hdrhistogram`s; the
//! Total row merges them across cores.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::workload::{new_histogram, Mismatch};

/// Percentile cut-offs, as `spdk_nvme_perf` prints them.
pub const CUTOFFS: [f64; 15] =
    [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99, 99.999, 99.9999, 99.99999];

/// One row: a namespace on a core (or the total).
#[derive(Clone, Debug)]
pub struct Row {
    /// Device name ("TCP  (addr:… subnqn:…) NSID 1").
    pub name: String,
    /// Core, `None` for the total.
    pub core: Option<usize>,
    /// I/Os measured.
    pub ios: u64,
    /// Bytes measured.
    pub bytes: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Latencies (ns).
    pub hist: Histogram<u64>,
    /// Failed I/Os.
    pub errors: u64,
}

impl Row {
    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ios as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// MiB per second.
    pub fn mibps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / (1024.0 * 1024.0)
        } else {
            0.0
        }
    }

    /// Average latency in µs.
    pub fn avg_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.mean() / 1000.0
        }
    }

    /// Minimum latency in µs.
    pub fn min_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.min() as f64 / 1000.0
        }
    }

    /// Maximum latency in µs.
    pub fn max_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.max() as f64 / 1000.0
        }
    }

    /// Latency at percentile `pct` in µs.
    pub fn pct_us(&self, pct: f64) -> f64 {
        self.hist.value_at_percentile(pct) as f64 / 1000.0
    }
}

/// The Total row: IOPS and MiB/s summed, latencies merged.
pub fn total(rows: &[Row]) -> Row {
    let mut hist = new_histogram();
    let mut t =
        Row { name: "Total".into(), core: None, ios: 0, bytes: 0, seconds: 0.0, hist: new_histogram(), errors: 0 };
    let mut iops = 0.0;
    for r in rows {
        hist.add(&r.hist).expect("histograms share their bounds");
        t.ios += r.ios;
        t.bytes += r.bytes;
        t.errors += r.errors;
        iops += r.iops();
    }
    t.hist = hist;
    // Seconds such that ios/seconds is the summed IOPS (rows may differ slightly).
    t.seconds = if iops > 0.0 { t.ios as f64 / iops } else { 0.0 };
    t
}

/// The final table.
pub fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(20).max(20);
    let mut s = String::new();
    let _ = writeln!(s, "========================================================");
    let _ = writeln!(s, "{:>w$}", "Latency(us)", w = width + 13 + 56);
    let _ = writeln!(
        s,
        "{:<w$}: {:>10} {:>10} {:>10} {:>10} {:>10}",
        "Device Information",
        "IOPS",
        "MiB/s",
        "Average",
        "min",
        "max",
        w = width + 13
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w$} from core {:>2}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            r.name,
            r.core.unwrap_or(0),
            r.iops(),
            r.mibps(),
            r.avg_us(),
            r.min_us(),
            r.max_us(),
            w = width
        );
    }
    let t = total(rows);
    let _ = writeln!(s, "========================================================");
    let _ = writeln!(
        s,
        "{:<w$}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total",
        t.iops(),
        t.mibps(),
        t.avg_us(),
        t.min_us(),
        t.max_us(),
        w = width + 13
    );
    s
}

fn row_label(r: &Row) -> String {
    match r.core {
        Some(c) => format!("{:<43.43} from core {c}", r.name),
        None => format!("{:<43.43} all cores", r.name),
    }
}

/// `-L`: the percentile summary of one row.
pub fn percentiles(r: &Row) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Summary latency data for {}:", row_label(r));
    let _ = writeln!(s, "=================================================================================");
    for c in CUTOFFS {
        let _ = writeln!(s, "{c:9.5}% : {:9.3}us", r.pct_us(c));
    }
    s
}

/// `-LL`: the histogram of one row, non-empty buckets only.
pub fn histogram(r: &Row) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Latency histogram for {}:", row_label(r));
    let _ = writeln!(s, "==============================================================================");
    let _ = writeln!(s, "       Range in us     Cumulative    IO count");
    let total = r.hist.len().max(1);
    let mut so_far = 0u64;
    for v in r.hist.iter_recorded() {
        let n = v.count_since_last_iteration();
        so_far += n;
        let hi = r.hist.highest_equivalent(v.value_iterated_to());
        let lo = r.hist.lowest_equivalent(v.value_iterated_to());
        let _ = writeln!(
            s,
            "{:9.3} - {:9.3}: {:9.4}%  ({n:9})",
            lo as f64 / 1000.0,
            hi as f64 / 1000.0,
            so_far as f64 * 100.0 / total as f64
        );
    }
    s
}

/// A row in the JSON document.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonRow {
    /// Device name.
    pub name: String,
    /// Core (absent for the total).
    pub core: Option<usize>,
    /// I/Os measured.
    pub ios: u64,
    /// Bytes measured.
    pub bytes: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mibps: f64,
    /// Average latency (µs).
    pub avg_us: f64,
    /// Minimum latency (µs).
    pub min_us: f64,
    /// Maximum latency (µs).
    pub max_us: f64,
    /// Failed I/Os.
    pub errors: u64,
    /// Latency at each of [`CUTOFFS`] (µs).
    pub percentiles: Vec<JsonPercentile>,
    /// Histogram buckets (non-empty).
    pub histogram: Vec<JsonBucket>,
}

/// A percentile.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonPercentile {
    /// Percent.
    pub pct: f64,
    /// Latency (µs).
    pub us: f64,
}

/// A histogram bucket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonBucket {
    /// From (µs).
    pub from_us: f64,
    /// To (µs).
    pub to_us: f64,
    /// I/Os in the bucket.
    pub count: u64,
}

impl JsonRow {
    /// The JSON view of a row.
    pub fn from_row(r: &Row) -> JsonRow {
        JsonRow {
            name: r.name.clone(),
            core: r.core,
            ios: r.ios,
            bytes: r.bytes,
            seconds: r.seconds,
            iops: r.iops(),
            mibps: r.mibps(),
            avg_us: r.avg_us(),
            min_us: r.min_us(),
            max_us: r.max_us(),
            errors: r.errors,
            percentiles: CUTOFFS.iter().map(|&pct| JsonPercentile { pct, us: r.pct_us(pct) }).collect(),
            histogram: r
                .hist
                .iter_recorded()
                .map(|v| JsonBucket {
                    from_us: r.hist.lowest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
                    to_us: r.hist.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
                    count: v.count_since_last_iteration(),
                })
                .collect(),
        }
    }
}

/// Verification results in the JSON document.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonVerify {
    /// Whether --verify was on.
    pub enabled: bool,
    /// Blocks that did not hold the pattern.
    pub mismatches: u64,
    /// The first of them, by device.
    pub first: Vec<JsonMismatch>,
}

/// One mismatch.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonMismatch {
    /// Device name.
    pub device: String,
    /// The block.
    pub lba: u64,
    /// First differing byte.
    pub offset: u32,
}

impl JsonMismatch {
    /// From a workload mismatch.
    pub fn new(device: &str, m: &Mismatch) -> JsonMismatch {
        JsonMismatch { device: device.into(), lba: m.lba, offset: m.offset }
    }
}

/// The whole JSON document.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonReport {
    /// "quire-perf".
    pub tool: String,
    /// Tool version.
    pub version: String,
    /// The run's settings.
    pub config: Value,
    /// True when the run ended as planned.
    pub complete: bool,
    /// What stopped it otherwise.
    pub error: Option<String>,
    /// One row per namespace per core.
    pub devices: Vec<JsonRow>,
    /// The total.
    pub total: JsonRow,
    /// Verification.
    pub verify: JsonVerify,
}

/// Metrics that `--compare` prints, with whether higher is better.
const COMPARED: [(&str, bool); 5] =
    [("iops", true), ("mibps", true), ("avg_us", false), ("min_us", false), ("max_us", false)];
/// Percentiles that `--compare` prints.
const COMPARED_PCTS: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// `--compare A B`: per-metric values of the totals and the ratio B/A.
pub fn compare(a: &JsonReport, b: &JsonReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<14} {:>14} {:>14} {:>10}", "metric", "A", "B", "B/A");
    let mut line = |name: &str, x: f64, y: f64, higher_better: bool| {
        let ratio = if x != 0.0 { y / x } else { f64::NAN };
        let better = if ratio.is_nan() || (ratio - 1.0).abs() < 1e-9 {
            ""
        } else if (ratio > 1.0) == higher_better {
            "  (B better)"
        } else {
            "  (B worse)"
        };
        let _ = writeln!(s, "{name:<14} {x:>14.2} {y:>14.2} {ratio:>10.3}{better}");
    };
    let (ta, tb) = (&a.total, &b.total);
    for (m, hb) in COMPARED {
        let (x, y) = match m {
            "iops" => (ta.iops, tb.iops),
            "mibps" => (ta.mibps, tb.mibps),
            "avg_us" => (ta.avg_us, tb.avg_us),
            "min_us" => (ta.min_us, tb.min_us),
            _ => (ta.max_us, tb.max_us),
        };
        line(m, x, y, hb);
    }
    for p in COMPARED_PCTS {
        let find = |r: &JsonRow| r.percentiles.iter().find(|q| (q.pct - p).abs() < 1e-9).map_or(0.0, |q| q.us);
        line(&format!("p{p}_us"), find(ta), find(tb), false);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, core: usize, lat_us: &[u64], seconds: f64) -> Row {
        let mut hist = new_histogram();
        for &l in lat_us {
            hist.record(l * 1000).unwrap();
        }
        Row {
            name: name.into(),
            core: Some(core),
            ios: lat_us.len() as u64,
            bytes: lat_us.len() as u64 * 4096,
            seconds,
            hist,
            errors: 0,
        }
    }

    #[test]
    fn table_has_spdk_shape_and_total_merges() {
        let rows = vec![row("RAM NSID 1", 0, &[10, 20, 30], 1.0), row("RAM NSID 1", 1, &[40], 1.0)];
        let t = table(&rows);
        assert!(t.contains("Device Information"));
        assert!(t.contains("Latency(us)"));
        let line = t.lines().find(|l| l.contains("from core  1")).unwrap();
        let nums: Vec<f64> = line.split(':').nth(1).unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(nums.len(), 5);
        assert!((nums[0] - 1.0).abs() < 1e-9);
        let tot = total(&rows);
        assert!((tot.iops() - 4.0).abs() < 1e-9);
        assert!((tot.avg_us() - 25.0).abs() < 0.1);
        assert!((tot.min_us() - 10.0).abs() < 0.1 && (tot.max_us() - 40.0).abs() < 0.1);
        assert!(t.lines().any(|l| l.starts_with("Total") && l.contains("4.00")));
    }

    #[test]
    fn percentiles_and_histogram_lines() {
        let lat: Vec<u64> = (1..=1000).collect();
        let r = row("x", 0, &lat, 1.0);
        let p = percentiles(&r);
        let lines: Vec<&str> = p.lines().filter(|l| l.contains("% :")).collect();
        assert_eq!(lines.len(), CUTOFFS.len());
        assert!(lines[3].starts_with(" 50.00000% :"), "{}", lines[3]);
        let v: f64 = lines[3].split(':').nth(1).unwrap().trim().trim_end_matches("us").parse().unwrap();
        assert!((v - 500.0).abs() < 1.0, "{v}");
        let h = histogram(&r);
        let last = h.lines().last().unwrap();
        assert!(last.contains("100.0000%"), "{last}");
    }

    #[test]
    fn compare_prints_ratios() {
        let a = JsonRow::from_row(&row("x", 0, &[10, 10], 1.0));
        let b = JsonRow::from_row(&row("x", 0, &[20, 20, 20, 20], 1.0));
        let mk = |t: JsonRow| JsonReport {
            tool: "quire-perf".into(),
            version: "0".into(),
            config: Value::Null,
            complete: true,
            error: None,
            devices: vec![t.clone()],
            total: t,
            verify: JsonVerify { enabled: false, mismatches: 0, first: vec![] },
        };
        let out = compare(&mk(a), &mk(b));
        let iops = out.lines().find(|l| l.starts_with("iops")).unwrap();
        assert!(iops.contains("2.000") && iops.contains("B better"), "{iops}");
        let avg = out.lines().find(|l| l.starts_with("avg_us")).unwrap();
        assert!(avg.contains("2.000") && avg.contains("B worse"), "{avg}");
    }
}
