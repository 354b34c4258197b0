//! The front against fake engines that misbehave on purpose, which `mock-vllm` cannot:
//! an engine that reads a request and hangs up without answering, one that closes its
//! keep-alive connections right after answering. A request reaches an engine at most once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::watch;

use super::{App, workers};
use crate::config::{ConfigSource, RawConfig, Settings};
use crate::engines::Engine as Profile;
use crate::gpu::GpuSource;
use crate::plan::{LaunchPlan, ModelLaunch};
use crate::state::{Phase, Snapshot};

/// What the fake engine does with its `n`-th request (from 1).
#[derive(Clone, Copy)]
enum Act {
    /// 200, keep the connection.
    Answer,
    /// 200, then close the connection.
    AnswerAndClose,
    /// Read it whole, then close without a word.
    HangUp,
}

/// A fake engine on loopback that counts the requests it read.
struct Engine {
    port: u16,
    requests: Arc<AtomicUsize>,
    /// Connections the engine has closed.
    closed: Arc<AtomicUsize>,
}

fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Engine {
    fn start(act: fn(usize) -> Act) -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counter, closes) = (requests.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(s) = conn else { return };
                let (counter, closes) = (counter.clone(), closes.clone());
                std::thread::spawn(move || {
                    // Counted once the socket is closed (dropped at the end of `serve`).
                    let serve = |mut s: TcpStream| {
                        while read_request(&mut s) {
                            let n = counter.fetch_add(1, SeqCst) + 1;
                            let act = act(n);
                            if !matches!(act, Act::HangUp) {
                                let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                            );
                            }
                            if !matches!(act, Act::Answer) {
                                return;
                            }
                        }
                    };
                    serve(s);
                    closes.fetch_add(1, SeqCst);
                });
            }
        });
        Engine {
            port,
            requests,
            closed,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

/// The front alone (no supervisor), one ready model `m` served by the engine on `port`.
struct Front {
    port: u16,
    _stop: watch::Sender<bool>,
}

/// The application of a front whose one model `m` is ready, served on `engine_port`.
pub(crate) fn app(engine_port: u16) -> Arc<App> {
    let model = ModelLaunch {
        name: "m".into(),
        served_names: vec!["m".into()],
        adapters: vec![],
        model_path: "m".into(),
        model_task: None,
        gpus: vec![],
        port: engine_port,
        argv: vec![],
        env: Default::default(),
        predict_route: "/v1/completions".into(),
        max_concurrency: None,
        max_queue: 0,
        ..launch_defaults()
    };
    let plan = LaunchPlan {
        source: ConfigSource::MultiModelConfig,
        gpu_source: GpuSource::Override,
        port: 0,
        health_port: 0,
        models: vec![model],
        gpu_memory_limit: crate::config::DEFAULT_GPU_MEMORY_LIMIT,
        gpus: vec![],
    };
    let settings = Settings::from_raw(&RawConfig::default()).unwrap();
    let (state, rx) = watch::channel(Snapshot::initial(&plan));
    state.send_modify(|s| s.models[0].state = Phase::Ready);
    // The sender lives as long as the test process: the state stays as set.
    std::mem::forget(state);
    let control = crate::supervisor::Control::detached(rx.clone());
    let live = crate::admin::live::Live::new(control, Arc::new(|| Err("no reloads here".into())));
    let admin = Arc::new(crate::admin::Admin::new(None, Arc::new(live)));
    Arc::new(App::new(&plan, &settings, rx, admin))
}

/// The fields of a vLLM model that the front's tests do not care about.
fn launch_defaults() -> ModelLaunch {
    let profile = Profile::Vllm.profile();
    ModelLaunch {
        name: String::new(),
        served_names: vec![],
        adapters: vec![],
        model_path: String::new(),
        model_task: None,
        gpus: vec![],
        port: 0,
        extra_ports: vec![],
        argv: vec![],
        env: Default::default(),
        predict_route: String::new(),
        max_concurrency: None,
        max_queue: 0,
        engine: Profile::Vllm,
        health_path: profile.health_path.to_string(),
        metrics_path: profile.metrics.map(|x| x.path.to_string()),
        metrics_prefix: profile.metrics.map(|x| x.prefix.to_string()),
        models_list: profile.models_list,
        request_model: None,
        uuid_request_ids: false,
        gpu_share: None,
        memory_estimate: None,
        start_after: vec![],
        ..crate::plan::tests::launch_for_tests("")
    }
}

fn front(engine_port: u16) -> Front {
    let app = app(engine_port);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stop_rx) = watch::channel(false);
    workers::spawn(listener, 1, app, stop_rx).unwrap();
    Front { port, _stop: stop }
}

/// Sends `requests` on one connection and returns each answer's status line.
fn exchange(port: u16, requests: &[&[u8]]) -> Vec<String> {
    exchange_with(port, requests, |_| {})
}

/// [`exchange`], calling `between(n)` after the n-th answer (from 1) before the next request.
fn exchange_with(port: u16, requests: &[&[u8]], between: impl Fn(usize)) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            between(i);
        }
        s.write_all(r).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    out.push(head.lines().next().unwrap().to_string());
                    break;
                }
            }
            let n = s.read(&mut chunk).expect("an answer");
            assert!(n > 0, "closed before an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    out
}

const POST: &[u8] =
    b"POST /v1/completions HTTP/1.1\r\nHost: f\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}";
const LIVEZ: &[u8] = b"GET /livez HTTP/1.1\r\nHost: f\r\n\r\n";

#[test]
fn a_request_the_engine_read_is_never_sent_twice_on_either_wire() {
    for general in [false, true] {
        // The second request reaches the engine on the connection the first one used,
        // and the engine hangs up without answering: a retry would run it twice.
        let engine = Engine::start(|n| if n == 2 { Act::HangUp } else { Act::Answer });
        let f = front(engine.port);
        let mut requests = vec![POST, POST];
        if general {
            requests.insert(0, LIVEZ);
        }
        let answers = exchange(f.port, &requests);
        let last = answers.last().unwrap();
        assert!(
            last.starts_with("HTTP/1.1 502"),
            "general={general}: {answers:?}"
        );
        assert_eq!(
            engine.requests(),
            2,
            "general={general}: the engine ran a request twice"
        );
    }
}

#[test]
fn a_connection_the_engine_closed_is_not_used_again() {
    let engine = Engine::start(|_| Act::AnswerAndClose);
    let f = front(engine.port);
    // Each next request goes once the engine has closed: an engine that closes just after
    // its answer races the next request, which then may have reached it (not retried).
    let answers = exchange_with(f.port, &[POST, POST, POST], |n| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.closed() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine never closed"
            );
            std::thread::yield_now();
        }
    });
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
    assert_eq!(engine.requests(), 3);
}
