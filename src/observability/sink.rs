//! A batching stderr writer for logs. Formatting stays on the caller's thread, but the
//! `write(2)` is done by a background thread every few milliseconds, so that the access
//! log and re-logged engine output cost the proxy hot path a memcpy, not a system call.
//! Lines are never dropped: when the buffer is full the caller writes it out itself.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How often the background thread writes the buffer out.
const INTERVAL: Duration = Duration::from_millis(20);
/// Past this size the caller flushes the buffer itself.
const LIMIT: usize = 1 << 20;

#[derive(Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    flushed: Condvar,
}

static SINK: OnceLock<Arc<Shared>> = OnceLock::new();

fn shared() -> &'static Arc<Shared> {
    SINK.get_or_init(|| {
        let shared = Arc::new(Shared::default());
        let bg = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("modelmux-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(INTERVAL);
                    write_out(&bg);
                }
            });
        if spawned.is_err() {
            eprintln!("modelmux: cannot start the log thread; logs may be delayed");
        }
        shared
    })
}

fn write_out(shared: &Shared) {
    let mut buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(&buf);
        buf.clear();
    }
    shared.flushed.notify_all();
}

/// Writes everything buffered so far. Call before the process exits.
pub fn flush() {
    if let Some(s) = SINK.get() {
        write_out(s);
    }
}

/// The writer handed to tracing-subscriber: one per event.
#[derive(Clone, Copy, Default)]
pub struct BatchedStderr;

impl Write for BatchedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let s = shared();
        let mut buf = s.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() >= LIMIT {
            let _ = std::io::stderr().lock().write_all(&buf);
            buf.clear();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = BatchedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedStderr
    }
}
