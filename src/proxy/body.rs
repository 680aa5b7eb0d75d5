//! Reading request bodies whole, within `max_body` and the request's deadline (the same
//! budget the backend call spends from next, so a slow body leaves the call less time).

use crate::error::GatewayError;
use crate::middleware::deadline::Deadline;
use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// The whole body, or 413 when it is (or announces to be) larger than `limit`.
pub(crate) async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    deadline: Deadline,
) -> Result<Bytes, GatewayError> {
    if announced_length(headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::body_too_large(limit));
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout_at(deadline.instant(), limited.collect()).await {
        // The client stalled while sending: its fault, whoever set the deadline.
        Err(_) => Err(
            GatewayError::deadline_exceeded("timed out reading the request body")
                .with_origin(crate::error::Origin::Client)
                .with_status(http::StatusCode::REQUEST_TIMEOUT)
                .closing_connection(),
        ),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::body_too_large(limit))
        }
        Ok(Err(e)) => Err(GatewayError::invalid_argument(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// The body length a request announces (`Content-Length`), if it is a number.
pub(crate) fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
