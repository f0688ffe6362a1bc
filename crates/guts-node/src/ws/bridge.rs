//! The two directions of a WebSocket as the blocking reader and writer
//! `guts-git` works with, through the bounded bridges of `crate::body`:
//! binary messages from the client become a request body (idle timeout and
//! minimum rate applied), and the bytes the service writes become binary
//! messages (a client that reads too slowly is dropped).

use std::io;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::body::{BodyStream, TransferLimits};

/// The client's binary messages as a body stream. Text messages are not
/// part of the protocol and end the stream with an error; a close ends it.
pub(super) fn incoming(stream: SplitStream<WebSocket>, limits: &TransferLimits) -> BodyStream {
    let bytes = stream
        .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => None,
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text messages are not part of git over a WebSocket",
                ))),
                Err(e) => Some(Err(io::Error::other(e))),
            })
        });
    // The server's guard (idle timeout, minimum rate) over the messages.
    crate::body::stream_of(crate::body::guarded(Body::from_stream(bytes), limits))
}

/// Send what the service writes (`body`, fed by a [`crate::body::ChannelWriter`])
/// as binary messages, then close the connection. Returns when the body
/// ends or the client is gone; the body is dropped then, which ends the
/// service's writes.
pub(super) async fn outgoing(mut sink: SplitSink<WebSocket, Message>, body: Body) {
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk: Bytes = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "websocket response ended");
                return;
            }
        };
        if let Err(e) = sink.send(Message::Binary(chunk)).await {
            tracing::debug!(error = %e, "websocket client went away");
            return;
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}
