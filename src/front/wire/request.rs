//! Reading a client's request on the pass-through path, and deciding whether this path
//! takes it. It takes the common case only: an HTTP/1.1 `POST` with a `Content-Length` body
//! for a model that is ready. Anything else (errors included) is handed to hyper and the
//! router, which answer it exactly as they always have.

use std::ops::Range;

use super::Front;
use crate::front::proxy::HOP_HEADERS;
use crate::front::{auth, route};
use crate::state::{Lookup, Phase};

/// Largest request head this path waits for before handing the connection over.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers this path parses; a request with more is handed over.
const MAX_HEADERS: usize = 64;

/// What to do with the bytes read so far.
pub enum Parsed {
    /// Wait for more bytes.
    Incomplete,
    /// Not for this path: hyper takes the connection, starting with this request.
    HandOver,
    /// Pass it to an engine; the engine's request is in `out`.
    Forward(Forward),
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
}

/// A request id: the client's `X-Request-Id`, or one made up.
pub enum RequestId {
    /// Bytes of the client's request.
    Given(Range<usize>),
    /// Made by [`crate::front::App::make_request_id`].
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

/// Headers not passed to the engine: the hop-by-hop ones, and `X-Request-Id`, set here.
fn not_passed_on(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-request-id")
        || HOP_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Offset of `part` (a slice of `whole`) within `whole`.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the request at the start of `buf`; for [`Parsed::Forward`], writes the engine's
/// request (head and body) into `out`.
pub fn parse(buf: &[u8], front: &Front, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Incomplete,
        _ => return Parsed::HandOver,
    };
    let (Some("POST"), Some(1), Some(target)) = (req.method, req.version, req.path) else {
        return Parsed::HandOver;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') || front.is_reserved(path) {
        return Parsed::HandOver;
    }

    let (mut length, mut close, mut key, mut id, mut route_header) =
        (None, false, None, None, None);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.iter().all(u8::is_ascii_digit) && !h.value.is_empty();
            let value = std::str::from_utf8(h.value).ok().filter(|_| digits);
            match (length, value.and_then(|v| v.parse::<usize>().ok())) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::HandOver,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                match token.trim_ascii() {
                    t if t.eq_ignore_ascii_case(b"close") => close = true,
                    t if t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") => {}
                    _ => return Parsed::HandOver,
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::HandOver;
        } else if name.eq_ignore_ascii_case("authorization") {
            key = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-request-id") && !h.value.is_empty() {
            id = Some(RequestId::Given(range_in(buf, h.value)));
        } else if name.eq_ignore_ascii_case("route") {
            route_header = Some(h.value);
        }
    }
    let app = &front.app;
    let Some(length) = length.filter(|n| *n <= app.max_body) else {
        return Parsed::HandOver;
    };
    let total = head_len + length;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    if !auth::authorized_value(app.api_key.as_deref(), key) {
        return Parsed::HandOver;
    }
    let body = &buf[head_len..total];
    let Ok(field) = serde_json::from_slice::<crate::front::proxy::ModelField>(body) else {
        return Parsed::HandOver;
    };
    let Lookup::Found(target_model) = app.table.lookup(field.model.as_deref()) else {
        return Parsed::HandOver;
    };
    let engine_path: std::borrow::Cow<str> = match path {
        "/predict" | "/predictWithResponseStream" => match route_header {
            Some(v) => match std::str::from_utf8(v).ok().and_then(route::route_path) {
                Some(p) => p.into(),
                None => return Parsed::HandOver,
            },
            None => (*target_model.predict_route).into(),
        },
        _ => target.into(),
    };
    {
        let snapshot = app.state.borrow();
        if snapshot.stopping || snapshot.models[target_model.index].state != Phase::Ready {
            return Parsed::HandOver;
        }
    }
    let id = id.unwrap_or_else(|| RequestId::Made(app.make_request_id()));

    out.clear();
    out.reserve(total + 128);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(engine_path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(target_model.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in req.headers.iter().filter(|h| !not_passed_on(h.name)) {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id.bytes(buf));
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_decimal(out, length);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);

    Parsed::Forward(Forward {
        model: target_model.index,
        len: total,
        close,
        path: range_in(buf, path.as_bytes()),
        id,
    })
}

/// Appends `n` in decimal, without a formatter or an allocation.
pub fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
