//! The metrics endpoint: `GET /metrics` on `[metrics] listen`, answered with the text
//! the control thread renders from the same counters `quire stats` reads.
//!
//! One thread serves it (a scrape every few seconds needs no more); each scrape is a
//! `stats_metrics` call to the control thread, so the endpoint never reads the page store
//! or the reactors' state behind the control thread's back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::reactor::ControlMsg;
use crate::rpc::methods as m;
use crate::rpc::RpcCall;

/// How long a scrape waits for the control thread.
const RENDER_TIMEOUT: Duration = Duration::from_secs(5);

/// The running endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The endpoint's socket, bound before anything else starts (a port in use is a
/// start-up error, not a half-started peer).
pub struct MetricsListener {
    server: tiny_http::Server,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> Result<MetricsListener, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("metrics.listen {addr}: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        Ok(MetricsListener { server, addr })
    }
}

impl MetricsServer {
    /// Serves scrapes on `listener`, rendered by the control thread at `control`.
    pub fn start(listener: MetricsListener, control: Sender<ControlMsg>) -> Result<MetricsServer, String> {
        let MetricsListener { server, addr } = listener;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("quire-metrics".into())
            .spawn(move || serve(&server, &control, &flag))
            .map_err(|e| format!("metrics thread: {e}"))?;
        tracing::info!(%addr, "metrics endpoint listening (GET /metrics)");
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, control: &Sender<ControlMsg>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("metrics endpoint: {e}");
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("");
        let get = matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head);
        let response = match (get, path) {
            (true, "/metrics") => match render(control) {
                Ok(text) => tiny_http::Response::from_string(text)
                    .with_header(header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")),
                Err(e) => tiny_http::Response::from_string(format!("{e}\n")).with_status_code(503),
            },
            (true, _) => {
                tiny_http::Response::from_string("not found: the metrics are at /metrics\n").with_status_code(404)
            }
            (false, _) => tiny_http::Response::from_string("only GET\n").with_status_code(405),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!("metrics endpoint: the scraper went away: {e}");
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid static header")
}

/// Asks the control thread for the text.
fn render(control: &Sender<ControlMsg>) -> Result<String, String> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    let call = RpcCall { method: m::METRICS.to_string(), params: Value::Null, reply };
    control.send(ControlMsg::Rpc(call)).map_err(|_| "the peer is stopping".to_string())?;
    match answer.recv_timeout(RENDER_TIMEOUT) {
        Ok(Ok(Value::String(text))) => Ok(text),
        Ok(Ok(other)) => Err(format!("unexpected metrics answer: {other}")),
        Ok(Err(e)) => Err(format!("metrics: {}", e.message)),
        Err(_) => Err("the control thread did not answer in time".to_string()),
    }
}
