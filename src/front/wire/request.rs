//! A client's request on the pass-through wire: the head parsed in place, its facts given
//! to [`crate::front::policy`], and for an admitted request the engine's request (head
//! and body) written into one buffer. Only wire reasons hand a request to hyper.

use std::ops::Range;

use crate::front::App;
use crate::front::access::Record;
use crate::front::headers::{self, ConnectionTokens, Direction};
use crate::front::page;
use crate::front::policy::{self, Decision, Head, Seen};
use crate::front::refusal::Refusal;
use crate::state::Route;

use super::push_decimal;

/// Largest request head this wire waits for before handing the connection over.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers this wire parses; a request with more is handed over.
const MAX_HEADERS: usize = 64;

/// What to do with the bytes read so far.
pub enum Step {
    /// Wait for more bytes; `head_done` once the head is in and only the body is missing.
    Incomplete {
        /// True when the head is complete.
        head_done: bool,
    },
    /// Not for this wire: hyper takes the connection, starting with this request.
    HandOver,
    /// Refuse it.
    Refuse(Refused),
    /// Pass it to an engine; the engine's request is in `out`.
    Forward(Forward),
}

/// A refused request.
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// The request id for the answer.
    pub id: RequestId,
    /// Bytes of the head.
    pub head_len: usize,
    /// Bytes of the body (from `Content-Length`).
    pub body_len: u64,
    /// The client asked to close the connection.
    pub close: bool,
    /// The method, as bytes of the request.
    pub method: Range<usize>,
    /// The path without its query, as bytes of the request.
    pub path: Range<usize>,
}

/// A request to pass on.
pub struct Forward {
    /// The model's index in the routing table.
    pub model: usize,
    /// Bytes of the client's request (head and body).
    pub len: usize,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The request path without its query, as bytes of the client's request.
    pub path: Range<usize>,
    /// The request id sent to the engine and back to the client.
    pub id: RequestId,
    /// The model's engine, from the live routing table.
    pub route: Route,
    /// The client's body, as bytes of the client's request.
    pub body: Range<usize>,
}

/// A request id: the client's `X-Request-Id`, or one made up.
pub enum RequestId {
    /// Bytes of the client's request.
    Given(Range<usize>),
    /// Made by [`crate::front::headers::RequestIds`].
    Made([u8; 25]),
}

impl RequestId {
    /// The id's bytes; `request` is the client's request it came with.
    pub fn bytes<'a>(&'a self, request: &'a [u8]) -> &'a [u8] {
        match self {
            RequestId::Given(r) => &request[r.clone()],
            RequestId::Made(id) => id,
        }
    }
}

/// Offset of `part` (a slice of `whole`) within `whole`.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Where a request's method, path and usable request id are, as bytes of the request.
pub struct Meta {
    /// The method.
    pub method: Range<usize>,
    /// The path without its query.
    pub path: Range<usize>,
    /// A usable `X-Request-Id`.
    pub id: Option<Range<usize>>,
}

/// The method, path and request id of the request at the start of `buf`, for a log line
/// about a request that never completed.
pub fn meta(buf: &[u8]) -> Option<Meta> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(buf).ok()?;
    let (method, target) = (req.method?, req.path?);
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let id = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-request-id"))
        .filter(|h| headers::usable_request_id(h.value))
        .map(|h| range_in(buf, h.value));
    Some(Meta {
        method: range_in(buf, method.as_bytes()),
        path: range_in(buf, path.as_bytes()),
        id,
    })
}

/// Parses the request at the start of `buf` and applies the policy to it. For
/// [`Step::Forward`], writes the engine's request into `out`; `record` learns the model.
pub fn step(buf: &[u8], app: &App, out: &mut Vec<u8>, record: &mut Record) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
            return Step::Incomplete { head_done: false };
        }
        _ => return Step::HandOver,
    };
    let (Some(method), Some(1), Some(target)) = (req.method, req.version, req.path) else {
        return Step::HandOver;
    };
    // HEAD answers carry no body: hyper writes those.
    if !target.starts_with('/') || method == "HEAD" {
        return Step::HandOver;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut head = Head {
        method,
        path,
        ..Head::default()
    };
    let mut connection = ConnectionTokens::default();
    let mut length: Option<u64> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
            let value = std::str::from_utf8(h.value).ok().filter(|_| digits);
            match (length, value.and_then(|v| v.parse::<u64>().ok())) {
                (None, Some(n)) => length = Some(n),
                // Two lengths, or a bad one: hyper answers it (400).
                _ => return Step::HandOver,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Step::HandOver;
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization.add(h.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            head.request_id.add(h.value);
        } else if name.eq_ignore_ascii_case("route") {
            head.route.add(h.value);
        } else if name.eq_ignore_ascii_case("accept") && page::accepts_html_value(h.value) {
            head.browser = true;
        }
    }
    head.content_length = length;
    let close = connection.close();
    let id = || match head.request_id {
        Seen::Once(v) if headers::usable_request_id(v) => RequestId::Given(range_in(buf, v)),
        _ => RequestId::Made(app.ids.make()),
    };
    let refused = |refusal| {
        Step::Refuse(Refused {
            refusal,
            id: id(),
            head_len,
            body_len: length.unwrap_or(0),
            close,
            method: range_in(buf, method.as_bytes()),
            path: range_in(buf, path.as_bytes()),
        })
    };
    match policy::on_head(app, &head) {
        Ok(Decision::Proxy) => {}
        // The front's own paths and the admin API are hyper's to answer.
        Ok(Decision::Local(_) | Decision::Admin) => return Step::HandOver,
        Err(refusal) => return refused(refusal),
    }
    // A POST without Content-Length (and not chunked) has an empty body (RFC 9112 §6.3).
    let total = head_len + length.unwrap_or(0) as usize;
    if buf.len() < total {
        return Step::Incomplete { head_done: true };
    }
    let body = &buf[head_len..total];
    let target = match policy::on_body(app, &head, target, body, &mut record.model) {
        Ok(t) => t,
        Err(refusal) => return refused(refusal),
    };
    let id = id();
    let body = target.body.as_deref().unwrap_or(body);

    out.clear();
    out.reserve(total + 128);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(target.route.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let client_authorization = target.authorization.passes_client_header();
    for h in req.headers.iter() {
        if headers::passes(Direction::ToEngine, h.name, &connection)
            && (client_authorization || !h.name.eq_ignore_ascii_case("authorization"))
        {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(value) = target.authorization.added() {
        out.extend_from_slice(b"authorization: ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(&headers::engine_request_id(
        id.bytes(buf),
        target.route.uuid_request_ids,
    ));
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_decimal(out, body.len());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);

    Step::Forward(Forward {
        model: target.route.index,
        len: total,
        close,
        path: range_in(buf, path.as_bytes()),
        id,
        route: target.route,
        body: head_len..total,
    })
}
