//! A node-wide byte budget for what clients make a node buffer (SMTP DATA, IMAP literals):
//! per-connection limits alone let 1,024 connections × 10 MiB ask for 10 GiB. Reservations are
//! taken without waiting (over the budget, the client gets a temporary failure and tries again
//! later) and given back when dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget: at most `max` bytes reserved at once.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reservations refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as data arrives.
    pub fn none(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// `n` bytes, if the budget has them now.
    pub fn try_reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        let mut r = self.none();
        r.grow(n).then_some(r)
    }

    fn take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(n).filter(|u| *u <= self.max) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes held against a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `n` more bytes; false (and nothing taken) if the budget has not got them.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if !self.budget.take(n) {
            self.budget.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.bytes += n;
        true
    }

    /// Makes sure at least `total` bytes are held, taking what is missing in steps of at
    /// least `step` (fewer atomic operations as a buffer grows).
    pub fn ensure(&mut self, total: usize, step: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let missing = total - self.bytes;
        let step = missing.max(step);
        if step > missing && self.budget.take(step) {
            self.bytes += step;
            return true;
        }
        self.grow(missing)
    }

    /// Gives back everything beyond `total`.
    pub fn shrink_to(&mut self, total: usize) {
        if total < self.bytes {
            self.budget
                .used
                .fetch_sub(self.bytes - total, Ordering::AcqRel);
            self.bytes = total;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_to_the_budget_and_are_given_back() {
        let b = Budget::new(100);
        let a = b.try_reserve(60).unwrap();
        assert!(b.try_reserve(50).is_none());
        assert_eq!(b.refused(), 1);
        let mut c = b.try_reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(!c.grow(1));
        drop(a);
        assert!(
            c.ensure(70, 1_000),
            "a step larger than what is left falls back to the need"
        );
        assert_eq!(c.bytes(), 70);
        assert_eq!(b.refused(), 2, "a step not taken is not a refusal");
        assert!(c.ensure(75, 20));
        assert_eq!(c.bytes(), 90, "steps of 20");
        c.shrink_to(10);
        assert_eq!(b.used(), 10);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.try_reserve(usize::MAX).is_none());
    }

    #[test]
    fn racing_threads_never_overshoot() {
        let b = Budget::new(1_000);
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        (0..1_000)
                            .filter_map(|_| b.try_reserve(7))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 1_000 / 7);
        assert!(b.used() <= 1_000);
    }
}
