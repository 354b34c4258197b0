//! One record per request, whichever wire carried it and however it ended: the in-flight
//! gauge while an engine works on it, then one access-log line and its metrics.

use std::ops::Deref;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::App;
use crate::observability::lines::{self, Value};
use crate::usage::Lease;

/// Which wire carried a request (logged, so that tests and operators can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The pass-through path ([`super::wire`]).
    Pass,
    /// hyper ([`super::general`]).
    General,
}

impl Wire {
    fn as_str(self) -> &'static str {
        match self {
            Wire::Pass => "pass",
            Wire::General => "general",
        }
    }
}

/// A client cut off for taking none of its response for `MODELMUX_SEND_TIMEOUT`: counted
/// and logged the same way on both wires (`request_id` where the wire knows it).
pub fn send_timed_out(app: &App, wire: Wire, client: &str, request_id: &str) {
    app.metrics
        .client_timed_out(crate::observability::metrics::ClientLimit::Send);
    tracing::warn!(
        request_id = %request_id,
        client = %client,
        wire = wire.as_str(),
        "the client took no bytes of its response for {:.1} s: closed its connection and \
         its request (MODELMUX_SEND_TIMEOUT)",
        app.limits.send_timeout.as_secs_f64()
    );
}

/// What happened to one request.
#[derive(Debug)]
pub struct Record {
    /// When its first byte arrived.
    pub started: Instant,
    /// The wire that carried it.
    pub wire: Wire,
    /// The model, once known.
    pub model: Option<usize>,
    /// Status sent to the client; 0 while none was.
    pub status: u16,
    /// True once it was sent to an engine (its duration is then measured).
    pub proxied: bool,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// True for event streams.
    pub streamed: bool,
    /// True when the whole response was sent.
    pub complete: bool,
}

impl Record {
    /// A record for a request whose first byte arrived at `started`.
    pub fn new(wire: Wire, started: Instant) -> Self {
        Record {
            started,
            wire,
            model: None,
            status: 0,
            proxied: false,
            bytes: 0,
            streamed: false,
            complete: false,
        }
    }

    /// Counts body bytes sent; the first ones of a stream give its time to first byte.
    pub fn sent(&mut self, app: &App, n: usize) {
        if self.bytes == 0 && n > 0 && self.streamed {
            app.metrics
                .model(self.model)
                .ttfb
                .observe(self.started.elapsed());
        }
        self.bytes += n as u64;
    }

    /// Counts the request in the metrics and writes its access-log line.
    pub fn finish(&self, app: &App, method: &str, path: &str, request_id: &str) {
        let elapsed = self.started.elapsed();
        let m = app.metrics.model(self.model);
        if self.status == 0 {
            tracing::info!(
                target: "access",
                method = %method,
                path = %path,
                request_id = %request_id,
                wire = %self.wire.as_str(),
                "the client went away before it was answered"
            );
            return;
        }
        if self.proxied {
            m.duration.observe(elapsed);
        }
        m.count(self.status);
        let table = self.model.map(|_| app.table());
        let model = match (self.model, &table) {
            (Some(i), Some(t)) => t.route(i).map_or("-", |r| &*r.model),
            _ => "-",
        };
        if let Some(format) = crate::observability::plain_format() {
            // The same line tracing would write, without its formatter's cost.
            if tracing::enabled!(target: "access", tracing::Level::INFO) {
                let fields = [
                    ("method", Value::Str(method)),
                    ("path", Value::Str(path)),
                    ("model", Value::Str(model)),
                    ("status", Value::Num(u64::from(self.status))),
                    ("us", Value::Num(elapsed.as_micros() as u64)),
                    ("bytes", Value::Num(self.bytes)),
                    ("streamed", Value::Bool(self.streamed)),
                    ("complete", Value::Bool(self.complete)),
                    ("request_id", Value::Str(request_id)),
                    ("wire", Value::Str(self.wire.as_str())),
                ];
                lines::write_info(format, &fields, "access");
            }
            return;
        }
        tracing::info!(
            target: "access",
            method = %method,
            path = %path,
            model = %model,
            status = self.status,
            us = elapsed.as_micros() as u64,
            bytes = self.bytes,
            streamed = self.streamed,
            complete = self.complete,
            request_id = %request_id,
            wire = %self.wire.as_str(),
        );
    }
}

/// Raises a model's in-flight gauge, and holds the request's lease on its model (an
/// unload, stop or restart waits for it), for as long as it lives.
pub struct Inflight<A: Deref<Target = App>> {
    app: A,
    model: usize,
    _lease: Lease,
}

impl<A: Deref<Target = App>> Inflight<A> {
    /// Counts one more request in flight for `model`, holding `lease` on it.
    pub fn new(app: A, model: usize, lease: Lease) -> Self {
        app.metrics
            .model(Some(model))
            .inflight
            .fetch_add(1, Relaxed);
        Inflight {
            app,
            model,
            _lease: lease,
        }
    }
}

impl<A: Deref<Target = App>> Drop for Inflight<A> {
    fn drop(&mut self) {
        let m = self.app.metrics.model(Some(self.model));
        m.inflight.fetch_sub(1, Relaxed);
    }
}
