//! Path rules: what counts as a plain path (configured endpoints, OCI's `route` header), so
//! that neither a setting nor a request header can make the front an open proxy.

/// True for a plain absolute path: `/` then segments of letters, digits, `-`, `_`, `.`, `~`;
/// no scheme, host, `//`, `.` or `..` segment, query, fragment or percent-escape.
pub fn is_plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return false;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        (!seg.is_empty() || i == last && i > 0)
            && *seg != "."
            && *seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    })
}

/// The engine path for a `route` header value: a leading `/` is optional.
/// `None` when the value is not a plain path.
pub fn route_path(header: &str) -> Option<String> {
    let header = header.trim();
    let path = if header.starts_with('/') {
        header.to_string()
    } else {
        format!("/{header}")
    };
    is_plain_path(&path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass() {
        for ok in [
            "/v1/completions",
            "v1/chat/completions",
            "/tokenize",
            "/v1/models/",
        ] {
            assert!(route_path(ok).is_some(), "{ok}");
        }
        assert_eq!(route_path("v1/embeddings").unwrap(), "/v1/embeddings");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "http://evil.example/v1",
            "//evil.example/v1",
            "/v1/../admin",
            "/v1/./x",
            "..",
            "/",
            "",
            "/v1//x",
            "/v1/x?y=1",
            "/v1/%2e%2e/x",
            "evil.example:80/v1",
            "/v1\\..\\x",
            "/v1/x#f",
        ] {
            assert!(route_path(bad).is_none(), "{bad:?} must be refused");
        }
    }
}
