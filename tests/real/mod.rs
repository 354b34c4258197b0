//! Harness of the real-engine tier: finds the vLLM CPU install made by
//! `scripts/real/setup.sh`, runs the real `modelmux` binary with real vLLM engines, reads its
//! JSON log, finds every process of a run by an environment marker, and cleans up on drop.
#![allow(dead_code)]

pub mod cases;
pub mod http;
pub mod procs;
pub mod run;
pub mod tier;

use std::net::TcpListener;
use std::time::Duration;

pub use cases::{Cases, lines};
pub use run::{Record, Run};
pub use tier::Tier;

pub const MODELMUX: &str = env!("CARGO_BIN_EXE_modelmux");

/// How long two engines may take to become ready. One takes 25-60 s on an idle 2-core
/// machine; several helpers compiling at once made it 350 s.
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// The environment variable that names the tier's directory (venv/ and models/).
pub const DIR_VAR: &str = "MODELMUX_REAL_DIR";
/// The variable that marks every process of one run (inherited by engines and theirs).
pub const MARKER_VAR: &str = "MODELMUX_REAL_TEST_RUN";

/// A `PORT` for modelmux whose next few ports (the engines get `PORT+1`, `PORT+2`, ...) are
/// free too, below the kernel's range for outgoing connections so that no client socket
/// takes one meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BLOCK: u32 = 8;
    const LOW: u32 = 20000;
    const HIGH: u32 = 32000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slots = (HIGH - LOW) / BLOCK;
    let seed = std::process::id().wrapping_mul(2654435761);
    for _ in 0..slots {
        let slot = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % slots;
        let base = LOW + slot * BLOCK;
        if (base..base + BLOCK).all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok()) {
            return base as u16;
        }
    }
    panic!("no free block of {BLOCK} ports in {LOW}..{HIGH}");
}

/// The sum of a Prometheus counter or gauge over the series whose labels contain `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
