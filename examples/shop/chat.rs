//! `shop.chat.v1.ChatService`: a bidirectional stream answering each message as it arrives,
//! so the gateway's WebSocket bridge can be tested message by message.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Counters;
use super::pb::shop::chat::v1::ChatMessage;
use super::pb::shop::chat::v1::chat_service_server::{ChatService, ChatServiceServer};

pub const SERVICE: &str = "shop.chat.v1.ChatService";

/// The sender name of every reply.
pub const SUPPORT_USER: &str = "support";

/// The chat service.
#[derive(Debug)]
pub struct Chat {
    counters: Arc<Counters>,
}

/// A ready-to-serve chat server.
pub fn server(counters: Arc<Counters>) -> ChatServiceServer<Chat> {
    ChatServiceServer::new(Chat { counters })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Chat {
    type ConverseStream = ReplyStream;

    /// Maps the inbound stream one to one: `{user: "support", text: "echo: <text>",
    /// sequence: <same>}`. The reply stream ends when the client half-closes, and carries
    /// an inbound error through.
    async fn converse(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ConverseStream>, Status> {
        self.counters.chat.fetch_add(1, Ordering::Relaxed);
        let replies = request.into_inner().map(|message| {
            message.map(|m| ChatMessage {
                user: SUPPORT_USER.to_owned(),
                text: format!("echo: {}", m.text),
                sequence: m.sequence,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
