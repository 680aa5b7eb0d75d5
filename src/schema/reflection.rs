//! Fetching descriptors from an upstream's gRPC server reflection service
//! (`reflection: true`). Servers answer `FileContainingSymbol` with one file and no
//! dependencies, so dependencies are walked with `FileByFilename`. v1 first, v1alpha if
//! the server only has that.

use crate::upstream::grpc::Connection;
use bytes::Bytes;
use prost::Message;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// Every reflection call gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Encoded FileDescriptorProtos of every service the server lists (reflection and health
/// excluded), with all their dependencies.
pub async fn fetch_descriptors(channel: Connection) -> Result<Vec<Bytes>, String> {
    match v1::fetch(channel.clone()).await {
        Err(status) if status.code() == tonic::Code::Unimplemented => v1alpha::fetch(channel)
            .await
            .map_err(|s| format!("reflection (v1alpha): {}", s.message())),
        other => other.map_err(|s| format!("reflection: {}", s.message())),
    }
}

/// The same client over the two generated packages (their types differ, shapes do not).
macro_rules! reflection_client {
    ($module:ident, $pb:path) => {
        mod $module {
            use super::*;
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;

            async fn ask(
                client: &mut ServerReflectionClient<Connection>,
                request: MessageRequest,
            ) -> Result<MessageResponse, tonic::Status> {
                let message = pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                let call = async {
                    let mut stream = client
                        .server_reflection_info(tokio_stream::once(message))
                        .await?
                        .into_inner();
                    stream.message().await?.ok_or_else(|| {
                        tonic::Status::unavailable("reflection stream ended without an answer")
                    })
                };
                let response = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .map_err(|_| tonic::Status::deadline_exceeded("reflection call timed out"))??;
                match response.message_response {
                    Some(MessageResponse::ErrorResponse(e)) => Err(tonic::Status::new(
                        tonic::Code::from_i32(e.error_code),
                        e.error_message,
                    )),
                    Some(other) => Ok(other),
                    None => Err(tonic::Status::internal("empty reflection answer")),
                }
            }

            fn files(response: MessageResponse) -> Vec<Vec<u8>> {
                match response {
                    MessageResponse::FileDescriptorResponse(f) => f.file_descriptor_proto,
                    _ => Vec::new(),
                }
            }

            pub(super) async fn fetch(channel: Connection) -> Result<Vec<Bytes>, tonic::Status> {
                let mut client = ServerReflectionClient::new(channel);
                let services =
                    match ask(&mut client, MessageRequest::ListServices(String::new())).await? {
                        MessageResponse::ListServicesResponse(list) => list.service,
                        _ => Vec::new(),
                    };
                let mut pending: Vec<Vec<u8>> = Vec::new();
                for service in services {
                    if service.name.starts_with("grpc.reflection.")
                        || service.name == "grpc.health.v1.Health"
                    {
                        continue;
                    }
                    let answer = ask(
                        &mut client,
                        MessageRequest::FileContainingSymbol(service.name),
                    )
                    .await?;
                    pending.extend(files(answer));
                }
                // Walk dependencies; output is dependencies-first so the pool can add in order.
                let mut seen: HashSet<String> = HashSet::new();
                let mut ordered: Vec<(String, Bytes, Vec<String>)> = Vec::new();
                while let Some(raw) = pending.pop() {
                    let file = prost_types::FileDescriptorProto::decode(raw.as_slice())
                        .map_err(|e| tonic::Status::internal(format!("bad descriptor: {e}")))?;
                    let name = file.name.clone().unwrap_or_default();
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    for dependency in &file.dependency {
                        if !seen.contains(dependency) {
                            let answer = ask(
                                &mut client,
                                MessageRequest::FileByFilename(dependency.clone()),
                            )
                            .await?;
                            pending.extend(files(answer));
                        }
                    }
                    ordered.push((name, Bytes::from(raw), file.dependency));
                }
                Ok(topological(ordered))
            }
        }
    };
}

reflection_client!(v1, tonic_reflection::pb::v1);
reflection_client!(v1alpha, tonic_reflection::pb::v1alpha);

/// Orders files so each comes after the files it imports.
fn topological(files: Vec<(String, Bytes, Vec<String>)>) -> Vec<Bytes> {
    let names: BTreeSet<String> = files.iter().map(|(n, _, _)| n.clone()).collect();
    let mut placed: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(files.len());
    let mut remaining = files;
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|(name, bytes, deps)| {
            let ready = deps
                .iter()
                .all(|d| placed.contains(d) || !names.contains(d));
            if ready {
                placed.insert(name.clone());
                out.push(bytes.clone());
            }
            !ready
        });
        if remaining.len() == before {
            // An import cycle cannot be ordered; let the pool report it.
            out.extend(remaining.drain(..).map(|(_, b, _)| b));
        }
    }
    out
}
