//! The HTTP server's accept loop: hyper's HTTP/1.1 connection driver around
//! the axum router, with the connection-level limits `axum::serve` lacks
//! (a header-read timeout, connection counts per client and in all), the
//! per-client request rate and the minimum transfer rate of request bodies,
//! and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::Service;

use crate::body::{guarded, TransferLimits};
use crate::clients::{ConnectionSlot, Connections, RateLimiter, Refused};
use crate::error::{raw_http_answer, ApiError, GitHttpError, NodeError};
use crate::limits::HttpLimits;

/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// What every connection task shares.
struct Shared {
    router: Router,
    transfer: TransferLimits,
    rate: Option<RateLimiter>,
    header_read_timeout: Option<Duration>,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets open connections finish their current request, and
/// returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    let conns = Connections::new(limits.max_connections, limits.max_connections_per_client);
    let shared = Arc::new(Shared {
        router,
        transfer: limits.transfer,
        rate: limits.rate.map(RateLimiter::new),
        header_read_timeout: limits.header_read_timeout,
    });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = signal_tx.closed() => break,
        };
        // Responses go out as they are written (headers, then each body
        // chunk): with Nagle's algorithm a small answer waits for the
        // client's delayed ACK, 40 ms on Linux, on every request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let slot = match conns.open(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&stream, peer, why);
                continue;
            }
        };
        let conn = Connection {
            shared: Arc::clone(&shared),
            peer,
            slot: Arc::new(slot),
            _close: close_rx.clone(),
        };
        tokio::spawn(conn.run(stream, signal_tx.clone()));
    }
    drop(close_rx);
    drop(listener);
    tracing::info!(
        connections = close_tx.receiver_count(),
        "waiting for open connections to finish"
    );
    close_tx.closed().await;
}

async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Answers 503 on a connection over a limit, if that can be done without
/// waiting, and closes it (by dropping it).
fn refuse(stream: &TcpStream, peer: SocketAddr, why: Refused) {
    let msg = match why {
        Refused::Node(n) => {
            format!("the node is serving its maximum of {n} connections; retry later")
        }
        Refused::Client(n) => format!(
            "too many connections from {} (at most {n} at once); retry later",
            peer.ip()
        ),
    };
    tracing::debug!(%peer, reason = %msg, "connection refused");
    let _ = stream.try_write(&raw_http_answer(&NodeError::TooManyConnections(msg)));
}

/// The count of the connection a request came on, in the request's
/// extensions: a handler that takes the connection over (a WebSocket,
/// `crate::ws`) keeps it, so the connection stays counted against the
/// node's and its client's limits until the WebSocket closes.
#[derive(Clone)]
pub struct HeldSlot(#[allow(dead_code)] Arc<ConnectionSlot>);

/// One accepted connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Counts the connection against the limits while it lives (and
    /// while a WebSocket upgraded from it lives: [`HeldSlot`]).
    slot: Arc<ConnectionSlot>,
    /// Held until the connection closes; shutdown waits for all of them.
    _close: watch::Receiver<()>,
}

impl Connection {
    async fn run(self, stream: TcpStream, signal: watch::Sender<()>) {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.shared.header_read_timeout);
        let (shared, peer) = (Arc::clone(&self.shared), self.peer);
        let slot = Arc::clone(&self.slot);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let held = HeldSlot(Arc::clone(&slot));
            async move { Ok::<_, Infallible>(shared.handle(peer, held, req).await) }
        });
        // Upgrades: git over a WebSocket (`crate::ws`).
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = signal.closed(), if !shutting_down => {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

impl Shared {
    async fn handle(
        &self,
        peer: SocketAddr,
        held: HeldSlot,
        req: hyper::Request<Incoming>,
    ) -> Response {
        if let Some(rate) = &self.rate {
            if let Err(e) = rate.check(peer.ip()) {
                return refusal(req.uri().path(), e);
            }
        }
        // Every request body, git or REST, has the minimum rate and the
        // idle timeout: a trickling client is dropped wherever it sends.
        let mut req = req.map(|b| guarded(Body::new(b), &self.transfer));
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(held);
        let mut router = self.router.clone();
        match router.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// A refused request answered the way its route answers errors: JSON for
/// the REST API, plain text (shown by git as `remote: ...`) otherwise.
fn refusal(path: &str, e: NodeError) -> Response {
    if path.starts_with("/api/") {
        ApiError(e).into_response()
    } else {
        GitHttpError(e).into_response()
    }
}
