//! The one error type of the gateway. Every failure — made by the gateway or returned
//! by a backend — becomes a `google.rpc.Status` JSON body with the HTTP status of the
//! standard gRPC → HTTP table (docs/http.md).
//!
//! An error knows where it came from ([`Origin`]): the circuit breaker and retries
//! decide from origin and code, never from message text. An error may carry a `cause`
//! that is for the log only (addresses, broker texts, type names); the client then sees a
//! generic message for its code, and the trace id in `x-trace-id` to quote to an operator.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tonic::Code;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The request itself: bad input, missing credentials, a limit, a deadline the client
    /// shortened. Never counts against a backend.
    Client,
    /// The gateway: its configuration or an internal step.
    Gateway,
    /// A backend: its answer, or failing to reach it in time.
    Upstream,
}

/// A failure on its way to the client, shaped like `google.rpc.Status`.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub code: Code,
    /// What the client reads. Never an address, a broker text or a stack of causes.
    pub message: String,
    pub origin: Origin,
    /// For the log only: the detail behind a generic `message`.
    pub cause: Option<Box<str>>,
    /// `details` as already-rendered JSON values (`{"@type": …, …}`).
    pub details: Vec<serde_json::Value>,
    /// Overrides the status derived from `code` (413, 414, 405, …).
    pub http_status: Option<StatusCode>,
    /// Extra response headers (`Allow`, `Retry-After`, `WWW-Authenticate`, …). Boxed:
    /// errors travel by value through every `Result`, and most have none.
    pub headers: Option<Box<HeaderMap>>,
}

impl GatewayError {
    /// An error whose origin follows from its code: codes that describe the request
    /// (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, …) are the client's, others the
    /// gateway's. Backend answers are marked [`Origin::Upstream`] where they are converted.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let origin = match code {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Cancelled
            | Code::Unimplemented => Origin::Client,
            _ => Origin::Gateway,
        };
        Self {
            code,
            message: message.into(),
            origin,
            cause: None,
            details: Vec::new(),
            http_status: None,
            headers: None,
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, message)
    }

    /// An internal failure: `cause` goes to the log, the client reads "internal error".
    pub fn internal(cause: impl Into<String>) -> Self {
        Self::new(Code::Internal, "internal error").with_cause(cause)
    }

    /// A failure whose client-facing text is `message` and whose detail (an address, a
    /// broker error, a file) stays in the log.
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into().into_boxed_str());
        self
    }

    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Whether this failure may count against a backend (circuit breaker, outlier
    /// detection): only upstream-caused UNAVAILABLE / DEADLINE_EXCEEDED / INTERNAL.
    pub fn is_backend_failure(&self) -> bool {
        self.origin == Origin::Upstream
            && matches!(
                self.code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Internal
            )
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers_mut().insert(name, value);
        self
    }

    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers.get_or_insert_with(Default::default)
    }

    pub fn with_details(mut self, details: Vec<serde_json::Value>) -> Self {
        self.details = details;
        self
    }

    /// Body too large: 413 with INVALID_ARGUMENT (contract §5).
    pub fn body_too_large(limit: u64) -> Self {
        Self::invalid_argument(format!("request body exceeds the limit of {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .closing_connection()
    }

    /// Answered before the request body was read to its end: the HTTP/1 connection
    /// cannot carry another request (the rest of the body is still on it), and the server
    /// closes it. Saying so keeps a client from reusing it and failing its next request on
    /// a broken pipe. HTTP/2 has no such header and hyper drops it there.
    pub fn closing_connection(mut self) -> Self {
        self.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        self
    }

    pub fn http_status(&self) -> StatusCode {
        self.http_status
            .unwrap_or_else(|| http_status_for_code(self.code))
    }

    /// The `google.rpc.Status` JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code as i32,
            "message": self.message,
            "details": self.details,
        })
    }

    pub fn body_bytes(&self) -> Bytes {
        // Serializing a `Value` of strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(&self.to_json()).unwrap_or_default())
    }

    /// The rescue: every error leaves the gateway through here. The cause, if any, is
    /// logged (inside the request's span, so with its trace id); the client gets the
    /// `google.rpc.Status` body without it.
    pub fn into_response(self) -> http::Response<axum::body::Body> {
        if let Some(cause) = &self.cause {
            tracing::warn!(code = ?self.code, origin = ?self.origin, %cause, "{}", self.message);
        }
        let status = self.http_status();
        let body = self.body_bytes();
        let mut response = http::Response::new(axum::body::Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(extra) = self.headers {
            headers.extend(*extra);
        }
        response
    }

    /// The rescue for gRPC-Web clients: a trailers-only answer, HTTP 200 with
    /// `grpc-status` and `grpc-message` in the headers and no body, which is where those
    /// clients read the outcome of a call that never produced a message. Extra headers
    /// (`Retry-After`, `WWW-Authenticate`, backend metadata) ride along.
    pub fn into_grpc_web_response(
        self,
        content_type: HeaderValue,
    ) -> http::Response<axum::body::Body> {
        if let Some(cause) = &self.cause {
            tracing::warn!(code = ?self.code, origin = ?self.origin, %cause, "{}", self.message);
        }
        let mut response = http::Response::new(axum::body::Body::empty());
        let headers = response.headers_mut();
        if let Some(extra) = self.headers {
            headers.extend(*extra);
        }
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(GRPC_STATUS, HeaderValue::from(self.code as i32));
        headers.insert(GRPC_MESSAGE, grpc_message_value(&self.message));
        response
    }
}

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Bytes a `grpc-message` percent-encodes: controls, `%` and (always) non-ASCII.
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A status message as gRPC sends it (`grpc-message`, percent-encoded UTF-8).
pub fn grpc_message_value(message: &str) -> HeaderValue {
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_ESCAPED).to_string();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The HTTP status a response stands for: its own, or for a trailers-only gRPC-Web
/// answer (always 200) the one of its `grpc-status` (metrics and the access log).
pub fn effective_status(response: &http::Response<axum::body::Body>) -> StatusCode {
    match response.headers().get(GRPC_STATUS) {
        Some(code) if response.status() == StatusCode::OK => {
            http_status_for_code(Code::from_bytes(code.as_bytes()))
        }
        _ => response.status(),
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        match &self.cause {
            Some(cause) => write!(f, " ({cause})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for GatewayError {}

impl axum::response::IntoResponse for GatewayError {
    fn into_response(self) -> axum::response::Response {
        GatewayError::into_response(self)
    }
}

/// The standard gRPC → HTTP table (google.rpc.Code / grpc-gateway), contract §5 and §9.
pub fn http_status_for_code(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code for an HTTP status, the inverse of [`http_status_for_code`] where it
/// is one to one (e.g. an AMQP worker's `x-status` on a WebSocket error frame): 4xx
/// without a code of its own is FAILED_PRECONDITION, 5xx INTERNAL, anything else UNKNOWN.
pub fn code_for_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        402..=499 => Code::FailedPrecondition,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// A gRPC status code from its number; numbers outside the enum are UNKNOWN (→ 500).
pub fn code_from_i32(n: i32) -> Code {
    match n {
        0..=16 => Code::from_i32(n),
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_matches_the_contract() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::FailedPrecondition, 400),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::OutOfRange, 400),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status_for_code(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(code_from_i32(99), Code::Unknown);
    }

    #[test]
    fn http_statuses_map_back_to_codes() {
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::Cancelled,
            Code::Unimplemented,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert_eq!(code_for_http_status(http_status_for_code(code)), code);
        }
        assert_eq!(
            code_for_http_status(StatusCode::GONE),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_for_http_status(StatusCode::BAD_GATEWAY),
            Code::Internal
        );
    }

    #[test]
    fn causes_stay_out_of_the_body() {
        let err = GatewayError::unavailable("upstream `catalog` is unavailable")
            .with_origin(Origin::Upstream)
            .with_cause("cannot connect to http://10.1.2.3:50051: connection refused");
        let body = String::from_utf8(err.body_bytes().to_vec()).unwrap();
        assert!(!body.contains("10.1.2.3"), "{body}");
        assert!(err.is_backend_failure());
        let internal = GatewayError::internal("cannot encode shop.catalog.v1.Product");
        let body = String::from_utf8(internal.body_bytes().to_vec()).unwrap();
        assert!(!body.contains("shop.catalog"), "{body}");
        assert_eq!(internal.origin, Origin::Gateway);
        assert!(!internal.is_backend_failure());
        assert_eq!(GatewayError::invalid_argument("x").origin, Origin::Client);
    }

    #[test]
    fn grpc_web_errors_are_trailers_only() {
        let error = GatewayError::new(Code::Unauthenticated, "token 100% expired: ü")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .with_cause("kid k1 at 10.0.0.7");
        let response =
            error.into_grpc_web_response(HeaderValue::from_static("application/grpc-web+proto"));
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "16");
        assert_eq!(headers["grpc-message"], "token 100%25 expired: %C3%BC");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(headers["content-type"], "application/grpc-web+proto");
        assert_eq!(effective_status(&response), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn body_is_a_google_rpc_status() {
        let err = GatewayError::not_found("no route");
        let json: serde_json::Value = serde_json::from_slice(&err.body_bytes()).unwrap();
        assert_eq!(json["code"], 5);
        assert_eq!(json["message"], "no route");
        assert!(json["details"].as_array().unwrap().is_empty());
    }
}
