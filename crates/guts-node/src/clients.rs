//! Per-client accounting for the HTTP server: how many connections each
//! client address holds, and a token bucket of requests per address.
//!
//! A client is an IPv4 address, or an IPv6 /64 (one subscriber's
//! allocation, so one host cannot take many slots by changing addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::NodeError;
use crate::limits::{RateLimit, MAX_TRACKED_CLIENTS};

/// The key a client is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip`: itself for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// Connections open now, node-wide and per client.
pub struct Connections {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The node serves its maximum of connections.
    Node(usize),
    /// This client holds its maximum of connections.
    Client(usize),
}

/// A counted connection; uncounted when dropped.
pub struct ConnectionSlot {
    owner: Arc<Connections>,
    key: ClientKey,
}

impl Connections {
    /// At most `max_total` connections, `max_per_client` per client.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Connections {
            max_total,
            max_per_client,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Counts a new connection from `ip`, unless that is over a limit.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let key = ClientKey::of(ip);
        let mut counts = lock(&self.counts);
        if counts.total >= self.max_total {
            return Err(Refused::Node(self.max_total));
        }
        let n = counts.per_client.entry(key).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Refused::Client(self.max_per_client));
        }
        *n += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            owner: Arc::clone(self),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.owner.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.key);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per key (a client address, or a DID), for at most
/// `capacity` keys.
pub struct RateLimiter<K = ClientKey> {
    limit: RateLimit,
    capacity: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl RateLimiter<ClientKey> {
    /// Takes a token for a request from `ip`, or says how long to wait.
    pub fn check(&self, ip: IpAddr) -> Result<(), NodeError> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), NodeError> {
        self.take_at(ClientKey::of(ip), now)
            .map_err(|retry_after| NodeError::RateLimited {
                client: ip.to_string(),
                retry_after,
            })
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// `limit` per key, remembering at most [`MAX_TRACKED_CLIENTS`].
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED_CLIENTS)
    }

    /// Takes a token for `key`, or says how long to wait.
    pub fn take(&self, key: K) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    fn with_capacity(limit: RateLimit, capacity: usize) -> Self {
        RateLimiter {
            limit,
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.limit.per_sec).min(f64::from(self.limit.burst))
    }

    fn take_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(&key) && buckets.len() >= self.capacity {
            self.evict(&mut buckets, now);
        }
        let burst = f64::from(self.limit.burst);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            return Ok(());
        }
        let wait = (1.0 - tokens) / self.limit.per_sec;
        Err(Duration::from_secs(wait.ceil().max(1.0) as u64))
    }

    /// Forgets clients whose bucket is full again (as if never seen); if
    /// that frees less than a tenth of the table, forgets arbitrary ones
    /// down to nine tenths, so a flood of addresses costs amortized O(1).
    fn evict(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.limit.burst);
        buckets.retain(|_, b| self.refilled(*b, now) < burst);
        let target = self.capacity - self.capacity / 10;
        if buckets.len() > target {
            let extra: Vec<K> = buckets
                .keys()
                .take(buckets.len() - target)
                .cloned()
                .collect();
            for key in extra {
                buckets.remove(&key);
            }
            tracing::warn!(
                tracked = buckets.len(),
                "rate limiter full of active clients; forgot some of them"
            );
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn connections_are_capped_per_client_and_in_all() {
        let conns = Connections::new(3, 2);
        let a1 = conns.open(ip("10.0.0.1")).expect("a1");
        let _a2 = conns.open(ip("10.0.0.1")).expect("a2");
        assert_eq!(conns.open(ip("10.0.0.1")).err(), Some(Refused::Client(2)));
        let _b1 = conns.open(ip("10.0.0.2")).expect("b1");
        assert_eq!(conns.open(ip("10.0.0.3")).err(), Some(Refused::Node(3)));
        drop(a1);
        conns.open(ip("10.0.0.1")).expect("a slot is free again");
    }

    #[test]
    fn a_burst_is_limited_then_refills() {
        let rl = RateLimiter::new(RateLimit {
            per_sec: 2.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check_at(ip("10.0.0.1"), t0).expect("within burst");
        }
        match rl.check_at(ip("10.0.0.1"), t0) {
            Err(NodeError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
        // Another client is not affected.
        rl.check_at(ip("10.0.0.2"), t0).expect("other client");
        // Half a second later one token (2/s) is back.
        rl.check_at(ip("10.0.0.1"), t0 + Duration::from_millis(500))
            .expect("refilled");
    }

    #[test]
    fn the_table_stays_bounded() {
        let rl = RateLimiter::with_capacity(
            RateLimit {
                per_sec: 1.0,
                burst: 10,
            },
            100,
        );
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::V4((0x0a00_0000 + i).into());
            rl.check_at(addr, t0).expect("first request");
            assert!(rl.tracked() <= 100);
        }
        // Much later every bucket is full again: all are forgotten at once.
        rl.check_at(ip("192.0.2.1"), t0 + Duration::from_secs(60))
            .expect("new client");
        assert_eq!(rl.tracked(), 1);
    }
}
