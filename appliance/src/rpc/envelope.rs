//! The JSON-RPC 2.0 envelope: checking a request object, building response objects,
//! answering a single request or a batch.
//!
//! This is the part of the protocol that does not depend on sockets, so it is kept
//! apart from [`super::socket`] and tested on plain values. The rules, from the
//! JSON-RPC 2.0 specification: a request is an object with `"jsonrpc": "2.0"`, a string
//! `method`, optional `params` that is an object or an array, and an optional `id` that
//! is a string, a number or null. Without `id` it is a notification and gets no
//! response. A request that breaks a rule gets an `INVALID_REQUEST` error carrying its
//! id when the id itself could be read, `null` otherwise. A batch is a non-empty array
//! of requests; its response is the array of the non-notification responses, or
//! nothing at all.

use serde_json::{json, Map, Value};

use super::{RpcError, RpcResult};

/// Most requests in one batch.
pub const BATCH_LEN_MAX: usize = 128;

/// A request that passed the envelope checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `None` for a notification; otherwise the id to echo (string, number or null).
    pub id: Option<Value>,
    /// Method name.
    pub method: String,
    /// Params object or array; `Value::Null` when absent.
    pub params: Value,
}

/// A request that failed the checks: the id to answer with and the error.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The request's id if it was readable, else null.
    pub id: Value,
    /// Why.
    pub error: RpcError,
}

/// Checks one request object.
pub fn parse(value: Value) -> Result<Request, Rejected> {
    let Value::Object(mut object) = value else {
        return Err(Rejected { id: Value::Null, error: RpcError::invalid_request("expected a JSON object") });
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            let error = RpcError::invalid_request("\"id\" must be a string, a number or null");
            return Err(Rejected { id: Value::Null, error });
        }
    };
    let reject = |error: RpcError| Rejected { id: id.clone().unwrap_or(Value::Null), error };
    if object.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(reject(RpcError::invalid_request("\"jsonrpc\" must be \"2.0\"")));
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) if !method.is_empty() => method,
        _ => return Err(reject(RpcError::invalid_request("\"method\" must be a non-empty string"))),
    };
    let params = match object.remove("params") {
        None => Value::Null,
        Some(params @ (Value::Object(_) | Value::Array(_))) => params,
        Some(_) => return Err(reject(RpcError::invalid_request("\"params\" must be an object or an array"))),
    };
    if let Some(extra) = object.keys().find(|key| key.as_str() != "jsonrpc") {
        return Err(reject(RpcError::invalid_request(format!("unknown member {extra:?}"))));
    }
    Ok(Request { id, method, params })
}

/// A success response.
pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn failure(id: Value, error: &RpcError) -> Value {
    let mut object = Map::new();
    object.insert("jsonrpc".into(), Value::from("2.0"));
    object.insert("id".into(), id);
    object.insert("error".into(), serde_json::to_value(error).expect("an RpcError always serializes"));
    Value::Object(object)
}

/// Answers one top-level JSON value (a request or a batch), running `dispatch` on
/// each valid request in order. `None` when nothing is to be written back (only
/// notifications).
pub fn answer(value: Value, dispatch: &mut dyn FnMut(Request) -> RpcResult) -> Option<Value> {
    match value {
        Value::Array(batch) if batch.is_empty() => {
            Some(failure(Value::Null, &RpcError::invalid_request("empty batch")))
        }
        Value::Array(batch) if batch.len() > BATCH_LEN_MAX => {
            let error =
                RpcError::invalid_request(format!("batch of {} requests (at most {BATCH_LEN_MAX})", batch.len()));
            Some(failure(Value::Null, &error))
        }
        Value::Array(batch) => {
            let answers: Vec<Value> = batch.into_iter().filter_map(|request| answer_one(request, dispatch)).collect();
            if answers.is_empty() {
                None
            } else {
                Some(Value::Array(answers))
            }
        }
        single => answer_one(single, dispatch),
    }
}

fn answer_one(value: Value, dispatch: &mut dyn FnMut(Request) -> RpcResult) -> Option<Value> {
    let request = match parse(value) {
        Ok(request) => request,
        Err(rejected) => return Some(failure(rejected.id, &rejected.error)),
    };
    let id = request.id.clone();
    let result = dispatch(request);
    let id = id?;
    Some(match result {
        Ok(result) => success(id, result),
        Err(error) => failure(id, &error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::code;

    fn echo(request: Request) -> RpcResult {
        match request.method.as_str() {
            "echo" => Ok(request.params),
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn error_code(response: &Value) -> i64 {
        response["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn valid_request_with_and_without_params() {
        let request = parse(json!({"jsonrpc": "2.0", "id": 7, "method": "m", "params": {"a": 1}})).unwrap();
        assert_eq!(request, Request { id: Some(json!(7)), method: "m".into(), params: json!({"a": 1}) });
        let request = parse(json!({"jsonrpc": "2.0", "id": "x", "method": "m"})).unwrap();
        assert_eq!(request.params, Value::Null);
        assert_eq!(parse(json!({"jsonrpc": "2.0", "method": "m"})).unwrap().id, None);
        assert_eq!(parse(json!({"jsonrpc": "2.0", "id": null, "method": "m"})).unwrap().id, Some(Value::Null));
    }

    #[test]
    fn envelope_rules() {
        let cases = [
            (json!([1]), Value::Null),
            (json!("m"), Value::Null),
            (json!({"id": 1, "method": "m"}), json!(1)),
            (json!({"jsonrpc": "1.0", "id": 1, "method": "m"}), json!(1)),
            (json!({"jsonrpc": "2.0", "id": 2, "method": 5}), json!(2)),
            (json!({"jsonrpc": "2.0", "id": 3, "method": ""}), json!(3)),
            (json!({"jsonrpc": "2.0", "id": 4, "method": "m", "params": 5}), json!(4)),
            (json!({"jsonrpc": "2.0", "id": 5, "method": "m", "extra": 5}), json!(5)),
            (json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "m"}), Value::Null),
            (json!({"jsonrpc": "2.0", "id": true, "method": "m"}), Value::Null),
        ];
        for (value, id) in cases {
            let rejected = parse(value.clone()).unwrap_err();
            assert_eq!(rejected.error.code, code::INVALID_REQUEST, "{value}");
            assert_eq!(rejected.id, id, "{value}");
        }
    }

    #[test]
    fn answers_carry_the_id_and_the_result_or_error() {
        let ok = answer(json!({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1, 2]}), &mut echo).unwrap();
        assert_eq!(ok, json!({"jsonrpc": "2.0", "id": 1, "result": [1, 2]}));
        let missing = answer(json!({"jsonrpc": "2.0", "id": "a", "method": "nope"}), &mut echo).unwrap();
        assert_eq!(missing["id"], "a");
        assert_eq!(error_code(&missing), i64::from(code::METHOD_NOT_FOUND));
        assert!(missing.get("result").is_none());
    }

    #[test]
    fn notifications_run_but_get_no_answer() {
        let mut calls = 0;
        let mut count = |request: Request| {
            calls += 1;
            echo(request)
        };
        assert_eq!(answer(json!({"jsonrpc": "2.0", "method": "echo"}), &mut count), None);
        assert_eq!(answer(json!({"jsonrpc": "2.0", "method": "nope"}), &mut count), None);
        assert_eq!(calls, 2);
    }

    #[test]
    fn batches() {
        let batch = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": 1}},
            {"jsonrpc": "2.0", "method": "echo"},
            {"jsonrpc": "2.0", "id": 2, "method": "nope"},
            5,
        ]);
        let answers = answer(batch, &mut echo).unwrap();
        let answers = answers.as_array().unwrap();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0]["result"]["x"], 1);
        assert_eq!(error_code(&answers[1]), i64::from(code::METHOD_NOT_FOUND));
        assert_eq!(error_code(&answers[2]), i64::from(code::INVALID_REQUEST));
        assert_eq!(answer(json!([{"jsonrpc": "2.0", "method": "echo"}]), &mut echo), None);
        assert_eq!(error_code(&answer(json!([]), &mut echo).unwrap()), i64::from(code::INVALID_REQUEST));
        let too_many = Value::Array(vec![json!({"jsonrpc": "2.0", "method": "echo"}); BATCH_LEN_MAX + 1]);
        assert_eq!(error_code(&answer(too_many, &mut echo).unwrap()), i64::from(code::INVALID_REQUEST));
    }
}
