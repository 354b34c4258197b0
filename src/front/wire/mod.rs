//! The front's connections. Each one starts on a pass-through path that handles the
//! request that matters, an HTTP/1.1 `POST` for a ready model, with one read, one write to
//! the engine, and the engine's bytes written back as they come, in the manner of nginx.
//! The first request it does not take (a health check, a chunked upload, a 413, an
//! unknown model, HTTP/1.0, ...) hands the connection, with the bytes already read, to
//! hyper and the router, which serve it from then on with the full rules of
//! [`crate::front::proxy`].
//!
//! - [`request`]: parsing a request and deciding whether to take it.
//! - [`exchange`]: one request through to an engine and back.
//! - [`response`], [`framing`]: the engine's head rewritten, the end of its body found.
//! - [`balance`]: new connections go to the front thread with the fewest.
//! - [`engines`]: idle engine connections, per front thread.
//! - [`rewind`]: read bytes put back for hyper.

pub mod balance;
pub mod engines;
pub mod exchange;
pub mod framing;
pub mod request;
pub mod response;
pub mod rewind;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::App;
use exchange::{Next, Scratch, exchange};
use request::Parsed;

/// Room made in a client's buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// What one front thread's connections share.
pub struct Front {
    /// Routing table, state, metrics, settings.
    pub app: Arc<App>,
    router: Router,
    engines: engines::Engines,
    /// Paths the router serves itself (health, metrics, models).
    reserved: Vec<String>,
}

impl Front {
    /// True for paths the router answers itself: they never go to an engine.
    pub fn is_reserved(&self, path: &str) -> bool {
        path.starts_with("/v1/models/") || self.reserved.iter().any(|r| r == path)
    }
}

/// Serves the front on `listener` until `shutdown` resolves, then waits for the requests
/// under way (the caller bounds how long). `seat` is this thread's place among the front
/// threads; `router` answers what the pass-through path hands over; `health_endpoint` is
/// routed there too.
pub async fn serve(
    listener: TcpListener,
    mut seat: balance::Seat,
    app: Arc<App>,
    router: Router,
    health_endpoint: &str,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let reserved = [
        "/health",
        "/livez",
        "/metrics",
        "/v1/models",
        health_endpoint,
    ];
    let front = Arc::new(Front {
        engines: engines::Engines::new(app.table.models.len()),
        app,
        router,
        reserved: reserved.iter().map(|s| s.to_string()).collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a sender; `recv` returns `None` once all of them are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let placed = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    seat.place(stream)
                }
                Err(e) => {
                    // Out of file descriptors or similar: wait rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            handed = seat.handed() => handed,
        };
        let Some((stream, open)) = placed else {
            continue;
        };
        let (front, stop, done) = (front.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            connection(stream, &front, stop).await;
            drop((open, done));
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// One client connection, request after request, until it closes, is handed over, or the
/// front stops (between requests).
async fn connection(mut client: TcpStream, front: &Front, mut stop: watch::Receiver<bool>) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut scratch = Scratch::default();
    let mut started = None;
    loop {
        if !buf.is_empty() {
            match request::parse(&buf, front, &mut scratch.out) {
                Parsed::Forward(fwd) => {
                    let t = started.take().unwrap_or_else(Instant::now);
                    let request = &buf[..fwd.len];
                    let next = exchange(&mut client, front, request, &fwd, &mut scratch, t).await;
                    buf.advance(fwd.len);
                    buf.extend_from_slice(&scratch.early);
                    scratch.early.clear();
                    scratch.shrink();
                    if buf.is_empty() && buf.capacity() > exchange::KEEP_CAPACITY {
                        buf = BytesMut::with_capacity(READ_SIZE);
                    }
                    if next == Next::Close || (buf.is_empty() && *stop.borrow()) {
                        return;
                    }
                    continue;
                }
                Parsed::HandOver => return hand_over(client, buf.freeze(), front, stop).await,
                Parsed::Incomplete => {}
            }
        }
        buf.reserve(READ_SIZE);
        let read = if buf.is_empty() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = client.read_buf(&mut buf) => r,
            }
        } else {
            client.read_buf(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                started.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Lets hyper and the router serve the rest of the connection, starting with `read`.
async fn hand_over(client: TcpStream, read: Bytes, front: &Front, mut stop: watch::Receiver<bool>) {
    let stopping = *stop.borrow();
    let io = TokioIo::new(rewind::Rewind::new(read, client));
    let service = TowerToHyperService::new(front.router.clone());
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(!stopping)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    if !stopping {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
        }
    }
    let _ = conn.await;
}
