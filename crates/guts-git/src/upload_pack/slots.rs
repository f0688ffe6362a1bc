//! Node-wide limits on serving packs: generation slots and the pack cache.
//!
//! Generating a pack takes CPU and memory in proportion to what is asked,
//! so a node generates at most [`PackSlots`] packs at once; a request
//! beyond that waits (its client sees `remote: waiting for a free slot` and
//! keep-alive packets) instead of failing or driving the node out of memory.
//! Streaming a stored or cached pack needs no slot.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::pack_cache::PackCache;

/// What serving fetches shares across requests.
pub struct Serving {
    /// Concurrent pack generations.
    pub slots: PackSlots,
    /// Packs generated earlier, for identical requests; `None` turns it off.
    pub cache: Option<PackCache>,
}

impl Default for Serving {
    /// One slot per core, no cache.
    fn default() -> Self {
        Serving {
            slots: PackSlots::new(default_slots()),
            cache: None,
        }
    }
}

/// The default number of generation slots: the number of cores.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A counting semaphore over pack generations.
pub struct PackSlots {
    max: usize,
    state: Mutex<SlotState>,
    freed: Condvar,
}

#[derive(Default)]
struct SlotState {
    used: usize,
    waiting: usize,
}

/// A held slot; dropping it frees the slot.
pub struct Slot<'a>(&'a PackSlots);

impl PackSlots {
    /// At most `max` (at least 1) generations at once.
    pub fn new(max: usize) -> Self {
        PackSlots {
            max: max.max(1),
            state: Mutex::new(SlotState::default()),
            freed: Condvar::new(),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots in use and requests waiting for one, now.
    pub fn usage(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.used, s.waiting)
    }

    /// Take a slot if one is free.
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.used < self.max {
            s.used += 1;
            return Some(Slot(self));
        }
        None
    }

    /// Wait up to `timeout` for a slot (the caller sends keep-alives between
    /// calls).
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<Slot<'_>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting += 1;
        let (mut s, _) = self
            .freed
            .wait_timeout_while(s, timeout, |s| s.used >= self.max)
            .unwrap_or_else(|e| e.into_inner());
        s.waiting -= 1;
        if s.used < self.max {
            s.used += 1;
            return Some(Slot(self));
        }
        None
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.used = s.used.saturating_sub(1);
        drop(s);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_and_release() {
        let slots = PackSlots::new(2);
        let a = slots.try_acquire().expect("first");
        let _b = slots.try_acquire().expect("second");
        assert!(slots.try_acquire().is_none());
        assert!(slots.acquire_timeout(Duration::from_millis(20)).is_none());
        drop(a);
        assert!(slots.acquire_timeout(Duration::from_millis(20)).is_some());
        assert_eq!(slots.usage(), (1, 0));
    }

    #[test]
    fn a_waiter_wakes_when_a_slot_frees() {
        let slots = std::sync::Arc::new(PackSlots::new(1));
        let held = slots.try_acquire().map(|s| {
            std::mem::forget(s);
        });
        assert!(held.is_some());
        let s2 = slots.clone();
        let waiter =
            std::thread::spawn(move || s2.acquire_timeout(Duration::from_secs(10)).is_some());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(slots.usage(), (1, 1));
        // Free the forgotten slot by hand, as its drop would.
        drop(Slot(&slots));
        assert!(waiter.join().expect("waiter"));
    }
}
