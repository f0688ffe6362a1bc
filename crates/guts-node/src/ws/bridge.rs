//! The two directions of a WebSocket as the blocking reader and writer
//! `guts-git` works with, through the bounded bridges of `crate::body`:
//! binary messages from the client become a request body (idle timeout and
//! minimum rate applied), and the bytes the service writes become binary
//! messages (a client that reads too slowly is dropped).

use std::io;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::body::{BodyStream, TransferLimits};

/// Most pieces of the response writer sent as one message (8 KiB each).
const MAX_BATCH: usize = 16;

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
    // The writer hands over pieces of 8 KiB; those ready at once go out as
    // one message (fewer frames and flushes, fewer writes on the client).
    let mut batches = body.into_data_stream().ready_chunks(MAX_BATCH);
    while let Some(batch) = batches.next().await {
        let mut data = BytesMut::new();
        for chunk in batch {
            match chunk {
                Ok(c) => data.extend_from_slice(&c),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket response ended");
                    return;
                }
            }
        }
        if let Err(e) = sink.send(Message::Binary(data.freeze())).await {
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
