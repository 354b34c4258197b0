//! Answers to generation requests (completions, chat, embeddings, anything else): the
//! checks a server makes first (request id, model name), the per-request faults
//! (`mock_exit`, `mock_stall_after_chunks`, `mock_die_after_chunks`) and event streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Mock, dialect, event, metrics};

/// An OpenAI-shaped error answer, as vLLM gives for an unknown model.
fn error(status: StatusCode, message: String) -> Response {
    let body =
        json!({"error": {"message": message, "type": "NotFoundError", "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// Any request the named routes do not take: a generation, answered as the engine would.
pub async fn answer(
    State(m): State<Arc<Mock>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body_len = body.len();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = headers.get("x-request-id").map(HeaderValue::as_bytes);
    if dialect::request_id_refused(&m.cli, id) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !dialect::Dialect::authorized(&m.cli.api_keys, authorization) {
        let body = json!({"error": "Unauthorized"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let asked = req.get("model").and_then(Value::as_str);
    let adapter = dialect::adapter_for(&m.cli_now(), asked).map(str::to_string);
    let model = asked.unwrap_or(&m.names[0]).to_string();
    if m.cli.dialect.checks_model() && !m.names.contains(&model) && !m.control.has_lora(&model) {
        return error(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        );
    }
    if req.get("mock_exit").and_then(Value::as_bool) == Some(true) {
        eprintln!("mock-vllm: exiting without an answer as asked (mock_exit)");
        let code = req
            .get("mock_exit_code")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        std::process::exit(code as i32);
    }
    // A sleeping vLLM holds requests until it is woken.
    m.control.awake().await;
    let path = uri.to_string();
    let num = |k: &str| req.get(k).and_then(Value::as_u64);
    let mut run = m.metrics.begin().await;
    let stall_after = num("mock_stall_after_chunks");
    let mut resp = if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunks = num("mock_chunks").unwrap_or(m.chunks);
        let delay = num("mock_delay_ms").unwrap_or(m.chunk_delay);
        let faults = Faults {
            die_after: num("mock_die_after_chunks"),
            stall_after,
        };
        stream(m.clone(), path.clone(), model, chunks, delay, faults, run)
    } else {
        if stall_after.is_some() {
            eprintln!("mock-vllm: stalling a request as asked (mock_stall_after_chunks)");
            // Running for ever; the client going away drops it, as vLLM aborts it.
            std::future::pending::<()>().await;
        }
        if m.response_delay > 0 {
            tokio::time::sleep(Duration::from_millis(m.response_delay)).await;
        }
        run.generated(4);
        run.finish();
        axum::Json(completion(&path, &model)).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        "x-mock-served-by",
        HeaderValue::from_str(&m.names[0]).unwrap_or(HeaderValue::from_static("?")),
    );
    h.insert(
        "x-mock-dialect",
        HeaderValue::from_static(m.cli.dialect.name()),
    );
    if let Some(a) = adapter.and_then(|a| HeaderValue::from_str(&a).ok()) {
        h.insert("x-mock-adapter-id", a);
    }
    h.insert(
        "x-mock-path",
        HeaderValue::from_str(&path).unwrap_or(HeaderValue::from_static("?")),
    );
    if let Some(id) = headers.get("x-request-id") {
        h.insert("x-mock-request-id", id.clone());
    }
    // What arrived, for tests of header forwarding: the Host and every header name.
    if let Some(host) = headers.get(header::HOST) {
        h.insert("x-mock-host", host.clone());
    }
    h.insert("x-mock-body-bytes", HeaderValue::from(body_len));
    let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
        h.insert("x-mock-header-names", v);
    }
    resp
}

fn completion(path: &str, model: &str) -> Value {
    let text = format!("mock completion from {model}");
    match path.split('?').next().unwrap_or(path) {
        "/v1/completions" => json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}),
        "/v1/chat/completions" => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}),
        "/v1/embeddings" => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
        _ => json!({"object": "mock", "path": path, "model": model}),
    }
}

/// A response body fed by a channel: a failed send means the client went away.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Faults a stream can be asked for.
struct Faults {
    /// Exit after this many chunks.
    die_after: Option<u64>,
    /// Stop after this many chunks and hold the request running for ever.
    stall_after: Option<u64>,
}

fn stream(
    m: Arc<Mock>,
    path: String,
    model: String,
    chunks: u64,
    delay: u64,
    faults: Faults,
    mut run: metrics::Running,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let chat = path.starts_with("/v1/chat/completions");
        for i in 0..chunks {
            if faults.die_after == Some(i) {
                eprintln!("mock-vllm: dying mid-stream as asked (mock_die_after_chunks)");
                std::process::exit(1);
            }
            if faults.stall_after == Some(i) {
                eprintln!("mock-vllm: stalling mid-stream as asked (mock_stall_after_chunks)");
                // Like a deadlocked EngineCore: the request stays in the batch, the client
                // connection open, and nothing more comes, even if the client goes away.
                let _held = (&run, &tx);
                std::future::pending::<()>().await;
            }
            if delay > 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let chunk = if chat {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]})
            } else {
                json!({"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model,
                       "choices": [{"index": 0, "text": format!("tok{i} "), "finish_reason": null}]})
            };
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                event(&m.events, "cancelled");
                return;
            }
            run.generated(1);
        }
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_err()
        {
            event(&m.events, "cancelled");
        } else {
            run.finish();
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::new(ChannelBody(rx)))
        .expect("valid response")
}
