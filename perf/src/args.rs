//! Command-line options, spelled as `spdk_nvme_perf` spells them, and their checks.
//!
//! [`Args`] is what clap parses; [`Args::into_config`] checks the combination and
//! produces the [`Config`] the run uses, so that every bad input is rejected before
//! a single connection is made.

use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use crate::tid::{parse_size, TidError, TransportId};

/// Most I/O queue depth per namespace per core.
pub const DEPTH_MAX: u32 = 1024;
/// Largest I/O size.
pub const IO_SIZE_MAX: u64 = 4 << 20;
/// Most queue pairs per namespace per core.
pub const QPAIRS_MAX: u32 = 64;

/// Errors in the options.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A transport ID did not parse.
    #[error("bad transport ID '{tid}': {source}")]
    Tid {
        /// The string.
        tid: String,
        /// Why.
        source: TidError,
    },
    /// An option is out of range or contradicts another.
    #[error("{0}")]
    Invalid(String),
}

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential mix (-M sets the read share).
    Rw,
    /// Random mix (-M sets the read share).
    Randrw,
}

impl Pattern {
    /// Whether offsets are random.
    pub fn is_random(self) -> bool {
        matches!(self, Pattern::Randread | Pattern::Randwrite | Pattern::Randrw)
    }

    /// Whether -M applies.
    pub fn is_mixed(self) -> bool {
        matches!(self, Pattern::Rw | Pattern::Randrw)
    }

    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::Randread => "randread",
            Pattern::Randwrite => "randwrite",
            Pattern::Rw => "rw",
            Pattern::Randrw => "randrw",
        }
    }
}

/// quire-perf: IOPS and latency in the style of spdk_nvme_perf.
#[derive(Parser, Debug, Clone)]
#[command(name = "quire-perf", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// I/O queue depth per namespace per core.
    #[arg(short = 'q', long = "io-depth", default_value_t = 1)]
    pub depth: u32,
    /// I/O size in bytes (K/M suffixes accepted).
    #[arg(short = 'o', long = "io-size", default_value = "4096", value_parser = size_arg)]
    pub io_size: u64,
    /// I/O pattern.
    #[arg(short = 'w', long = "io-pattern", value_enum)]
    pub pattern: Option<Pattern>,
    /// Percentage of reads in rw/randrw (0..=100).
    #[arg(short = 'M', long = "rwmixread")]
    pub rwmixread: Option<u8>,
    /// Run time in seconds (after the warm-up).
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time_s: u64,
    /// Core mask in hex (one pinned worker per core), e.g. 0x3.
    #[arg(short = 'c', long = "core-mask", default_value = "0x1")]
    pub core_mask: String,
    /// Transport ID of a target (repeatable), e.g. 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420'.
    #[arg(short = 'r', long = "transport")]
    pub transport: Vec<String>,
    /// I/O queue pairs per namespace per core.
    #[arg(short = 'P', long = "num-qpairs", default_value_t = 1)]
    pub qpairs: u32,
    /// Warm-up seconds before measuring.
    #[arg(short = 'a', long = "warmup-time", default_value_t = 0)]
    pub warmup_s: u64,
    /// Number of I/Os per core per namespace, then stop (0 = no limit).
    #[arg(short = 'd', long = "number-ios", default_value_t = 0)]
    pub number_ios: u64,
    /// -L: latency percentiles; -LL: also the histogram.
    #[arg(short = 'L', long = "enable-sw-latency-tracking", action = ArgAction::Count)]
    pub latency: u8,
    /// NVMe/TCP header digests.
    #[arg(short = 'H', long = "enable-tcp-hdgst")]
    pub header_digest: bool,
    /// NVMe/TCP data digests.
    #[arg(short = 'I', long = "enable-tcp-ddgst")]
    pub data_digest: bool,
    /// Write every figure to this JSON file.
    #[arg(long = "json", value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a latency histogram and CDF to this SVG file.
    #[arg(long = "plot", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Seed of random offsets and of the --verify pattern.
    #[arg(long = "seed", default_value_t = 1)]
    pub seed: u64,
    /// Write a pattern derived from LBA and seed, read it back, report mismatches.
    #[arg(long = "verify")]
    pub verify: bool,
    /// Compare two runs' JSON files (per-metric ratios B/A) instead of running.
    #[arg(long = "compare", num_args = 2, value_names = ["A.json", "B.json"])]
    pub compare: Option<Vec<PathBuf>>,
    /// Keep Alive Timeout in milliseconds for NVMe/TCP controllers.
    #[arg(long = "kato-ms", default_value_t = 10_000)]
    pub kato_ms: u32,
    /// Keep NVMe/TCP submission queue flow control on. By default I/O queues ask for
    /// it off (as `nvme connect --disable-sqflow` does), which lets a target end a
    /// successful read with its data PDU alone (C2HData SUCCESS, NVMe/TCP TP 8000).
    #[arg(long = "sq-flow-control")]
    pub sq_flow_control: bool,
}

const EXAMPLES: &str = "Examples:
  quire-perf -q 32 -o 4096 -w randread -t 10 -c 0x1 -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1'
  quire-perf -q 1 -o 4k -w randrw -M 70 -t 5 -L -r 'trtype:RAM size:1G' --json run.json --plot run.svg
  quire-perf --compare a.json b.json";

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("'{s}' is not a size"))
}

/// The checked run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Queue depth per namespace per core.
    pub depth: u32,
    /// I/O size in bytes.
    pub io_size: u32,
    /// Pattern.
    pub pattern: Pattern,
    /// Read share in percent.
    pub read_pct: u8,
    /// Measured seconds.
    pub time_s: u64,
    /// Warm-up seconds.
    pub warmup_s: u64,
    /// Cores to run workers on.
    pub cores: Vec<usize>,
    /// Targets.
    pub targets: Vec<TransportId>,
    /// The strings they came from.
    pub target_strings: Vec<String>,
    /// Queue pairs per namespace per core.
    pub qpairs: u32,
    /// I/Os per core per namespace (0 = unlimited).
    pub number_ios: u64,
    /// Latency detail: 0, 1 (-L) or 2 (-LL).
    pub latency: u8,
    /// Header digests.
    pub header_digest: bool,
    /// Data digests.
    pub data_digest: bool,
    /// JSON output.
    pub json: Option<PathBuf>,
    /// SVG plot.
    pub plot: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
    /// Verify.
    pub verify: bool,
    /// Keep Alive Timeout.
    pub kato_ms: u32,
    /// Ask I/O queues to disable SQ flow control.
    pub disable_sqflow: bool,
}

impl Args {
    /// Checks the options and builds the run configuration.
    pub fn into_config(self) -> Result<Config, ArgsError> {
        let bad = |m: String| Err(ArgsError::Invalid(m));
        let Some(pattern) = self.pattern else {
            return bad("-w is required (read, write, randread, randwrite, rw, randrw)".into());
        };
        if self.transport.is_empty() {
            return bad("-r is required (a transport ID)".into());
        }
        if self.depth == 0 || self.depth > DEPTH_MAX {
            return bad(format!("-q {} must be from 1 to {DEPTH_MAX}", self.depth));
        }
        if self.io_size == 0 || self.io_size > IO_SIZE_MAX || !self.io_size.is_multiple_of(512) {
            return bad(format!("-o {} must be a multiple of 512 up to {IO_SIZE_MAX}", self.io_size));
        }
        if self.qpairs == 0 || self.qpairs > QPAIRS_MAX {
            return bad(format!("-P {} must be from 1 to {QPAIRS_MAX}", self.qpairs));
        }
        let read_pct = match (pattern, self.rwmixread) {
            (Pattern::Read | Pattern::Randread, None | Some(100)) => 100,
            (Pattern::Write | Pattern::Randwrite, None | Some(0)) => 0,
            (Pattern::Rw | Pattern::Randrw, Some(m)) if m <= 100 => m,
            (Pattern::Rw | Pattern::Randrw, None) => 50,
            (_, Some(m)) => return bad(format!("-M {m} does not fit -w {}", pattern.name())),
        };
        if self.time_s == 0 && self.number_ios == 0 {
            return bad("-t 0 needs -d (a number of I/Os)".into());
        }
        let cores = parse_core_mask(&self.core_mask).map_err(ArgsError::Invalid)?;
        let targets = self
            .transport
            .iter()
            .map(|t| TransportId::parse(t).map_err(|source| ArgsError::Tid { tid: t.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            depth: self.depth,
            io_size: u32::try_from(self.io_size).expect("checked against IO_SIZE_MAX above"),
            pattern,
            read_pct,
            time_s: self.time_s,
            warmup_s: self.warmup_s,
            cores,
            targets,
            target_strings: self.transport,
            qpairs: self.qpairs,
            number_ios: self.number_ios,
            latency: self.latency,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
            json: self.json,
            plot: self.plot,
            seed: self.seed,
            verify: self.verify,
            kato_ms: self.kato_ms,
            disable_sqflow: !self.sq_flow_control,
        })
    }
}

/// Parses a hex core mask ("0x5", "5" or "[0,2]") into core numbers.
pub fn parse_core_mask(s: &str) -> Result<Vec<usize>, String> {
    let t = s.trim();
    let cores: Vec<usize> = if let Some(list) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        list.split(',')
            .map(|c| c.trim().parse::<usize>().map_err(|_| format!("bad core '{c}' in -c {s}")))
            .collect::<Result<_, _>>()?
    } else {
        let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        let mask = u128::from_str_radix(hex, 16).map_err(|_| format!("-c {s} is not a hex core mask"))?;
        (0..128).filter(|i| mask & (1u128 << i) != 0).collect()
    };
    if cores.is_empty() {
        return Err(format!("-c {s} selects no core"));
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let a = Args::try_parse_from(std::iter::once("quire-perf").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        a.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn spdk_style_options() {
        let c = parse(&[
            "-q",
            "32",
            "-o",
            "4096",
            "-w",
            "randrw",
            "-M",
            "70",
            "-t",
            "5",
            "-c",
            "0x3",
            "-r",
            "trtype:RAM size:64M",
            "-P",
            "2",
            "-a",
            "1",
            "-d",
            "1000",
            "-LL",
            "-H",
            "-I",
            "--seed",
            "9",
        ])
        .unwrap();
        assert_eq!((c.depth, c.io_size, c.read_pct, c.time_s), (32, 4096, 70, 5));
        assert_eq!(c.pattern, Pattern::Randrw);
        assert_eq!(c.cores, vec![0, 1]);
        assert_eq!((c.qpairs, c.warmup_s, c.number_ios, c.latency), (2, 1, 1000, 2));
        assert!(c.header_digest && c.data_digest);
        assert_eq!(c.seed, 9);
        assert_eq!(c.targets, vec![TransportId::Ram { size: 64 << 20, block_size: 512 }]);
    }

    #[test]
    fn defaults_and_read_share() {
        let c = parse(&["-w", "randread", "-r", "trtype:RAM size:1M", "-o", "8k"]).unwrap();
        assert_eq!((c.depth, c.io_size, c.read_pct, c.latency), (1, 8192, 100, 0));
        assert_eq!(parse(&["-w", "write", "-r", "trtype:RAM size:1M"]).unwrap().read_pct, 0);
        assert_eq!(parse(&["-w", "rw", "-r", "trtype:RAM size:1M"]).unwrap().read_pct, 50);
        let l = parse(&["-w", "read", "-r", "trtype:RAM size:1M", "-L"]).unwrap();
        assert_eq!(l.latency, 1);
    }

    #[test]
    fn bad_combinations_are_rejected_with_a_reason() {
        let e = parse(&["-w", "read", "-M", "50", "-r", "trtype:RAM size:1M"]).unwrap_err();
        assert!(e.contains("-M 50"), "{e}");
        assert!(parse(&["-r", "trtype:RAM size:1M"]).unwrap_err().contains("-w"));
        assert!(parse(&["-w", "read"]).unwrap_err().contains("-r"));
        assert!(parse(&["-w", "read", "-q", "0", "-r", "trtype:RAM size:1M"]).unwrap_err().contains("-q"));
        assert!(parse(&["-w", "read", "-o", "1000", "-r", "trtype:RAM size:1M"]).unwrap_err().contains("-o"));
        assert!(parse(&["-w", "read", "-c", "0x0", "-r", "trtype:RAM size:1M"]).unwrap_err().contains("no core"));
        assert!(parse(&["-w", "read", "-c", "zz", "-r", "trtype:RAM size:1M"]).unwrap_err().contains("hex"));
        let e = parse(&["-w", "read", "-r", "trtype:XYZ"]).unwrap_err();
        assert!(e.contains("unknown trtype"), "{e}");
        assert!(parse(&["-w", "bogus", "-r", "trtype:RAM size:1M"]).is_err());
    }

    #[test]
    fn core_masks() {
        assert_eq!(parse_core_mask("0x1").unwrap(), vec![0]);
        assert_eq!(parse_core_mask("A").unwrap(), vec![1, 3]);
        assert_eq!(parse_core_mask("[0, 2]").unwrap(), vec![0, 2]);
        assert!(parse_core_mask("0x").is_err());
    }
}
