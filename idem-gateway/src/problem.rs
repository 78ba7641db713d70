//! Errors of the admin API and the demo service as `application/problem+json`
//! (RFC 9457), the shape of every refusal of the layer and the proxy. The
//! `error` code these services answered with before stays as an extension
//! member, so clients that read it keep working.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use idem_core::problem::{DEFAULT_PROBLEM_BASE, PROBLEM_JSON};
use serde_json::{json, Value};

/// The problem document: `type` is the default problem base and `code` in
/// kebab case, `title` the status's reason, `error` the code as it is.
pub fn document(status: StatusCode, code: &str, detail: impl Into<String>) -> Value {
    json!({
        "type": format!("{DEFAULT_PROBLEM_BASE}{}", code.replace('_', "-")),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
        "error": code,
    })
}

/// [`document`] as a response with its `Content-Type`.
pub fn response(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let mut res = (status, axum::Json(document(status, code, detail))).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_error_is_a_problem_that_keeps_its_code() {
        let doc = document(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "amount is required",
        );
        assert_eq!(doc["type"], "urn:idem:problem:validation-failed");
        assert_eq!(doc["title"], "Bad Request");
        assert_eq!(doc["status"], 400);
        assert_eq!(doc["detail"], "amount is required");
        assert_eq!(doc["error"], "validation_failed");
        let res = response(StatusCode::NOT_FOUND, "not_found", "no payment x");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            res.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(PROBLEM_JSON)
        );
    }
}
