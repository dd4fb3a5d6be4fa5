//! The client end of the RPC socket: one call per connection.
//!
//! The CLI makes one call and exits, so a connection per call is the simplest correct
//! client: connect, write the request, read one JSON value, check that it answers our
//! id, hang up. The error separates "nobody is listening" (the operator forgot to
//! start the daemon, or pointed at the wrong socket) from an error the daemon
//! returned, because the two need different fixes and the CLI reports them with
//! different exit codes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::RpcError;

/// How long [`call`] waits for an answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer accepted.
pub const ANSWER_BYTES_MAX: usize = 64 << 20;
/// The id every request of this client carries.
const REQUEST_ID: u64 = 1;

/// Errors of one call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepts connections on the socket.
    #[error("cannot connect to {}: is `quire serve` running? ({source})", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The connection failed or timed out during the call.
    #[error("RPC connection to {} failed: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The daemon answered something that is not a JSON-RPC response to our request.
    #[error("malformed RPC answer: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
}

/// Calls `method` with `params` (`Value::Null` = no params) on the daemon listening
/// at `path`, waiting at most [`CALL_TIMEOUT`].
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, ClientError> {
    call_timeout(path, method, params, CALL_TIMEOUT)
}

/// [`call`] with an explicit timeout for the answer.
pub fn call_timeout(path: &Path, method: &str, params: Value, timeout: Duration) -> Result<Value, ClientError> {
    assert!(!method.is_empty());
    let stream =
        UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
    let io_error = |source| ClientError::Io { path: path.to_path_buf(), source };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    let mut request = json!({"jsonrpc": "2.0", "id": REQUEST_ID, "method": method});
    if !params.is_null() {
        request["params"] = params;
    }
    let mut bytes = serde_json::to_vec(&request).expect("a Value always serializes");
    bytes.push(b'\n');
    (&stream).write_all(&bytes).map_err(io_error)?;
    let answer = read_answer(&stream).map_err(io_error)?;
    interpret(answer)
}

/// Reads until one complete JSON value has arrived.
fn read_answer(mut stream: &UnixStream) -> io::Result<Value> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let mut values = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => return Ok(value),
            Some(Err(error)) if !error.is_eof() => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            Some(Err(_)) | None => {}
        }
        let read = match stream.read(&mut chunk) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection")),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        buffer.extend_from_slice(&chunk[..read]);
        if buffer.len() > ANSWER_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer larger than 64 MiB"));
        }
    }
}

/// Checks the response envelope and takes out the result or the error.
fn interpret(answer: Value) -> Result<Value, ClientError> {
    let Value::Object(mut answer) = answer else {
        return Err(ClientError::Protocol(format!("expected an object, got {answer}")));
    };
    if let Some(error) = answer.remove("error") {
        // Errors about the request itself (parse error, busy) may carry id null.
        let error: RpcError = serde_json::from_value(error.clone())
            .map_err(|_| ClientError::Protocol(format!("bad error object {error}")))?;
        return Err(ClientError::Rpc(error));
    }
    if answer.get("id") != Some(&json!(REQUEST_ID)) {
        return Err(ClientError::Protocol(format!("answer for another request: {:?}", answer.get("id"))));
    }
    answer.remove("result").ok_or_else(|| ClientError::Protocol("neither result nor error".into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::rpc::code;

    /// A one-shot server that answers the first request with `answer` (raw bytes).
    fn answer_once(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Value>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_answer(&stream).unwrap();
            for piece in answer.chunks(5) {
                stream.write_all(piece).unwrap();
            }
            request
        });
        (dir, path, thread)
    }

    #[test]
    fn nobody_listening_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let error = call(&path, "volume_list", Value::Null).unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with(&format!("cannot connect to {}: is `quire serve` running?", path.display())));
    }

    #[test]
    fn sends_a_request_and_reads_a_result_in_pieces() {
        let (_dir, path, server) = answer_once(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"ok\":[1,2]}}\n");
        assert_eq!(call(&path, "m", json!({"x": 1})).unwrap(), json!({"ok": [1, 2]}));
        let request = server.join().unwrap();
        assert_eq!(request, json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": 1}}));
    }

    #[test]
    fn null_params_are_left_out() {
        let (_dir, path, server) = answer_once(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":true}");
        assert_eq!(call(&path, "m", Value::Null).unwrap(), json!(true));
        assert!(server.join().unwrap().get("params").is_none());
    }

    #[test]
    fn error_answers_become_rpc_errors() {
        let (_dir, path, _server) =
            answer_once(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":1000,\"message\":\"no volume\"}}");
        let error = call(&path, "m", Value::Null).unwrap_err();
        let ClientError::Rpc(rpc) = &error else { panic!("{error:?}") };
        assert_eq!(rpc.code, code::NOT_FOUND);
        assert_eq!(error.to_string(), "no volume (code 1000)");
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        for (answer, expect_protocol) in [
            (&b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":1}"[..], true),
            (&b"{\"jsonrpc\":\"2.0\",\"id\":1}"[..], true),
            (&b"[1]"[..], true),
            (&b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\""[..], false),
        ] {
            let (_dir, path, _server) = answer_once(answer);
            let error = call_timeout(&path, "m", Value::Null, Duration::from_secs(10)).unwrap_err();
            if expect_protocol {
                assert!(matches!(error, ClientError::Protocol(_)), "{error:?}");
            } else {
                assert!(matches!(error, ClientError::Io { .. }), "closed mid-answer: {error:?}");
            }
        }
    }
}
