//! The `quire serve` log as a file or a pipe sees it: plain text without terminal
//! colour codes by default, one JSON object per line with `log.format = "json"`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `quire serve` with `config` until it has started, stops it with SIGTERM and
/// returns what it wrote to stderr (a pipe, not a terminal).
fn serve_log(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quire.toml");
    let text = format!(
        "[peer]\ndata_dir = \"{}\"\n[target]\nport = 0\ndiscovery_port = 0\n[buffers]\ncount = 64\nhugepages = false\n\
         [[device]]\nkind = \"ram\"\nsize = \"64M\"\n[[volume]]\nname = \"demo\"\nsize = \"16M\"\n{config}",
        dir.path().display()
    );
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The banner on stdout says it serves; stop it then.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in stdout.lines() {
        if line.unwrap().contains("serving on") {
            break;
        }
        assert!(Instant::now() < deadline, "quire serve did not start");
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_log_written_to_a_pipe_is_plain_text() {
    let log = serve_log("");
    assert!(log.contains("INFO") && log.contains("reactor running"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escape codes in a log that is not a terminal:\n{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let log = serve_log("[log]\nformat = \"json\"\n");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object() && v["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"message\":\"stopped\"")), "{log}");
}
