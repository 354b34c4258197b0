//! One client connection served by hyper, with the front's time limits: a head must
//! arrive within `MODELMUX_HEADER_TIMEOUT` of its first byte (checked at least every
//! header timeout, so a slow head is cut after at most twice that), an idle keep-alive
//! connection is closed after `MODELMUX_IDLE_TIMEOUT`, and shutdown closes it between
//! requests.

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

use super::io::{Clock, Due, Rewind};
use crate::front::App;

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
    let limits = (app.limits.header_timeout, app.limits.idle_timeout);
    let far = limits.0.max(limits.1);
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
    if stopping {
        let _ = conn.await;
        return;
    }
    let timer = tokio::time::sleep(limits.0.min(limits.1));
    let mut timer = std::pin::pin!(timer);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = crate::front::stopped(&mut stop) => break,
            // An idle connection may start a head at any moment without waking this
            // loop, so it looks again at least every header timeout.
            () = &mut timer => match clock.due(limits.0, limits.1, far) {
                Due::At(at) => timer.as_mut().reset(at.min(Instant::now() + limits.0)),
                Due::Idle => break,
                Due::Head => return,
            },
        }
    }
    // Closes at once when idle, else after the response under way.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
