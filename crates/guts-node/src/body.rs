//! Bridges between async HTTP bodies and the blocking readers and writers
//! that `guts-git` works with. Nothing is buffered beyond a few chunks.
//!
//! A slow or stalled client cannot hold one of the node's blocking threads:
//! a request body that pauses for [`TransferLimits::idle`], or that averages
//! less than [`TransferLimits::min_rate`] bytes/s over a
//! [`TransferLimits::window`] of waiting for it, ends the request with an
//! error; so does a client that reads the response that slowly. Only time
//! the node spends waiting for the client counts, never time it spends
//! working.

use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::limits::{DEFAULT_MIN_RATE_WINDOW_SECS, DEFAULT_MIN_TRANSFER_RATE};

/// Size of the buffer of the blocking request reader.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes the response writer collects before handing them to the connection.
const CHUNK: usize = 64 * 1024;
/// The response is handed to the connection in pieces of at most this many
/// bytes, so that the bytes a slow reader has taken are known to within a
/// piece (see [`RateMeter`]).
const PIECE: usize = 8 * 1024;
/// Pieces in flight between the blocking writer and the HTTP connection.
const CHANNEL_DEPTH: usize = 16;
/// Longest pause in a request body, or in the client's reading of a
/// response, before the request is abandoned.
pub const IO_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How slow a client may be in sending a request body or reading a response.
#[derive(Debug, Clone, Copy)]
pub struct TransferLimits {
    /// Longest pause.
    pub idle: Duration,
    /// Least average rate, in bytes/s, over each `window` of waiting for the
    /// client; 0 turns the check off.
    pub min_rate: u64,
    /// The span over which `min_rate` is averaged.
    pub window: Duration,
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            idle: IO_IDLE_TIMEOUT,
            min_rate: DEFAULT_MIN_TRANSFER_RATE,
            window: Duration::from_secs(DEFAULT_MIN_RATE_WINDOW_SECS),
        }
    }
}

/// Counts the time the node waited for a client and the bytes that moved
/// meanwhile, window by window.
#[derive(Debug, Clone)]
struct RateMeter {
    min_rate: u64,
    window: Duration,
    /// Bytes credited to the client whatever it did (the granularity of
    /// the count), so a client at exactly the minimum rate never fails.
    slack: u64,
    waited: Duration,
    bytes: u64,
}

impl RateMeter {
    fn new(limits: &TransferLimits, slack: u64) -> Self {
        RateMeter {
            min_rate: limits.min_rate,
            window: limits.window.max(Duration::from_millis(1)),
            slack,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Waiting time left in the current window (a long time if off).
    fn budget(&self) -> Duration {
        if self.min_rate == 0 {
            return Duration::from_secs(365 * 24 * 3600);
        }
        self.window.saturating_sub(self.waited)
    }

    /// Adds `waited` and `bytes`; false if a window closed with too few bytes.
    fn record(&mut self, waited: Duration, bytes: usize) -> bool {
        if self.min_rate == 0 {
            return true;
        }
        self.waited += waited;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        if self.waited < self.window {
            return true;
        }
        let needed = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
        let ok = self.bytes.saturating_add(self.slack) >= needed;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        ok
    }

    fn too_slow(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client {what} less than {} bytes/s over {} s",
                self.min_rate,
                self.window.as_secs_f64()
            ),
        )
    }
}

/// A request body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// `body` as a [`BodyStream`]; the I/O errors of a [`guarded_body`] (a
/// client too slow) keep their kind.
pub fn stream_of(body: Body) -> BodyStream {
    Box::pin(body.into_data_stream().map(|chunk| chunk.map_err(into_io)))
}

/// The I/O error inside `e` (bodies wrap errors in `axum::Error`, possibly
/// several times), else `e` as an I/O error.
fn into_io(e: axum::Error) -> io::Error {
    let mut inner = e.into_inner();
    loop {
        match inner.downcast::<axum::Error>() {
            Ok(wrapped) => inner = wrapped.into_inner(),
            Err(other) => {
                return match other.downcast::<io::Error>() {
                    Ok(io) => *io,
                    Err(other) => io::Error::other(other),
                }
            }
        }
    }
}

/// `body` with the transfer limits applied, as a body again (the server
/// applies this to every request).
pub fn guarded(body: Body, limits: &TransferLimits) -> Body {
    Body::from_stream(guarded_body(body, limits))
}

/// The request body as a [`BodyStream`] that fails with
/// [`io::ErrorKind::TimedOut`] when the client is too slow.
fn guarded_body(body: Body, limits: &TransferLimits) -> BodyStream {
    let stream = tokio_stream::StreamExt::timeout(body.into_data_stream(), limits.idle).map(
        |item| match item {
            Ok(chunk) => chunk.map_err(io::Error::other),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing for too long",
            )),
        },
    );
    if limits.min_rate == 0 {
        return Box::pin(stream);
    }
    Box::pin(MinRate {
        inner: Box::pin(stream),
        meter: RateMeter::new(limits, 0),
        pending_since: None,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    })
}

/// Ends a stream with an error when it delivers less than the minimum rate
/// while it is being waited for.
struct MinRate {
    inner: BodyStream,
    meter: RateMeter,
    /// When the current wait for the client began.
    pending_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl Stream for MinRate {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let waited = this
                        .pending_since
                        .take()
                        .map_or(Duration::ZERO, |t| t.elapsed());
                    if !this.meter.record(waited, chunk.len()) {
                        return Poll::Ready(Some(Err(this.meter.too_slow("sent"))));
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(other) => {
                    this.pending_since = None;
                    return Poll::Ready(other);
                }
                Poll::Pending => {}
            }
            let since = *this.pending_since.get_or_insert_with(Instant::now);
            let deadline = since + this.meter.budget();
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // A whole window passed while waiting: judge it, then wait on.
            let budget = this.meter.budget();
            if !this.meter.record(budget, 0) {
                return Poll::Ready(Some(Err(this.meter.too_slow("sent"))));
            }
            this.pending_since = Some(since + budget);
        }
    }
}

/// The first bytes of a request body, read before work is scheduled.
pub struct Prefetched {
    chunks: Vec<Bytes>,
    /// Bytes read.
    pub len: usize,
    /// Whether that was the whole body.
    pub complete: bool,
}

/// Reads up to about `max` bytes of `body` without a blocking thread, so
/// that a slow client is refused before it takes one.
pub async fn prefetch(body: &mut BodyStream, max: usize) -> io::Result<Prefetched> {
    let mut pre = Prefetched {
        chunks: Vec::new(),
        len: 0,
        complete: false,
    };
    while pre.len < max {
        match body.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                pre.len += chunk.len();
                pre.chunks.push(chunk);
            }
            None => {
                pre.complete = true;
                break;
            }
        }
    }
    Ok(pre)
}

/// A blocking, buffered reader over a request body (`prefix`, then the rest
/// of `body`), gunzipped if `gzip`. Must be used from a blocking thread.
pub fn blocking_reader(
    prefix: Prefetched,
    body: BodyStream,
    gzip: bool,
) -> io::BufReader<SyncIoBridge<Box<dyn AsyncBufRead + Send + Unpin>>> {
    let stream = futures_util::stream::iter(prefix.chunks.into_iter().map(Ok)).chain(body);
    let reader = StreamReader::new(stream);
    let reader: Box<dyn AsyncBufRead + Send + Unpin> = if gzip {
        Box::new(BufReader::new(
            async_compression::tokio::bufread::GzipDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    };
    io::BufReader::with_capacity(READ_BUFFER, SyncIoBridge::new(reader))
}

/// A blocking writer whose bytes become a streamed response body.
pub struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
    runtime: tokio::runtime::Handle,
    idle: Duration,
    meter: RateMeter,
}

/// Create a writer and the response body it feeds. Must be called on the
/// runtime; the writer is then used from a blocking thread.
pub fn response_channel(limits: &TransferLimits) -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            runtime: tokio::runtime::Handle::current(),
            idle: limits.idle,
            meter: RateMeter::new(limits, PIECE as u64),
        },
        body,
    )
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        let mut data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(PIECE));
            let (tx, meter, idle) = (&self.tx, &mut self.meter, self.idle);
            self.runtime.block_on(send_piece(tx, meter, idle, piece))?;
        }
        Ok(())
    }
}

/// Hands `piece` to the connection, waiting at most `idle` for room and
/// failing if the client takes less than the minimum rate meanwhile.
async fn send_piece(
    tx: &mpsc::Sender<Result<Bytes, io::Error>>,
    meter: &mut RateMeter,
    idle: Duration,
    piece: Bytes,
) -> io::Result<()> {
    let started = Instant::now();
    let mut window_start = started;
    loop {
        let idle_left = idle.saturating_sub(started.elapsed());
        let budget = meter.budget();
        match tokio::time::timeout(budget.min(idle_left), tx.reserve()).await {
            Ok(Ok(permit)) => {
                let ok = meter.record(window_start.elapsed(), piece.len());
                permit.send(Ok(piece));
                return if ok {
                    Ok(())
                } else {
                    Err(meter.too_slow("read"))
                };
            }
            Ok(Err(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "client went away",
                ))
            }
            Err(_) if started.elapsed() >= idle => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for too long",
                ))
            }
            Err(_) => {
                if !meter.record(budget, 0) {
                    return Err(meter.too_slow("read"));
                }
                window_start += budget;
            }
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

    fn limits(idle_ms: u64, min_rate: u64, window_ms: u64) -> TransferLimits {
        TransferLimits {
            idle: Duration::from_millis(idle_ms),
            min_rate,
            window: Duration::from_millis(window_ms),
        }
    }

    /// A body fed by a task that sends `chunk` every `every`, `count` times.
    fn trickle(chunk: &'static [u8], every: Duration, count: usize) -> Body {
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(1);
        tokio::spawn(async move {
            for _ in 0..count {
                if tx.send(Ok(Bytes::from_static(chunk))).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn read_all(body: Body, limits: TransferLimits) -> io::Result<Vec<u8>> {
        let mut stream = stream_of(guarded(body, &limits));
        let pre = prefetch(&mut stream, 4).await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            blocking_reader(pre, stream, false)
                .read_to_end(&mut out)
                .map(|_| out)
        })
        .await
        .expect("task")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_request_body_times_out() {
        // One chunk, then nothing (the sender is kept alive, never used).
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"0008abc\n")))
            .await
            .expect("send");
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = read_all(body, limits(200, 0, 1000)).await;
        drop(tx);
        let err = result.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickling_request_body_is_dropped() {
        // One byte every 20 ms (50 B/s) never pauses for the idle timeout,
        // but is far below 1000 B/s.
        let body = trickle(b"x", Duration::from_millis(20), 1000);
        let err = read_all(body, limits(10_000, 1000, 200))
            .await
            .expect_err("too slow");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("less than 1000 bytes/s"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_above_the_minimum_rate_is_read_whole() {
        // 64 bytes every 10 ms (6400 B/s) against a minimum of 100 B/s.
        let chunk = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let body = trickle(chunk, Duration::from_millis(10), 40);
        let out = read_all(body, limits(10_000, 100, 100))
            .await
            .expect("fast enough");
        assert_eq!(out.len(), 64 * 40);
    }

    #[test]
    fn the_meter_judges_each_window() {
        let mut m = RateMeter::new(&limits(0, 100, 1000), 0);
        assert!(m.record(Duration::from_millis(500), 10));
        // The window closes with 10 + 95 >= 100 bytes.
        assert!(m.record(Duration::from_millis(500), 95));
        // A new window: 50 bytes in 1 s is too few.
        assert!(!m.record(Duration::from_secs(1), 50));
        let mut off = RateMeter::new(&limits(0, 0, 1000), 0);
        assert!(off.record(Duration::from_secs(3600), 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_ends_the_response() {
        let (mut writer, body) = response_channel(&limits(200, 0, 1000));
        let result = tokio::task::spawn_blocking(move || {
            // More than the channel holds, with nobody reading.
            let chunk = vec![0u8; CHUNK];
            (0..4).try_for_each(|_| writer.write_all(&chunk).and_then(|()| writer.flush()))
        })
        .await
        .expect("task");
        let err = result.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(body);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_reads_too_slowly_ends_the_response() {
        let (mut writer, body) = response_channel(&limits(10_000, 1_000_000, 200));
        // The reader takes one piece every 50 ms: 160 KiB/s, under 1 MB/s.
        let reader = tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            while let Some(Ok(_)) = stream.next().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let result = tokio::task::spawn_blocking(move || {
            let chunk = vec![0u8; CHUNK];
            (0..64).try_for_each(|_| writer.write_all(&chunk).and_then(|()| writer.flush()))
        })
        .await
        .expect("task");
        let err = result.expect_err("too slow");
        assert!(err.to_string().contains("read less than"), "{err}");
        reader.abort();
    }
}
