//! gRPC statuses and metadata crossing into HTTP: status → `GatewayError` (details
//! rendered as JSON from the descriptor pool), metadata ↔ `Grpc-Metadata-*` headers.

use crate::error::{GatewayError, Origin, code_from_i32};
use crate::transcode::JsonCodec;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// `google.rpc.Status` as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// Metadata that marks a status the gateway made itself while calling a backend
/// (connecting, framing, a broken connection), as opposed to one the backend sent.
pub(super) const LOCAL_MARK: &str = "x-switchboard-local";

/// A status made by the gateway's own gRPC client. Its message is a cause for the log
/// (it names endpoints and transport errors); clients get a generic text for the code.
pub(crate) fn local_status(code: tonic::Code, cause: impl Into<String>) -> tonic::Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(LOCAL_MARK, tonic::metadata::MetadataValue::from_static("1"));
    tonic::Status::with_metadata(code, cause, metadata)
}

/// Whether the gateway made `status` itself ([`local_status`], or tonic from a transport
/// error) rather than receiving it from the backend.
pub(crate) fn is_local(status: &tonic::Status) -> bool {
    status.metadata().get(LOCAL_MARK).is_some() || std::error::Error::source(status).is_some()
}

/// Metadata that marks a request the server refused without processing it (above a
/// GOAWAY's last stream id, or REFUSED_STREAM): safe to send again, whatever the method.
const UNPROCESSED_MARK: &str = "x-switchboard-unprocessed";

/// UNAVAILABLE for a request the server never processed ([`is_unprocessed`]).
pub(crate) fn unprocessed_status(cause: impl Into<String>) -> tonic::Status {
    let mut status = local_status(tonic::Code::Unavailable, cause);
    status.metadata_mut().insert(
        UNPROCESSED_MARK,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// Whether `status` says the server never processed the request, so it can be resent.
pub(crate) fn is_unprocessed(status: &tonic::Status) -> bool {
    status.metadata().get(UNPROCESSED_MARK).is_some()
}

/// What a client reads for a failure whose cause stays in the log.
fn generic_message(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unavailable => "upstream unavailable",
        tonic::Code::DeadlineExceeded => "upstream did not answer in time",
        tonic::Code::Cancelled => "upstream call cancelled",
        _ => "upstream call failed",
    }
}

/// A backend status as the client sees it. Details whose type the pool knows are JSON
/// objects with `@type`; others keep their bytes in base64 under `value`. A status the
/// gateway made itself ([`local_status`], or one tonic made from a transport error)
/// keeps its text for the log only.
pub(crate) fn status_to_error(
    status: &tonic::Status,
    pool: &DescriptorPool,
    json: &JsonCodec,
) -> GatewayError {
    let code = code_from_i32(status.code() as i32);
    if is_local(status) {
        let origin = match code {
            // Unreachable or too slow: the backend's side, and the breaker's business.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Origin::Upstream
            }
            _ => Origin::Gateway,
        };
        return GatewayError::new(code, generic_message(code))
            .with_origin(origin)
            .with_cause(status.message());
    }
    let mut error = GatewayError::new(code, status.message()).with_origin(Origin::Upstream);
    if !status.details().is_empty()
        && let Ok(rpc) = RpcStatus::decode(status.details())
    {
        error.details = rpc
            .details
            .iter()
            .map(|any| render_any(any, pool, json))
            .collect();
    }
    let metadata = status.metadata().clone().into_headers();
    if !metadata.is_empty() {
        append_metadata_headers(&metadata, error.headers_mut());
    }
    error
}

fn render_any(
    any: &prost_types::Any,
    pool: &DescriptorPool,
    json: &JsonCodec,
) -> serde_json::Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let rendered = pool
        .get_message_by_name(type_name)
        .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .and_then(|message| json.to_value(&message).ok());
    match rendered {
        Some(serde_json::Value::Object(fields)) => {
            let mut object = serde_json::Map::with_capacity(fields.len() + 1);
            object.insert("@type".into(), any.type_url.clone().into());
            object.extend(fields);
            serde_json::Value::Object(object)
        }
        Some(other) => serde_json::json!({ "@type": any.type_url, "value": other }),
        None => serde_json::json!({
            "@type": any.type_url,
            "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
        }),
    }
}

/// Headers that belong to the gRPC protocol itself, never surfaced as metadata.
pub(crate) fn is_protocol_header(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
            | "grpc-encoding"
            | "grpc-accept-encoding"
            | "te"
            | "content-length"
            | "date"
            | "server"
    )
}

/// Response metadata and trailers → `Grpc-Metadata-<name>` headers.
pub(crate) fn append_metadata_headers(metadata: &HeaderMap, out: &mut HeaderMap) {
    for (name, value) in metadata {
        if is_protocol_header(name.as_str()) {
            continue;
        }
        if let Ok(header) = HeaderName::try_from(format!("grpc-metadata-{}", name.as_str())) {
            out.append(header, value.clone());
        }
    }
}

/// Whether a client may name `name` through `Grpc-Metadata-<name>`. Refused: hop-by-hop
/// and connection-level names (an HTTP/2 client would act on them: `connection: te`
/// strips `te`), names of the protocol (`content-type`, every `grpc-*`), `authorization`
/// (only the gateway sets it, from a checked token or `forward_authorization`), and the
/// trace headers the gateway sets itself. Claim names from `forward_claims` are stripped
/// by the middleware before this runs.
pub(crate) fn client_may_set(name: &str) -> bool {
    !(matches!(
        name,
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "trailers"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-type"
            | "content-length"
            | "content-encoding"
            | "authorization"
            | "cookie"
            | "x-trace-id"
            | "traceparent"
            | "tracestate"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "forwarded"
            | "user-agent"
            | "date"
            | "server"
    ) || name.starts_with("grpc-")
        || name.starts_with("proxy-")
        || name.starts_with(':'))
}

/// `Grpc-Metadata-<name>` request headers → metadata `<name>`. Names a client may not set
/// (see [`client_may_set`]) are dropped; a `-bin` value that is not base64 is refused
/// (400), since the backend would otherwise fail the whole call on it.
pub(crate) fn metadata_from_headers(
    headers: &HeaderMap,
    out: &mut HeaderMap,
) -> Result<(), GatewayError> {
    for (name, value) in headers {
        let Some(stripped) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        if stripped.is_empty() || !client_may_set(stripped) {
            if !stripped.is_empty() {
                tracing::debug!(name = stripped, "dropped client metadata the gateway owns");
            }
            continue;
        }
        if stripped.ends_with("-bin") && !is_base64(value.as_bytes()) {
            return Err(GatewayError::invalid_argument(format!(
                "header `{name}`: a binary metadata value must be base64"
            )));
        }
        if let Ok(name) = HeaderName::try_from(stripped) {
            out.append(name, value.clone());
        }
    }
    Ok(())
}

/// Standard base64, padded or not (gRPC accepts both for `-bin` metadata).
pub(crate) fn is_base64(value: &[u8]) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD.decode(value).is_ok() || STANDARD_NO_PAD.decode(value).is_ok()
}

/// A header value that is known to be valid (ASCII we produced ourselves).
pub(crate) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_render_with_type() {
        let schema = crate::schema::Schema::builtin();
        let json = JsonCodec::new(&Default::default());
        let info = schema
            .pool
            .get_message_by_name("google.rpc.ErrorInfo")
            .unwrap();
        let mut detail = DynamicMessage::new(info.clone());
        detail.set_field_by_name("reason", prost_reflect::Value::String("GONE".into()));
        let rpc = RpcStatus {
            code: 5,
            message: "missing".into(),
            details: vec![
                prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                    value: detail.encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/unknown.Thing".into(),
                    value: vec![1, 2, 3],
                },
            ],
        };
        let status = tonic::Status::with_details(
            tonic::Code::NotFound,
            "missing",
            rpc.encode_to_vec().into(),
        );
        let error = status_to_error(&status, &schema.pool, &json);
        assert_eq!(error.http_status().as_u16(), 404);
        assert_eq!(
            error.details[0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(error.details[0]["reason"], "GONE");
        assert_eq!(error.details[1]["value"], "AQID");
    }

    #[test]
    fn client_metadata_cannot_name_what_the_gateway_owns() {
        let mut headers = HeaderMap::new();
        for name in [
            "authorization",
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "host",
            "transfer-encoding",
            "proxy-authorization",
            "content-type",
            "content-length",
            "grpc-timeout",
            "grpc-encoding",
            "x-trace-id",
            "traceparent",
        ] {
            let header = HeaderName::try_from(format!("grpc-metadata-{name}")).unwrap();
            headers.insert(header, HeaderValue::from_static("forged"));
        }
        headers.insert("grpc-metadata-tenant", HeaderValue::from_static("acme"));
        headers.insert("grpc-metadata-blob-bin", HeaderValue::from_static("aGk="));
        let mut metadata = HeaderMap::new();
        metadata_from_headers(&headers, &mut metadata).unwrap();
        let names: Vec<&str> = metadata.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["tenant", "blob-bin"]);

        let mut bad = HeaderMap::new();
        bad.insert(
            "grpc-metadata-blob-bin",
            HeaderValue::from_static("not base64!"),
        );
        let error = metadata_from_headers(&bad, &mut HeaderMap::new()).unwrap_err();
        assert_eq!(error.code, tonic::Code::InvalidArgument);
    }

    #[test]
    fn metadata_prefixes() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-metadata-tenant", HeaderValue::from_static("acme"));
        headers.insert("grpc-metadata-grpc-status", HeaderValue::from_static("0"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let mut metadata = HeaderMap::new();
        metadata_from_headers(&headers, &mut metadata).unwrap();
        assert_eq!(metadata.len(), 1);
        assert_eq!(metadata["tenant"], "acme");
        let mut back = HeaderMap::new();
        append_metadata_headers(&metadata, &mut back);
        assert_eq!(back["grpc-metadata-tenant"], "acme");
    }
}
