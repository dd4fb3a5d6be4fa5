//! The Prometheus endpoint of an in-process target: the text format, the same
//! counters as `quire stats`, latency histograms that count every read and write.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{pattern, Host, TestTarget};
use quire_wire::nvme::opcode;

/// `GET path` over HTTP/1.0: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response with a body");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels, exactly as written).
fn value(body: &str, series: &str) -> f64 {
    let line = body
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    line[series.len() + 1..].parse().unwrap()
}

#[test]
fn the_endpoint_serves_the_counters_of_quire_stats_in_the_text_format() {
    let t = TestTarget::start_with(|c| c.metrics.listen = Some("127.0.0.1:0".into()));
    let addr = t.metrics_addr().expect("metrics on");
    let mut h = Host::connect(t.io_addr, "demo");
    let io = h.io();
    for i in 0..40u64 {
        io.round_trip(i * 8, &pattern(u32::try_from(i).unwrap(), 4096));
    }
    for i in 0..10u64 {
        let cid = io.submit(io.rw_cmd(opcode::NVM_READ, i * 8, 1), None, 4096);
        assert!(io.wait(cid).status().is_success());
    }

    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    // Every line is a comment or `series value`; every family has HELP and TYPE.
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(rest.starts_with("HELP quire_") || rest.starts_with("TYPE quire_"), "{line}");
            continue;
        }
        let (series, v) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(series.starts_with("quire_"), "{line}");
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
    assert!(body.contains("# TYPE quire_volume_write_ops_total counter\n"), "{body}");
    assert!(body.contains("# TYPE quire_volume_write_latency_seconds histogram\n"), "{body}");

    let stats = t.rpc("stats_volumes", serde_json::Value::Null);
    let demo = stats.as_array().unwrap().iter().find(|v| v["name"] == "demo").unwrap().clone();
    let writes = demo["write_ops"].as_u64().unwrap();
    let reads = demo["read_ops"].as_u64().unwrap();
    assert!(writes >= 40 && reads >= 50, "{demo}");
    #[allow(clippy::cast_precision_loss)] // counts of a few dozen
    let (w, r) = (writes as f64, reads as f64);
    assert_eq!(value(&body, "quire_volume_write_ops_total{volume=\"demo\"}"), w);
    assert_eq!(value(&body, "quire_volume_read_ops_total{volume=\"demo\"}"), r);
    assert_eq!(value(&body, "quire_volume_write_latency_seconds_count{volume=\"demo\"}"), w);
    assert_eq!(value(&body, "quire_volume_read_latency_seconds_count{volume=\"demo\"}"), r);
    assert_eq!(value(&body, "quire_volume_write_latency_seconds_bucket{volume=\"demo\",le=\"+Inf\"}"), w);
    let sum = value(&body, "quire_volume_write_latency_seconds_sum{volume=\"demo\"}");
    assert!(sum > 0.0 && sum < w, "{sum}");
    assert_eq!(value(&body, "quire_volume_write_ops_total{volume=\"small\"}"), 0.0);
    let rx: f64 = (0..2).map(|i| value(&body, &format!("quire_reactor_rx_bytes_total{{reactor=\"{i}\"}}"))).sum();
    #[allow(clippy::cast_precision_loss)]
    let rx_stats = t.reactor_sum("rx_bytes") as f64;
    assert!(rx >= 40.0 * 4096.0 && rx <= rx_stats, "{rx} {rx_stats}");
    assert_eq!(value(&body, "quire_controllers"), 1.0);
    assert!(value(&body, "quire_store_capacity_bytes") > 0.0);

    let (status, _) = get(addr, "/");
    assert_eq!(status, "HTTP/1.0 404 Not Found");
    drop(h);
    t.wait_quiet();
    t.stop();
}
