//! One client connection served by hyper, with the front's time limits: a head must
//! arrive within `MODELMUX_HEADER_TIMEOUT` of its first byte, an idle keep-alive
//! connection is closed after `MODELMUX_IDLE_TIMEOUT` (both checked at least every shorter
//! of the two, so a limit acts after at most twice its time), a client that takes no bytes
//! of its response for `MODELMUX_SEND_TIMEOUT` is cut off (a write that blocks sets the
//! timer), and shutdown closes the connection between requests.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;

use super::io::{Clock, Due, Limits, Rewind};
use crate::front::App;
use crate::front::access::{Wire, send_timed_out};
use crate::observability::metrics::ClientLimit;

/// A response body that marks the connection idle once it is dropped (sent or abandoned).
struct Tracked {
    inner: Body,
    clock: Arc<Clock>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.idle();
    }
}

/// Serves `io` with hyper until the client closes, a limit is reached, or `stop` turns
/// true (then between requests). `health_only` serves the health listener's paths only.
pub async fn serve(
    io: Rewind,
    clock: Arc<Clock>,
    app: Arc<App>,
    health_only: bool,
    mut stop: watch::Receiver<bool>,
) {
    let limits = Limits {
        header: app.limits.header_timeout,
        idle: app.limits.idle_timeout,
        send: app.limits.send_timeout,
    };
    let check = limits.check_every();
    let service_clock = clock.clone();
    let service_app = app.clone();
    let service = service_fn(move |req| {
        service_clock.busy();
        let (app, clock) = (service_app.clone(), service_clock.clone());
        async move {
            let resp = super::handle(app, req, health_only).await;
            Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, clock }))
        }
    });
    let stopping = *stop.borrow();
    let conn = http1::Builder::new()
        .keep_alive(!stopping)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    // Once closing, hyper closes at once when idle, else after the response under way.
    let mut closing = stopping;
    let timer = tokio::time::sleep(check);
    let mut timer = std::pin::pin!(timer);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = crate::front::stopped(&mut stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = clock.blocked.notified() => {
                let at = Instant::now() + limits.send;
                if at < timer.deadline() {
                    timer.as_mut().reset(at);
                }
            }
            () = &mut timer => {
                let soon = Instant::now() + check;
                let next = match clock.due(&limits) {
                    Due::At(at) => at.min(soon),
                    Due::Idle if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        soon
                    }
                    Due::Idle => soon,
                    Due::Head => {
                        app.metrics.client_timed_out(ClientLimit::Header);
                        return;
                    }
                    Due::Stalled => {
                        send_timed_out(&app, Wire::General, &clock.cut(), "-");
                        return;
                    }
                };
                timer.as_mut().reset(next);
            }
        }
    }
}
