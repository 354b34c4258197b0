//! vLLM's control endpoints, with vLLM's semantics (read in vLLM 0.11+'s
//! `entrypoints/serve/dev/sleep/api_router.py`, `entrypoints/serve/lora/api_router.py` and
//! `entrypoints/openai/models/serving.py`), and a GPU memory figure that sleep releases, so
//! that modelmux's sleep, wake, swapping and run-time adapters are testable without a GPU.
//!
//! - With `VLLM_SERVER_DEV_MODE=1`: `POST /sleep?level=N` (0 to 2, default 1) answers
//!   `{"status": "sleeping", "level": N}`; `POST /wake_up` answers `{"status": "awake",
//!   "tags": null}`; `GET /is_sleeping` answers `{"is_sleeping": bool}`. Without it they
//!   are 404 `{"detail": "Not Found"}`, as FastAPI answers a route that is not there.
//!   While asleep, inference requests wait until the engine is woken (vLLM pauses its
//!   scheduler), `/health` still answers 200.
//! - With `VLLM_ALLOW_RUNTIME_LORA_UPDATING` (`1` or `true`): `POST /v1/load_lora_adapter`
//!   `{"lora_name", "lora_path", "load_inplace"}` and `POST /v1/unload_lora_adapter`
//!   `{"lora_name"}`: 200 with vLLM's line of text; 400 for a body that is not JSON, a
//!   missing field, a name of the base model or one already loaded; 404 for a path without
//!   `adapter_config.json` or an unknown name to unload; 500 without `--enable-lora`.
//! - Memory (`MOCK_GPU_MEMORY_DIR`): each engine holds `--gpu-memory-utilization` (vLLM's
//!   default 0.9) of `MOCK_GPU_MEMORY_BYTES` (80 GiB) on each GPU of its
//!   `CUDA_VISIBLE_DEVICES`, recorded as one file per engine under
//!   `DIR/gpu<id>/<pid>`. An engine that would take more than the GPU has left fails at
//!   start as vLLM does (exit 1); level 1 or 2 sleep with `--enable-sleep-mode` releases all
//!   but 256 MiB, a wake takes it back (500 if it is gone). `GET /mock/memory` answers
//!   `{"bytes": N, "sleeping": bool}`.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// What a sleeping engine keeps on each GPU.
const RESIDUAL: u64 = 256 << 20;
/// Default size of a mock GPU.
const DEFAULT_GPU: u64 = 80 << 30;

/// The engine's sleep state, run-time adapters and memory.
pub struct Control {
    dev_mode: bool,
    runtime_lora: bool,
    lora_enabled: bool,
    sleep_mode: bool,
    asleep: watch::Sender<bool>,
    /// Adapters: from `--lora-modules`, then loaded at run time.
    pub loras: RwLock<Vec<(String, String)>>,
    memory: Option<Memory>,
}

/// The mock's GPU memory accounting.
struct Memory {
    dir: PathBuf,
    gpus: Vec<String>,
    total: u64,
    want: u64,
}

fn env_flag(var: &str, values: &[&str]) -> bool {
    std::env::var(var).is_ok_and(|v| values.contains(&v.trim().to_ascii_lowercase().as_str()))
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

impl Memory {
    fn from_env(args: &[String], util: Option<f64>) -> Option<Memory> {
        let dir = PathBuf::from(std::env::var("MOCK_GPU_MEMORY_DIR").ok()?);
        let total = std::env::var("MOCK_GPU_MEMORY_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_GPU);
        let gpus: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        let _ = args;
        let want = (util.unwrap_or(0.9) * total as f64) as u64;
        Some(Memory {
            dir,
            gpus,
            total,
            want,
        })
    }

    /// Holds `bytes` on every GPU, or says why it cannot (another engine holds too much).
    fn hold(&self, bytes: u64) -> Result<(), String> {
        let _lock = DirLock::take(&self.dir);
        let me = std::process::id();
        for g in &self.gpus {
            let gdir = self.dir.join(format!("gpu{g}"));
            let _ = std::fs::create_dir_all(&gdir);
            let mut others = 0u64;
            for e in std::fs::read_dir(&gdir).into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                if !pid_alive(pid) {
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                others += std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if others + bytes > self.total {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                return Err(format!(
                    "Free memory on device cuda:{g} ({:.2}/{:.2} GiB) is less than desired GPU memory ({:.2} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
                    gib(self.total.saturating_sub(others)),
                    gib(self.total),
                    gib(bytes)
                ));
            }
        }
        for g in &self.gpus {
            let path = self.dir.join(format!("gpu{g}")).join(me.to_string());
            let _ = std::fs::write(path, bytes.to_string());
        }
        Ok(())
    }

    fn held(&self) -> u64 {
        let me = std::process::id().to_string();
        self.gpus
            .first()
            .and_then(|g| std::fs::read_to_string(self.dir.join(format!("gpu{g}")).join(&me)).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A lock over the memory directory (a directory made and removed: atomic on every file
/// system), so that two engines starting at once do not both take the last room.
struct DirLock(PathBuf);

impl DirLock {
    fn take(dir: &std::path::Path) -> DirLock {
        let _ = std::fs::create_dir_all(dir);
        let lock = dir.join("lock");
        for _ in 0..2000 {
            if std::fs::create_dir(&lock).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        DirLock(lock)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// FastAPI's answer for a route that does not exist.
fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"detail": "Not Found"})),
    )
        .into_response()
}

/// vLLM's `ErrorResponse`.
pub fn vllm_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// A 200 whose body is a line of text and no content type, as FastAPI's `Response(content=)`.
fn plain_ok(text: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(text))
        .expect("valid response")
}

impl Control {
    /// Reads the knobs and takes the engine's memory; the error is vLLM's start-up failure.
    pub fn new(
        args: &[String],
        util: Option<f64>,
        loras: Vec<(String, String)>,
    ) -> Result<Control, String> {
        let memory = Memory::from_env(args, util);
        if let Some(m) = &memory {
            m.hold(m.want)?;
        }
        Ok(Control {
            dev_mode: std::env::var("VLLM_SERVER_DEV_MODE").is_ok_and(|v| v.trim() == "1"),
            runtime_lora: env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING", &["1", "true"]),
            lora_enabled: args.iter().any(|a| a == "--enable-lora"),
            sleep_mode: args.iter().any(|a| a == "--enable-sleep-mode"),
            asleep: watch::channel(false).0,
            loras: RwLock::new(loras),
            memory,
        })
    }

    /// True while asleep.
    pub fn asleep(&self) -> bool {
        *self.asleep.borrow()
    }

    /// Waits until the engine is awake (requests wait while it sleeps, as vLLM's paused
    /// scheduler holds them).
    pub async fn awake(&self) {
        let mut rx = self.asleep.subscribe();
        let _ = rx.wait_for(|a| !*a).await;
    }

    /// Whether a name is an adapter.
    pub fn has_lora(&self, name: &str) -> bool {
        self.loras.read().unwrap().iter().any(|(n, _)| n == name)
    }

    /// `POST /sleep`.
    pub fn sleep(&self, uri: &Uri) -> Response {
        if !self.dev_mode {
            return not_found();
        }
        let level = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("level="))
            .map(|v| v.parse::<i64>());
        let level = match level {
            None => 1,
            Some(Ok(l)) if (0..=2).contains(&l) => l,
            Some(_) => {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestError",
                    "level: Input should be less than or equal to 2 and greater than or equal to 0",
                );
            }
        };
        self.asleep.send_replace(true);
        if level >= 1
            && self.sleep_mode
            && let Some(m) = &self.memory
        {
            let _ = m.hold(RESIDUAL.min(m.want / 8));
        }
        eprintln!("mock-vllm: asleep (level {level})");
        axum::Json(json!({"status": "sleeping", "level": level})).into_response()
    }

    /// `POST /wake_up`.
    pub fn wake_up(&self, uri: &Uri) -> Response {
        if !self.dev_mode {
            return not_found();
        }
        if self.sleep_mode
            && let Some(m) = &self.memory
            && m.held() < m.want
            && let Err(why) = m.hold(m.want)
        {
            return vllm_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                &format!("CUDA out of memory while waking up: {why}"),
            );
        }
        self.asleep.send_replace(false);
        let tags: Vec<&str> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.strip_prefix("tags="))
            .collect();
        eprintln!("mock-vllm: awake");
        let tags = if tags.is_empty() {
            Value::Null
        } else {
            json!(tags)
        };
        axum::Json(json!({"status": "awake", "tags": tags})).into_response()
    }

    /// `GET /is_sleeping`.
    pub fn is_sleeping(&self) -> Response {
        if !self.dev_mode {
            return not_found();
        }
        axum::Json(json!({"is_sleeping": self.asleep()})).into_response()
    }

    /// `GET /mock/memory`.
    pub fn memory(&self) -> Response {
        let bytes = self.memory.as_ref().map_or(0, Memory::held);
        axum::Json(json!({"bytes": bytes, "sleeping": self.asleep()})).into_response()
    }

    /// The JSON body of a LoRA call, or vLLM's 400.
    fn lora_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Box<Response>> {
        let json_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            == Some("application/json".into());
        if !json_type {
            return Err(Box::new(vllm_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "Unsupported Media Type: Only 'application/json' is allowed",
            )));
        }
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                Box::new(vllm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestError",
                    "body: Input should be a valid dictionary",
                ))
            })
    }

    /// `POST /v1/load_lora_adapter`.
    pub fn load_lora(&self, base_names: &[String], headers: &HeaderMap, body: &Bytes) -> Response {
        if !self.runtime_lora {
            return not_found();
        }
        let req = match Self::lora_body(headers, body) {
            Ok(v) => v,
            Err(r) => return *r,
        };
        let (Some(name), Some(path)) = (
            req.get("lora_name").and_then(Value::as_str),
            req.get("lora_path").and_then(Value::as_str),
        ) else {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "lora_name and lora_path: Field required",
            );
        };
        let inplace = req.get("load_inplace").and_then(Value::as_bool) == Some(true);
        if name.is_empty() || path.is_empty() {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "InvalidUserInput",
                "Both 'lora_name' and 'lora_path' must be provided.",
            );
        }
        if base_names.iter().any(|n| n == name) {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "InvalidUserInput",
                &format!("The lora adapter '{name}' conflicts with a served base model."),
            );
        }
        if !inplace && self.has_lora(name) {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "InvalidUserInput",
                &format!(
                    "The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."
                ),
            );
        }
        if !self.lora_enabled {
            return vllm_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "LoRA is not enabled. Use --enable-lora to enable LoRA.",
            );
        }
        if !std::path::Path::new(path)
            .join("adapter_config.json")
            .is_file()
        {
            return vllm_error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &format!("Loading lora {name} failed: No adapter found for {path}"),
            );
        }
        let mut loras = self.loras.write().unwrap();
        loras.retain(|(n, _)| n != name);
        loras.push((name.to_string(), path.to_string()));
        eprintln!("mock-vllm: Loaded new LoRA adapter: name '{name}', path '{path}'");
        plain_ok(format!(
            "Success: LoRA adapter '{name}' added successfully."
        ))
    }

    /// `POST /v1/unload_lora_adapter`.
    pub fn unload_lora(&self, headers: &HeaderMap, body: &Bytes) -> Response {
        if !self.runtime_lora {
            return not_found();
        }
        let req = match Self::lora_body(headers, body) {
            Ok(v) => v,
            Err(r) => return *r,
        };
        let Some(name) = req.get("lora_name").and_then(Value::as_str) else {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "lora_name: Field required",
            );
        };
        if name.is_empty() {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                "InvalidUserInput",
                "'lora_name' needs to be provided to unload a LoRA adapter.",
            );
        }
        let mut loras = self.loras.write().unwrap();
        if !loras.iter().any(|(n, _)| n == name) {
            return vllm_error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &format!("The lora adapter '{name}' cannot be found."),
            );
        }
        loras.retain(|(n, _)| n != name);
        eprintln!("mock-vllm: Removed LoRA adapter: name '{name}'");
        plain_ok(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        ))
    }
}
