//! `MODELMUX_API_KEY`: `Authorization: Bearer <key>`, the scheme in any case (RFC 9110
//! §11.1), the key compared in constant time.

use axum::http::{HeaderMap, header};

/// True when no key is configured or the request carries the right one (exactly one
/// `Authorization` header).
pub fn authorized(key: Option<&str>, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (value, None) => authorized_value(key, value.map(|v| v.as_bytes())),
        _ => key.is_none(),
    }
}

/// [`authorized`] for the raw value of the `Authorization` header, if any.
pub fn authorized_value(key: Option<&str>, value: Option<&[u8]>) -> bool {
    let Some(key) = key else {
        return true;
    };
    let given = value.and_then(bearer_token).unwrap_or(b"");
    constant_time_eq(given, key.as_bytes())
}

/// The token of a `Bearer` credential: the scheme is case-insensitive and followed by one
/// or more spaces.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
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
    fn keys_match_exactly_and_the_scheme_in_any_case() {
        let mut h = HeaderMap::new();
        assert!(authorized(None, &h));
        assert!(!authorized(Some("k1"), &h));
        for ok in ["Bearer k1", "bearer k1", "BEARER k1", "BeArEr   k1 "] {
            h.insert(header::AUTHORIZATION, ok.parse().unwrap());
            assert!(authorized(Some("k1"), &h), "{ok}");
        }
        for bad in [
            "Bearer k12",
            "Bearer k",
            "Basic k1",
            "Bearerk1",
            "k1",
            "Bearer",
        ] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(!authorized(Some("k1"), &h), "{bad}");
        }
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(
            !authorized(Some("k1"), &h),
            "two headers are never accepted"
        );
    }
}
