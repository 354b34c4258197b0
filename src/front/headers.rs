//! Header rules shared by both wires, so that they can never disagree: which headers stop
//! at the front in each direction, and the request id.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message: they are
//! never passed on, nor is any header a `Connection` header names. The front also sets some
//! headers itself (`Host` and the body's length towards the engine, `X-Request-Id` both
//! ways, `X-Accel-Buffering` on streams) and drops what a client or engine sent for them.
//! Framing headers (`Content-Length`, `Transfer-Encoding`, `Trailer`) are left to the wire:
//! the pass-through wire keeps the engine's framing byte for byte, hyper re-frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Headers about one connection only (lower case).
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// Headers that say how a body is framed on this hop (lower case).
pub const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "trailer"];

/// Headers the front sets on the engine's request itself (lower case). `Expect` belongs to
/// the client's hop: the front answers `100-continue` itself.
pub const SET_TOWARDS_ENGINE: [&str; 3] = ["host", "x-request-id", "expect"];

/// Headers the front sets on the client's response itself (lower case).
pub const SET_TOWARDS_CLIENT: [&str; 2] = ["x-request-id", "x-accel-buffering"];

/// The direction a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A client's request on its way to an engine.
    ToEngine,
    /// An engine's response on its way to a client.
    ToClient,
}

fn listed_in(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// The `Authorization` header an engine gets. With `MODELMUX_API_KEY` set the front has
/// checked the client's key; an engine started with a key of its own that modelmux reads
/// (`--api-key`, `VLLM_API_KEY`, ...) gets that key instead. Otherwise the client's header
/// passes as it came: without `MODELMUX_API_KEY` the engine's own key is the client's to
/// send, and a key modelmux cannot read (a key file, a wrapper script) may be the same as
/// the front's.
#[derive(Debug, Clone)]
pub enum EngineAuthorization {
    /// The client's header (if any), as it came.
    Client,
    /// This value (`Bearer KEY`) instead of the client's.
    Replaced(Arc<str>),
}

impl EngineAuthorization {
    /// Whether the client's own `Authorization` header goes to the engine.
    pub fn passes_client_header(&self) -> bool {
        matches!(self, EngineAuthorization::Client)
    }

    /// The value the front adds itself, if any.
    pub fn added(&self) -> Option<&str> {
        match self {
            EngineAuthorization::Replaced(v) => Some(v),
            EngineAuthorization::Client => None,
        }
    }
}

/// True for a framing header (`Content-Length`, `Transfer-Encoding`, `Trailer`).
pub fn is_framing(name: &str) -> bool {
    listed_in(name, &FRAMING)
}

/// The header names a message's `Connection` headers list (RFC 9110 §7.6.1): those are
/// hop-by-hop for this message too. `close` and `keep-alive` are options, not names, but
/// dropping a header of that name is harmless.
#[derive(Debug, Default)]
pub struct ConnectionTokens<'a> {
    tokens: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    /// Collects the tokens of one `Connection` header value.
    pub fn add(&mut self, value: &'a [u8]) {
        for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !token.is_empty() {
                self.tokens.push(token);
            }
        }
    }

    /// True when `name` is listed.
    pub fn names(&self, name: &str) -> bool {
        self.tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// True when the client or engine asked to close the connection after this message.
    pub fn close(&self) -> bool {
        self.tokens.iter().any(|t| t.eq_ignore_ascii_case(b"close"))
    }
}

/// True when header `name` is passed on in `direction`. Framing headers are never passed
/// by this rule; each wire decides how the body is framed on its own hop.
pub fn passes(direction: Direction, name: &str, connection: &ConnectionTokens) -> bool {
    // The lists above, looked up by length first: this runs for every header of every
    // request and response (a test checks it against the lists).
    let eq = |known: &str| name.eq_ignore_ascii_case(known);
    let to_engine = direction == Direction::ToEngine;
    let stopped = match name.len() {
        2 => eq("te"),
        4 => to_engine && eq("host"),
        6 => to_engine && eq("expect"),
        7 => eq("upgrade") || eq("trailer"),
        10 => eq("connection") || eq("keep-alive"),
        12 => eq("x-request-id"),
        14 => eq("content-length"),
        16 => eq("proxy-connection"),
        17 => eq("transfer-encoding") || (!to_engine && eq("x-accel-buffering")),
        18 => eq("proxy-authenticate"),
        19 => eq("proxy-authorization"),
        _ => false,
    };
    !stopped && !connection.names(name)
}

/// [`passes`] spelled out from the lists, to check the fast version against.
#[cfg(test)]
fn passes_by_the_lists(direction: Direction, name: &str, connection: &ConnectionTokens) -> bool {
    let set_here = match direction {
        Direction::ToEngine => &SET_TOWARDS_ENGINE[..],
        Direction::ToClient => &SET_TOWARDS_CLIENT[..],
    };
    !listed_in(name, &HOP_BY_HOP)
        && !is_framing(name)
        && !listed_in(name, set_here)
        && !connection.names(name)
}

/// Longest client-given `X-Request-Id` passed on; a longer one is replaced by a made-up id.
pub const MAX_REQUEST_ID: usize = 128;

/// True for a client-given request id that can be passed on and logged: 1 to
/// [`MAX_REQUEST_ID`] visible ASCII characters.
pub fn usable_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(u8::is_ascii_graphic)
}

/// True for an id that Python's `uuid.UUID()` takes: 32 hex digits, dashes and braces aside
/// (what llama-cpp-python's request-id check accepts).
pub fn is_uuid(id: &[u8]) -> bool {
    let mut digits = 0;
    for &c in id {
        match c {
            b'-' | b'{' | b'}' => {}
            c if c.is_ascii_hexdigit() => digits += 1,
            _ => return false,
        }
    }
    digits == 32
}

/// The id to send an engine that takes only UUIDs (`uuid_request_ids` in the plan) for
/// request id `id`: `id` itself when it is one, else a UUID derived from it (version 8,
/// the bits of FNV-1a-128 of `id`), so the same client id always maps to the same UUID.
/// The client still gets its own id back, and the access log shows it.
pub fn engine_request_id(id: &[u8], uuid_only: bool) -> std::borrow::Cow<'_, [u8]> {
    if !uuid_only || is_uuid(id) {
        return id.into();
    }
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for &b in id {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    // Version 8 (custom), RFC 9562 variant.
    h = (h & !(0xf << 76)) | (0x8 << 76);
    h = (h & !(0x3 << 62)) | (0x2 << 62);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        out.push(HEX[(h >> (124 - 4 * i)) as usize & 0xf]);
    }
    out.into()
}

/// Makes request ids unique within this process, cheaply: `mmx-PPPPPPPP-NNNNNNNNNNNN`
/// (a per-process prefix, then a counter).
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    /// A generator whose prefix comes from the start time and the pid.
    pub fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        RequestIds {
            prefix: now.subsec_nanos() ^ std::process::id().rotate_left(16),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn make(&self) -> [u8; 25] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = *b"mmx-00000000-000000000000";
        for i in 0..8 {
            id[11 - i] = HEX[(self.prefix >> (4 * i)) as usize & 0xf];
        }
        for i in 0..12 {
            id[24 - i] = HEX[(n >> (4 * i)) as usize & 0xf];
        }
        id
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_that_take_only_uuids_get_one_derived_from_the_id() {
        let uuid = b"123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(
            &*engine_request_id(uuid, true),
            uuid,
            "a UUID passes as it is"
        );
        let braced = b"{123e4567e89b12d3a456426614174000}";
        assert_eq!(
            &*engine_request_id(braced, true),
            braced,
            "Python's UUID takes it"
        );
        assert_eq!(&*engine_request_id(b"trace-1", false), b"trace-1");
        let made = engine_request_id(b"trace-1", true).into_owned();
        let text = std::str::from_utf8(&made).unwrap();
        assert_eq!(text.len(), 36, "{text}");
        assert!(is_uuid(&made), "{text}");
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('8'), "version 8: {text}");
        assert!(
            matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
            "variant: {text}"
        );
        assert_eq!(
            engine_request_id(b"trace-1", true),
            made,
            "the same id, the same UUID"
        );
        assert_ne!(&*engine_request_id(b"trace-2", true), &made[..]);
        let ours = RequestIds::new().make();
        assert!(!is_uuid(&ours) && is_uuid(&engine_request_id(&ours, true)));
        assert!(!is_uuid(b"123e4567-e89b-12d3-a456-42661417400g"));
        assert!(!is_uuid(b"123e4567-e89b-12d3-a456-4266141740"));
    }

    #[test]
    fn one_rule_set_for_both_directions() {
        let mut conn = ConnectionTokens::default();
        conn.add(b"keep-alive, X-Hop ,close");
        assert!(conn.close());
        for dir in [Direction::ToEngine, Direction::ToClient] {
            for gone in [
                "Connection",
                "keep-alive",
                "Proxy-Authorization",
                "upgrade",
                "x-hop",
                "TE",
                "Trailer",
                "Transfer-Encoding",
                "Content-Length",
                "X-Request-Id",
            ] {
                assert!(!passes(dir, gone, &conn), "{gone} {dir:?}");
            }
            for kept in ["content-type", "authorization", "x-custom", "cache-control"] {
                assert!(passes(dir, kept, &conn), "{kept} {dir:?}");
            }
        }
        assert!(!passes(Direction::ToEngine, "host", &conn));
        assert!(!passes(Direction::ToEngine, "expect", &conn));
        assert!(passes(Direction::ToClient, "expect", &conn));
        assert!(!passes(Direction::ToClient, "x-accel-buffering", &conn));
    }

    #[test]
    fn the_fast_lookup_agrees_with_the_lists() {
        let none = ConnectionTokens::default();
        let names = HOP_BY_HOP
            .iter()
            .chain(&FRAMING)
            .chain(&SET_TOWARDS_ENGINE)
            .chain(&SET_TOWARDS_CLIENT)
            .copied()
            .chain([
                "content-type",
                "accept",
                "x-custom",
                "Host",
                "TE",
                "te2",
                "hosts",
                "",
            ]);
        for name in names {
            for dir in [Direction::ToEngine, Direction::ToClient] {
                assert_eq!(
                    passes(dir, name, &none),
                    passes_by_the_lists(dir, name, &none),
                    "{name} {dir:?}"
                );
            }
        }
    }

    #[test]
    fn request_ids() {
        assert!(usable_request_id(b"abc-123"));
        assert!(!usable_request_id(b""));
        assert!(!usable_request_id(b"has space"));
        assert!(!usable_request_id(&[b'x'; MAX_REQUEST_ID + 1]));
        let ids = RequestIds::new();
        let (a, b) = (ids.make(), ids.make());
        assert_ne!(a, b);
        assert!(a.starts_with(b"mmx-") && usable_request_id(&a));
    }
}
