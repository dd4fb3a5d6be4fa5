//! The RPC socket: accepting clients, framing requests, forwarding them to the control
//! thread, writing answers back in order.
//!
//! Threads: one acceptor, waiting in `mio` on the listening socket and on a waker that
//! [`RpcServerHandle`]'s drop pulls; and one thread per connected client, at most
//! [`CLIENTS_MAX`] (management traffic is a handful of CLI calls and a monitoring
//! scraper, not a data path, so a thread per client is the simple and sufficient
//! design; a client beyond the limit is told [`code::SERVER_BUSY`] and closed).
//!
//! A client thread reads into a buffer and pulls complete JSON values out of it with
//! `serde_json`'s `StreamDeserializer`; an incomplete value at the end of the buffer
//! (a request split across writes) stays there until more bytes arrive. The buffer is
//! bounded by [`REQUEST_BYTES_MAX`]. Requests are handled one at a time, which is what
//! keeps answers in request order.
//!
//! Shutdown: dropping the handle disconnects a stop channel (waking client threads
//! that wait on the control thread, which answer [`code::SHUTTING_DOWN`]), wakes the
//! acceptor, which shuts the read side of every client socket down (waking threads
//! blocked in `read`) and joins them; then the socket file is removed. Writes to
//! clients time out, so a client that never reads cannot hold shutdown up.
//!
//! The socket file is created with mode 0600: whoever can talk to it can delete
//! volumes, so by default only the daemon's user can.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::Value;

use super::envelope::{self, Request};
use super::{code, RpcCall, RpcError, RpcResult};

/// Most clients connected at once.
pub const CLIENTS_MAX: usize = 8;
/// Largest request (or unfinished run of requests) buffered from one client.
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Bytes read from a client per `read` call.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// How long a write to a client may block (a client that does not read its answers
/// must not hold up shutdown forever).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const TOKEN_LISTENER: Token = Token(0);
const TOKEN_WAKER: Token = Token(1);

/// Client sockets by connection number, so that shutdown can wake their threads.
type Registry = Arc<Mutex<HashMap<u64, UnixStream>>>;

/// The running server; dropping it stops the server and removes the socket file.
pub struct RpcServerHandle {
    path: PathBuf,
    stop: Option<Sender<()>>,
    waker: Arc<Waker>,
    acceptor: Option<JoinHandle<()>>,
}

impl RpcServerHandle {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RpcServerHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Err(error) = self.waker.wake() {
            tracing::error!(%error, "cannot wake the RPC acceptor");
        }
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                tracing::error!("the RPC acceptor panicked");
            }
        }
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the RPC socket");
        }
    }
}

/// Binds the socket at `path` and serves it, forwarding every request to `calls`.
///
/// A socket file left behind by a daemon that died is removed first; a socket on which
/// a live daemon answers is an error (`AddrInUse`, "another quire is serving on …"),
/// and so is a path that exists and is not a socket.
pub fn spawn(path: &Path, calls: Sender<RpcCall>) -> io::Result<RpcServerHandle> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|error| io::Error::new(error.kind(), format!("cannot bind {}: {error}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    let listener_fd = listener.as_raw_fd();
    poll.registry().register(&mut SourceFd(&listener_fd), TOKEN_LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), TOKEN_WAKER)?);
    let (stop_sender, stop) = crossbeam_channel::bounded(0);
    let acceptor =
        Acceptor { listener, poll, calls, stop, clients: Registry::default(), threads: Vec::new(), next_client: 0 };
    let acceptor = std::thread::Builder::new().name("quire-rpc".into()).spawn(move || acceptor.run())?;
    tracing::info!(path = %path.display(), "JSON-RPC server listening");
    Ok(RpcServerHandle { path: path.to_path_buf(), stop: Some(stop_sender), waker, acceptor: Some(acceptor) })
}

/// Removes `path` if it is a socket nobody listens on.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_socket() {
        let message = format!("{} exists and is not a socket; not removing it", path.display());
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
    }
    match UnixStream::connect(path) {
        Ok(_) => {
            let message = format!("another quire is serving on {}", path.display());
            Err(io::Error::new(io::ErrorKind::AddrInUse, message))
        }
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale RPC socket");
            std::fs::remove_file(path)
        }
        Err(error) => Err(error),
    }
}

struct Acceptor {
    listener: UnixListener,
    poll: Poll,
    calls: Sender<RpcCall>,
    stop: Receiver<()>,
    clients: Registry,
    threads: Vec<JoinHandle<()>>,
    next_client: u64,
}

impl Acceptor {
    fn run(mut self) {
        let mut events = Events::with_capacity(4);
        'serve: loop {
            if let Err(error) = self.poll.poll(&mut events, None) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "RPC acceptor poll failed; stopping");
                break;
            }
            for event in events.iter() {
                if event.token() == TOKEN_WAKER {
                    break 'serve;
                }
                assert_eq!(event.token(), TOKEN_LISTENER);
            }
            self.accept_all();
            self.threads.retain(|thread| !thread.is_finished());
        }
        self.shutdown();
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, "RPC accept failed");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: UnixStream) {
        let busy = self.clients.lock().expect("registry lock").len() >= CLIENTS_MAX;
        if busy {
            let error = RpcError::new(code::SERVER_BUSY, format!("too many RPC clients (at most {CLIENTS_MAX})"));
            let _ = write_value(&stream, &envelope::failure(Value::Null, &error));
            return;
        }
        let prepared = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
            .and_then(|()| stream.try_clone());
        let clone = match prepared {
            Ok(clone) => clone,
            Err(error) => {
                tracing::warn!(%error, "cannot set up an RPC client");
                return;
            }
        };
        let id = self.next_client;
        self.next_client += 1;
        self.clients.lock().expect("registry lock").insert(id, clone);
        let client = Client { stream, calls: self.calls.clone(), stop: self.stop.clone() };
        let clients = Arc::clone(&self.clients);
        let spawned = std::thread::Builder::new().name(format!("quire-rpc-{id}")).spawn(move || {
            if let Err(error) = client.serve() {
                tracing::debug!(%error, client = id, "RPC client connection ended");
            }
            clients.lock().expect("registry lock").remove(&id);
        });
        match spawned {
            Ok(thread) => self.threads.push(thread),
            Err(error) => {
                tracing::warn!(%error, "cannot start an RPC client thread");
                self.clients.lock().expect("registry lock").remove(&id);
            }
        }
    }

    fn shutdown(&mut self) {
        // Only the read side: a thread blocked in `read` wakes to end-of-file, while a
        // thread that is answering (SHUTTING_DOWN) can still write its answer.
        for stream in self.clients.lock().expect("registry lock").values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an RPC client thread panicked");
            }
        }
        assert!(self.clients.lock().expect("registry lock").is_empty());
    }
}

/// What became of the bytes buffered from a client.
#[derive(Debug)]
enum Framing {
    /// Every complete value was answered; the first `n` bytes are done with.
    Consumed(usize),
    /// Text that is not JSON: answer with a parse error and hang up.
    Malformed(serde_json::Error),
}

/// Answers every complete JSON value at the front of `buffer`.
fn frame(buffer: &[u8], on_value: &mut dyn FnMut(Value) -> io::Result<()>) -> io::Result<Framing> {
    let mut values = serde_json::Deserializer::from_slice(buffer).into_iter::<Value>();
    let mut consumed = 0;
    loop {
        match values.next() {
            None => return Ok(Framing::Consumed(buffer.len())),
            Some(Ok(value)) => {
                consumed = values.byte_offset();
                on_value(value)?;
            }
            Some(Err(error)) if error.is_eof() => return Ok(Framing::Consumed(consumed)),
            Some(Err(error)) => return Ok(Framing::Malformed(error)),
        }
    }
}

struct Client {
    stream: UnixStream,
    calls: Sender<RpcCall>,
    stop: Receiver<()>,
}

impl Client {
    fn serve(self) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(READ_CHUNK_BYTES);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let read = match (&self.stream).read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            buffer.extend_from_slice(&chunk[..read]);
            let framing = frame(&buffer, &mut |value| self.answer(value))?;
            match framing {
                Framing::Consumed(consumed) => drop(buffer.drain(..consumed)),
                Framing::Malformed(error) => {
                    return write_value(&self.stream, &envelope::failure(Value::Null, &RpcError::parse_error(error)));
                }
            }
            if buffer.len() > REQUEST_BYTES_MAX {
                let error = RpcError::invalid_request(format!("request larger than {REQUEST_BYTES_MAX} bytes"));
                return write_value(&self.stream, &envelope::failure(Value::Null, &error));
            }
        }
    }

    fn answer(&self, value: Value) -> io::Result<()> {
        match envelope::answer(value, &mut |request| self.dispatch(request)) {
            Some(response) => write_value(&self.stream, &response),
            None => Ok(()),
        }
    }

    /// Hands a request to the control thread and waits for its answer.
    fn dispatch(&self, request: Request) -> RpcResult {
        let shutting_down = || RpcError::new(code::SHUTTING_DOWN, "quire is shutting down");
        tracing::debug!(method = %request.method, "RPC call");
        let (reply, answer) = crossbeam_channel::bounded(1);
        let call = RpcCall { method: request.method, params: request.params, reply };
        crossbeam_channel::select! {
            send(self.calls, call) -> sent => {
                if sent.is_err() {
                    return Err(shutting_down());
                }
            }
            recv(self.stop) -> _ => return Err(shutting_down()),
        }
        crossbeam_channel::select! {
            recv(answer) -> result => {
                result.unwrap_or_else(|_| Err(RpcError::internal("the control thread dropped the call")))
            }
            recv(self.stop) -> _ => Err(shutting_down()),
        }
    }
}

/// Writes one JSON value and a newline.
fn write_value(mut stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).expect("a Value always serializes");
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::rpc::{client, ClientError};

    /// A control thread that knows `echo` (returns its params), `add {a, b}` and `slow`
    /// (says so on `started`, then answers once `release` is sent on or dropped).
    struct FakeControl {
        calls: Sender<RpcCall>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddParams {
        a: i64,
        b: i64,
    }

    #[derive(Default)]
    struct Slow {
        started: Option<Sender<()>>,
        release: Option<Receiver<()>>,
    }

    impl FakeControl {
        /// The thread ends when every sender (ours and the server's) is gone.
        fn start(slow: Slow) -> FakeControl {
            let (calls, inbox) = crossbeam_channel::bounded::<RpcCall>(4);
            std::thread::spawn(move || {
                for call in inbox {
                    let result = match call.method.as_str() {
                        "echo" => Ok(call.params.clone()),
                        "add" => call.params::<AddParams>().map(|p| json!(p.a + p.b)),
                        "slow" => {
                            if let Some(started) = &slow.started {
                                let _ = started.send(());
                            }
                            let _ = slow.release.as_ref().expect("slow needs a release channel").recv();
                            Ok(json!("slow done"))
                        }
                        other => Err(RpcError::method_not_found(other)),
                    };
                    call.respond(result);
                }
            });
            FakeControl { calls }
        }
    }

    fn serve() -> (tempfile::TempDir, RpcServerHandle, FakeControl) {
        let dir = tempfile::tempdir().unwrap();
        let control = FakeControl::start(Slow::default());
        let server = spawn(&dir.path().join("quire.sock"), control.calls.clone()).unwrap();
        (dir, server, control)
    }

    fn connect(server: &RpcServerHandle) -> (UnixStream, BufReader<UnixStream>) {
        let stream = UnixStream::connect(server.path()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }

    fn read_answer(reader: &mut BufReader<UnixStream>) -> Value {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    #[test]
    fn answers_a_method_through_the_control_thread() {
        let (_dir, server, _control) = serve();
        let result = client::call(server.path(), "add", json!({"a": 2, "b": 40})).unwrap();
        assert_eq!(result, json!(42));
        let result = client::call(server.path(), "echo", json!(["x"])).unwrap();
        assert_eq!(result, json!(["x"]));
    }

    #[test]
    fn unknown_method_and_invalid_params() {
        let (_dir, server, _control) = serve();
        let Err(ClientError::Rpc(error)) = client::call(server.path(), "nope", Value::Null) else {
            panic!("expected an RPC error");
        };
        assert_eq!(error.code, code::METHOD_NOT_FOUND);
        let Err(ClientError::Rpc(error)) = client::call(server.path(), "add", json!({"a": 1, "c": 2})) else {
            panic!("expected an RPC error");
        };
        assert_eq!(error.code, code::INVALID_PARAMS);
        assert!(error.message.contains("unknown field `c`"), "{}", error.message);
    }

    #[test]
    fn parse_error_answers_then_closes() {
        let (_dir, server, _control) = serve();
        let (mut stream, mut reader) = connect(&server);
        stream.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[1]}\n{oops}\n").unwrap();
        assert_eq!(read_answer(&mut reader)["result"], json!([1]));
        let answer = read_answer(&mut reader);
        assert_eq!(answer["id"], Value::Null);
        assert_eq!(answer["error"]["code"], code::PARSE_ERROR);
        let mut rest = String::new();
        assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "the connection is closed: {rest:?}");
    }

    #[test]
    fn invalid_request_keeps_the_connection() {
        let (_dir, server, _control) = serve();
        let (mut stream, mut reader) = connect(&server);
        stream.write_all(b"{\"id\":9,\"method\":\"echo\"}").unwrap();
        let answer = read_answer(&mut reader);
        assert_eq!((answer["id"].clone(), answer["error"]["code"].clone()), (json!(9), json!(code::INVALID_REQUEST)));
        stream.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"echo\",\"params\":{}}").unwrap();
        assert_eq!(read_answer(&mut reader)["id"], 10);
    }

    #[test]
    fn request_split_across_writes_and_back_to_back_requests() {
        let (_dir, server, _control) = serve();
        let (mut stream, mut reader) = connect(&server);
        let request = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"add\",\"params\":{\"a\":1,\"b\":2}}";
        for piece in request.chunks(7) {
            stream.write_all(piece).unwrap();
            stream.flush().unwrap();
        }
        assert_eq!(read_answer(&mut reader), json!({"jsonrpc": "2.0", "id": 1, "result": 3}));
        let two = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"echo\",\"params\":[2]}{\"jsonrpc\":\"2.0\",\"method\":\"echo\"}{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"echo\",\"params\":[3]}";
        stream.write_all(two).unwrap();
        assert_eq!(read_answer(&mut reader)["id"], 2);
        assert_eq!(read_answer(&mut reader)["id"], 3, "the notification in between gets no answer");
    }

    #[test]
    fn batch_is_answered_as_an_array() {
        let (_dir, server, _control) = serve();
        let (mut stream, mut reader) = connect(&server);
        let batch = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "add", "params": {"a": 1, "b": 1}},
            {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        ]);
        stream.write_all(batch.to_string().as_bytes()).unwrap();
        let answer = read_answer(&mut reader);
        assert_eq!(answer[0]["result"], 2);
        assert_eq!(answer[1]["error"]["code"], code::METHOD_NOT_FOUND);
    }

    #[test]
    fn two_clients_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (release, released) = crossbeam_channel::bounded(1);
        let control = FakeControl::start(Slow { started: None, release: Some(released) });
        let server = spawn(&dir.path().join("q.sock"), control.calls.clone()).unwrap();
        let (mut slow, mut slow_reader) = connect(&server);
        slow.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"slow\"}").unwrap();
        // The second client connects and writes while the first waits on the control
        // thread; it is answered as soon as the control thread is free.
        let (mut fast, mut fast_reader) = connect(&server);
        fast.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"echo\",\"params\":[\"fast\"]}").unwrap();
        release.send(()).unwrap();
        assert_eq!(read_answer(&mut slow_reader)["result"], "slow done");
        assert_eq!(read_answer(&mut fast_reader)["result"], json!(["fast"]));
        drop(server);
    }

    #[test]
    fn clients_beyond_the_limit_are_told_busy() {
        let (_dir, server, _control) = serve();
        let mut held = Vec::new();
        for id in 0..CLIENTS_MAX {
            let (mut stream, mut reader) = connect(&server);
            let request = json!({"jsonrpc": "2.0", "id": id, "method": "echo", "params": []});
            stream.write_all(request.to_string().as_bytes()).unwrap();
            assert_eq!(read_answer(&mut reader)["id"], id);
            held.push((stream, reader));
        }
        let (_stream, mut reader) = connect(&server);
        assert_eq!(read_answer(&mut reader)["error"]["code"], code::SERVER_BUSY);
        drop(held);
    }

    #[test]
    fn oversized_request_is_refused() {
        let (_dir, server, _control) = serve();
        let (mut stream, mut reader) = connect(&server);
        let mut request = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[\"".to_vec();
        request.resize(REQUEST_BYTES_MAX + 2, b'x');
        // The server hangs up after its answer, so part of this write may fail.
        let _ = stream.write_all(&request);
        assert_eq!(read_answer(&mut reader)["error"]["code"], code::INVALID_REQUEST);
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dead listener leaves its file");
        let control = FakeControl::start(Slow::default());
        let server = spawn(&path, control.calls.clone()).unwrap();
        let error = spawn(&path, control.calls.clone()).err().expect("a live socket must not be taken over");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(error.to_string(), format!("another quire is serving on {}", path.display()));
        assert_eq!(client::call(&path, "echo", json!([1])).unwrap(), json!([1]));
        drop(server);
        assert!(!path.exists(), "drop removes the socket file");
    }

    #[test]
    fn a_regular_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let control = FakeControl::start(Slow::default());
        let error = spawn(&path, control.calls.clone()).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn drop_answers_clients_waiting_on_the_control_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (_release, released) = crossbeam_channel::bounded::<()>(1);
        let (started, slow_started) = crossbeam_channel::bounded(1);
        let control = FakeControl::start(Slow { started: Some(started), release: Some(released) });
        let server = spawn(&dir.path().join("q.sock"), control.calls.clone()).unwrap();
        let (mut stream, mut reader) = connect(&server);
        stream.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"slow\"}").unwrap();
        slow_started.recv_timeout(Duration::from_secs(10)).unwrap();
        let (mut second, mut second_reader) = connect(&server);
        second.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"echo\"}").unwrap();
        // The control thread is stuck in `slow`, so request 2 waits in its queue.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while control.calls.is_empty() {
            assert!(std::time::Instant::now() < deadline, "request 2 never reached the control queue");
            std::thread::yield_now();
        }
        drop(server);
        for (reader, id) in [(&mut reader, 1), (&mut second_reader, 2)] {
            let answer = read_answer(reader);
            assert_eq!(answer["id"], id);
            assert_eq!(answer["error"]["code"], code::SHUTTING_DOWN);
        }
    }

    #[test]
    fn framing_keeps_an_incomplete_tail() {
        let mut seen = Vec::new();
        let buffer = b"{\"a\":1} {\"b\":2}\n{\"c\":";
        let framing = frame(buffer, &mut |value| {
            seen.push(value);
            Ok(())
        })
        .unwrap();
        assert!(matches!(framing, Framing::Consumed(15)), "{framing:?}");
        assert_eq!(seen, vec![json!({"a": 1}), json!({"b": 2})]);
        let framing = frame(b"  \n", &mut |_| Ok(())).unwrap();
        assert!(matches!(framing, Framing::Consumed(3)));
        assert!(matches!(frame(b"{\"a\":1}]", &mut |_| Ok(())).unwrap(), Framing::Malformed(_)));
    }
}
