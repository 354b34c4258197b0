//! Connections to the engines, driven on the request's own task.
//!
//! A pooled client that runs each connection on a task of its own costs a task wake-up and
//! a `write(2)` per streamed event, since every decoded chunk is handed over one at a time.
//! Here the connection is polled by the response body itself: each poll reads what the
//! engine has sent and passes all of it on in one frame. Nothing is held back, and events
//! that arrived together leave together, as a byte-level proxy would send them.
//!
//! Idle keep-alive connections wait in a small per-engine pool. Engines close idle
//! connections (uvicorn after 5 s), so a reused connection that turns out closed before
//! it answered is retried once on a fresh one; it was never read by the engine.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Driver = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Idle connections kept per engine.
const MAX_IDLE: usize = 1024;
/// Largest frame made by joining chunks that arrived together.
const MAX_JOIN: usize = 256 * 1024;

/// Why an engine could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed before a response head arrived.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// One HTTP/1.1 connection to an engine and the future that drives it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Option<Driver>,
}

impl Conn {
    /// Lets the connection read and write; forgets the driver once the connection ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(d) = self.driver.as_mut()
            && Pin::new(d).poll(cx).is_ready()
        {
            self.driver = None;
        }
    }

    /// True when it can take another request right now.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx);
        self.driver.is_some() && matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// Per-engine pools of idle connections.
pub struct Upstream {
    pools: Vec<Mutex<Vec<Conn>>>,
}

impl Upstream {
    /// Pools for `engines` engines, indexed like the routing table's models.
    pub fn new(engines: usize) -> Arc<Self> {
        Arc::new(Upstream {
            pools: (0..engines).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    fn checkout(&self, engine: usize) -> Option<Conn> {
        let mut pool = self.pools[engine].lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut conn) = pool.pop() {
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, engine: usize, mut conn: Conn) {
        if conn.usable() {
            let mut pool = self.pools[engine].lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < MAX_IDLE {
                pool.push(conn);
            }
        }
    }

    async fn connect(authority: &str) -> Result<Conn, UpstreamError> {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
        Ok(Conn {
            sender,
            driver: Some(driver),
        })
    }

    /// Sends a request built by `make` (called again for the one retry) to engine `engine`.
    pub async fn send(
        self: &Arc<Self>,
        engine: usize,
        authority: &str,
        mut make: impl FnMut() -> Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(conn) = self.checkout(engine) {
            match exchange(conn, make()).await {
                Ok((head, incoming, conn)) => {
                    return Ok(self.response(engine, head, incoming, conn));
                }
                // Closed by the engine while idle: the request never reached it.
                Err(e) if e.is_canceled() || e.is_incomplete_message() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let conn = Self::connect(authority).await?;
        let (head, incoming, conn) = exchange(conn, make()).await?;
        Ok(self.response(engine, head, incoming, conn))
    }

    fn response(
        self: &Arc<Self>,
        engine: usize,
        head: http::response::Parts,
        incoming: Incoming,
        conn: Conn,
    ) -> Response<UpstreamBody> {
        let body = UpstreamBody {
            incoming,
            trailers: None,
            conn: Some(conn),
            pool: self.clone(),
            engine,
        };
        Response::from_parts(head, body)
    }
}

/// Sends one request on `conn`, driving it until the response head arrives.
async fn exchange(
    mut conn: Conn,
    req: Request<Full<Bytes>>,
) -> Result<(http::response::Parts, Incoming, Conn), hyper::Error> {
    let mut pending = std::pin::pin!(conn.sender.send_request(req));
    let resp = poll_fn(|cx| {
        if let Some(d) = conn.driver.as_mut()
            && Pin::new(d).poll(cx).is_ready()
        {
            conn.driver = None;
        }
        pending.as_mut().poll(cx)
    })
    .await?;
    let (head, incoming) = resp.into_parts();
    Ok((head, incoming, conn))
}

/// A response body that drives its connection and joins the chunks that are already in.
pub struct UpstreamBody {
    incoming: Incoming,
    trailers: Option<Frame<Bytes>>,
    conn: Option<Conn>,
    pool: Arc<Upstream>,
    engine: usize,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(self.engine, conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        let mut joined: Option<BytesMut> = None;
        let mut first: Option<Bytes> = None;
        loop {
            if let Some(conn) = this.conn.as_mut() {
                conn.drive(cx);
            }
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        match (&mut first, &mut joined) {
                            (None, None) => first = Some(data),
                            (Some(f), None) => {
                                let mut buf = BytesMut::with_capacity(f.len() + data.len());
                                buf.extend_from_slice(f);
                                buf.extend_from_slice(&data);
                                first = None;
                                joined = Some(buf);
                            }
                            (_, Some(buf)) => buf.extend_from_slice(&data),
                        }
                        let size = joined.as_ref().map_or(0, BytesMut::len);
                        if this.incoming.is_end_stream() {
                            this.finish();
                            break;
                        }
                        if size >= MAX_JOIN {
                            break;
                        }
                    }
                    // Trailers: pass what we have first, then the trailers on the next poll.
                    Err(frame) => {
                        if first.is_none() && joined.is_none() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        this.trailers = Some(frame);
                        break;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    if first.is_none() && joined.is_none() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    break;
                }
                Poll::Ready(None) => {
                    this.finish();
                    if first.is_none() && joined.is_none() {
                        return Poll::Ready(None);
                    }
                    break;
                }
                Poll::Pending => {
                    if first.is_none() && joined.is_none() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        let data = match (first, joined) {
            (Some(f), _) => f,
            (None, Some(buf)) => buf.freeze(),
            (None, None) => return Poll::Pending,
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none() && self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
