//! Errors in OpenAI's shape: `{"error": {"message", "type", "code"}}`.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// An error response with OpenAI's JSON shape.
pub fn error(status: StatusCode, message: &str) -> Response {
    json_text(status, error_body(status, message))
}

/// The JSON body of an error response.
pub fn error_body(status: StatusCode, message: &str) -> String {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        405 => "method_not_allowed",
        413 => "request_too_large",
        502 => "bad_gateway",
        503 => "service_unavailable",
        _ => "internal_error",
    };
    serde_json::json!({
        "error": {"message": message, "type": kind, "code": status.as_u16()}
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

/// A 503 with `Retry-After`.
pub fn unavailable(message: &str, retry_after_secs: u32) -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}
