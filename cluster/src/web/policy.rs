//! The manager's decisions, as pure functions of reports and time: smoothing each worker's load
//! reports, when to spawn a worker of a class and when to retire one (TranSend: spawn when the
//! class's average queue passes H, then hold off D), where to place a process (dedicated nodes
//! first; overflow nodes only while the dedicated ones are full), and Wolfpack's restart policy
//! (restart a failed process in place; past a budget of restarts in a window, fail its group over
//! to another node).
//!
//! No I/O, no clock, no randomness: the manager process feeds it and carries out its answers.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::proto::{ProcessKey, WorkerClass};

/// One worker's smoothed load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerLoad {
    /// Exponential moving average of the reported queue length.
    pub queue: f64,
    /// Exponential moving average of jobs finished a second.
    pub rate_per_s: f64,
    pub last_report_ms: u64,
    last_completed: u64,
}

/// Every worker's smoothed load.
#[derive(Debug, Clone, Default)]
pub struct Loads {
    smoothing: f64,
    loads: HashMap<ProcessKey, WorkerLoad>,
}

impl Loads {
    /// `smoothing` is the weight of a new report, in (0, 1].
    pub fn new(smoothing: f64) -> Loads {
        Loads {
            smoothing: smoothing.clamp(0.01, 1.0),
            loads: HashMap::new(),
        }
    }

    pub fn on_report(&mut self, key: ProcessKey, queue: u32, completed: u64, now_ms: u64) {
        let a = self.smoothing;
        let q = f64::from(queue);
        match self.loads.get_mut(&key) {
            Some(l) => {
                let dt = now_ms.saturating_sub(l.last_report_ms);
                if dt > 0 {
                    let done = completed.saturating_sub(l.last_completed) as f64;
                    let rate = done * 1000.0 / dt as f64;
                    l.rate_per_s = a * rate + (1.0 - a) * l.rate_per_s;
                }
                l.queue = a * q + (1.0 - a) * l.queue;
                l.last_report_ms = now_ms;
                l.last_completed = completed;
            }
            None => {
                self.loads.insert(
                    key,
                    WorkerLoad {
                        queue: q,
                        rate_per_s: 0.0,
                        last_report_ms: now_ms,
                        last_completed: completed,
                    },
                );
            }
        }
    }

    pub fn get(&self, key: &ProcessKey) -> Option<&WorkerLoad> {
        self.loads.get(key)
    }

    pub fn forget(&mut self, key: &ProcessKey) {
        self.loads.remove(key);
    }
}

/// What the scaler wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    Spawn(WorkerClass),
    Retire(ProcessKey),
}

/// A live worker as the scaler sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveWorker {
    pub key: ProcessKey,
    pub queue: f64,
    /// Spawned beyond the class's configured count (may be retired).
    pub extra: bool,
    /// Runs on an overflow node (retired first).
    pub overflow: bool,
}

/// Spawn and retire decisions per class.
#[derive(Debug, Clone)]
pub struct Scaler {
    threshold: f64,
    holdoff_ms: u64,
    retire_idle_ms: u64,
    last_change_ms: BTreeMap<WorkerClass, u64>,
    calm_since_ms: BTreeMap<WorkerClass, u64>,
}

impl Scaler {
    pub fn new(threshold: f64, holdoff_s: f64, retire_idle_s: f64) -> Scaler {
        Scaler {
            threshold,
            holdoff_ms: (holdoff_s * 1000.0) as u64,
            retire_idle_ms: (retire_idle_s * 1000.0) as u64,
            last_change_ms: BTreeMap::new(),
            calm_since_ms: BTreeMap::new(),
        }
    }

    /// One class's decision at `now_ms`. `may_spawn` says whether there is room for one more
    /// worker of the class (its maximum, and a node to put it on).
    pub fn decide(
        &mut self,
        class: WorkerClass,
        workers: &[LiveWorker],
        may_spawn: bool,
        now_ms: u64,
    ) -> Option<Scaling> {
        if workers.is_empty() {
            return None;
        }
        let average = workers.iter().map(|w| w.queue).sum::<f64>() / workers.len() as f64;
        let since_change = self
            .last_change_ms
            .get(&class)
            .map_or(u64::MAX, |t| now_ms.saturating_sub(*t));
        if average > self.threshold {
            self.calm_since_ms.remove(&class);
            if may_spawn && since_change >= self.holdoff_ms {
                self.last_change_ms.insert(class, now_ms);
                return Some(Scaling::Spawn(class));
            }
            return None;
        }
        if average >= self.threshold / 4.0 {
            self.calm_since_ms.remove(&class);
            return None;
        }
        let calm_since = *self.calm_since_ms.entry(class).or_insert(now_ms);
        if now_ms.saturating_sub(calm_since) < self.retire_idle_ms || since_change < self.holdoff_ms
        {
            return None;
        }
        // Overflow workers first, then the newest.
        let victim = workers
            .iter()
            .filter(|w| w.extra)
            .max_by_key(|w| (w.overflow, w.key.id))?;
        self.last_change_ms.insert(class, now_ms);
        self.calm_since_ms.insert(class, now_ms);
        Some(Scaling::Retire(victim.key))
    }
}

/// A node as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSlot {
    pub id: u32,
    pub overflow: bool,
    pub alive: bool,
    /// Processes of the kind being placed that it runs now.
    pub count: u32,
}

/// Where a new process goes: the live dedicated node running the fewest of its kind (below
/// `per_node_max`); failing that, when `overflow_allowed`, the live overflow node running the
/// fewest. `None`: nowhere.
pub fn place(nodes: &[NodeSlot], per_node_max: u32, overflow_allowed: bool) -> Option<u32> {
    let best = |overflow: bool| {
        nodes
            .iter()
            .filter(|n| n.alive && n.overflow == overflow && n.count < per_node_max)
            .min_by_key(|n| (n.count, n.id))
            .map(|n| n.id)
    };
    best(false).or_else(|| overflow_allowed.then(|| best(true)).flatten())
}

/// Where a failed process starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// On the node it ran on.
    InPlace(u32),
    /// Its budget is spent (or its node is gone): on this other node.
    FailOver(u32),
    /// No live node to run it.
    Nowhere,
}

/// Wolfpack's restart policy.
#[derive(Debug, Clone)]
pub struct Wolfpack {
    restarts_max: u32,
    window_ms: u64,
    history: HashMap<ProcessKey, VecDeque<u64>>,
}

impl Wolfpack {
    pub fn new(restarts_max: u32, window_s: f64) -> Wolfpack {
        Wolfpack {
            restarts_max,
            window_ms: (window_s * 1000.0) as u64,
            history: HashMap::new(),
        }
    }

    /// `key` failed on `node` at `now_ms`. `candidates` are the live nodes it may move to, in
    /// order of preference (its own node included if it is alive).
    pub fn on_failure(
        &mut self,
        key: ProcessKey,
        node: u32,
        now_ms: u64,
        candidates: &[u32],
    ) -> Restart {
        let history = self.history.entry(key).or_default();
        history.push_back(now_ms);
        while history
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) > self.window_ms)
        {
            history.pop_front();
        }
        let within_budget = history.len() as u32 <= self.restarts_max;
        if within_budget && candidates.contains(&node) {
            return Restart::InPlace(node);
        }
        match candidates.iter().find(|&&n| n != node) {
            Some(&other) => {
                // The group starts afresh on its new node, with a budget of its own.
                history.clear();
                Restart::FailOver(other)
            }
            None if candidates.contains(&node) => Restart::InPlace(node),
            None => Restart::Nowhere,
        }
    }

    /// Restarts of `key` counted in the current window.
    pub fn restarts(&self, key: &ProcessKey) -> usize {
        self.history.get(key).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u32, queue: f64, extra: bool, overflow: bool) -> LiveWorker {
        LiveWorker {
            key: ProcessKey::worker(WorkerClass::Jpeg, id),
            queue,
            extra,
            overflow,
        }
    }

    #[test]
    fn reports_are_smoothed_and_rates_measured() {
        let mut loads = Loads::new(0.5);
        let key = ProcessKey::worker(WorkerClass::Gif, 1);
        loads.on_report(key, 10, 0, 0);
        loads.on_report(key, 0, 50, 500);
        let l = loads.get(&key).unwrap();
        assert_eq!(l.queue, 5.0);
        // 50 jobs in half a second, half-weighted.
        assert_eq!(l.rate_per_s, 50.0);
    }

    #[test]
    fn a_busy_class_spawns_then_holds_off_and_a_calm_one_retires_its_extras() {
        let mut s = Scaler::new(4.0, 5.0, 20.0);
        let busy = [worker(1, 8.0, false, false)];
        assert_eq!(
            s.decide(WorkerClass::Jpeg, &busy, true, 1_000),
            Some(Scaling::Spawn(WorkerClass::Jpeg))
        );
        // Held off D seconds.
        assert_eq!(s.decide(WorkerClass::Jpeg, &busy, true, 3_000), None);
        assert_eq!(
            s.decide(WorkerClass::Jpeg, &busy, true, 6_000),
            Some(Scaling::Spawn(WorkerClass::Jpeg))
        );
        // No room: nothing.
        assert_eq!(s.decide(WorkerClass::Jpeg, &busy, false, 20_000), None);
        // Calm for 20 s: the overflow extra goes first.
        let calm = [
            worker(1, 0.0, false, false),
            worker(2, 0.5, true, false),
            worker(3, 0.0, true, true),
        ];
        assert_eq!(s.decide(WorkerClass::Jpeg, &calm, true, 30_000), None);
        assert_eq!(
            s.decide(WorkerClass::Jpeg, &calm, true, 50_000),
            Some(Scaling::Retire(ProcessKey::worker(WorkerClass::Jpeg, 3)))
        );
        // Only configured workers left: none retires.
        let base = [worker(1, 0.0, false, false)];
        assert_eq!(s.decide(WorkerClass::Jpeg, &base, true, 200_000), None);
    }

    #[test]
    fn overflow_nodes_are_used_only_when_the_dedicated_ones_are_full() {
        let nodes = [
            NodeSlot {
                id: 1,
                overflow: false,
                alive: true,
                count: 2,
            },
            NodeSlot {
                id: 2,
                overflow: false,
                alive: true,
                count: 1,
            },
            NodeSlot {
                id: 3,
                overflow: true,
                alive: true,
                count: 0,
            },
        ];
        assert_eq!(place(&nodes, 2, true), Some(2));
        let full = [
            NodeSlot {
                id: 1,
                overflow: false,
                alive: true,
                count: 2,
            },
            NodeSlot {
                id: 2,
                overflow: false,
                alive: false,
                count: 0,
            },
            NodeSlot {
                id: 3,
                overflow: true,
                alive: true,
                count: 0,
            },
        ];
        assert_eq!(place(&full, 2, false), None);
        assert_eq!(place(&full, 2, true), Some(3));
    }

    #[test]
    fn wolfpack_restarts_in_place_then_fails_over() {
        let key = ProcessKey::worker(WorkerClass::Html, 1);
        let mut w = Wolfpack::new(2, 60.0);
        assert_eq!(w.on_failure(key, 1, 0, &[1, 2]), Restart::InPlace(1));
        assert_eq!(w.on_failure(key, 1, 1_000, &[1, 2]), Restart::InPlace(1));
        assert_eq!(w.on_failure(key, 1, 2_000, &[1, 2]), Restart::FailOver(2));
        // A fresh budget on the new node.
        assert_eq!(w.on_failure(key, 2, 3_000, &[1, 2]), Restart::InPlace(2));
        // Its node gone: elsewhere at once.
        assert_eq!(w.on_failure(key, 2, 4_000, &[1]), Restart::FailOver(1));
        assert_eq!(w.on_failure(key, 1, 5_000, &[]), Restart::Nowhere);
        // Old failures age out of the window.
        let mut w = Wolfpack::new(1, 10.0);
        assert_eq!(w.on_failure(key, 1, 0, &[1, 2]), Restart::InPlace(1));
        assert_eq!(w.on_failure(key, 1, 20_000, &[1, 2]), Restart::InPlace(1));
    }
}
