//! A real Prometheus for the metrics tests: Debian's `prometheus` (installed by
//! `scripts/install-test-deps.sh`), scraping given targets every second, on a
//! free loopback port and a temporary data directory, killed when dropped. The
//! package's own service is not used (in a container it is not even started).
//!
//! Also a minimal HTTP/1.0 client ([`http_get`]) for the test's own look at an
//! endpoint, and [`sample_value`] to read an instant-query sample.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{exit_code, free_port, new_log_path, read_log, tail};

/// Where Debian's `prometheus` puts the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// How long Prometheus gets to answer `/-/ready` (2.42 on a 2-core machine can
/// take several seconds: it replays an empty WAL, loads the rules, ...).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one HTTP exchange with Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the Prometheus server is installed (for [`crate::require`]).
pub fn prometheus_available() -> Result<(), String> {
    if Path::new(PROMETHEUS_BIN).is_file() {
        Ok(())
    } else {
        Err(format!("no {PROMETHEUS_BIN}: run scripts/install-test-deps.sh (Debian's prometheus)"))
    }
}

/// One Prometheus server with one scrape job, `quire`.
pub struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    log_path: PathBuf,
}

impl Prometheus {
    /// Writes a configuration scraping `targets` (`"host:port"`, path
    /// `/metrics`) every second as job `quire`, starts Prometheus and waits
    /// until it is ready.
    pub fn start(targets: &[String]) -> io::Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("quire-prometheus-").tempdir()?;
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, config_yaml(targets))?;
        let mut prom = Prometheus { child: None, dir, port: free_port(), log_path: new_log_path("prometheus") };
        let log = File::options().create(true).append(true).open(&prom.log_path)?;
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", prom.dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", prom.port))
            .current_dir(prom.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        prom.child = Some(child);
        prom.wait_ready(Instant::now() + READY_TIMEOUT)?;
        Ok(prom)
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Polls `GET /-/ready` until it answers 200; fails at `deadline` or as
    /// soon as Prometheus exits (with the end of its log).
    fn wait_ready(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(io::Error::other(format!(
                    "prometheus exited ({}) before it was ready; log {}:\n{}",
                    exit_code(status),
                    self.log_path.display(),
                    tail(&self.log(), 30)
                )));
            }
            let answer = http_get(self.addr(), "/-/ready", Duration::from_secs(2));
            if answer.as_ref().is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "prometheus on port {} not ready by the deadline (last answer: {}); log {}:\n{}",
                    self.port,
                    match answer {
                        Ok(r) => format!("{} {}", r.status, r.body.trim()),
                        Err(e) => e.to_string(),
                    },
                    self.log_path.display(),
                    tail(&self.log(), 30)
                )));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET <path>` on its API; the `data` member of a `"status":"success"`
    /// answer, otherwise the error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let reply = http_get(self.addr(), path, HTTP_TIMEOUT).map_err(|e| format!("GET {path}: {e}"))?;
        let json: Value = serde_json::from_str(&reply.body)
            .map_err(|e| format!("GET {path}: HTTP {}, not JSON ({e}): {}", reply.status, reply.body.trim()))?;
        if json["status"] != "success" {
            return Err(format!(
                "GET {path}: HTTP {}, status {}: {} {}",
                reply.status, json["status"], json["errorType"], json["error"]
            ));
        }
        Ok(json["data"].clone())
    }

    /// An instant query: the `data.result` of `GET /api/v1/query` (for a vector,
    /// an array of `{"metric": {labels}, "value": [time, "value"]}`).
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        match &data["result"] {
            Value::Null => Err(format!("query {promql:?}: no data.result in {data}")),
            result => Ok(result.clone()),
        }
    }

    /// The active targets (`data.activeTargets` of `GET /api/v1/targets`): each
    /// with `scrapeUrl`, `health` (`up`, `down`, `unknown`) and `lastError`.
    pub fn targets(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/targets")?;
        data["activeTargets"].as_array().cloned().ok_or_else(|| format!("no data.activeTargets in {data}"))
    }

    /// One line per active target, `<scrapeUrl>: <health>, last scrape <time>,
    /// lastError <error>`, for failure messages.
    pub fn targets_report(&self) -> String {
        match self.targets() {
            Ok(targets) if targets.is_empty() => "no active targets".into(),
            Ok(targets) => targets
                .iter()
                .map(|t| {
                    format!(
                        "{}: {}, last scrape {}, lastError {:?}",
                        t["scrapeUrl"].as_str().unwrap_or("?"),
                        t["health"].as_str().unwrap_or("?"),
                        t["lastScrape"].as_str().unwrap_or("?"),
                        t["lastError"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("targets unknown: {e}"),
        }
    }

    /// Stops it hard (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration: scrape `targets` every second as job `quire`.
fn config_yaml(targets: &[String]) -> String {
    let mut yaml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: quire\n    metrics_path: /metrics\n    static_configs:\n      - targets:\n",
    );
    for t in targets {
        // a JSON string is a valid YAML scalar, whatever the target holds
        let _ = writeln!(yaml, "          - {}", Value::from(t.as_str()));
    }
    if targets.is_empty() {
        yaml.push_str("          []\n");
    }
    yaml
}

/// The value of an instant-query sample (`"value": [time, "123"]`) as a number.
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// `s` percent-encoded for a URL query component: everything but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) as `%XX`, byte by byte.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (lossily decoded as UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET <path> HTTP/1.0` to `addr`. The body ends at `Content-Length` if the
/// server sends one, else where the server closes the connection. `timeout`
/// bounds the connect and every read and write.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = parse_response(&raw, false)? {
            return Ok(reply);
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return parse_response(&raw, true)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-answer"));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The answer in `raw` if it is complete (`eof`: the server closed the
/// connection); `None` if more is to come; an error if it is malformed.
fn parse_response(raw: &[u8], eof: bool) -> io::Result<Option<HttpResponse>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err(bad(format!("no end of the header in {:?}", String::from_utf8_lossy(raw))))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut reply = HttpResponse { status, headers, body: String::new() };
    if reply.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        return Err(bad("a chunked answer to an HTTP/1.0 request".into()));
    }
    let body = &raw[end + 4..];
    let body = match reply.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
            if body.len() < len {
                return if eof {
                    Err(bad(format!("body of {} bytes, Content-Length {len}", body.len())))
                } else {
                    Ok(None)
                };
            }
            &body[..len]
        }
        None if eof => body,
        None => return Ok(None),
    };
    reply.body = String::from_utf8_lossy(body).into_owned();
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("up"), "up");
        assert_eq!(percent_encode(r#"up{job="quire"} == 1"#), "up%7Bjob%3D%22quire%22%7D%20%3D%3D%201");
        assert_eq!(percent_encode("a-b._~+/é"), "a-b._~%2B%2F%C3%A9");
    }

    #[test]
    fn responses_end_at_content_length_or_close() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        let r = parse_response(raw, false).unwrap().expect("complete");
        assert_eq!((r.status, r.body.as_str(), r.header("content-type")), (200, "hello", Some("text/plain")));
        assert!(parse_response(&raw[..raw.len() - 1], false).unwrap().is_none(), "one byte short");
        assert!(parse_response(&raw[..raw.len() - 1], true).is_err(), "closed one byte short");
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nnope\n";
        assert!(parse_response(raw, false).unwrap().is_none(), "no length: until the close");
        let r = parse_response(raw, true).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "nope\n"));
        assert!(parse_response(b"garbage\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", false).is_err());
    }

    #[test]
    fn config_lists_the_targets() {
        let yaml = config_yaml(&["127.0.0.1:9100".into(), "127.0.0.1:9200".into()]);
        assert!(yaml.contains("scrape_interval: 1s"), "{yaml}");
        assert!(yaml.contains("job_name: quire"), "{yaml}");
        assert!(yaml.contains("          - \"127.0.0.1:9100\"\n          - \"127.0.0.1:9200\"\n"), "{yaml}");
    }

    #[test]
    fn sample_values_are_strings() {
        let v: Value = serde_json::from_str(r#"{"metric":{},"value":[1700000000.123,"42.5"]}"#).unwrap();
        assert_eq!(sample_value(&v), Some(42.5));
        assert_eq!(sample_value(&Value::Null), None);
    }
}
