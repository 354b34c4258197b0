//! mock-vllm: a small, fast, OpenAI-compatible fake engine that accepts vLLM's command line.
//! The demo, the tests and the benchmarks run it in place of vLLM so that everything works
//! without a GPU.
//!
//! Flags (as vLLM): `--model`, `--served-model-name NAME...`, `--host`, `--port`,
//! `--lora-modules NAME=PATH...`; any other flag is ignored. With `--mock-dialect NAME` (or
//! `MOCK_DIALECT`) it speaks another server's command line instead (`sglang`, `tgi`,
//! `llamacpp`, `llamacpp-python`; see `mock-vllm/dialect.rs`): unknown flags exit 2, and the
//! health path, `/v1/models`, `/metrics` and request-id rules follow that server.
//!
//! Knobs (environment):
//! - `MOCK_STARTUP_DELAY_MS`: `/health` answers 503 until this much time has passed.
//! - `MOCK_CRASH_AT_START=MSG`: print MSG on stderr and exit 1 at once.
//! - `MOCK_CRASH_AFTER_MS`: exit 1 after this long.
//! - `MOCK_HANG_AFTER_MS`: after this long, `/health` never answers.
//! - `MOCK_IGNORE_SIGTERM=1`: ignore SIGTERM (modelmux must SIGKILL).
//! - `MOCK_SPAWN_CHILD=1`: start a `sleep` child of its own (its pid goes in the report).
//! - `MOCK_REPORT_FILE`: write `{pid, argv, cuda_visible_devices, cuda_device_order, child_pid,
//!   ready_unix}` (`ready_unix`: when `/health` turns 200).
//! - `MOCK_EVENTS_FILE`: append one line per event (`start`, `sigterm`, `cancelled`, ...).
//! - `MOCK_STREAM_CHUNKS` (16), `MOCK_STREAM_DELAY_MS` (0), `MOCK_RESPONSE_DELAY_MS` (0).
//! - `MOCK_METRICS_DELAY_MS`: `GET /metrics` (vLLM V1's metrics, see `mock-vllm/metrics.rs`)
//!   answers after this long; `--max-num-seqs N` lets N requests run at once, the rest wait.
//!
//! Per request (JSON body): `mock_chunks`, `mock_delay_ms`, `mock_die_after_chunks`,
//! `mock_exit` (exit at once without an answer).
//!
//! Responses carry what the mock saw: `x-mock-served-by`, `x-mock-path`, `x-mock-dialect`,
//! `x-mock-adapter-id` (the adapter the server would apply),
//! `x-mock-request-id`, `x-mock-host`, `x-mock-header-names` (every request header name) and
//! `x-mock-body-bytes`.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[path = "mock-vllm/metrics.rs"]
mod metrics;

#[path = "mock-vllm/dialect.rs"]
mod dialect;

struct Mock {
    cli: dialect::Cli,
    names: Vec<String>,
    loras: Vec<String>,
    started: Instant,
    startup_delay: Duration,
    hang_after: Option<Duration>,
    chunks: u64,
    chunk_delay: u64,
    response_delay: u64,
    events: Option<String>,
    metrics: Arc<metrics::EngineMetrics>,
}

fn env_ms(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn event(path: &Option<String>, what: &str) {
    if let Some(path) = path
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One write(2) per line: O_APPEND keeps concurrent writers' lines whole.
        let _ = f.write_all(format!("{what} {}\n", std::process::id()).as_bytes());
    }
}

/// Values of a flag: `--flag a b` (until the next flag) or `--flag=a`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(v) = args[i].strip_prefix(&format!("{flag}=")) {
            out.push(v.to_string());
        } else if args[i] == flag {
            i += 1;
            while i < args.len() && !args[i].starts_with("--") {
                out.push(args[i].clone());
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // A usage error exits 2 before anything starts, as the servers' argument parsers do.
    let cli = dialect::take_dialect(&mut args)
        .and_then(|d| dialect::parse(d, &args[1..]))
        .unwrap_or_else(|msg| {
            eprintln!("{msg}");
            std::process::exit(2);
        });
    if let Ok(msg) = std::env::var("MOCK_CRASH_AT_START") {
        eprintln!("{msg}");
        std::process::exit(1);
    }
    let threads = env_ms("MOCK_THREADS").unwrap_or(2).max(1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(args, cli)));
}

async fn run(args: Vec<String>, cli: dialect::Cli) -> i32 {
    let names = cli.names.clone();
    let loras = cli.loras.clone();
    let (host, port) = (cli.host.clone(), cli.port.clone());
    let events = std::env::var("MOCK_EVENTS_FILE").ok();
    event(&events, "start");

    let child_pid = std::env::var("MOCK_SPAWN_CHILD").ok().and_then(|_| {
        std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .ok()
            .map(|c| c.id())
    });
    let started = Instant::now();
    let startup_delay = Duration::from_millis(env_ms("MOCK_STARTUP_DELAY_MS").unwrap_or(0));
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let Ok(path) = std::env::var("MOCK_REPORT_FILE") {
        let report = json!({
            "ready_unix": now_unix + startup_delay.as_secs_f64(),
            "pid": std::process::id(),
            "argv": args,
            "dialect": cli.dialect.name(),
            "cuda_visible_devices": std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            "cuda_device_order": std::env::var("CUDA_DEVICE_ORDER").ok(),
            "child_pid": child_pid,
        });
        let _ = std::fs::write(path, report.to_string());
    }

    let listener = match tokio::net::TcpListener::bind(format!("{host}:{port}")).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-vllm: cannot listen on {host}:{port}: {e}");
            return 1;
        }
    };
    eprintln!("mock-vllm: serving {names:?} on {host}:{port}");
    let max_num_seqs = flag_values(&args, "--max-num-seqs").pop();
    let counters =
        metrics::EngineMetrics::new(&names[0], max_num_seqs.and_then(|v| v.parse().ok()));
    let mock = Arc::new(Mock {
        cli: cli.clone(),
        metrics: Arc::new(counters),
        names,
        loras,
        started,
        startup_delay,
        hang_after: env_ms("MOCK_HANG_AFTER_MS").map(Duration::from_millis),
        chunks: env_ms("MOCK_STREAM_CHUNKS").unwrap_or(16),
        chunk_delay: env_ms("MOCK_STREAM_DELAY_MS").unwrap_or(0),
        response_delay: env_ms("MOCK_RESPONSE_DELAY_MS").unwrap_or(0),
        events: events.clone(),
    });
    if let Some(ms) = env_ms("MOCK_CRASH_AFTER_MS") {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("mock-vllm: crashing after {ms} ms as asked (MOCK_CRASH_AFTER_MS)");
            std::process::exit(1);
        });
    }
    let ignore_term = std::env::var("MOCK_IGNORE_SIGTERM").is_ok_and(|v| v == "1");
    let term_events = events.clone();
    // Installed before /health can answer, so that a SIGTERM is never missed.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::spawn(async move {
        loop {
            term.recv().await;
            event(&term_events, "sigterm");
            if ignore_term {
                eprintln!("mock-vllm: ignoring SIGTERM as asked");
            } else {
                eprintln!("mock-vllm: SIGTERM, shutting down");
                std::process::exit(0);
            }
        }
    });

    let mut app = Router::new().route("/v1/models", get(models));
    app = match cli.dialect.health_path() {
        Some(path) => app.route(path, get(health)),
        None => app.route("/health", get(|| async { StatusCode::NOT_FOUND })),
    };
    app = if cli.metrics {
        app.route("/metrics", get(engine_metrics))
    } else {
        app.route("/metrics", get(|| async { StatusCode::NOT_FOUND }))
    };
    let app = app
        .fallback(answer)
        // vLLM takes bodies of any size; so does the mock (axum's default stops at 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(mock);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    match axum::serve(listener, app).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mock-vllm: server error: {e}");
            1
        }
    }
}

async fn health(State(m): State<Arc<Mock>>) -> StatusCode {
    let up = m.started.elapsed();
    if m.hang_after.is_some_and(|h| up >= h) {
        std::future::pending::<()>().await;
    }
    if up >= m.startup_delay {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn engine_metrics(State(m): State<Arc<Mock>>) -> Response {
    // vLLM's series; the other dialects' servers export theirs under their own prefix.
    let text = match m.cli.dialect.metrics_prefix() {
        "vllm:" => m.metrics.render().await,
        prefix => m.metrics.render().await.replace("vllm:", prefix),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn models(State(m): State<Arc<Mock>>) -> Response {
    axum::Json(dialect::models(&m.cli)).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    let body =
        json!({"error": {"message": message, "type": "NotFoundError", "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

async fn answer(State(m): State<Arc<Mock>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body_len = body.len();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = headers.get("x-request-id").map(HeaderValue::as_bytes);
    if dialect::request_id_refused(&m.cli, id) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let asked = req.get("model").and_then(Value::as_str);
    let adapter = dialect::adapter_for(&m.cli, asked).map(str::to_string);
    let model = asked.unwrap_or(&m.names[0]).to_string();
    if m.cli.dialect.checks_model() && !m.names.contains(&model) && !m.loras.contains(&model) {
        return error(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        );
    }
    if req.get("mock_exit").and_then(Value::as_bool) == Some(true) {
        eprintln!("mock-vllm: exiting without an answer as asked (mock_exit)");
        std::process::exit(1);
    }
    let path = uri.to_string();
    let num = |k: &str| req.get(k).and_then(Value::as_u64);
    let mut run = m.metrics.begin().await;
    let mut resp = if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunks = num("mock_chunks").unwrap_or(m.chunks);
        let delay = num("mock_delay_ms").unwrap_or(m.chunk_delay);
        let die_after = num("mock_die_after_chunks");
        stream(
            m.clone(),
            path.clone(),
            model,
            chunks,
            delay,
            die_after,
            run,
        )
    } else {
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

fn stream(
    m: Arc<Mock>,
    path: String,
    model: String,
    chunks: u64,
    delay: u64,
    die_after: Option<u64>,
    mut run: metrics::Running,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let chat = path.starts_with("/v1/chat/completions");
        for i in 0..chunks {
            if die_after == Some(i) {
                eprintln!("mock-vllm: dying mid-stream as asked (mock_die_after_chunks)");
                std::process::exit(1);
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
