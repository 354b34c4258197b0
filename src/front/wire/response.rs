//! An engine's response head, read and rewritten for the client: hop-by-hop headers go,
//! `X-Request-Id` (and `X-Accel-Buffering: no` for event streams) come in, and the body's
//! framing is kept as the engine sent it.

use super::framing::{Chunked, Framing, Malformed};
use super::push_decimal;
use crate::front::headers::{self, ConnectionTokens, Direction};

/// Largest response head accepted from an engine.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// What the bytes read from the engine so far hold.
pub enum Parsed {
    /// Not a whole head yet.
    Incomplete,
    /// An interim (1xx) response of this many bytes, to be skipped.
    Interim(usize),
    /// The final response head.
    Complete(Head),
}

/// The final response head, its client version written out.
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Bytes of the engine's head.
    pub len: usize,
    /// Where the body ends.
    pub framing: Framing,
    /// The engine connection can take another request after this one.
    pub reusable: bool,
    /// `text/event-stream`.
    pub streamed: bool,
    /// The client connection closes after this response.
    pub close: bool,
}

/// Parses the engine's response at the start of `buf`. For a final head, writes the
/// client's head into `out`; `close` asks for `Connection: close` towards the client.
pub fn parse(buf: &[u8], id: &[u8], close: bool, out: &mut Vec<u8>) -> Result<Parsed, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(Parsed::Incomplete),
        _ => return Err(Malformed),
    };
    let status = resp.code.ok_or(Malformed)?;
    match status {
        101 => return Err(Malformed),
        100..=199 => return Ok(Parsed::Interim(len)),
        _ => {}
    }
    let mut reusable = resp.version == Some(1);
    let (mut length, mut chunked, mut encoded, mut streamed) = (None, false, false, false);
    let mut connection = ConnectionTokens::default();
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).ok();
            match (length, value.and_then(|v| v.trim().parse::<u64>().ok())) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err(Malformed),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("content-type") {
            streamed = h.value.starts_with(b"text/event-stream");
        }
    }
    let framing = match (status, encoded, length) {
        (204 | 304, _, _) => Framing::Empty,
        (_, true, _) if chunked => Framing::Chunked(Chunked::default()),
        (_, true, _) | (_, false, None) => Framing::UntilClose,
        (_, false, Some(n)) => Framing::Length(n),
    };
    if framing.ends_at_close() || connection.close() {
        reusable = false;
    }
    let close = close || framing.ends_at_close();

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status as usize);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        // The body passes through as the engine framed it, so its framing headers stay
        // (a length next to a transfer coding does not: RFC 9112 §6.3).
        let keep = if headers::is_framing(name) {
            !(encoded && name.eq_ignore_ascii_case("content-length"))
        } else {
            headers::passes(Direction::ToClient, name, &connection)
        };
        if keep {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\n");
    if streamed {
        out.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Complete(Head {
        status,
        len,
        framing,
        reusable,
        streamed,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, close: bool) -> (Head, String) {
        let mut out = Vec::new();
        match parse(raw.as_bytes(), b"id-1", close, &mut out).unwrap() {
            Parsed::Complete(h) => (h, String::from_utf8(out).unwrap()),
            _ => panic!("not a complete head: {raw:?}"),
        }
    }

    #[test]
    fn streams_keep_their_chunking_and_lose_hop_headers() {
        let (h, out) = head(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
             connection: keep-alive, x-hop\r\nx-hop: 1\r\nx-request-id: engine\r\n\r\n5\r\n",
            false,
        );
        assert!(h.streamed && h.reusable && !h.close);
        assert_eq!(h.framing, Framing::Chunked(Chunked::default()));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
             x-request-id: id-1\r\nx-accel-buffering: no\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, _) = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Length(12));
        let (h, out) = head("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", false);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable && h.close && out.ends_with("connection: close\r\n\r\n"));
        let (h, _) = head("HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n", true);
        assert!(h.framing == Framing::Empty && h.close);
        let (h, _) = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false);
        assert!(!h.reusable);
        let mut out = Vec::new();
        let interim = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200",
            b"",
            false,
            &mut out,
        );
        assert!(matches!(interim, Ok(Parsed::Interim(25))));
        let twice = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(parse(twice.as_bytes(), b"", false, &mut out).is_err());
    }
}
