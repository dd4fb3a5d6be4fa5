//! `quire serve` with `[metrics] listen` scraped by a real Prometheus (Debian's
//! `prometheus`, started by the test on a free port): the endpoint's text is
//! well-formed, and after verified I/O from `quire-perf` Prometheus holds the
//! volume's operation counters, its latency histogram (as many writes timed as
//! counted), the reactor's and the store's series, and the target is `up`.
//! Without Prometheus or `quire-perf` the test fails; only a partial run
//! (`scripts/test.sh --partial`) skips it, and records the skip.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quire_tests::prometheus::{http_get, prometheus_available, sample_value, Prometheus};
use quire_tests::{deadline, free_port, require, serial, tail, QuireProcess};
use serde_json::Value;

const TEST: &str = "prometheus_scrapes_quire_metrics";

fn config(dir: &Path, port: u16, metrics_port: u16) -> String {
    format!(
        r#"[peer]
data_dir = "{dir}"
[target]
port = {port}
discovery_port = 0
[buffers]
count = 256
hugepages = false
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[device]]
kind = "file"
path = "quire.img"
size = "256M"
[[volume]]
name = "demo"
size = "64M"
"#,
        dir = dir.display(),
    )
}

/// `quire-perf` beside the `quire` binary, or why it is not there.
fn perf_bin() -> Result<PathBuf, String> {
    let perf = QuireProcess::bin_path()?.with_file_name("quire-perf");
    if perf.is_file() {
        Ok(perf)
    } else {
        Err(format!("no {}: build it (cargo build --release -p quire -p quire-perf)", perf.display()))
    }
}

/// Whether `line` is a sample line of the text exposition format:
/// `name value [timestamp]` or `name{label="value",...} value [timestamp]`.
fn sample_line_error(line: &str) -> Option<&'static str> {
    let is_name_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_name = |s: &str| s.starts_with(is_name_start) && s.chars().all(|c| is_name_start(c) || c.is_ascii_digit());
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    if !is_name(&line[..name_end]) {
        return Some("bad metric name");
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        // label="value" pairs, values with \\, \" and \n escapes
        let mut s = labels;
        loop {
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let Some((label, after)) = s.split_once("=\"") else { return Some("bad label pair") };
            if !is_name(label) || label.contains(':') {
                return Some("bad label name");
            }
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return Some("bad escape in a label value"),
                    },
                    Some((i, '"')) => break i,
                    Some(_) => {}
                    None => return Some("unterminated label value"),
                }
            };
            s = &after[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let mut fields = rest.strip_prefix(' ').map(str::split_whitespace).into_iter().flatten();
    let value_ok = fields.next().is_some_and(|v| v.parse::<f64>().is_ok());
    let timestamp_ok = fields.next().is_none_or(|t| t.parse::<i64>().is_ok());
    if !value_ok {
        return Some("bad or missing value");
    }
    if !timestamp_ok || fields.next().is_some() {
        return Some("trailing garbage after the value");
    }
    None
}

/// Fetches `/metrics` directly and checks the format: status, content type, the
/// build info, a counter's `# TYPE` line, every sample line, a histogram's
/// `+Inf` bucket against its count; and a 404 elsewhere.
fn check_exposition(addr: SocketAddr) {
    let reply = http_get(addr, "/metrics", Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(reply.status, 200, "GET /metrics: {reply:?}");
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type:?}");
    let text = &reply.body;
    assert!(text.lines().any(|l| l == "# TYPE quire_volume_write_ops_total counter"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("quire_build_info{version=\"") && l.ends_with("} 1")), "{text}");
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(why) = sample_line_error(line) {
            panic!("GET /metrics: {why}: {line:?}\n{text}");
        }
    }
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {prefix}... line in\n{text}"))
            .to_string()
    };
    assert_eq!(
        value("quire_volume_write_latency_seconds_bucket{volume=\"demo\",le=\"+Inf\"}"),
        value("quire_volume_write_latency_seconds_count{volume=\"demo\"}"),
        "the +Inf bucket holds every observation:\n{text}"
    );
    let other = http_get(addr, "/", Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(other.status, 404, "GET /: {other:?}");
}

/// Runs `quire-perf` with verification against the target on `port`; its output.
fn run_perf(perf: &Path, port: u16) -> String {
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:nqn.2026-11.io.quire:demo");
    let args = ["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "--verify", "-r", &trid];
    let mut p = QuireProcess::spawn_bin(perf, &args, &[]).expect("start quire-perf");
    let end = deadline(Duration::from_secs(60));
    let status = loop {
        if let Some(status) = p.exit_status() {
            break status;
        }
        assert!(Instant::now() < end, "quire-perf still runs after 60 s:\n{}", tail(&p.log(), 30));
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = p.log();
    assert!(status.success(), "quire-perf failed ({status:?}):\n{text}");
    assert!(text.contains("Verify: 0 mismatched blocks"), "{text}");
    text
}

/// The single series of an instant-query result, or why not.
fn single(result: &Value) -> Result<&Value, String> {
    match result.as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one),
        _ => Err(format!("not exactly one series: {result}")),
    }
}

fn single_value(result: &Value) -> Result<f64, String> {
    let s = single(result)?;
    sample_value(s).ok_or_else(|| format!("no value in {s}"))
}

fn positive(what: &str, v: f64) -> Result<f64, String> {
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{what} is {v}, not > 0"))
    }
}

/// One look at what Prometheus holds; `Err` lists what is not (yet) right.
fn check_prometheus(prom: &Prometheus, last: &mut Vec<(String, Result<Value, String>)>) -> Result<(), String> {
    const WRITE_OPS: &str = r#"quire_volume_write_ops_total{volume="demo"}"#;
    const READ_OPS: &str = r#"quire_volume_read_ops_total{volume="demo"}"#;
    const WRITE_TIMED: &str = r#"quire_volume_write_latency_seconds_count{volume="demo"}"#;
    const POLLS: &str = "quire_reactor_polls_total";
    const CAPACITY: &str = "quire_store_capacity_bytes";
    const UP: &str = r#"up{job="quire"}"#;
    last.clear();
    for q in [WRITE_OPS, READ_OPS, WRITE_TIMED, POLLS, CAPACITY, UP] {
        last.push((q.to_string(), prom.query(q)));
    }
    let result = |q: &str| -> Result<&Value, String> {
        let (_, r) = last.iter().find(|(name, _)| name == q).expect("queried");
        r.as_ref().map_err(Clone::clone)
    };
    let mut failures = Vec::new();
    let mut check = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("{what}: {e}"));
        }
    };
    check(UP, result(UP).and_then(single_value).and_then(|v| if v == 1.0 { Ok(()) } else { Err(format!("{v}")) }));
    let writes = result(WRITE_OPS).and_then(single_value).and_then(|v| positive("writes", v));
    check(WRITE_OPS, writes.clone().map(drop));
    check(READ_OPS, result(READ_OPS).and_then(single_value).and_then(|v| positive("reads", v)).map(drop));
    check(
        WRITE_TIMED,
        result(WRITE_TIMED).and_then(single_value).and_then(|v| positive("timed writes", v)).and_then(|timed| {
            match writes {
                Ok(w) if w == timed => Ok(()),
                Ok(w) => Err(format!("{timed} writes timed, {w} counted")),
                Err(_) => Err("no write count to compare with".into()),
            }
        }),
    );
    check(
        POLLS,
        result(POLLS).and_then(|r| {
            let series = r.as_array().cloned().unwrap_or_default();
            if series.iter().any(|s| s["metric"]["reactor"] == "0" && sample_value(s).is_some()) {
                Ok(())
            } else {
                Err(format!("no series with reactor=\"0\": {r}"))
            }
        }),
    );
    check(CAPACITY, result(CAPACITY).and_then(single_value).and_then(|v| positive("capacity", v)).map(drop));
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn prometheus_scrapes_quire_metrics_after_verified_io() {
    let _serial = serial();
    if !require(TEST, prometheus_available()) {
        return;
    }
    let perf = perf_bin();
    if !require(TEST, perf.as_ref().map(drop).map_err(Clone::clone)) {
        return;
    }
    let perf = perf.expect("checked");
    let started = Instant::now();

    let dir = tempfile::Builder::new().prefix("quire-metrics-").tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let config_path = dir.path().join("quire.toml");
    std::fs::write(&config_path, config(dir.path(), port, metrics_port)).unwrap();
    let args = ["serve".to_string(), "--config".into(), config_path.display().to_string()];
    let mut quire = QuireProcess::spawn(&args).expect("start quire");
    quire.wait_for_port(port, deadline(Duration::from_secs(60))).unwrap();
    quire.wait_for_port(metrics_port, deadline(Duration::from_secs(30))).unwrap();
    let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));
    check_exposition(metrics_addr);

    let perf_out = run_perf(&perf, port);
    assert!(quire.is_running(), "quire exited under I/O:\n{}", tail(&quire.log(), 30));

    let io_done = started.elapsed();
    let prom = Prometheus::start(&[metrics_addr.to_string()]).expect("start prometheus");
    let ready = started.elapsed();
    let end = deadline(Duration::from_secs(60));
    let mut last = Vec::new();
    loop {
        let outcome = check_prometheus(&prom, &mut last);
        let Err(failures) = outcome else { break };
        if Instant::now() >= end || !quire.is_running() {
            let results: Vec<String> = last
                .iter()
                .map(|(q, r)| match r {
                    Ok(v) => format!("{q} => {v}"),
                    Err(e) => format!("{q} => error {e}"),
                })
                .collect();
            panic!(
                "Prometheus did not see Quire's metrics within 60 s (quire running: {}):\n{failures}\n\
                 targets:\n{}\nlast results:\n{}\nquire-perf:\n{}\nquire log {}:\n{}\nprometheus log {}:\n{}",
                quire.is_running(),
                prom.targets_report(),
                results.join("\n"),
                tail(&perf_out, 15),
                quire.log_path().display(),
                tail(&quire.log(), 20),
                prom.log_path().display(),
                tail(&prom.log(), 20),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let seen: Vec<String> = last
        .iter()
        .map(|(q, r)| {
            let values: Vec<String> = r
                .as_ref()
                .ok()
                .and_then(Value::as_array)
                .map(|series| series.iter().filter_map(sample_value).map(|v| v.to_string()).collect())
                .unwrap_or_default();
            format!("{q} = {}", values.join(","))
        })
        .collect();
    eprintln!(
        "{TEST}: quire and I/O {:.1} s, Prometheus ready after {:.1} s more, all series seen after {:.1} s more:\n  {}",
        io_done.as_secs_f64(),
        (ready - io_done).as_secs_f64(),
        (started.elapsed() - ready).as_secs_f64(),
        seen.join("\n  ")
    );
}

#[test]
fn sample_lines_of_the_exposition_format() {
    for ok in [
        "quire_controllers 0",
        "quire_build_info{version=\"0.1.0\"} 1",
        "quire_volume_read_latency_seconds_bucket{volume=\"demo\",le=\"+Inf\"} 12",
        "quire_x{a=\"q\\\"uo\\\\te\\n\",} 1.5e-7 1700000000000",
        "quire_y NaN",
        "quire_z{} +Inf",
    ] {
        assert_eq!(sample_line_error(ok), None, "{ok}");
    }
    for bad in [
        "quire_x",
        "quire_x{volume=\"demo\"}",
        "9quire 1",
        "quire_x{volume=demo} 1",
        "quire_x{volume=\"demo} 1",
        "quire_x{volume=\"a\\q\"} 1",
        "quire_x 1 2 3",
        "quire_x one",
        "quire-x 1",
    ] {
        assert!(sample_line_error(bad).is_some(), "{bad}");
    }
}
