//! A gRPC status as an HTTP answer: the status code by the mapping Google's
//! APIs use, and a JSON body with the gRPC code's name and the message.
//! Every REST error passes here, so both faces say the same; so does a
//! request body a route could not take.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

/// The HTTP status and the name of gRPC code `code`.
pub(crate) fn http_of(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::Cancelled => (StatusCode::from_u16(499).expect("499"), "CANCELLED"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
    }
}

/// The JSON body of an error: `{"error": {"code", "status", "message"}}`.
pub(crate) fn body_of(status: &Status) -> serde_json::Value {
    let (http, name) = http_of(status.code());
    serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "status": name,
            "message": status.message(),
        }
    })
}

/// A request body a route could not take, as a JSON error: over the size
/// limit, 413 with OUT_OF_RANGE (gRPC's code for a message over its limit);
/// one that broke off, 400.
pub(crate) fn body_refused(r: BytesRejection) -> Response {
    let (http, name, message) = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let hint = "a list this long goes as an upload: POST /v1/batches/upload";
        (
            r.status(),
            "OUT_OF_RANGE",
            format!("{}; {hint}", r.body_text()),
        )
    } else {
        (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", r.body_text())
    };
    let body = serde_json::json!({
        "error": { "code": http.as_u16(), "status": name, "message": message }
    });
    (
        http,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// How long a RESOURCE_EXHAUSTED status asks to wait, in whole seconds
/// (rounded up), from its RetryInfo detail.
fn retry_after(status: &Status) -> Option<u64> {
    use tonic_types::StatusExt;
    let wait = status.get_details_retry_info()?.retry_delay?;
    Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// A failed REST call.
#[derive(Debug)]
pub(crate) struct Failed(pub(crate) Status);

impl From<Status> for Failed {
    fn from(s: Status) -> Self {
        Failed(s)
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let (http, _) = http_of(self.0.code());
        let mut response = (
            http,
            [(header::CONTENT_TYPE, "application/json")],
            body_of(&self.0).to_string(),
        )
            .into_response();
        if let Some(secs) = retry_after(&self.0) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.0.code() == Code::Unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_says_when_to_come_back() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(1500)));
        let s = Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let r = Failed(s).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            http_of(Code::NotFound),
            (StatusCode::NOT_FOUND, "NOT_FOUND")
        );
    }
}
