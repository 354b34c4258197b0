//! Engine output: every line re-logged, tagged with the model, and the last lines of stderr
//! kept so that a failure can repeat them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// Lines of stderr kept per engine.
pub const TAIL_LINES: usize = 100;
/// Longest line re-logged; the rest is cut (a runaway progress bar must not eat memory).
const MAX_LINE: usize = 16 * 1024;

/// The last lines an engine wrote to stderr.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }

    /// Forgets everything (a restarted engine starts a new tail).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error (also kept in the tail).
    Stderr,
}

/// Reads `pipe` line by line until it closes, logging each line with the model's name.
pub fn pump(
    model: Arc<str>,
    stream: Stream,
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: Tail,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(8192, pipe);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            buf.truncate(MAX_LINE);
            let text = String::from_utf8_lossy(&buf);
            // Progress bars redraw with '\r': keep the last state of the line.
            let line = text.trim_end_matches(['\n', '\r']);
            let line = line.rsplit('\r').next().unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            match stream {
                Stream::Stdout => {
                    tracing::info!(target: "engine", model = %model, stream = "stdout", "{line}")
                }
                Stream::Stderr => {
                    tracing::info!(target: "engine", model = %model, stream = "stderr", "{line}");
                    tail.push(line.to_string());
                }
            }
        }
    })
}
