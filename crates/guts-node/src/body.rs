//! Bridges between async HTTP bodies and the blocking readers and writers
//! that `guts-git` works with. Nothing is buffered beyond a few chunks.

use std::io::{self, Write};

use axum::body::Body;
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Size of the chunks the response writer sends.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the blocking writer and the HTTP connection.
const CHANNEL_DEPTH: usize = 8;

/// A blocking, buffered reader over a request body, gunzipped if `gzip`.
/// Must be used from a blocking thread.
pub fn blocking_reader(
    body: Body,
    gzip: bool,
) -> io::BufReader<SyncIoBridge<Box<dyn AsyncBufRead + Send + Unpin>>> {
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = StreamReader::new(stream);
    let reader: Box<dyn AsyncBufRead + Send + Unpin> = if gzip {
        Box::new(BufReader::new(
            async_compression::tokio::bufread::GzipDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    };
    io::BufReader::with_capacity(CHUNK, SyncIoBridge::new(reader))
}

/// A blocking writer whose bytes become a streamed response body.
pub struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

/// Create a writer and the response body it feeds.
pub fn response_channel() -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        body,
    )
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send_buf();
    }
}
