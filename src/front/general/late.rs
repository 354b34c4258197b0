//! A streaming request whose head went out before its on-demand model was ready
//! ([`crate::front::early`]), on hyper's wire: the late stream's bytes as body frames,
//! the request's record written when the body ends or the client goes away (dropping the
//! body ends the stream's task).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::http::{HeaderValue, Uri};
use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::task::JoinHandle;

use crate::front::App;
use crate::front::access::Record;
use crate::front::early::{self, Late, Outcome};

/// The late stream as a response body.
pub struct LateBody {
    bytes: tokio::sync::mpsc::Receiver<Bytes>,
    outcome: Option<JoinHandle<Outcome>>,
    app: Arc<App>,
    record: Record,
    path: Uri,
    request_id: HeaderValue,
}

impl LateBody {
    /// The body of `late`; `record` is written when it ends.
    pub fn new(late: Late, app: Arc<App>, record: Record, path: Uri, id: HeaderValue) -> Self {
        LateBody {
            bytes: late.bytes,
            outcome: Some(late.outcome),
            app,
            record,
            path,
            request_id: id,
        }
    }
}

impl Body for LateBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(data) = ready!(this.bytes.poll_recv(cx)) {
            if !early::is_keepalive(&data) {
                let app = this.app.clone();
                this.record.sent(&app, data.len());
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(handle) = this.outcome.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = ready!(Pin::new(handle).poll(cx));
        this.outcome = None;
        let outcome = outcome.unwrap_or(Outcome {
            status: 0,
            complete: false,
            proxied: false,
        });
        this.record.proxied = outcome.proxied;
        if outcome.status != 0 {
            this.record.status = outcome.status;
        }
        if outcome.complete {
            this.record.complete = true;
            Poll::Ready(None)
        } else {
            // A cut stream: hyper aborts the body, so the client sees it was cut.
            let cut = std::io::Error::other("the engine's stream was cut");
            Poll::Ready(Some(Err(cut)))
        }
    }
}

impl Drop for LateBody {
    fn drop(&mut self) {
        let id = self.request_id.to_str().unwrap_or("-");
        self.record.finish(&self.app, "POST", self.path.path(), id);
    }
}
