//! Limits that keep a public node answering when clients are slow, greedy
//! or abusive: the header-read timeout, connection counts, the minimum
//! transfer rate, caps on concurrent pushes and pack generations, and the
//! per-client request rate. Each has a `run` flag and a config-file key
//! (docs/operator-guide.md, "Running a public node: connection limits").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{TransferLimits, IO_IDLE_TIMEOUT};
use crate::config::FileConfig;
use crate::error::NodeError;
use crate::metrics::git::SlotMetrics;

/// Seconds a connection has to send a request's headers (the first request,
/// or the next one on a kept-alive connection) before it is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Connections served at once, node-wide; more are closed on accept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one client address (an IPv4 address or
/// an IPv6 /64); more are refused with 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 32;
/// Least average rate, in bytes/s, at which a client must send a request
/// body (git or REST) or read a git response while the node waits for it.
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 1024;
/// Seconds of waiting over which [`DEFAULT_MIN_TRANSFER_RATE`] is averaged.
pub const DEFAULT_MIN_RATE_WINDOW_SECS: u64 = 30;
/// Seconds a push or fetch waits for a free slot before it is answered 503.
pub const DEFAULT_QUEUE_TIMEOUT_SECS: u64 = 30;
/// Requests per second one client address may make, sustained (git and
/// REST together).
pub const DEFAULT_RATE_LIMIT: f64 = 50.0;
/// Requests one client address may make in a burst above the sustained rate.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 200;
/// Client addresses the rate limiter remembers at most; idle ones are
/// forgotten first.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;
/// Bytes of a git request body read before it waits for a work slot, so a
/// client that trickles its request is refused without taking a slot.
pub const PREFETCH_BYTES: usize = 64 * 1024;
/// A receive-pack body this small (git's `0000` probe) needs no push slot.
pub const PROBE_BYTES: usize = 4;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Default cap on concurrent pushes: twice the cores, at least 4.
pub fn default_max_concurrent_pushes() -> usize {
    (2 * cores()).max(4)
}

/// Default cap on concurrent upload-pack requests (clones, fetches):
/// sixteen times the cores, at least 64. Most are cheap (a stored or cached
/// pack streamed from disk); the costly part, generating a pack, has its
/// own lower limit inside (`--pack-generations`), where a request waits
/// with `remote: waiting for a free slot` instead of being refused.
pub fn default_max_concurrent_fetches() -> usize {
    (16 * cores()).max(64)
}

/// The `run` flags for the limits (each also a config-file key).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Close connections that do not send complete request headers within this many seconds (also idle kept-alive connections); 0 turns it off [default: 10].
    #[arg(long, env = "GUTS_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Most connections served at once; more are closed on accept [default: 1024].
    #[arg(long, env = "GUTS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections at once from one client address (IPv4 address or IPv6 /64); more are refused [default: 32].
    #[arg(long, env = "GUTS_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Least average rate in bytes/s at which a client must send a request body (git or REST) or read a git response; 0 turns it off [default: 1024].
    #[arg(long, env = "GUTS_MIN_TRANSFER_RATE", value_name = "BYTES_PER_SEC")]
    pub min_transfer_rate: Option<u64>,
    /// Seconds of waiting for the client over which --min-transfer-rate is averaged [default: 30].
    #[arg(long, env = "GUTS_MIN_RATE_WINDOW", value_name = "SECS")]
    pub min_rate_window: Option<u64>,
    /// Most pushes (receive-pack requests) processed at once [default: 2 × CPU cores, at least 4].
    #[arg(long, env = "GUTS_MAX_CONCURRENT_PUSHES", value_name = "N")]
    pub max_concurrent_pushes: Option<usize>,
    /// Most upload-pack requests (clones, fetches) served at once; more wait, then get 503. Pack generation inside them is limited by --pack-generations [default: 16 × CPU cores, at least 64].
    #[arg(long, env = "GUTS_MAX_CONCURRENT_FETCHES", value_name = "N")]
    pub max_concurrent_fetches: Option<usize>,
    /// Seconds a push or fetch waits for a free slot before it is refused with 503 and Retry-After [default: 30].
    #[arg(long, env = "GUTS_QUEUE_TIMEOUT", value_name = "SECS")]
    pub queue_timeout: Option<u64>,
    /// Requests per second one client address may make, sustained (git and REST together; fractions allowed, e.g. 0.5); over it, 429 with Retry-After; 0 turns it off [default: 50].
    #[arg(long, env = "GUTS_RATE_LIMIT", value_name = "PER_SEC")]
    pub rate_limit: Option<f64>,
    /// Requests one client address may make at once above --rate-limit [default: 200].
    #[arg(long, env = "GUTS_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
}

/// A per-client token bucket's parameters.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: u32,
}

/// The resolved limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Header-read timeout; `None`: off.
    pub header_read_timeout: Option<Duration>,
    /// Connections at once, node-wide.
    pub max_connections: usize,
    /// Connections at once per client address.
    pub max_connections_per_client: usize,
    /// Idle timeout and minimum rate of git bodies.
    pub transfer: TransferLimits,
    /// Pushes at once.
    pub max_concurrent_pushes: usize,
    /// Pack generations at once.
    pub max_concurrent_fetches: usize,
    /// Longest wait for a push or fetch slot.
    pub queue_timeout: Duration,
    /// Per-client request rate; `None`: off.
    pub rate: Option<RateLimit>,
}

impl LimitArgs {
    /// Flags, then the config file, then defaults.
    pub fn resolve(&self, file: &FileConfig) -> Result<HttpLimits, NodeError> {
        let secs = Duration::from_secs;
        let header = self
            .header_read_timeout
            .or(file.header_read_timeout)
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_SECS);
        let rate = self
            .rate_limit
            .or(file.rate_limit)
            .unwrap_or(DEFAULT_RATE_LIMIT);
        let burst = self
            .rate_limit_burst
            .or(file.rate_limit_burst)
            .unwrap_or(DEFAULT_RATE_LIMIT_BURST);
        let limits = HttpLimits {
            header_read_timeout: (header > 0).then(|| secs(header)),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client: self
                .max_connections_per_client
                .or(file.max_connections_per_client)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
            transfer: TransferLimits {
                idle: IO_IDLE_TIMEOUT,
                min_rate: self
                    .min_transfer_rate
                    .or(file.min_transfer_rate)
                    .unwrap_or(DEFAULT_MIN_TRANSFER_RATE),
                window: secs(
                    self.min_rate_window
                        .or(file.min_rate_window)
                        .unwrap_or(DEFAULT_MIN_RATE_WINDOW_SECS),
                ),
            },
            max_concurrent_pushes: self
                .max_concurrent_pushes
                .or(file.max_concurrent_pushes)
                .unwrap_or_else(default_max_concurrent_pushes),
            max_concurrent_fetches: self
                .max_concurrent_fetches
                .or(file.max_concurrent_fetches)
                .unwrap_or_else(default_max_concurrent_fetches),
            queue_timeout: secs(
                self.queue_timeout
                    .or(file.queue_timeout)
                    .unwrap_or(DEFAULT_QUEUE_TIMEOUT_SECS),
            ),
            rate: (rate > 0.0).then_some(RateLimit {
                per_sec: rate,
                burst: burst.max(1),
            }),
        };
        limits.check()?;
        Ok(limits)
    }
}

impl HttpLimits {
    fn check(&self) -> Result<(), NodeError> {
        let zero = [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
            ("max_concurrent_pushes", self.max_concurrent_pushes),
            ("max_concurrent_fetches", self.max_concurrent_fetches),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(NodeError::Config(format!("{name} must be at least 1")));
        }
        if let Some(rate) = self.rate {
            if !rate.per_sec.is_finite() {
                return Err(NodeError::Config(
                    "rate_limit must be a finite number".into(),
                ));
            }
        }
        if self.transfer.min_rate > 0 && self.transfer.window.is_zero() {
            return Err(NodeError::Config(
                "min_rate_window must be at least 1 s when min_transfer_rate is set".into(),
            ));
        }
        Ok(())
    }
}

/// What a request is waiting to do.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// A push (receive-pack with commands).
    Push,
    /// A pack generation (upload-pack).
    Fetch,
}

/// Node-wide caps on concurrent git work.
pub struct WorkSlots {
    pushes: Arc<Semaphore>,
    fetches: Arc<Semaphore>,
    queue_timeout: Duration,
    metrics: SlotMetrics,
}

impl WorkSlots {
    /// Slots as `limits` configure them.
    pub fn new(limits: &HttpLimits) -> Self {
        WorkSlots {
            pushes: Arc::new(Semaphore::new(limits.max_concurrent_pushes)),
            fetches: Arc::new(Semaphore::new(limits.max_concurrent_fetches)),
            queue_timeout: limits.queue_timeout,
            metrics: SlotMetrics::default(),
        }
    }

    /// Requests waiting for a slot, and waits refused.
    pub fn metrics(&self) -> &SlotMetrics {
        &self.metrics
    }

    /// Waits for a slot for `work`, at most the queue timeout. The slot is
    /// free again when the permit is dropped.
    pub async fn acquire(&self, work: Work) -> Result<OwnedSemaphorePermit, NodeError> {
        let sem = match work {
            Work::Push => &self.pushes,
            Work::Fetch => &self.fetches,
        };
        if let Ok(permit) = Arc::clone(sem).try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = self.metrics.wait(work);
        match tokio::time::timeout(self.queue_timeout, Arc::clone(sem).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(NodeError::Internal("work slots closed".into())),
            Err(_) => Err(self.refused(work)),
        }
    }

    fn refused(&self, work: Work) -> NodeError {
        self.metrics.refused(work);
        NodeError::Busy {
            what: match work {
                Work::Push => "pushes",
                Work::Fetch => "fetches",
            },
            retry_after: Duration::from_secs(RETRY_BUSY_SECS),
        }
    }
}

/// The `Retry-After` given to a request refused for lack of a work slot.
pub const RETRY_BUSY_SECS: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let limits = LimitArgs::default()
            .resolve(&FileConfig::default())
            .expect("defaults");
        assert_eq!(limits.header_read_timeout, Some(Duration::from_secs(10)));
        assert!(limits.max_concurrent_pushes >= 4);
        assert!(limits.max_concurrent_fetches >= 8);
        assert!(limits.rate.is_some());
        assert_eq!(limits.transfer.min_rate, DEFAULT_MIN_TRANSFER_RATE);
    }

    #[test]
    fn zero_caps_are_refused() {
        let args = LimitArgs {
            max_concurrent_pushes: Some(0),
            ..LimitArgs::default()
        };
        assert!(args.resolve(&FileConfig::default()).is_err());
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let limits = LimitArgs {
            max_concurrent_pushes: Some(1),
            queue_timeout: Some(0),
            ..LimitArgs::default()
        }
        .resolve(&FileConfig::default())
        .expect("limits");
        let slots = WorkSlots::new(&limits);
        let held = slots.acquire(Work::Push).await.expect("first");
        let err = slots.acquire(Work::Push).await.expect_err("busy");
        assert!(matches!(err, NodeError::Busy { .. }), "{err}");
        drop(held);
        let _again = slots.acquire(Work::Push).await.expect("free again");
    }
}
