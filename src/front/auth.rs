//! `MODELMUX_API_KEY`: `Authorization: Bearer <key>`, compared in constant time.

use axum::http::{HeaderMap, header};

/// True when no key is configured or the request carries the right one.
pub fn authorized(key: Option<&str>, headers: &HeaderMap) -> bool {
    let value = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    authorized_value(key, value)
}

/// [`authorized`] for the raw value of the `Authorization` header, if any.
pub fn authorized_value(key: Option<&str>, value: Option<&[u8]>) -> bool {
    let Some(key) = key else {
        return true;
    };
    let given = value
        .and_then(|v| {
            v.strip_prefix(b"Bearer ")
                .or_else(|| v.strip_prefix(b"bearer "))
        })
        .unwrap_or(b"");
    constant_time_eq(given.trim_ascii(), key.as_bytes())
}

/// Compares without an early exit, so timing does not reveal how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(authorized(None, &h));
        assert!(!authorized(Some("k1"), &h));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(authorized(Some("k1"), &h));
        assert!(!authorized(Some("k12"), &h));
        assert!(!authorized(Some("k"), &h));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert!(!authorized(Some("k1"), &h));
    }
}
