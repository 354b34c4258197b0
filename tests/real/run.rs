//! A running modelmux: its parsed JSON log, `/health`, its processes, and clean-up on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{http, procs};

/// One line of modelmux's stderr, parsed when it is JSON.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: String,
    pub json: Option<Value>,
}

impl Record {
    fn parse(line: String) -> Record {
        let json = serde_json::from_str(&line).ok();
        Record { line, json }
    }

    fn field(&self, k: &str) -> Option<&str> {
        self.json.as_ref()?.get(k)?.as_str()
    }

    pub fn message(&self) -> &str {
        self.field("message").unwrap_or(&self.line)
    }

    pub fn level(&self) -> &str {
        self.field("level").unwrap_or("")
    }

    pub fn model(&self) -> Option<&str> {
        self.field("model")
    }

    /// A line that shows something went wrong: modelmux's own ERROR, or an engine's ERROR
    /// line or traceback.
    pub fn is_error(&self) -> bool {
        let m = self.message();
        self.level() == "ERROR"
            || m.contains("Traceback (most recent call last)")
            || m.contains("EngineDeadError")
            || m.starts_with("ERROR ")
            || m.contains(") ERROR ")
    }

    /// modelmux's loading report ("a: loading 20 s — <the engine's latest line>").
    pub fn is_progress(&self) -> bool {
        self.field("target") == Some("modelmux::supervisor::progress")
    }

    /// A line the engine wrote (re-logged by modelmux), as opposed to modelmux's own.
    pub fn is_engine_output(&self) -> bool {
        self.field("target") == Some("engine") || self.field("stream").is_some()
    }

    /// The `[file.py:LINE]` tag of a vLLM log line, if it has one.
    fn vllm_source(&self) -> Option<&str> {
        let m = self.message();
        let start = m.find(" [")? + 1;
        let end = start + m[start..].find(']')? + 1;
        Some(&m[start..end]).filter(|t| t.contains(".py:"))
    }
}

/// Takes out of `errors` what vLLM's own shutdown race logs (vllm-project/vllm#48745, still
/// open for the vLLM 0.32 the tier installs: `AsyncLLM.shutdown` tears the engine core down
/// before it cancels its output handler, which then sometimes logs "AsyncLLM output_handler failed"
/// and an `EngineDeadError` traceback, although the shutdown goes on cleanly). Only a whole
/// block from one engine, opened by that message and closed by `EngineDeadError`, counts;
/// any other error line stays. Returns how many lines were taken out.
pub fn drop_vllm_shutdown_race(errors: &mut Vec<Record>) -> usize {
    let blocks: Vec<(Option<String>, String)> = errors
        .iter()
        .filter(|r| r.message().contains("AsyncLLM output_handler failed"))
        .filter_map(|r| Some((r.model().map(str::to_string), r.vllm_source()?.to_string())))
        .filter(|(model, tag)| {
            errors.iter().any(|r| {
                r.model() == model.as_deref()
                    && r.vllm_source() == Some(tag.as_str())
                    && r.message().contains("EngineDeadError")
            })
        })
        .collect();
    let before = errors.len();
    errors.retain(|r| {
        !blocks.iter().any(|(model, tag)| {
            r.model() == model.as_deref() && r.vllm_source() == Some(tag.as_str())
        })
    });
    before - errors.len()
}

/// A running modelmux; dropping it kills it and every process of the run.
pub struct Run {
    pub label: String,
    child: Option<Child>,
    pub port: u16,
    pub marker: String,
    records: Arc<Mutex<Vec<Record>>>,
    pub started: Instant,
    done: Arc<AtomicBool>,
    /// What `modelmux plan --json` printed for the same configuration just before.
    pub plan: Result<Value, String>,
}

/// The longest one run may live before its watchdog kills everything and aborts the test
/// binary (a hung test must not leave engines behind or hold CI).
const RUN_LIMIT: Duration = Duration::from_secs(2400);

impl Run {
    /// Spawns `cmd` (modelmux, stderr piped), reads its log and arms the watchdog.
    pub fn spawn(
        label: &str,
        mut cmd: Command,
        port: u16,
        marker: String,
        plan: Result<Value, String>,
    ) -> Run {
        let mut child = cmd.spawn().expect("start modelmux");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sink, echo) = (
            records.clone(),
            std::env::var_os("MODELMUX_TEST_LOG").is_some(),
        );
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                sink.lock().unwrap().push(Record::parse(line));
            }
        });
        eprintln!("[{label}] modelmux pid {} on port {port}", child.id());
        Run {
            label: label.to_string(),
            child: Some(child),
            port,
            marker,
            records,
            started: Instant::now(),
            done: Arc::new(AtomicBool::new(false)),
            plan,
        }
        .with_watchdog()
    }

    fn with_watchdog(self) -> Run {
        let (done, marker, pid, label) = (
            self.done.clone(),
            self.marker.clone(),
            self.pid(),
            self.label.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + RUN_LIMIT;
            while Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!("[{label}] ran past {RUN_LIMIT:?}: killing the run and aborting");
            procs::kill(pid);
            procs::kill_marked(&marker);
            std::process::abort();
        });
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// How many log records there are so far (a mark for [`Run::records_since`]).
    pub fn mark(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub fn records_since(&self, mark: usize) -> Vec<Record> {
        self.records.lock().unwrap()[mark..].to_vec()
    }

    /// modelmux's own records (not engine output) that contain `text`.
    pub fn own_mentions(&self, text: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| !r.is_engine_output() && r.message().contains(text))
            .collect()
    }

    /// modelmux's own log, last `n` lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let r = self.records.lock().unwrap();
        r.iter()
            .skip(r.len().saturating_sub(n))
            .map(|r| r.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `GET /health`: status and body (Null when nothing answers).
    pub fn health(&self) -> (u16, Value) {
        match http::get(self.port, "/health") {
            Ok(r) => (r.status, r.json().unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// One model's entry in `/health`.
    pub fn model_health(&self, name: &str) -> Option<Value> {
        let (_, body) = self.health();
        body["models"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    pub fn engine_pid(&self, name: &str) -> Option<u32> {
        self.model_health(name)?["pid"].as_u64().map(|p| p as u32)
    }

    pub fn engine_port(&self, name: &str) -> Option<u16> {
        self.model_health(name)?["port"].as_u64().map(|p| p as u16)
    }

    /// Waits for `/health` 200; Err with the log tail if modelmux exits or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if self.health().0 == 200 {
                return Ok(t0.elapsed());
            }
            if let Some(code) = self.exited() {
                return Err(format!(
                    "modelmux exited ({code:?}) before it was ready; log tail:\n{}",
                    self.log_tail(40)
                ));
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "not ready within {timeout:?}: {}; log tail:\n{}",
                    self.health().1,
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The exit status once modelmux has exited (None while it runs); `Some(None)` when a
    /// signal killed it.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Waits for modelmux to exit; Err after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let t0 = Instant::now();
        loop {
            if let Some(code) = self.exited() {
                // Let the log reader reach the end of the pipe.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(code);
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "modelmux did not exit within {timeout:?}; log tail:\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }

    /// Every live process of this run other than modelmux itself.
    pub fn processes(&self) -> Vec<procs::Proc> {
        let me = self.pid();
        procs::marked(&self.marker)
            .into_iter()
            .filter(|p| p.pid != me)
            .collect()
    }

    /// "ready after N s" as modelmux logged it, per model, in order.
    pub fn ready_times(&self) -> Vec<(String, String)> {
        self.records()
            .iter()
            .filter(|r| !r.is_engine_output() && r.message().starts_with("ready after"))
            .map(|r| {
                (
                    r.model().unwrap_or("?").to_string(),
                    r.message().trim_start_matches("ready after ").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The whole log, for a look after the fact: target/tmp/real-logs/<label>.log.
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-logs");
        let text: String = self
            .records()
            .iter()
            .map(|r| format!("{}\n", r.line))
            .collect();
        let file = logs.join(format!("{}.log", self.label));
        if std::fs::create_dir_all(&logs)
            .and_then(|_| std::fs::write(&file, text))
            .is_ok()
        {
            eprintln!("[{}] modelmux's log: {}", self.label, file.display());
        }
        let left = procs::kill_marked(&self.marker);
        if !left.is_empty() {
            eprintln!(
                "[{}] cleaned up {} leftover processes",
                self.label,
                left.len()
            );
        }
        self.done.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight lines vLLM 0.32 logged in one run of this tier at a clean shutdown.
    const RACE: [&str; 8] = [
        r#"{"timestamp":"2026-11-27T16:58:55.584796Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906] AsyncLLM output_handler failed.","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.584878Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906] Traceback (most recent call last):","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.584936Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906]   File \"/work/cache/real/venv/lib/python3.11/site-packages/vllm/v1/engine/async_llm.py\", line 849, in output_handler","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.584999Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906]     outputs = await engine_core.get_output_async()","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.585092Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906]               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.585157Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906]   File \"/work/cache/real/venv/lib/python3.11/site-packages/vllm/v1/engine/core_client.py\", line 1235, in get_output_async","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.585223Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906]     raise self._format_exception(outputs) from None","model":"b","stream":"stdout","target":"engine"}"#,
        r#"{"timestamp":"2026-11-27T16:58:55.585276Z","level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.","model":"b","stream":"stdout","target":"engine"}"#,
    ];

    fn records(lines: &[&str]) -> Vec<Record> {
        lines.iter().map(|l| Record::parse(l.to_string())).collect()
    }

    #[test]
    fn vllm_shutdown_race_is_taken_out_and_nothing_else() {
        let other = r#"{"level":"ERROR","message":"(APIServer pid=8718) ERROR 11-27 16:58:55 [core.py:1000] CUDA error","model":"b","target":"engine"}"#;
        let same_tag_other_model = RACE[2].replace(r#""model":"b""#, r#""model":"a""#);
        let mut lines = RACE.to_vec();
        lines.push(other);
        lines.push(&same_tag_other_model);
        let mut errors = records(&lines);
        assert!(errors.iter().all(Record::is_error));
        assert_eq!(drop_vllm_shutdown_race(&mut errors), 8);
        let left: Vec<&str> = errors.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(left, [other, same_tag_other_model.as_str()]);
    }

    #[test]
    fn an_output_handler_failure_without_engine_dead_error_stays() {
        let mut errors = records(&RACE[..7]);
        assert_eq!(drop_vllm_shutdown_race(&mut errors), 0);
        assert_eq!(errors.len(), 7);
    }
}
