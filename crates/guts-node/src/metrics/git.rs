//! Git operations over HTTP: clones (an upload-pack that sent a pack for no
//! `have`), fetches, pushes, bytes and objects each way, failures by reason,
//! pack generation time; and the queue for work slots.

use std::io::{BufRead, Read, Write};

use guts_git::receive_pack::PushOutcome;
use guts_git::upload_pack::UploadStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::limits::Work;

/// One label with a value from a closed set.
type Label = [(&'static str, &'static str); 1];
/// Two labels with values from closed sets.
type Labels2 = [(&'static str, &'static str); 2];

fn work_label(work: Work) -> Label {
    [(
        "work",
        match work {
            Work::Push => "push",
            Work::Fetch => "fetch",
        },
    )]
}

/// Requests waiting for a work slot, and waits refused; owned by
/// [`crate::limits::WorkSlots`], registered by [`GitMetrics`].
#[derive(Debug, Clone, Default)]
pub struct SlotMetrics {
    waiting: Family<Label, Gauge>,
    refused: Family<Label, Counter>,
}

impl SlotMetrics {
    /// A request starts waiting for a `work` slot.
    pub fn wait(&self, work: Work) -> SlotWait {
        let gauge = self.waiting.get_or_create(&work_label(work)).clone();
        gauge.inc();
        SlotWait(gauge)
    }

    /// A wait for a `work` slot ran out.
    pub fn refused(&self, work: Work) {
        self.refused.get_or_create(&work_label(work)).inc();
    }
}

/// A request waiting for a slot; it stops waiting when dropped.
pub struct SlotWait(Gauge);

impl Drop for SlotWait {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The git families.
#[derive(Debug)]
pub struct GitMetrics {
    clones: Counter,
    fetches: Counter,
    pushes: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
    sent_objects: Counter,
    received_objects: Counter,
    failures: Family<Labels2, Counter>,
    generation: Histogram,
}

impl GitMetrics {
    /// Register `git_*` and `work_slot_*` into `registry`.
    pub fn new(registry: &mut Registry, slots: &SlotMetrics) -> Self {
        let m = GitMetrics {
            clones: Counter::default(),
            fetches: Counter::default(),
            pushes: Counter::default(),
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            sent_objects: Counter::default(),
            received_objects: Counter::default(),
            failures: Family::default(),
            // 10 ms to about 80 s.
            generation: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        let r = registry;
        r.register(
            "git_clones",
            "Upload-pack requests that sent a pack to a client with nothing (no `have`)",
            m.clones.clone(),
        );
        r.register(
            "git_fetches",
            "Upload-pack requests that sent a pack to a client with objects (`have` lines)",
            m.fetches.clone(),
        );
        r.register(
            "git_pushes",
            "Receive-pack requests with ref updates (git's empty probe excluded)",
            m.pushes.clone(),
        );
        let bytes = [
            (
                "git_sent",
                "Bytes of upload-pack responses (negotiation and packs)",
                &m.sent_bytes,
            ),
            (
                "git_received",
                "Bytes of receive-pack requests (commands and packs, uncompressed)",
                &m.received_bytes,
            ),
        ];
        for (name, help, c) in bytes {
            r.register_with_unit(name, help, Unit::Bytes, c.clone());
        }
        r.register(
            "git_sent_objects",
            "Objects in the packs sent to clients",
            m.sent_objects.clone(),
        );
        r.register(
            "git_received_objects",
            "Objects in the packs received in pushes",
            m.received_objects.clone(),
        );
        r.register(
            "git_failures",
            "Git requests that failed or were refused, by operation and reason",
            m.failures.clone(),
        );
        r.register_with_unit(
            "git_pack_generation",
            "Time to walk and write a generated pack (stored and cached packs need none)",
            Unit::Seconds,
            m.generation.clone(),
        );
        r.register(
            "work_slot_waiting",
            "Git requests waiting for a work slot, by work (push, fetch)",
            slots.waiting.clone(),
        );
        r.register(
            "work_slot_refused",
            "Git requests refused (503) after waiting for a work slot too long, by work",
            slots.refused.clone(),
        );
        m
    }

    /// An upload-pack request ended: what it did, the bytes it wrote, and
    /// its error if it failed.
    pub fn upload_pack(&self, stats: &UploadStats, sent: u64, error: Option<&guts_git::Error>) {
        self.sent_bytes.inc_by(sent);
        if stats.pack {
            if stats.haves == 0 {
                self.clones.inc();
            } else {
                self.fetches.inc();
            }
            self.sent_objects.inc_by(stats.objects);
        }
        if let Some(t) = stats.generation {
            self.generation.observe(t.as_secs_f64());
        }
        if let Some(e) = error {
            self.failed("upload-pack", reason(e));
        }
    }

    /// A receive-pack request ended (`probe`: git's empty probe).
    pub fn receive_pack(
        &self,
        probe: bool,
        received: u64,
        result: &Result<PushOutcome, guts_git::Error>,
    ) {
        self.received_bytes.inc_by(received);
        if !probe {
            self.pushes.inc();
        }
        match result {
            Ok(outcome) => {
                self.received_objects.inc_by(u64::from(outcome.objects));
                if !outcome.rejected.is_empty() {
                    self.failed("receive-pack", "refused");
                }
            }
            Err(e) => self.failed("receive-pack", reason(e)),
        }
    }

    fn failed(&self, operation: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&[("operation", operation), ("reason", reason)])
            .inc();
    }
}

/// Why a git request failed, as a label value from a closed set.
fn reason(e: &guts_git::Error) -> &'static str {
    use guts_git::Error as G;
    match e {
        G::Protocol(_) | G::InvalidRefName(_) | G::InvalidRepoName { .. } => "protocol",
        G::NotOurRef(_) => "not_our_ref",
        G::Io(_) => "io",
        G::TooLarge(_) | G::Limit { .. } => "limit",
        G::Busy(_) => "busy",
        G::Pack(_) | G::CorruptObject { .. } | G::NotConnected { .. } | G::MissingObject(_) => {
            "bad_pack"
        }
        G::Rejected(_) => "refused",
        G::DiskFull => "disk_full",
        G::Unsupported(_) => "unsupported",
        _ => "internal",
    }
}

/// A reader or writer that counts the bytes through it.
pub struct Counted<T> {
    inner: T,
    /// Bytes read or written so far.
    pub bytes: u64,
}

impl<T> Counted<T> {
    /// Count what goes through `inner`.
    pub fn new(inner: T) -> Self {
        Counted { inner, bytes: 0 }
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.bytes += amt as u64;
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_counts_reads_and_consumes_once() {
        let data = b"0009done\n0000".to_vec();
        let mut r = Counted::new(std::io::BufReader::new(&data[..]));
        let mut first = [0u8; 4];
        r.read_exact(&mut first).expect("read");
        let rest = r.fill_buf().expect("fill").len();
        r.consume(rest);
        assert_eq!(r.bytes, data.len() as u64);
        let mut w = Counted::new(Vec::new());
        w.write_all(b"hello").expect("write");
        assert_eq!(w.bytes, 5);
    }

    #[test]
    fn slot_waits_are_released() {
        let slots = SlotMetrics::default();
        let wait = slots.wait(Work::Push);
        assert_eq!(
            slots.waiting.get_or_create(&work_label(Work::Push)).get(),
            1
        );
        drop(wait);
        assert_eq!(
            slots.waiting.get_or_create(&work_label(Work::Push)).get(),
            0
        );
    }
}
