//! Progress of a long operation (maintenance, a seed), shared between the
//! thread doing the work and whoever reports it (a request streaming
//! progress lines to the CLI). Lock-free counters; the phase is a static
//! name so that reading it costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What a [`Progress`] shows at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The current phase, e.g. `"writing objects"`.
    pub phase: &'static str,
    /// Units done in this phase.
    pub done: u64,
    /// Units this phase will do, if known.
    pub total: Option<u64>,
    /// What the units are: `"objects"`, `"bytes"`, `"updates"`.
    pub unit: &'static str,
}

/// Phases remembered for a reporter that looks less often than they change.
const MAX_PHASES: usize = 64;

/// A progress record, updated by the worker and read by the reporter.
#[derive(Debug)]
pub struct Progress {
    /// Every phase entered, in order (the last is the current one), with
    /// its unit; at most [`MAX_PHASES`].
    phases: Mutex<Vec<(&'static str, &'static str)>>,
    done: AtomicU64,
    /// `u64::MAX`: unknown.
    total: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phases: Mutex::new(Vec::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
        }
    }
}

impl Progress {
    /// Enter `phase`, counting `unit`s, `total` of them if known; resets the count.
    pub fn phase(&self, phase: &'static str, unit: &'static str, total: Option<u64>) {
        let mut p = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PHASES {
            p.remove(0);
        }
        p.push((phase, unit));
        self.done.store(0, Ordering::Relaxed);
        self.total
            .store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many phases were entered (a reporter that saw `n` of them
    /// reports [`Progress::phases_after`]`(n)` it missed).
    pub fn phase_count(&self) -> usize {
        self.phases.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The phases entered after the first `n`, but the current one.
    pub fn phases_after(&self, n: usize) -> Vec<&'static str> {
        let p = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        let last = p.len().saturating_sub(1);
        p.get(n.min(last)..last)
            .unwrap_or_default()
            .iter()
            .map(|(phase, _)| *phase)
            .collect()
    }

    /// Set how many units of the phase are done.
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Count `n` more units done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Set the phase's total once it is known.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// What it shows now.
    pub fn snapshot(&self) -> Snapshot {
        let (phase, unit) = self
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
            .unwrap_or(("starting", ""));
        let total = self.total.load(Ordering::Relaxed);
        Snapshot {
            phase,
            done: self.done.load(Ordering::Relaxed),
            total: (total != u64::MAX).then_some(total),
            unit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_resets_the_count() {
        let p = Progress::default();
        p.phase("counting", "objects", None);
        p.add(3);
        p.add(4);
        assert_eq!(
            p.snapshot(),
            Snapshot {
                phase: "counting",
                done: 7,
                total: None,
                unit: "objects"
            }
        );
        p.phase("writing", "objects", Some(10));
        p.set(2);
        let s = p.snapshot();
        assert_eq!((s.phase, s.done, s.total), ("writing", 2, Some(10)));
        p.phase("indexing", "objects", None);
        assert_eq!(p.phase_count(), 3);
        assert_eq!(p.phases_after(0), ["counting", "writing"]);
        assert_eq!(p.phases_after(2), Vec::<&str>::new());
    }
}
