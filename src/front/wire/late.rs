//! A streaming request whose head went out before its on-demand model was ready
//! ([`crate::front::early`]): the early head, then the late stream's bytes, each as one
//! chunk as it comes, then the last chunk. The client connection is watched meanwhile:
//! when it goes away the stream's task ends (leaving the queue, or closing the engine
//! connection).

use tokio::net::TcpStream;

use super::Front;
use super::buffers::Scratch;
use super::exchange::{Next, client_gone};
use super::request::Forward;
use super::writes;
use crate::front::access::Record;
use crate::front::early::{self, TurnWait};

/// Answers `fwd` with an early event-stream head and the late stream; `b.out` holds the
/// engine's request, `request` the client's bytes.
pub async fn late(
    client: &mut TcpStream,
    front: &Front,
    request: &[u8],
    fwd: &Forward,
    b: &mut Scratch,
    record: &mut Record,
    wait: TurnWait,
) -> Next {
    let app = &front.app;
    let id = fwd.id.bytes(request);
    let close = fwd.close || app.state.borrow().stopping;
    let Some(engine_request) = early::request_from_raw(&b.out, &fwd.route.authority) else {
        // Never: the wire wrote that request itself.
        return Next::Close;
    };
    let mut out = Vec::with_capacity(256);
    early::write_head(&mut out, id, close);
    if !writes::send(client, &out, app, id).await {
        return Next::Close;
    }
    record.status = 200;
    record.streamed = true;
    let mut stream = early::spawn(app.clone(), fwd.model, wait, engine_request);
    loop {
        let data = tokio::select! {
            d = stream.bytes.recv() => d,
            () = client_gone(client, &mut b.early) => return Next::Close,
        };
        let Some(data) = data else { break };
        out.clear();
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
        if !writes::send(client, &out, app, id).await {
            return Next::Close;
        }
        if !early::is_keepalive(&data) {
            record.sent(app, data.len());
        }
    }
    let Ok(outcome) = stream.outcome.await else {
        return Next::Close;
    };
    record.proxied = outcome.proxied;
    if outcome.status != 0 {
        record.status = outcome.status;
    }
    // A cut stream is closed without its last chunk: the client sees it was cut.
    if !outcome.complete || !writes::send(client, b"0\r\n\r\n", app, id).await {
        return Next::Close;
    }
    record.complete = true;
    if close { Next::Close } else { Next::KeepAlive }
}
