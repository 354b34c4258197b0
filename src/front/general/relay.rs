//! An engine's response body on its way to the client: frames pass through as they come
//! (never buffered), an SSE comment fills long silences between events, and when the body
//! ends or the client goes away the request's record is written and its slot freed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, Uri};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::front::App;
use crate::front::access::{Inflight, Record};
use crate::front::queue::Slot;
use crate::front::sse::{EventBoundary, KEEPALIVE};

/// What the relay holds for the request until its body ends.
pub struct Exchange {
    /// The application (metrics, log).
    pub app: Arc<App>,
    /// The request's record, written when the relay is dropped.
    pub record: Record,
    /// The request's target as received.
    pub path: Uri,
    /// The request id.
    pub request_id: HeaderValue,
    /// The in-flight gauge, held until the end.
    pub inflight: Inflight<Arc<App>>,
    /// The model's concurrency slot, if it has a limit.
    pub slot: Option<Slot>,
}

/// Keepalive comments of one stream.
struct Keepalive {
    every: Duration,
    timer: Pin<Box<Sleep>>,
    last_sent: Instant,
    boundary: EventBoundary,
}

/// The engine's body, passed on frame by frame.
pub struct Relay {
    inner: Incoming,
    exchange: Exchange,
    keepalive: Option<Keepalive>,
}

impl Relay {
    /// Wraps `inner`; `keepalive` is the silence after which a comment is sent (streams
    /// without a `Content-Length` only).
    pub fn new(inner: Incoming, exchange: Exchange, keepalive: Option<Duration>) -> Self {
        let keepalive = keepalive.map(|every| {
            let now = Instant::now();
            Keepalive {
                every,
                timer: Box::pin(tokio::time::sleep_until(now + every)),
                last_sent: now,
                boundary: EventBoundary::default(),
            }
        });
        Relay {
            inner,
            exchange,
            keepalive,
        }
    }
}

impl Keepalive {
    /// A comment when the stream has been silent for `every` and is between events.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let due = self.last_sent + self.every;
            if now < due {
                self.timer.as_mut().reset(due);
                continue;
            }
            self.timer.as_mut().reset(now + self.every);
            if self.boundary.at_boundary() {
                self.last_sent = now;
                return Some(Bytes::from_static(KEEPALIVE));
            }
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let app = this.exchange.app.clone();
                    this.exchange.record.sent(&app, data.len());
                    if let Some(k) = this.keepalive.as_mut() {
                        k.boundary.feed(data);
                        k.last_sent = Instant::now();
                    }
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.exchange.record.complete = true;
                }
            }
            Poll::Ready(None) => this.exchange.record.complete = true,
            Poll::Ready(Some(Err(_))) => {}
            Poll::Pending => {
                if let Some(comment) = this.keepalive.as_mut().and_then(|k| k.poll_due(cx)) {
                    return Poll::Ready(Some(Ok(Frame::data(comment))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let e = &self.exchange;
        let id = e.request_id.to_str().unwrap_or("-");
        e.record.finish(&e.app, "POST", e.path.path(), id);
    }
}
