//! mock-vllm: a small, fast, OpenAI-compatible fake engine that accepts vLLM's command line.
//! The demo, the tests and the benchmarks run it in place of vLLM so that everything works
//! without a GPU.
//!
//! Flags (as vLLM): `--model` (or `serve MODEL` as `vllm serve` takes it),
//! `--served-model-name NAME...`, `--host`, `--port`, `--lora-modules NAME=PATH...`; any
//! other flag is ignored. With `--mock-dialect NAME` (or `MOCK_DIALECT`) it speaks another
//! server's command line instead (`sglang`, `tgi`, `llamacpp`, `llamacpp-python`; see
//! `mock-vllm/dialect.rs`): unknown flags exit 2, and the health path, `/v1/models`,
//! `/metrics` and request-id rules follow that server.
//!
//! Knobs (environment):
//! - `MOCK_STARTUP_DELAY_MS`: `/health` answers 503 until this much time has passed.
//! - `MOCK_LOADING_BAR=1`: meanwhile, draw vLLM's "Loading safetensors checkpoint shards"
//!   progress bar on stderr as tqdm does (redrawn with `\r`, one newline at the end).
//! - `MOCK_STDOUT_LINES`, `MOCK_STDERR_LINES`: lines (separated by newlines) printed at start.
//! - `MOCK_CRASH_AT_START=MSG`: print MSG on stderr and exit 1 at once.
//! - `MOCK_REJECT_FLAG=FLAG`: if FLAG is on the command line, fail like argparse (usage and
//!   `error: unrecognized arguments` on stderr, exit 2).
//! - `MOCK_CRASH_AFTER_MS`: exit 1 after this long.
//! - `MOCK_HANG_AFTER_MS`: after this long, `/health` never answers.
//! - `MOCK_IGNORE_SIGTERM=1`: ignore SIGTERM (modelmux must SIGKILL).
//! - `MOCK_SIGTERM_DELAY_MS`: on SIGTERM, take this long to exit (as vLLM stops its engine).
//! - Children, like vLLM's EngineCore (long-lived, they do not die with the mock): a child
//!   in the mock's process group (`MOCK_SPAWN_CHILD=1`), one that calls `setsid()`
//!   (`MOCK_SPAWN_SETSID=1`), and a daemon: a setsid'd grandchild whose parent exits at once,
//!   so it is orphaned (`MOCK_SPAWN_DAEMON=1`). They log `child-sigterm PID` when they get
//!   SIGTERM and exit, unless `MOCK_CHILD_IGNORE_SIGTERM=1`.
//! - `MOCK_ACCESS_LOG=1`: one uvicorn-style access line on stdout per request.
//! - `MOCK_MAX_MODEL_LEN` (4096): `max_model_len` in `/v1/models`.
//! - `MOCK_REPORT_FILE`: write `{pid, argv, model, cuda_visible_devices, cuda_device_order,
//!   omp_threads_bind, child_pid, setsid_pid, daemon_pid, ready_unix}` (`ready_unix`: when
//!   `/health` turns 200).
//! - `MOCK_EVENTS_FILE`: append one line per event (`start`, `sigterm`, `exiting`,
//!   `child-sigterm`, `cancelled`, ...), each with the pid.
//! - `MOCK_STREAM_CHUNKS` (16), `MOCK_STREAM_DELAY_MS` (0), `MOCK_RESPONSE_DELAY_MS` (0).
//! - `MOCK_METRICS_DELAY_MS`: `GET /metrics` (vLLM V1's metrics, see `mock-vllm/metrics.rs`)
//!   answers after this long; `--max-num-seqs N` lets N requests run at once, the rest wait.
//!
//! - vLLM's control endpoints (`/sleep`, `/wake_up`, `/is_sleeping` with
//!   `VLLM_SERVER_DEV_MODE=1`; `/v1/load_lora_adapter`, `/v1/unload_lora_adapter` with
//!   `VLLM_ALLOW_RUNTIME_LORA_UPDATING`) and a GPU memory figure that sleep releases
//!   (`MOCK_GPU_MEMORY_DIR`, `MOCK_GPU_MEMORY_BYTES`): see `mock-vllm/control.rs`.
//!
//! Per request (JSON body): `mock_chunks`, `mock_delay_ms`, `mock_die_after_chunks`,
//! `mock_exit` (exit at once without an answer, with `mock_exit_code`, default 1),
//! `mock_stall_after_chunks` (a hung engine, as vLLM in a decode deadlock: a stream stops
//! after that many chunks, a plain request never answers; the request stays running in
//! `/metrics` and no more tokens are counted, while `/health` keeps answering 200).
//!
//! Responses carry what the mock saw: `x-mock-served-by`, `x-mock-path`, `x-mock-dialect`,
//! `x-mock-adapter-id` (the adapter the server would apply),
//! `x-mock-request-id`, `x-mock-host`, `x-mock-header-names` (every request header name) and
//! `x-mock-body-bytes`.
//!
//! Files: this one starts the server and routes; `mock-vllm/answer.rs` answers generation
//! requests, `children.rs` the EngineCore-like children, `control.rs` sleep and adapters,
//! `metrics.rs` vLLM's metrics, `dialect.rs` the other servers' command lines.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

#[path = "mock-vllm/control.rs"]
mod control;
#[path = "mock-vllm/metrics.rs"]
mod metrics;

#[path = "mock-vllm/answer.rs"]
mod answer;
#[path = "mock-vllm/children.rs"]
mod children;
#[path = "mock-vllm/dialect.rs"]
mod dialect;

use answer::answer;
use children::{CHILD, child_main, spawn_child};

struct Mock {
    cli: dialect::Cli,
    names: Vec<String>,
    control: control::Control,
    created: u64,
    max_model_len: u64,
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
    if args.get(1).map(String::as_str) == Some(CHILD) {
        child_main(args.get(2).map(String::as_str).unwrap_or("sleeper"));
    }
    // A usage error exits 2 before anything starts, as the servers' argument parsers do.
    let cli = dialect::take_dialect(&mut args)
        .and_then(|d| dialect::parse(d, &args[1..]))
        .unwrap_or_else(|msg| {
            eprintln!("{msg}");
            std::process::exit(2);
        });
    for (var, to_stdout) in [("MOCK_STDOUT_LINES", true), ("MOCK_STDERR_LINES", false)] {
        for line in std::env::var(var).unwrap_or_default().lines() {
            if to_stdout {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if let Ok(msg) = std::env::var("MOCK_CRASH_AT_START") {
        eprintln!("{msg}");
        std::process::exit(1);
    }
    if let Ok(flag) = std::env::var("MOCK_REJECT_FLAG")
        && args.contains(&flag)
    {
        eprintln!("usage: api_server.py [-h] [--host HOST] [--port PORT] [--model MODEL]");
        eprintln!("api_server.py: error: unrecognized arguments: {flag}");
        std::process::exit(2);
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

    let wants = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    let child_pid = wants("MOCK_SPAWN_CHILD")
        .then(|| spawn_child("sleeper", false, Stdio::inherit()))
        .flatten();
    let setsid_pid = wants("MOCK_SPAWN_SETSID")
        .then(|| spawn_child("sleeper", true, Stdio::inherit()))
        .flatten();
    let daemon_pid = wants("MOCK_SPAWN_DAEMON")
        .then(|| spawn_child("daemon", true, Stdio::piped()))
        .flatten();
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
            "model": cli.model,
            "cuda_visible_devices": std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            "cuda_device_order": std::env::var("CUDA_DEVICE_ORDER").ok(),
            "omp_threads_bind": std::env::var("VLLM_CPU_OMP_THREADS_BIND").ok(),
            "cpu_mask": cli.cpu_mask,
            "threads": cli.threads,
            "child_pid": child_pid,
            "setsid_pid": setsid_pid,
            "daemon_pid": daemon_pid,
        });
        let _ = std::fs::write(path, report.to_string());
    }

    // vLLM takes its memory before it listens; one that finds too little fails at start.
    let util = flag_values(&args, "--gpu-memory-utilization")
        .pop()
        .and_then(|v| v.parse::<f64>().ok());
    let control = match control::Control::new(&args, util, loras) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("ValueError: {why}");
            event(&events, "oom");
            return 1;
        }
    };
    let listener = match tokio::net::TcpListener::bind(format!("{host}:{port}")).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-vllm: cannot listen on {host}:{port}: {e}");
            return 1;
        }
    };
    eprintln!("mock-vllm: serving {names:?} on {host}:{port}");
    if wants("MOCK_LOADING_BAR") && !startup_delay.is_zero() {
        std::thread::spawn(move || loading_bar(startup_delay.saturating_sub(started.elapsed())));
    }
    let max_num_seqs = flag_values(&args, "--max-num-seqs").pop();
    let counters =
        metrics::EngineMetrics::new(&names[0], max_num_seqs.and_then(|v| v.parse().ok()));
    let mock = Arc::new(Mock {
        cli: cli.clone(),
        metrics: Arc::new(counters),
        names,
        control,
        created: now_unix as u64,
        max_model_len: env_ms("MOCK_MAX_MODEL_LEN").unwrap_or(4096),
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
    let term_delay = env_ms("MOCK_SIGTERM_DELAY_MS").unwrap_or(0);
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
                tokio::time::sleep(Duration::from_millis(term_delay)).await;
                event(&term_events, "exiting");
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
    // vLLM's control endpoints (each answers 404 unless its switch is on, as vLLM's).
    if cli.dialect == dialect::Dialect::Vllm {
        app = app
            .route(
                "/sleep",
                axum::routing::post(|State(m): State<Arc<Mock>>, uri: Uri| async move {
                    m.control.sleep(&uri)
                }),
            )
            .route(
                "/wake_up",
                axum::routing::post(|State(m): State<Arc<Mock>>, uri: Uri| async move {
                    m.control.wake_up(&uri)
                }),
            )
            .route(
                "/is_sleeping",
                get(|State(m): State<Arc<Mock>>| async move { m.control.is_sleeping() }),
            )
            .route(
                "/mock/memory",
                get(|State(m): State<Arc<Mock>>| async move { m.control.memory() }),
            )
            .route(
                "/v1/load_lora_adapter",
                axum::routing::post(
                    |State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes| async move {
                        m.control.load_lora(&m.names, &headers, &body)
                    },
                ),
            )
            .route(
                "/v1/unload_lora_adapter",
                axum::routing::post(
                    |State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes| async move {
                        m.control.unload_lora(&headers, &body)
                    },
                ),
            );
    }
    let app = app
        .fallback(answer)
        // vLLM takes bodies of any size; so does the mock (axum's default stops at 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(access_log))
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

/// tqdm's bar as vLLM draws it while it loads weights: four shards over `over`.
fn loading_bar(over: Duration) {
    const SHARDS: u32 = 4;
    let mut err = std::io::stderr();
    for done in 0..=SHARDS {
        if done > 0 {
            std::thread::sleep(over / SHARDS);
        }
        let _ = write!(
            err,
            "\rLoading safetensors checkpoint shards: {:3}% Completed | {done}/{SHARDS} [00:0{done}<00:0{}, 1.00it/s]",
            done * 100 / SHARDS,
            SHARDS - done
        );
        let _ = err.flush();
    }
    let _ = writeln!(err);
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
    // vLLM's series; the other dialects' servers export theirs under their own names.
    let text = m.cli.dialect.rename_metrics(&m.metrics.render().await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// uvicorn's access line, as vLLM writes it on stdout, when `MOCK_ACCESS_LOG=1`.
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let line = format!("\"{} {} HTTP/1.1\"", req.method(), req.uri().path());
    let resp = next.run(req).await;
    if std::env::var("MOCK_ACCESS_LOG").is_ok_and(|v| v == "1") {
        let status = resp.status();
        println!(
            "INFO:     127.0.0.1:40000 - {line} {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    resp
}

/// The list as vLLM answers it: base names with `root` = the model path, adapters with
/// `root` = the adapter path and `parent` = the base name.
async fn models(State(m): State<Arc<Mock>>) -> Response {
    axum::Json(dialect::models(&m.cli_now(), m.created, m.max_model_len)).into_response()
}

impl Mock {
    /// The command line with the adapters loaded now (run-time ones included).
    fn cli_now(&self) -> dialect::Cli {
        let mut cli = self.cli.clone();
        cli.loras = self.control.loras.read().unwrap().clone();
        cli
    }
}
