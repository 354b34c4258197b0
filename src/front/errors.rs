//! Errors in OpenAI's shape, `{"error": {"message", "type", "code"}}`, and JSON responses.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// The `type` of an error with this status.
pub fn kind_of(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        502 => "bad_gateway",
        503 => "service_unavailable",
        _ => "internal_error",
    }
}

/// An error response with OpenAI's JSON shape; a 401 says which scheme it wants.
pub fn error(status: StatusCode, message: &str) -> Response {
    let mut resp = json_text(
        status,
        error_body(status.as_u16(), kind_of(status.as_u16()), message),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The JSON body of an error response.
pub fn error_body(status: u16, kind: &str, message: &str) -> String {
    serde_json::json!({
        "error": {"message": message, "type": kind, "code": status}
    })
    .to_string()
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    json_text(status, body.to_string())
}

fn json_text(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Body::from(body))
        .expect("valid JSON response")
}
