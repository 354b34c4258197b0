//! The front's threads: one single-threaded runtime per core, all accepting on the same
//! listening socket. A connection then lives on one thread from accept to close, with its
//! engine connection, as in nginx's worker model: no work stealing, no cross-thread wake-ups
//! on the proxy path. Supervision stays on the main runtime.

use std::io;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::App;

/// The running front threads.
pub struct FrontWorkers {
    exits: mpsc::UnboundedReceiver<io::Result<()>>,
    running: usize,
}

/// Starts `threads` threads serving the front on `listener` until `stop` turns true.
pub fn spawn(
    listener: std::net::TcpListener,
    threads: usize,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
) -> io::Result<FrontWorkers> {
    let (tx, exits) = mpsc::unbounded_channel();
    let seats = super::wire::balance::Balance::seats(threads.max(1));
    for (i, seat) in seats.into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let app = app.clone();
        let mut stop = stop.clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("modelmux-front-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            super::wire::serve(listener, seat, app, stopped).await
                        })
                    });
                let _ = tx.send(result);
            })?;
    }
    Ok(FrontWorkers {
        exits,
        running: threads.max(1),
    })
}

impl FrontWorkers {
    /// Resolves when a thread's server ends (it only does on shutdown or an error).
    pub async fn next_exit(&mut self) -> io::Result<()> {
        match self.exits.recv().await {
            Some(r) => {
                self.running -= 1;
                r
            }
            None => std::future::pending().await,
        }
    }

    /// Waits until every thread has finished serving (in-flight requests done).
    pub async fn join(&mut self) {
        while self.running > 0 {
            if self.exits.recv().await.is_none() {
                return;
            }
            self.running -= 1;
        }
    }
}
