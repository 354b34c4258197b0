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
    /// Held from taking a batch to having written it, so that batches keep their order.
    writing: Mutex<()>,
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
                let mut spare = Vec::new();
                loop {
                    std::thread::sleep(INTERVAL);
                    write_out(&bg, &mut spare);
                }
            });
        if spawned.is_err() {
            eprintln!("modelmux: cannot start the log thread; logs may be delayed");
        }
        shared
    })
}

/// Swaps the buffer for `spare` under the lock and writes it out after letting go: a
/// slow stderr (a pipe nobody reads fast enough) never holds up the threads that log, and
/// so never the requests they serve.
fn write_out(shared: &Shared, spare: &mut Vec<u8>) {
    let _writing = shared.writing.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.is_empty() {
            drop(buf);
            shared.flushed.notify_all();
            return;
        }
        std::mem::swap(&mut *buf, spare);
    }
    let _ = std::io::stderr().lock().write_all(spare);
    spare.clear();
    if spare.capacity() > LIMIT {
        *spare = Vec::new();
    }
    shared.flushed.notify_all();
}

/// Writes everything buffered so far. Call before the process exits.
pub fn flush() {
    if let Some(s) = SINK.get() {
        write_out(s, &mut Vec::new());
    }
}

/// Appends a whole line (or lines) to the batch.
pub fn append(bytes: &[u8]) {
    let _ = BatchedStderr.write(bytes);
}

/// The writer handed to tracing-subscriber: one per event.
#[derive(Clone, Copy, Default)]
pub struct BatchedStderr;

impl Write for BatchedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let s = shared();
        let full = {
            let mut buf = s.buf.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(bytes);
            buf.len() >= LIMIT
        };
        // The log thread fell behind: this thread writes the batch itself (back-pressure).
        if full {
            write_out(s, &mut Vec::new());
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
