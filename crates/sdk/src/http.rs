//! The REST gateway: Agones' SDK over HTTP/JSON (`POST /ready` ...) and Carrier's HTTP API
//! (`PUT /condition` ...) on one port, answering as grpc-gateway does (errors as
//! `{"code", "message"}`, watches as one `{"result": ...}` line per change).
// A handler's early answer is an axum Response in `Err`; boxing it would buy nothing on a path
// that answers one local caller.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_stream::wrappers::WatchStream;

use super::grpc::Services;
use super::view;

type Answer = Result<axum::Json<Value>, Response>;

fn ok() -> Answer {
    Ok(axum::Json(json!({})))
}

/// A grpc-gateway error: gRPC code 3 (InvalidArgument) and what to fix.
fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"code": 3, "message": message, "details": []}))).into_response()
}

/// The JSON body, `{}` when empty (clients post `{}` or nothing).
fn body(call: &str, bytes: &Bytes) -> Result<Value, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| bad_request(format!("{call}: the body is not JSON: {e}")))
}

/// `{"key": ..., "value": ...}`.
fn key_value(call: &str, bytes: &Bytes) -> Result<(String, String), Response> {
    let v = body(call, bytes)?;
    let text = |field: &str| match &v[field] {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(bad_request(format!("{call}: \"{field}\" must be a string, not {other}"))),
    };
    let key = text("key")?;
    if key.is_empty() {
        return Err(bad_request(format!(
            "{call}: the body needs a \"key\", e.g. {{\"key\": \"mode\", \"value\": \"ctf\"}}"
        )));
    }
    Ok((key, text("value")?))
}

/// The routes of both APIs over `services`.
pub fn router(services: Services) -> Router {
    Router::new()
        .route("/ready", post(ready))
        .route("/allocate", post(allocate))
        .route("/shutdown", post(shutdown))
        .route("/health", post(health))
        .route("/reserve", post(reserve))
        .route("/gameserver", get(game_server))
        .route("/watch/gameserver", get(watch_game_server))
        .route("/metadata/label", put(set_label))
        .route("/metadata/annotation", put(set_annotation))
        .route("/condition", put(set_condition))
        .with_state(Arc::new(services))
}

type S = State<Arc<Services>>;

async fn ready(State(s): S) -> Answer {
    s.calls.log("Ready", "(REST)");
    s.sdk.ready();
    ok()
}

async fn allocate(State(s): S) -> Answer {
    s.calls.log("Allocate", "(REST)");
    s.sdk.allocate();
    ok()
}

async fn shutdown(State(s): S) -> Answer {
    s.calls.log("Shutdown", "(REST)");
    s.sdk.shutdown();
    ok()
}

async fn health(State(s): S) -> Answer {
    s.calls.ping();
    s.sdk.ping();
    ok()
}

async fn reserve(State(s): S, bytes: Bytes) -> Answer {
    let v = body("Reserve", &bytes)?;
    // grpc-gateway writes int64 as a string; accept a number too.
    let seconds = match &v["seconds"] {
        Value::Null => Some(0),
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let Some(seconds) = seconds.filter(|s| *s >= 0) else {
        return Err(bad_request(format!(
            "Reserve: \"seconds\" must be a whole number of seconds, 0 or more, not {}",
            v["seconds"]
        )));
    };
    s.calls.log("Reserve", &format!("{seconds}s (REST)"));
    s.sdk.reserve(seconds);
    ok()
}

async fn game_server(State(s): S) -> Answer {
    s.calls.log("GetGameServer", "(REST)");
    Ok(axum::Json(view::json(&s.sdk.server())))
}

async fn watch_game_server(State(s): S) -> Response {
    s.calls.log("WatchGameServer", "(REST)");
    let lines = WatchStream::new(s.sdk.subscribe()).map(|gs| {
        let mut line = serde_json::to_vec(&json!({ "result": view::json(&gs) })).expect("JSON serializes");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    ([(axum::http::header::CONTENT_TYPE, "application/json")], Body::from_stream(lines)).into_response()
}

async fn set_label(State(s): S, bytes: Bytes) -> Answer {
    let (key, value) = key_value("SetLabel", &bytes)?;
    s.calls.log("SetLabel", &format!("{key}={value} (REST)"));
    s.sdk.set_label(&key, &value).map_err(|e| bad_request(e.to_string()))?;
    ok()
}

async fn set_annotation(State(s): S, bytes: Bytes) -> Answer {
    let (key, value) = key_value("SetAnnotation", &bytes)?;
    s.calls.log("SetAnnotation", &format!("{key}={value} (REST)"));
    s.sdk.set_annotation(&key, &value).map_err(|e| bad_request(e.to_string()))?;
    ok()
}

async fn set_condition(State(s): S, bytes: Bytes) -> Answer {
    let (key, value) = key_value("SetCondition", &bytes)?;
    s.calls.log("SetCondition", &format!("{key}={value} (REST)"));
    s.sdk.set_condition(&key, &value).map_err(|e| bad_request(e.to_string()))?;
    ok()
}
