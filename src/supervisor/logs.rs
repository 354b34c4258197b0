//! Engine output: every line re-logged at its own severity, tagged with the model, and the
//! last lines of both streams kept (error lines apart) so that a failure can name its root
//! cause. vLLM logs to stdout (its errors included) and uvicorn to both.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// Lines of output kept per engine run.
pub const TAIL_LINES: usize = 200;
/// Error lines kept per engine run, apart from the tail so that later noise cannot push the
/// root cause out.
pub const ERROR_LINES: usize = 100;
/// Longest line re-logged; the rest is cut (a runaway progress bar must not eat memory).
const MAX_LINE: usize = 16 * 1024;
/// Longest last line kept for `last_log`.
const MAX_LAST: usize = 300;

/// Severity of an engine line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Noise, such as the access-log line of modelmux's own health probe.
    Debug,
    /// Ordinary output.
    Info,
    /// A warning.
    Warn,
    /// An error, a traceback, an exception.
    Error,
}

/// Drops vLLM's `(EngineCore_0 pid=123) ` process prefix.
fn without_process(line: &str) -> &str {
    if line.starts_with('(')
        && let Some(end) = line.get(..line.len().min(96)).and_then(|h| h.find(") "))
        && line[..end].contains("pid=")
    {
        return &line[end + 2..];
    }
    line
}

/// A level word: `INFO`, `WARNING:`, `[ERROR]`, `WARNING:root:...` (Python's default).
fn level_of(token: &str) -> Option<Level> {
    let word = token.trim_start_matches('[').split([':', ']']).next()?;
    match word {
        "DEBUG" | "TRACE" => Some(Level::Debug),
        "INFO" => Some(Level::Info),
        "WARNING" | "WARN" => Some(Level::Warn),
        "ERROR" | "CRITICAL" | "FATAL" => Some(Level::Error),
        _ => None,
    }
}

/// The level a line states itself (vLLM, uvicorn, Python logging, Rust-style
/// `TIMESTAMP LEVEL ...`), and the rest of the line after the level word.
fn stated_level(body: &str) -> Option<(Level, &str)> {
    let mut rest = body;
    for i in 0..2 {
        let trimmed = rest.trim_start();
        let token = trimmed.split_whitespace().next()?;
        if let Some(level) = level_of(token) {
            return Some((level, trimmed[token.len()..].trim_start()));
        }
        // A timestamp may come first; nothing else may.
        if i == 1 || !token.starts_with(|c: char| c.is_ascii_digit() || c == '[') {
            return None;
        }
        rest = &trimmed[token.len()..];
    }
    None
}

/// The message of a line without vLLM's process prefix, level, time and `[file:line]`,
/// its indentation kept (a traceback frame is indented).
fn message_raw(line: &str) -> &str {
    let body = without_process(line);
    let Some((_, rest)) = stated_level(body) else {
        return body.trim_end();
    };
    // vLLM: `01-15 10:23:45 [core.py:700] message`
    let mut words = rest.splitn(3, ' ');
    if let (Some(date), Some(time), Some(tail)) = (words.next(), words.next(), words.next())
        && date.len() == 5
        && date.as_bytes()[2] == b'-'
        && time.contains(':')
        && tail.starts_with('[')
        && let Some(end) = tail.find("] ")
    {
        return tail[end + 2..].trim_end();
    }
    rest.trim_end()
}

/// The message of a line without vLLM's process prefix, level, time and `[file:line]`.
pub fn message(line: &str) -> &str {
    message_raw(line).trim()
}

/// An error line worth repeating in a failure: not a traceback's header, frame, source
/// line, caret marks or chaining sentence.
fn is_summary(line: &str) -> bool {
    let raw = message_raw(line);
    let msg = raw.trim();
    !msg.is_empty()
        && !raw.starts_with([' ', '\t'])
        && !msg.starts_with("Traceback (most recent call last)")
        && !msg.starts_with("During handling of the above exception")
        && !msg.starts_with("The above exception was the direct cause")
        && !msg.chars().all(|c| matches!(c, '^' | '~' | ' '))
}

/// `ValueError: ...`, `torch.OutOfMemoryError: ...`, `KeyboardInterrupt`.
pub fn is_exception(msg: &str) -> bool {
    let name = msg.split(':').next().unwrap_or("");
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    is_name
        && ["Error", "Exception", "Interrupt", "Exit", "Failure"]
            .iter()
            .any(|s| name.ends_with(s))
        && (msg.len() == name.len() || msg[name.len()..].starts_with(": "))
}

/// True for uvicorn's access line of a request modelmux itself makes (health probes, the
/// `/v1/models` fetch, metrics scrapes): clients never reach these engine paths.
fn is_own_probe(body: &str) -> bool {
    [
        "\"GET /health HTTP/",
        "\"GET /v1/models HTTP/",
        "\"GET /metrics HTTP/",
    ]
    .iter()
    .any(|p| body.contains(p))
}

/// Gives each line of one stream its level; lines without one (a traceback printed by
/// Python, a continuation) take it from what they look like or from the line before.
#[derive(Debug)]
pub struct Classifier {
    last: Level,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier { last: Level::Info }
    }
}

impl Classifier {
    /// The level of `line`.
    pub fn classify(&mut self, line: &str) -> Level {
        let body = without_process(line);
        if let Some((level, _)) = stated_level(body) {
            self.last = level;
            if level == Level::Info && is_own_probe(body) {
                return Level::Debug;
            }
            return level;
        }
        let msg = body.trim();
        let level = if msg.starts_with("Traceback (most recent call last)")
            || is_exception(msg)
            || msg.contains(": error: ")
            || (self.last == Level::Error
                && (msg.starts_with("During handling of the above exception")
                    || msg.starts_with("The above exception was the direct cause")))
        {
            Level::Error
        } else if body.starts_with([' ', '\t']) {
            // An indented line continues the one before (a traceback frame, a table row).
            return self.last;
        } else if msg.contains("Warning: ") {
            Level::Warn
        } else {
            Level::Info
        };
        self.last = level;
        level
    }
}

#[derive(Debug, Default)]
struct Lines {
    all: VecDeque<(Level, String)>,
    /// Summary error lines (see [`is_summary`]), each message once.
    errors: VecDeque<String>,
    /// The first exception of the run that is not a "see root cause above": kept apart so
    /// that no amount of later output pushes it out.
    first_exception: Option<String>,
    /// The latest line (its message), or a progress bar's latest state while it redraws.
    last: Option<String>,
}

/// The last lines an engine run wrote (both streams, in order), its error lines and its
/// first exception.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<Lines>>);

/// What a failure message repeats of the engine's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excerpt {
    /// The line that most likely says why (the first exception that is not a "see above").
    pub root_cause: Option<String>,
    /// Error lines (exceptions and error messages, not traceback frames), each message
    /// once, oldest first.
    pub error_lines: Vec<String>,
    /// The last lines that are not error lines, oldest first.
    pub other_lines: Vec<String>,
}

impl Tail {
    /// Keeps a line.
    pub fn push(&self, level: Level, line: &str) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set_last(&mut l.last, message(line));
        if l.all.len() == TAIL_LINES {
            l.all.pop_front();
        }
        l.all.push_back((level, line.to_string()));
        if level != Level::Error || !is_summary(line) {
            return;
        }
        let msg = message(line);
        if l.first_exception.is_none() && is_exception(msg) && !msg.contains("root cause above") {
            l.first_exception = Some(msg.to_string());
        }
        // vLLM logs one exception in several processes and streams: say it once.
        if l.errors.iter().any(|e| message(e) == msg) {
            return;
        }
        if l.errors.len() == ERROR_LINES {
            l.errors.pop_front();
        }
        l.errors.push_back(line.to_string());
    }

    /// Up to `errors` error lines and `others` other last lines, and the root cause.
    pub fn excerpt(&self, errors: usize, others: usize) -> Excerpt {
        let l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last_n = |v: Vec<String>, n: usize| v[v.len().saturating_sub(n)..].to_vec();
        let mut messages = l.errors.iter().map(|e| message(e));
        let root_cause = l.first_exception.clone().or_else(|| {
            messages
                .clone()
                .find(|m| m.contains(": error: "))
                .or_else(|| messages.next_back())
                .map(str::to_string)
        });
        Excerpt {
            root_cause,
            error_lines: last_n(l.errors.iter().cloned().collect(), errors),
            other_lines: last_n(
                l.all
                    .iter()
                    .filter(|(lvl, _)| *lvl != Level::Error)
                    .map(|(_, s)| s.clone())
                    .collect(),
                others,
            ),
        }
    }

    /// A line still being written that redrew itself with `\r` (a progress bar such as
    /// "Loading safetensors checkpoint shards:  50% ..."): it becomes the last line without
    /// being kept or logged, until its newline comes.
    pub fn set_live(&self, partial: &str) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set_last(&mut l.last, partial.trim());
    }

    /// The engine's latest line (its message without vLLM's prefixes), cut to a few hundred
    /// characters; `None` before it wrote anything.
    pub fn last_line(&self) -> Option<String> {
        let l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.last.clone()
    }

    /// Forgets everything (a restarted engine starts a new tail).
    pub fn clear(&self) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.all.clear();
        l.errors.clear();
        l.first_exception = None;
        l.last = None;
    }
}

fn set_last(last: &mut Option<String>, msg: &str) {
    if msg.is_empty() || last.as_deref() == Some(msg) {
        return;
    }
    let cut = match msg.char_indices().nth(MAX_LAST) {
        Some((i, _)) => format!("{} ...", &msg[..i]),
        None => msg.to_string(),
    };
    *last = Some(cut);
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Reads `pipe` line by line until it closes, logging each line at its level with the
/// model's name and keeping it in the tail.
pub fn pump(
    model: Arc<str>,
    stream: Stream,
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: Tail,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(8192, pipe);
        let mut line = Vec::with_capacity(256);
        let mut classifier = Classifier::default();
        let s = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        loop {
            let (taken, complete) = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => {
                    let end = chunk.iter().position(|&b| b == b'\n');
                    let taken = end.map_or(chunk.len(), |i| i + 1);
                    append_capped(&mut line, &chunk[..taken]);
                    (taken, end.is_some())
                }
            };
            reader.consume(taken);
            if complete {
                one_line(&model, s, &line, &mut classifier, &tail);
                line.clear();
            } else if line.contains(&b'\r') {
                // A progress bar redraws its line with '\r' and writes '\n' only at the end.
                tail.set_live(&last_state(&String::from_utf8_lossy(&line)));
            }
        }
        if !line.is_empty() {
            one_line(&model, s, &line, &mut classifier, &tail);
        }
    })
}

/// Adds `part` to a line being read, keeping it under [`MAX_LINE`] bytes: a redrawn line
/// keeps its latest states (from a `\r`), any other line its first bytes.
fn append_capped(line: &mut Vec<u8>, part: &[u8]) {
    line.extend_from_slice(part);
    if line.len() <= MAX_LINE {
        return;
    }
    let body = &line[..line.len() - 1];
    match body.iter().rposition(|&b| b == b'\r') {
        Some(cr) if line.len() - cr <= MAX_LINE => {
            line.drain(..cr);
        }
        _ => line.truncate(MAX_LINE),
    }
}

/// The last state of a line that was redrawn with `\r`.
fn last_state(text: &str) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    text.rsplit('\r')
        .find(|seg| !seg.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Logs one complete line at its level and keeps it in the tail.
fn one_line(model: &str, s: &'static str, raw: &[u8], classifier: &mut Classifier, tail: &Tail) {
    let line = last_state(&String::from_utf8_lossy(raw));
    if line.trim().is_empty() {
        return;
    }
    let line = line.as_str();
    let level = classifier.classify(line);
    match level {
        Level::Error => {
            tracing::error!(target: "engine", model = %model, stream = s, "{line}")
        }
        Level::Warn => {
            tracing::warn!(target: "engine", model = %model, stream = s, "{line}")
        }
        Level::Info => {
            tracing::info!(target: "engine", model = %model, stream = s, "{line}")
        }
        Level::Debug => {
            tracing::debug!(target: "engine", model = %model, stream = s, "{line}");
            return;
        }
    }
    tail.push(level, line);
}

#[cfg(test)]
mod tests;
