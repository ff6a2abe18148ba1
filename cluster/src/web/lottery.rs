//! How a front end picks a worker: lottery scheduling over the manager's load hints (Fox et al.),
//! each worker holding tickets in inverse proportion to its estimated queue.
//!
//! Hints are stale by up to a beacon period. Taken as they are (`naive`), every front end piles
//! onto the workers that looked idle at the last beacon, and queues oscillate; TranSend fixed
//! this with a running estimate of each queue's change between reports, which is what `corrected`
//! does: the hinted queue, plus the jobs this front end sent the worker since the hint, less what
//! the worker drains at its reported rate since then.
//!
//! Pure: time comes in as milliseconds, randomness as a draw in [0, 1).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::config::Lottery;
use super::proto::{ProcessKey, WorkerClass, WorkerHint};

/// A worker whose hint is older than this many beacon periods is left out (it may be gone).
pub const HINT_PERIODS_MAX: u64 = 6;

#[derive(Debug, Clone)]
struct Estimate {
    class: WorkerClass,
    addr: SocketAddr,
    queue: f64,
    rate_per_s: f64,
    /// When the hint's report was made (this front end's clock, ms).
    reported_at_ms: u64,
    /// When the hint arrived.
    heard_at_ms: u64,
    /// Jobs this front end sent since the hint.
    sent_since: u32,
}

/// The front end's view of the workers, from beacons and its own sends.
#[derive(Debug, Clone)]
pub struct Lotto {
    mode: Lottery,
    beacon_interval_ms: u64,
    workers: HashMap<ProcessKey, Estimate>,
}

impl Lotto {
    pub fn new(mode: Lottery, beacon_interval_ms: u64) -> Lotto {
        Lotto {
            mode,
            beacon_interval_ms: beacon_interval_ms.max(1),
            workers: HashMap::new(),
        }
    }

    pub fn mode(&self) -> Lottery {
        self.mode
    }

    /// A beacon arrived at `now_ms`: its workers replace what was known (workers it no longer
    /// lists are forgotten).
    pub fn on_beacon(&mut self, hints: &[WorkerHint], now_ms: u64) {
        let mut next = HashMap::with_capacity(hints.len());
        for h in hints {
            next.insert(
                h.key,
                Estimate {
                    class: h.class,
                    addr: h.addr,
                    queue: h.queue.max(0.0),
                    rate_per_s: h.rate_per_s.max(0.0),
                    reported_at_ms: now_ms.saturating_sub(h.report_age_ms),
                    heard_at_ms: now_ms,
                    sent_since: 0,
                },
            );
        }
        self.workers = next;
    }

    /// The queue this front end expects `key` to have now.
    pub fn estimated_queue(&self, key: &ProcessKey, now_ms: u64) -> Option<f64> {
        let e = self.workers.get(key)?;
        Some(match self.mode {
            Lottery::Naive => e.queue,
            Lottery::Corrected => {
                let drained =
                    e.rate_per_s * now_ms.saturating_sub(e.reported_at_ms) as f64 / 1000.0;
                (e.queue + f64::from(e.sent_since) - drained).max(0.0)
            }
        })
    }

    /// Draws a worker of `class`, not in `exclude` (workers already tried for this request);
    /// `draw` is uniform in [0, 1). Records the send for the corrected estimate.
    pub fn pick(
        &mut self,
        class: WorkerClass,
        exclude: &[ProcessKey],
        draw: f64,
        now_ms: u64,
    ) -> Option<(ProcessKey, SocketAddr)> {
        let stale_ms = self.beacon_interval_ms * HINT_PERIODS_MAX;
        let mut candidates: Vec<(ProcessKey, f64)> = self
            .workers
            .iter()
            .filter(|(k, e)| {
                e.class == class
                    && !exclude.contains(k)
                    && now_ms.saturating_sub(e.heard_at_ms) <= stale_ms
            })
            .map(|(k, _)| {
                let q = self.estimated_queue(k, now_ms).unwrap_or(0.0);
                (*k, 1.0 / (1.0 + q))
            })
            .collect();
        // A stable order, so that the same draw picks the same worker.
        candidates.sort_by_key(|c| c.0);
        let total: f64 = candidates.iter().map(|(_, t)| t).sum();
        if candidates.is_empty() || total <= 0.0 {
            return None;
        }
        let mut point = draw.clamp(0.0, 1.0 - f64::EPSILON) * total;
        let mut chosen = candidates[candidates.len() - 1].0;
        for (k, tickets) in &candidates {
            if point < *tickets {
                chosen = *k;
                break;
            }
            point -= tickets;
        }
        let e = self.workers.get_mut(&chosen)?;
        e.sent_since = e.sent_since.saturating_add(1);
        Some((chosen, e.addr))
    }

    /// Workers known, of every class.
    pub fn known(&self) -> usize {
        self.workers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(id: u32, queue: f64, rate: f64) -> WorkerHint {
        WorkerHint {
            key: ProcessKey::worker(WorkerClass::Jpeg, id),
            class: WorkerClass::Jpeg,
            addr: format!("127.0.0.1:{}", 9000 + id).parse().unwrap(),
            node: 1,
            queue,
            rate_per_s: rate,
            report_age_ms: 0,
        }
    }

    #[test]
    fn shorter_queues_win_more_often() {
        let mut lotto = Lotto::new(Lottery::Naive, 500);
        lotto.on_beacon(&[hint(1, 0.0, 10.0), hint(2, 9.0, 10.0)], 0);
        let mut wins = [0u32; 3];
        for i in 0..1000 {
            let (k, _) = lotto
                .pick(WorkerClass::Jpeg, &[], f64::from(i) / 1000.0, 1)
                .unwrap();
            wins[k.id as usize] += 1;
        }
        // Tickets 1 and 0.1: about 91 % and 9 %.
        assert!((880..=940).contains(&wins[1]), "{wins:?}");
        assert_eq!(lotto.pick(WorkerClass::Gif, &[], 0.5, 1), None);
        let (k, _) = lotto
            .pick(
                WorkerClass::Jpeg,
                &[ProcessKey::worker(WorkerClass::Jpeg, 1)],
                0.0,
                1,
            )
            .unwrap();
        assert_eq!(k.id, 2);
    }

    #[test]
    fn the_corrected_estimate_counts_sends_and_drains() {
        let mut lotto = Lotto::new(Lottery::Corrected, 500);
        lotto.on_beacon(&[hint(1, 2.0, 10.0)], 1_000);
        let key = ProcessKey::worker(WorkerClass::Jpeg, 1);
        for _ in 0..5 {
            lotto.pick(WorkerClass::Jpeg, &[], 0.5, 1_000).unwrap();
        }
        // 2 hinted + 5 sent, nothing drained yet.
        assert_eq!(lotto.estimated_queue(&key, 1_000), Some(7.0));
        // 300 ms at 10 a second drains 3.
        assert_eq!(lotto.estimated_queue(&key, 1_300), Some(4.0));
        assert_eq!(lotto.estimated_queue(&key, 10_000), Some(0.0));
        // The naive view only knows the hint.
        let mut naive = Lotto::new(Lottery::Naive, 500);
        naive.on_beacon(&[hint(1, 2.0, 10.0)], 1_000);
        naive.pick(WorkerClass::Jpeg, &[], 0.5, 1_000).unwrap();
        assert_eq!(naive.estimated_queue(&key, 1_300), Some(2.0));
    }

    #[test]
    fn stale_workers_are_left_out() {
        let mut lotto = Lotto::new(Lottery::Corrected, 100);
        lotto.on_beacon(&[hint(1, 0.0, 1.0)], 0);
        assert!(lotto.pick(WorkerClass::Jpeg, &[], 0.1, 600).is_some());
        assert!(lotto.pick(WorkerClass::Jpeg, &[], 0.1, 601).is_none());
    }

    /// Front ends acting on stale beacons: a seeded simulation of four front ends sending 90 % of
    /// four workers' capacity, beacons every 500 ms. The corrected lottery keeps the workers'
    /// queues closer together than the naive one (TranSend's oscillation and its fix).
    #[test]
    fn the_corrected_lottery_keeps_queues_steadier_than_the_naive_one() {
        let naive = simulate(Lottery::Naive);
        let corrected = simulate(Lottery::Corrected);
        eprintln!(
            "spread of queue lengths across workers (mean std dev): naive {naive:.2}, corrected {corrected:.2}"
        );
        assert!(
            corrected < naive * 0.9,
            "naive {naive:.2}, corrected {corrected:.2}"
        );
    }

    /// Mean (over time) of the standard deviation of the workers' queues.
    fn simulate(mode: Lottery) -> f64 {
        const WORKERS: usize = 4;
        const FRONT_ENDS: usize = 4;
        const SERVICE_MS: u64 = 40;
        const BEACON_MS: u64 = 500;
        const END_MS: u64 = 120_000;
        let mut rng = SplitMix(0x5eed);
        let mut lottos: Vec<Lotto> = (0..FRONT_ENDS)
            .map(|_| Lotto::new(mode, BEACON_MS))
            .collect();
        let mut queue = [0u32; WORKERS];
        let mut busy_until = [0u64; WORKERS];
        let mut completed = [0u64; WORKERS];
        let mut reported = [(0u32, 0u64); WORKERS];
        let mut spread_sum = 0.0;
        let mut next_fe = 0;
        for now in 0..END_MS {
            // Service: one job at a time per worker.
            for w in 0..WORKERS {
                if queue[w] > 0 && busy_until[w] <= now {
                    if busy_until[w] != 0 {
                        queue[w] -= 1;
                        completed[w] += 1;
                    }
                    busy_until[w] = if queue[w] > 0 { now + SERVICE_MS } else { 0 };
                }
            }
            // Reports at multiples of the period; the beacon goes out 250 ms later.
            if now % BEACON_MS == 0 {
                for w in 0..WORKERS {
                    reported[w] = (queue[w], completed[w]);
                }
            }
            if now % BEACON_MS == BEACON_MS / 2 {
                let hints: Vec<WorkerHint> = (0..WORKERS)
                    .map(|w| WorkerHint {
                        key: ProcessKey::worker(WorkerClass::Jpeg, w as u32),
                        class: WorkerClass::Jpeg,
                        addr: "127.0.0.1:1".parse().unwrap(),
                        node: 1,
                        queue: f64::from(reported[w].0),
                        rate_per_s: 1000.0 / SERVICE_MS as f64,
                        report_age_ms: BEACON_MS / 2,
                    })
                    .collect();
                for l in &mut lottos {
                    l.on_beacon(&hints, now);
                }
            }
            // Poisson arrivals at 90 a second, round robin over the front ends.
            if rng.next_f64() < 0.09 {
                let draw = rng.next_f64();
                if let Some((k, _)) = lottos[next_fe].pick(WorkerClass::Jpeg, &[], draw, now) {
                    let w = k.id as usize;
                    queue[w] += 1;
                    if busy_until[w] == 0 {
                        busy_until[w] = now + SERVICE_MS;
                    }
                }
                next_fe = (next_fe + 1) % FRONT_ENDS;
            }
            let mean = queue.iter().map(|&q| f64::from(q)).sum::<f64>() / WORKERS as f64;
            let var = queue
                .iter()
                .map(|&q| (f64::from(q) - mean).powi(2))
                .sum::<f64>()
                / WORKERS as f64;
            spread_sum += var.sqrt();
        }
        spread_sum / END_MS as f64
    }

    struct SplitMix(u64);

    impl SplitMix {
        fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }
}
