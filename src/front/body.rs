//! Request and response bodies on the hot path: reading a request up to the size limit
//! (draining an oversized one so the 413 is read, not reset), and a response wrapper that
//! passes frames through untouched while it measures the request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::App;

/// How much of an oversized body is read and thrown away so that the client gets the 413
/// instead of a connection reset.
const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;
/// How long draining may take.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Why a request body could not be read.
pub enum ReadError {
    /// Larger than the limit; `drained` tells whether the rest was read (the connection can
    /// stay open) or not (it must close).
    TooLarge {
        /// True when the whole body was consumed.
        drained: bool,
    },
    /// The client went away or sent a broken body.
    Broken(String),
}

/// Reads the whole body if it fits in `limit` bytes.
pub async fn read_limited(
    mut body: Body,
    length_hint: Option<u64>,
    limit: usize,
) -> Result<Bytes, ReadError> {
    if length_hint.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge {
            drained: drain(body, length_hint).await,
        });
    }
    let mut buf = BytesMut::with_capacity(length_hint.unwrap_or(0) as usize);
    // A body that arrives in one frame (the usual case) is passed on without a copy.
    let mut single: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + single.as_ref().map_or(0, Bytes::len) + data.len();
        if total > limit {
            return Err(ReadError::TooLarge {
                drained: drain(body, None).await,
            });
        }
        match single.take() {
            None if buf.is_empty() => single = Some(data),
            Some(first) => {
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(single.unwrap_or_else(|| buf.freeze()))
}

async fn drain(mut body: Body, length_hint: Option<u64>) -> bool {
    if length_hint.is_some_and(|n| n > DRAIN_LIMIT) {
        return false;
    }
    let deadline = Instant::now() + DRAIN_TIME;
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > DRAIN_LIMIT {
                    return false;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// What the access log and the metrics need to know about one proxied request.
pub struct Exchange {
    /// The application (metrics live there).
    pub app: Arc<App>,
    /// Model index.
    pub model: usize,
    /// Status sent to the client.
    pub status: u16,
    /// Request URI as received.
    pub uri: axum::http::Uri,
    /// Request id.
    pub request_id: axum::http::HeaderValue,
    /// When the request arrived.
    pub started: Instant,
    /// True for event streams.
    pub streamed: bool,
    /// Holds the in-flight gauge up until the exchange ends.
    pub inflight: Inflight,
}

/// Raises a model's in-flight gauge for as long as it lives.
pub struct Inflight {
    app: Arc<App>,
    model: usize,
    /// The request's lease on its model (stops and unloads wait for it).
    _lease: Option<crate::usage::Lease>,
}

impl Inflight {
    /// Counts one more request in flight for `model`.
    pub fn new(app: Arc<App>, model: usize, lease: Option<crate::usage::Lease>) -> Self {
        app.metrics
            .model(Some(model))
            .inflight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Inflight {
            app,
            model,
            _lease: lease,
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let m = self.app.metrics.model(Some(self.model));
        m.inflight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response body passed through frame by frame (no buffering), recording the duration,
/// the time to first byte and the bytes sent, and logging the request when it ends or the
/// client goes away.
pub struct Metered<B> {
    inner: B,
    exchange: Exchange,
    bytes: u64,
    first_byte: bool,
    finished: bool,
}

impl<B> Metered<B> {
    /// Wraps `inner`; the exchange is logged and counted when the body is dropped.
    pub fn new(inner: B, exchange: Exchange) -> Self {
        Metered {
            inner,
            exchange,
            bytes: 0,
            first_byte: false,
            finished: false,
        }
    }
}

impl<B> HttpBody for Metered<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !this.first_byte && !data.is_empty() {
                        this.first_byte = true;
                        if this.exchange.streamed {
                            let m = this.exchange.app.metrics.model(Some(this.exchange.model));
                            m.ttfb.observe(this.exchange.started.elapsed());
                        }
                    }
                    this.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finished = true;
                }
            }
            Poll::Ready(None) => this.finished = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
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

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        let e = &self.exchange;
        let outcome = Outcome {
            model: e.model,
            status: e.status,
            started: e.started,
            path: e.uri.path(),
            request_id: e.request_id.to_str().unwrap_or("-"),
            bytes: self.bytes,
            streamed: e.streamed,
            complete: self.finished,
        };
        record(&e.app, &outcome);
    }
}

/// How one proxied request went, for [`record`].
pub struct Outcome<'a> {
    /// Model index.
    pub model: usize,
    /// Status sent to the client.
    pub status: u16,
    /// When the request arrived.
    pub started: Instant,
    /// Request path.
    pub path: &'a str,
    /// Request id.
    pub request_id: &'a str,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// True for event streams.
    pub streamed: bool,
    /// True when the whole response was sent.
    pub complete: bool,
}

/// Counts a finished request in the metrics and writes its access log line.
pub fn record(app: &App, o: &Outcome) {
    let elapsed = o.started.elapsed();
    let m = app.metrics.model(Some(o.model));
    m.duration.observe(elapsed);
    m.count(o.status);
    tracing::info!(
        target: "access",
        method = "POST",
        path = %o.path,
        model = %app.state.borrow().models.get(o.model).map_or("-", |m| m.name.as_str()),
        status = o.status,
        us = elapsed.as_micros() as u64,
        bytes = o.bytes,
        streamed = o.streamed,
        complete = o.complete,
        request_id = %o.request_id,
    );
}
