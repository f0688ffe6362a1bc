//! Bridges between async HTTP bodies and the blocking readers and writers
//! that `guts-git` works with. Nothing is buffered beyond a few chunks.
//!
//! A client that stops sending its request, or stops reading the response,
//! for [`IO_IDLE_TIMEOUT`] gets its request ended with an error, so a slow
//! or stalled client cannot hold one of the node's blocking threads.

use std::io::{self, Write};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Size of the chunks the response writer sends.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the blocking writer and the HTTP connection.
const CHANNEL_DEPTH: usize = 8;
/// Longest pause in a request body, or in the client's reading of a
/// response, before the request is abandoned.
pub const IO_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A blocking, buffered reader over a request body, gunzipped if `gzip`.
/// Must be used from a blocking thread.
pub fn blocking_reader(
    body: Body,
    gzip: bool,
) -> io::BufReader<SyncIoBridge<Box<dyn AsyncBufRead + Send + Unpin>>> {
    blocking_reader_with(body, gzip, IO_IDLE_TIMEOUT)
}

fn blocking_reader_with(
    body: Body,
    gzip: bool,
    idle: Duration,
) -> io::BufReader<SyncIoBridge<Box<dyn AsyncBufRead + Send + Unpin>>> {
    let stream =
        tokio_stream::StreamExt::timeout(body.into_data_stream(), idle).map(|item| match item {
            Ok(chunk) => chunk.map_err(io::Error::other),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing for too long",
            )),
        });
    let reader = StreamReader::new(Box::pin(stream));
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
    runtime: tokio::runtime::Handle,
    idle: Duration,
}

/// Create a writer and the response body it feeds. Must be called on the
/// runtime; the writer is then used from a blocking thread.
pub fn response_channel() -> (ChannelWriter, Body) {
    response_channel_with(IO_IDLE_TIMEOUT)
}

fn response_channel_with(idle: Duration) -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            runtime: tokio::runtime::Handle::current(),
            idle,
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
        let send = tokio::time::timeout(self.idle, self.tx.send(Ok(chunk)));
        match self.runtime.block_on(send) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for too long",
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_request_body_times_out() {
        // One chunk, then nothing (the sender is kept alive, never used).
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"0008abc\n")))
            .await
            .expect("send");
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::task::spawn_blocking(move || {
            let mut r = blocking_reader_with(body, false, Duration::from_millis(200));
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        })
        .await
        .expect("task");
        drop(tx);
        let err = result.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_ends_the_response() {
        let (mut writer, body) = response_channel_with(Duration::from_millis(200));
        let result = tokio::task::spawn_blocking(move || {
            // More than the channel holds, with nobody reading.
            let chunk = vec![0u8; CHUNK];
            (0..CHANNEL_DEPTH + 2)
                .try_for_each(|_| writer.write_all(&chunk).and_then(|()| writer.flush()))
        })
        .await
        .expect("task");
        let err = result.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(body);
    }
}
