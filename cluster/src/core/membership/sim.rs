//! Deterministic, seeded simulation of a Wombat cluster, in the manner of TigerBeetle's VOPR.
//!
//! The real [`Membership`] state machines run against a simulated clock and network: every
//! message is delivered after a random delay (so messages overtake each other), dropped with a
//! probability, and dropped between the groups of a partition; nodes crash (state machine gone,
//! messages to it lost) and restart (a fresh `Membership::new`, all soft state lost). Everything
//! random comes from one seed, so a failing run replays exactly from its seed, which every failure
//! prints.
//!
//! [`run_seed`] runs a chaos phase with a random fault schedule, then a quiet phase (partitions
//! healed, no drops, crashed nodes restarted or left dead) and checks that all live nodes agree on
//! one view of exactly the live nodes within [`SimConfig::convergence_bound_ms`] and keep it to the
//! end. Safety properties (a node's epoch never decreases within one incarnation, the leader is the
//! minimum member, a node's view contains itself) are checked throughout. [`Sim`] is public for
//! scripted scenarios; [`soak`] runs many seeds for a command-line soak.
//!
//! This module must never read the real clock, use unseeded randomness or do I/O: it is compiled
//! into normal builds so the CLI can run it, and its results must depend on the seed alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use super::{Config, Membership, Message, Role, View};
use crate::core::sim::{Scheduled, SplitMix64};

/// View changes kept for failure reports; older ones are forgotten.
const HISTORY_MAX: usize = 64;
/// Most nodes a simulation runs. Far above what the protocol is meant for (a few dozen), and
/// small enough that a run stays fast.
pub const SIM_NODES_MAX: u32 = 64;

/// What a simulated run does. All times are simulated milliseconds.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes `1..=nodes`.
    pub nodes: u32,
    pub membership: Config,
    /// Length of the chaos phase, from time 0 (when every node starts).
    pub chaos_ms: u64,
    /// Length of the quiet phase that follows. Must exceed `convergence_bound_ms`: the rest is
    /// the window in which agreement must hold.
    pub quiet_ms: u64,
    /// Agreement must be reached this long after the quiet phase starts.
    ///
    /// The default, 10 s, is about twice the worst case we can argue for the default timings and
    /// five nodes: dead leaders are replaced by the takeover timer of the best survivor (at most
    /// `takeover_base_ms + (n-1) * takeover_step_ms` = 1.35 s); dead members are removed one at
    /// a time along the ring (each within `failure_timeout_ms + ping_interval_ms` plus a round
    /// trip, about 0.6 s, so 2.4 s for four); merging partition sides and rejoining restarted
    /// nodes takes a few beacons (about 1 s).
    pub convergence_bound_ms: u64,
    /// Probability that a message sent during the chaos phase is lost.
    pub drop_probability: f64,
    /// Each delivered message takes a delay drawn uniformly from this range (both phases).
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// Gaps between chaos faults are drawn uniformly from this range.
    pub fault_gap_ms_min: u64,
    pub fault_gap_ms_max: u64,
    /// Relative weights of the kinds of chaos fault.
    pub faults: FaultWeights,
    /// At the start of the quiet phase each crashed node is restarted with this probability (at
    /// least one node is always up).
    pub restart_probability: f64,
    /// At the start of the quiet phase each live node crashes for good with this probability (at
    /// least one node stays up): the last fault of the chaos phase, so that the quiet phase
    /// always has to detect failures.
    pub final_crash_probability: f64,
    /// A run that processes more events than this fails (a message storm or a timer loop).
    pub events_max: u64,
}

/// Relative weights of chaos faults; 0 disables a kind.
#[derive(Debug, Clone)]
pub struct FaultWeights {
    /// Split the nodes into two or three random groups (replacing any current partition).
    pub partition: u32,
    pub heal: u32,
    pub crash_one: u32,
    /// Crash the node that leads the best-ranked live node's view.
    pub crash_leader: u32,
    /// Crash two or more nodes at once, the leader among them half the time.
    pub crash_many: u32,
    pub restart_one: u32,
    pub restart_all: u32,
    /// Make a random non-leader broadcast as leader.
    pub false_leader: u32,
}

impl Default for FaultWeights {
    fn default() -> Self {
        FaultWeights {
            partition: 3,
            heal: 2,
            crash_one: 2,
            crash_leader: 2,
            crash_many: 1,
            restart_one: 3,
            restart_all: 1,
            false_leader: 1,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            membership: Config::default(),
            chaos_ms: 8_000,
            quiet_ms: 14_000,
            convergence_bound_ms: 10_000,
            drop_probability: 0.1,
            delay_ms_min: 1,
            delay_ms_max: 40,
            fault_gap_ms_min: 100,
            fault_gap_ms_max: 1_500,
            faults: FaultWeights::default(),
            restart_probability: 0.5,
            final_crash_probability: 0.15,
            events_max: 5_000_000,
        }
    }
}

impl SimConfig {
    /// Checks the knobs, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.membership.validate().map_err(|e| e.to_string())?;
        if self.nodes == 0 || self.nodes > SIM_NODES_MAX {
            return Err(format!("sim: `nodes` must be 1..={SIM_NODES_MAX}"));
        }
        if self.quiet_ms <= self.convergence_bound_ms {
            return Err("sim: `quiet_ms` must exceed `convergence_bound_ms`".to_string());
        }
        if !(0.0..=1.0).contains(&self.drop_probability) {
            return Err("sim: `drop_probability` must be within 0..=1".to_string());
        }
        if !(0.0..=1.0).contains(&self.restart_probability) {
            return Err("sim: `restart_probability` must be within 0..=1".to_string());
        }
        if !(0.0..=1.0).contains(&self.final_crash_probability) {
            return Err("sim: `final_crash_probability` must be within 0..=1".to_string());
        }
        if self.delay_ms_min > self.delay_ms_max {
            return Err("sim: `delay_ms_min` must not exceed `delay_ms_max`".to_string());
        }
        if self.fault_gap_ms_min == 0 || self.fault_gap_ms_min > self.fault_gap_ms_max {
            return Err("sim: `fault_gap_ms_min` must be 1..=`fault_gap_ms_max`".to_string());
        }
        Ok(())
    }
}

/// What a passing run measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    /// From the start of the quiet phase to the agreement that lasted to the end.
    pub convergence_ms: u64,
    /// The agreed view.
    pub view: View,
    pub faults_injected: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    /// Messages per second while agreed in the quiet phase: the steady-state cost.
    pub messages_per_s_settled: f64,
    /// Views installed by all nodes over the run.
    pub view_changes: u64,
}

/// A failed run: what went wrong, when, and every node's state, with the seed to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub reason: String,
    pub nodes: Vec<NodeSnapshot>,
    /// The latest view changes, oldest first: (time, node, view).
    pub recent_view_changes: Vec<(u64, u32, View)>,
}

#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub id: u32,
    /// `None` while the node is crashed.
    pub state: Option<(Role, View)>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "membership simulation failed: seed {} at {} ms: {}",
            self.seed, self.at_ms, self.reason
        )?;
        for node in &self.nodes {
            match &node.state {
                Some((role, view)) => writeln!(f, "  node {}: {role:?}, {view}", node.id)?,
                None => writeln!(f, "  node {}: down", node.id)?,
            }
        }
        if !self.recent_view_changes.is_empty() {
            writeln!(f, "  latest view changes:")?;
            let skip = self.recent_view_changes.len().saturating_sub(16);
            for (at, id, view) in &self.recent_view_changes[skip..] {
                writeln!(f, "    {at} ms node {id}: {view}")?;
            }
        }
        write!(
            f,
            "replay with seed {}: cluster::membership::sim::run_seed({}, &cfg)",
            self.seed, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// Message counters of a simulated network.
#[derive(Debug, Clone, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    /// Lost to drops, partitions or crashed receivers.
    pub dropped: u64,
    pub sent_by_kind: BTreeMap<&'static str, u64>,
}

/// Runs one seed: chaos, then quiet, then the checks described in the module docs.
pub fn run_seed(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(seed, cfg.clone());
    if let Err(reason) = cfg.validate() {
        return Err(sim.failure(reason));
    }
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_phases(&mut sim)));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(sim.failure(format!("panic: {message}")))
        }
    }
}

/// Summary of many seeds.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    pub reports: Vec<SimReport>,
    pub failures: Vec<SimFailure>,
}

impl Soak {
    /// Convergence time at quantile `q` (0..=1) over the passing runs, in ms.
    pub fn convergence_ms_quantile(&self, q: f64) -> Option<u64> {
        let mut times: Vec<u64> = self.reports.iter().map(|r| r.convergence_ms).collect();
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        let index = ((times.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(times[index])
    }

    /// Mean settled message rate over the passing runs.
    pub fn messages_per_s_settled_mean(&self) -> f64 {
        if self.reports.is_empty() {
            return 0.0;
        }
        let sum: f64 = self.reports.iter().map(|r| r.messages_per_s_settled).sum();
        sum / self.reports.len() as f64
    }
}

impl fmt::Display for Soak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |q| {
            self.convergence_ms_quantile(q)
                .map_or_else(|| "-".to_string(), |ms| ms.to_string())
        };
        write!(
            f,
            "{} seeds, {} failed; convergence ms: median {} p90 {} p99 {} max {}; settled {:.1} messages/s",
            self.reports.len() + self.failures.len(),
            self.failures.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            self.messages_per_s_settled_mean()
        )
    }
}

/// Runs seeds `start_seed..start_seed + count`.
pub fn soak(start_seed: u64, count: u64, cfg: &SimConfig) -> Soak {
    let mut soak = Soak::default();
    for seed in start_seed..start_seed.saturating_add(count) {
        match run_seed(seed, cfg) {
            Ok(report) => soak.reports.push(report),
            Err(failure) => soak.failures.push(failure),
        }
    }
    soak
}

fn run_phases(sim: &mut Sim) -> Result<SimReport, SimFailure> {
    let cfg = sim.config.clone();
    sim.set_drop_probability(cfg.drop_probability);
    // The fault schedule is drawn up front from its own stream, so it does not depend on how
    // many messages the network has drawn randomness for.
    let mut at = 0;
    loop {
        at += sim
            .fault_rng
            .range_inclusive(cfg.fault_gap_ms_min, cfg.fault_gap_ms_max);
        if at >= cfg.chaos_ms {
            break;
        }
        sim.schedule(at, Event::ChaosFault);
    }
    let quiet_from = cfg.chaos_ms;
    sim.run_until(quiet_from)?;
    sim.begin_quiet();
    sim.watch = Some(Watch {
        deadline: quiet_from + cfg.convergence_bound_ms,
        agreed_since: None,
        messages_at_agreement: 0,
    });
    sim.update_watch()?;
    sim.schedule(quiet_from + cfg.convergence_bound_ms, Event::Check);
    let end = quiet_from + cfg.quiet_ms;
    sim.run_until(end)?;
    let watch = sim.watch.take().expect("watching the quiet phase");
    let agreed_since = watch.agreed_since.expect("checked at the deadline");
    let view = sim.agreement().expect("agreement held to the end");
    let settled_ms = end - agreed_since;
    let settled_messages = sim.net.sent - watch.messages_at_agreement;
    Ok(SimReport {
        seed: sim.seed,
        convergence_ms: agreed_since - quiet_from,
        view,
        faults_injected: sim.faults_injected,
        messages_sent: sim.net.sent,
        messages_dropped: sim.net.dropped,
        messages_per_s_settled: settled_messages as f64 * 1000.0 / settled_ms.max(1) as f64,
        view_changes: sim.view_changes,
    })
}

/// A simulated cluster: nodes, clock, network and fault controls.
pub struct Sim {
    config: SimConfig,
    seed: u64,
    now: u64,
    /// Randomness of the network (delays, drops).
    net_rng: SplitMix64,
    /// Randomness of the fault schedule.
    fault_rng: SplitMix64,
    nodes: BTreeMap<u32, SimNode>,
    queue: BinaryHeap<Reverse<Scheduled<Event>>>,
    sequence: u64,
    events: u64,
    /// Group of every node while partitioned; messages between groups are lost.
    groups: Option<BTreeMap<u32, usize>>,
    drop_probability: f64,
    net: NetStats,
    history: VecDeque<(u64, u32, View)>,
    view_changes: u64,
    faults_injected: u64,
    /// Set by `run_seed` during the quiet phase.
    watch: Option<Watch>,
}

struct SimNode {
    machine: Option<Membership>,
    /// Restarts so far; ticks of an earlier incarnation are ignored.
    incarnation: u64,
    /// The tick currently requested by the machine.
    tick_at: Option<u64>,
    /// Last epoch installed in this incarnation, for the monotonicity check.
    epoch_last: u64,
}

struct Watch {
    deadline: u64,
    agreed_since: Option<u64>,
    messages_at_agreement: u64,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: u32,
        to: u32,
        message: Message,
    },
    Tick {
        node: u32,
        incarnation: u64,
    },
    ChaosFault,
    /// Forces a liveness check at the convergence deadline.
    Check,
}

impl Sim {
    /// Nodes `1..=config.nodes`, all started at time 0, on a network with no drops and no
    /// partition. `config.membership` must be valid.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let mut sim = Sim {
            seed,
            now: 0,
            net_rng: SplitMix64::new(seed),
            fault_rng: SplitMix64::new(seed ^ 0x5EED_FA17_0000_0001),
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            events: 0,
            groups: None,
            drop_probability: 0.0,
            net: NetStats::default(),
            history: VecDeque::with_capacity(HISTORY_MAX),
            view_changes: 0,
            faults_injected: 0,
            watch: None,
            config,
        };
        if sim.config.validate().is_err() {
            // `run_seed` reports the error; a Sim with a bad config runs no nodes.
            return sim;
        }
        for id in 1..=sim.config.nodes {
            sim.nodes.insert(
                id,
                SimNode {
                    machine: None,
                    incarnation: 0,
                    tick_at: None,
                    epoch_last: 0,
                },
            );
        }
        let ids: Vec<u32> = sim.nodes.keys().copied().collect();
        for id in ids {
            sim.start(id);
        }
        sim
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn net_stats(&self) -> &NetStats {
        &self.net
    }

    /// The ids of the nodes that are up.
    pub fn live(&self) -> BTreeSet<u32> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.machine.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The view of node `id`, if it is up.
    pub fn view(&self, id: u32) -> Option<&View> {
        self.machine(id).map(Membership::view)
    }

    pub fn role(&self, id: u32) -> Option<Role> {
        self.machine(id).map(Membership::role)
    }

    /// The view every live node holds, if they all hold the same one and its members are
    /// exactly the live nodes.
    pub fn agreement(&self) -> Option<View> {
        let live = self.live();
        let first = self.view(*live.first()?)?;
        let agreed = first.members == live
            && live
                .iter()
                .all(|&id| self.view(id).is_some_and(|view| view == first));
        agreed.then(|| first.clone())
    }

    /// The view the nodes `ids` all hold, if they hold the same one with exactly `ids` as
    /// members (one side of a partition has settled).
    pub fn agreement_among(&self, ids: &[u32]) -> Option<View> {
        let members: BTreeSet<u32> = ids.iter().copied().collect();
        let first = self.view(*ids.first()?)?;
        let agreed = first.members == members
            && ids
                .iter()
                .all(|&id| self.view(id).is_some_and(|view| view == first));
        agreed.then(|| first.clone())
    }

    /// The view changes kept so far (the latest 64), oldest first.
    pub fn view_history(&self) -> impl Iterator<Item = &(u64, u32, View)> {
        self.history.iter()
    }

    pub fn set_drop_probability(&mut self, probability: f64) {
        assert!((0.0..=1.0).contains(&probability));
        self.drop_probability = probability;
    }

    /// Cuts the network into `groups`; nodes in no group form one more group together.
    pub fn partition(&mut self, groups: &[&[u32]]) {
        let mut map = BTreeMap::new();
        for (index, group) in groups.iter().enumerate() {
            for &id in *group {
                map.insert(id, index);
            }
        }
        for &id in self.nodes.keys() {
            map.entry(id).or_insert(groups.len());
        }
        self.groups = Some(map);
    }

    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Crashes node `id`: its state machine is dropped and messages to it are lost.
    pub fn crash(&mut self, id: u32) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.machine = None;
            node.tick_at = None;
        }
    }

    /// Restarts a crashed node `id` with a fresh state machine (no-op if it is up).
    pub fn restart(&mut self, id: u32) {
        if self
            .nodes
            .get(&id)
            .is_some_and(|node| node.machine.is_none())
        {
            self.start(id);
        }
    }

    /// Makes node `id` broadcast as leader now, whether or not it should.
    pub fn force_takeover(&mut self, id: u32) -> Result<(), SimFailure> {
        let now = self.now;
        if let Some(machine) = self.machine_mut(id) {
            machine.force_takeover(now);
            self.after_activity(id, false)?;
        }
        Ok(())
    }

    /// Processes every event up to and including time `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: u64) -> Result<(), SimFailure> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(scheduled) = self.queue.pop().expect("peeked");
            debug_assert!(scheduled.at >= self.now);
            self.now = scheduled.at;
            self.events += 1;
            if self.events > self.config.events_max {
                return Err(self.failure(format!(
                    "more than {} events: a message storm or a timer loop",
                    self.config.events_max
                )));
            }
            self.process(scheduled.event)?;
            if self.watch.is_some() {
                self.update_watch()?;
            }
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs until every live node agrees (see [`Sim::agreement`]) or `until` passes, checking in
    /// `step_ms` slices; returns the agreed view and the time it was first seen.
    pub fn run_until_agreed(
        &mut self,
        until: u64,
        step_ms: u64,
    ) -> Result<Option<(u64, View)>, SimFailure> {
        while self.now < until {
            if let Some(view) = self.agreement() {
                return Ok(Some((self.now, view)));
            }
            let next = (self.now + step_ms.max(1)).min(until);
            self.run_until(next)?;
        }
        Ok(self.agreement().map(|view| (self.now, view)))
    }

    /// A failure at the current time with every node's state.
    pub fn failure(&self, reason: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            at_ms: self.now,
            reason,
            nodes: self
                .nodes
                .iter()
                .map(|(&id, node)| NodeSnapshot {
                    id,
                    state: node.machine.as_ref().map(|m| (m.role(), m.view().clone())),
                })
                .collect(),
            recent_view_changes: self.history.iter().cloned().collect(),
        }
    }

    fn machine(&self, id: u32) -> Option<&Membership> {
        self.nodes.get(&id)?.machine.as_ref()
    }

    fn machine_mut(&mut self, id: u32) -> Option<&mut Membership> {
        self.nodes.get_mut(&id)?.machine.as_mut()
    }

    fn start(&mut self, id: u32) {
        let all_ids: BTreeSet<u32> = self.nodes.keys().copied().collect();
        let machine = Membership::new(id, all_ids, self.config.membership.clone(), self.now);
        let node = self.nodes.get_mut(&id).expect("configured node");
        node.machine = Some(machine);
        node.incarnation += 1;
        node.tick_at = None;
        node.epoch_last = 0;
        // A lone node leads at once; anything it says must still go out.
        let _ = self.after_activity(id, false);
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            sequence: self.sequence,
            event,
        }));
    }

    fn cut(&self, a: u32, b: u32) -> bool {
        self.groups
            .as_ref()
            .is_some_and(|groups| groups.get(&a) != groups.get(&b))
    }

    fn process(&mut self, event: Event) -> Result<(), SimFailure> {
        match event {
            Event::Deliver { from, to, message } => {
                let now = self.now;
                if self.cut(from, to) {
                    self.net.dropped += 1;
                    return Ok(());
                }
                let Some(machine) = self.machine_mut(to) else {
                    self.net.dropped += 1;
                    return Ok(());
                };
                machine.step(from, message, now);
                self.net.delivered += 1;
                self.after_activity(to, false)
            }
            Event::Tick { node, incarnation } => {
                let now = self.now;
                let Some(state) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if state.incarnation != incarnation || state.tick_at != Some(now) {
                    return Ok(()); // superseded by a later request or a restart
                }
                state.tick_at = None;
                let Some(machine) = state.machine.as_mut() else {
                    return Ok(());
                };
                machine.tick(now);
                self.after_activity(node, true)
            }
            Event::ChaosFault => self.chaos_fault(),
            Event::Check => Ok(()),
        }
    }

    /// Collects what node `id` produced: sends go on the network, a view change is checked and
    /// logged, and its next tick is scheduled.
    fn after_activity(&mut self, id: u32, ticked: bool) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(machine) = self.machine_mut(id) else {
            return Ok(());
        };
        let outgoing = machine.poll_outgoing();
        let change = machine.take_view_change();
        let deadline = machine.next_deadline();
        for (to, message) in outgoing {
            self.net.sent += 1;
            *self.net.sent_by_kind.entry(message.kind()).or_default() += 1;
            if self.cut(id, to) || self.net_rng.chance(self.drop_probability) {
                self.net.dropped += 1;
                continue;
            }
            let delay = self
                .net_rng
                .range_inclusive(self.config.delay_ms_min, self.config.delay_ms_max);
            self.schedule(
                now + delay,
                Event::Deliver {
                    from: id,
                    to,
                    message,
                },
            );
        }
        if let Some(view) = change {
            self.check_view(id, &view)?;
            if self.history.len() == HISTORY_MAX {
                self.history.pop_front();
            }
            self.history.push_back((now, id, view));
            self.view_changes += 1;
        }
        if ticked && deadline <= now {
            return Err(self.failure(format!(
                "node {id} asked for its next tick at {deadline} ms right after ticking at {now} ms"
            )));
        }
        let node = self.nodes.get_mut(&id).expect("configured node");
        let deadline = deadline.max(now);
        if node.tick_at != Some(deadline) {
            node.tick_at = Some(deadline);
            let incarnation = node.incarnation;
            self.schedule(
                deadline,
                Event::Tick {
                    node: id,
                    incarnation,
                },
            );
        }
        Ok(())
    }

    /// Safety properties of every view a node installs.
    fn check_view(&mut self, id: u32, view: &View) -> Result<(), SimFailure> {
        let node = self.nodes.get_mut(&id).expect("configured node");
        let epoch_last = node.epoch_last;
        node.epoch_last = view.epoch;
        if view.epoch < epoch_last {
            return Err(self.failure(format!(
                "node {id} went back from epoch {epoch_last} to {view}"
            )));
        }
        if !view.contains(id) {
            return Err(self.failure(format!("node {id} installed a view without itself: {view}")));
        }
        if view.members.first() != Some(&view.leader) {
            return Err(self.failure(format!(
                "node {id} installed a view whose leader is not its best-ranked member: {view}"
            )));
        }
        Ok(())
    }

    fn update_watch(&mut self) -> Result<(), SimFailure> {
        let agreed = self.agreement().is_some();
        let now = self.now;
        let sent = self.net.sent;
        let watch = self.watch.as_mut().expect("watching");
        match (agreed, watch.agreed_since) {
            (true, None) => {
                watch.agreed_since = Some(now);
                watch.messages_at_agreement = sent;
            }
            (false, Some(since)) => {
                watch.agreed_since = None;
                if now >= watch.deadline {
                    return Err(self.failure(format!(
                        "agreement reached at {since} ms was lost after the convergence bound"
                    )));
                }
            }
            _ => {}
        }
        let watch = self.watch.as_ref().expect("watching");
        if now >= watch.deadline && watch.agreed_since.is_none() {
            let bound = self.config.convergence_bound_ms;
            return Err(self.failure(format!(
                "live nodes {:?} did not agree on a view of exactly themselves within {bound} ms of the quiet phase ({} ms)",
                self.live(),
                watch.deadline - bound
            )));
        }
        Ok(())
    }

    /// The quiet phase: heal, stop dropping, crash a few more nodes for good, and restart each
    /// node that was already crashed or leave it dead.
    fn begin_quiet(&mut self) {
        self.heal();
        self.drop_probability = 0.0;
        let live: Vec<u32> = self.live().into_iter().collect();
        let mut crashed_now = Vec::new();
        for id in live {
            if self.fault_rng.chance(self.config.final_crash_probability) && self.live().len() > 1 {
                self.crash(id);
                crashed_now.push(id);
            }
        }
        let down: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(id, node)| node.machine.is_none() && !crashed_now.contains(id))
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            if self.fault_rng.chance(self.config.restart_probability) {
                self.restart(id);
            }
        }
        if self.live().is_empty() {
            let ids: Vec<u32> = self.nodes.keys().copied().collect();
            let id = ids[self.fault_rng.below(ids.len() as u64) as usize];
            self.restart(id);
        }
    }

    fn chaos_fault(&mut self) -> Result<(), SimFailure> {
        let w = self.config.faults.clone();
        let kinds = [
            w.partition,
            w.heal,
            w.crash_one,
            w.crash_leader,
            w.crash_many,
            w.restart_one,
            w.restart_all,
            w.false_leader,
        ];
        let total: u64 = kinds.iter().map(|&k| u64::from(k)).sum();
        if total == 0 {
            return Ok(());
        }
        let mut pick = self.fault_rng.below(total);
        let mut kind = 0;
        for (index, &weight) in kinds.iter().enumerate() {
            if pick < u64::from(weight) {
                kind = index;
                break;
            }
            pick -= u64::from(weight);
        }
        self.faults_injected += 1;
        let live: Vec<u32> = self.live().into_iter().collect();
        let down: Vec<u32> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        match kind {
            0 => {
                let count = 2 + self.fault_rng.below(2) as usize;
                let ids: Vec<u32> = self.nodes.keys().copied().collect();
                let mut groups = BTreeMap::new();
                for id in ids {
                    groups.insert(id, self.fault_rng.below(count as u64) as usize);
                }
                self.groups = Some(groups);
            }
            1 => self.heal(),
            2 => {
                if let Some(id) = self.pick(&live) {
                    self.crash_keeping_one(id);
                }
            }
            3 => {
                let leader = live
                    .first()
                    .and_then(|&best| self.view(best))
                    .map(|view| view.leader);
                if let Some(id) = leader {
                    self.crash_keeping_one(id);
                }
            }
            4 => {
                let count = 2 + self
                    .fault_rng
                    .below(u64::from(self.config.nodes / 2).max(1));
                if self.fault_rng.chance(0.5) {
                    if let Some(&best) = live.first() {
                        if let Some(leader) = self.view(best).map(|view| view.leader) {
                            self.crash_keeping_one(leader);
                        }
                    }
                }
                for _ in 0..count {
                    let live: Vec<u32> = self.live().into_iter().collect();
                    if let Some(id) = self.pick(&live) {
                        self.crash_keeping_one(id);
                    }
                }
            }
            5 => {
                if let Some(id) = self.pick(&down) {
                    self.restart(id);
                }
            }
            6 => {
                for id in down {
                    self.restart(id);
                }
            }
            _ => {
                let followers: Vec<u32> = live
                    .iter()
                    .copied()
                    .filter(|&id| self.role(id) != Some(Role::Leader))
                    .collect();
                if let Some(id) = self.pick(&followers) {
                    self.force_takeover(id)?;
                }
            }
        }
        Ok(())
    }

    fn pick(&mut self, ids: &[u32]) -> Option<u32> {
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.fault_rng.below(ids.len() as u64) as usize])
    }

    fn crash_keeping_one(&mut self, id: u32) {
        if self.live().len() > 1 {
            self.crash(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network without drops and with short delays, for scripted scenarios.
    fn scripted(seed: u64) -> Sim {
        let config = SimConfig {
            delay_ms_min: 1,
            delay_ms_max: 20,
            ..SimConfig::default()
        };
        Sim::new(seed, config)
    }

    fn ids(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    /// Runs until agreement and checks it holds for another 2 s; returns (time, view).
    fn settle(sim: &mut Sim, within_ms: u64) -> (u64, View) {
        let start = sim.now();
        let (at, view) = sim
            .run_until_agreed(start + within_ms, 5)
            .unwrap()
            .unwrap_or_else(|| panic!("{}", sim.failure("no agreement".to_string())));
        sim.run_until(at + 2_000).unwrap();
        assert_eq!(
            sim.agreement().as_ref(),
            Some(&view),
            "agreement did not last"
        );
        (at, view)
    }

    #[test]
    fn membership_sim_cluster_starts_with_leader_1() {
        let mut sim = scripted(1);
        let (at, view) = settle(&mut sim, 3_000);
        assert_eq!(view.members, ids(&[1, 2, 3, 4, 5]));
        assert_eq!(view.leader, 1);
        // Node 1's takeover timer starts the cluster; the rest join with "I'm here".
        assert!(at >= Config::default().takeover_base_ms, "{at}");
    }

    #[test]
    fn membership_sim_failed_follower_is_removed() {
        let mut sim = scripted(2);
        settle(&mut sim, 3_000);
        let crashed_at = sim.now();
        sim.crash(4);
        let (at, view) = settle(&mut sim, 3_000);
        assert_eq!(view.members, ids(&[1, 2, 3, 5]));
        assert_eq!(view.leader, 1);
        assert!(at - crashed_at <= 1_500, "took {} ms", at - crashed_at);
    }

    #[test]
    fn membership_sim_failed_leader_is_replaced_by_successor() {
        let mut sim = scripted(3);
        settle(&mut sim, 3_000);
        let crashed_at = sim.now();
        sim.crash(1);
        let (at, view) = settle(&mut sim, 3_000);
        assert_eq!(view.members, ids(&[2, 3, 4, 5]));
        assert_eq!(view.leader, 2);
        assert!(at - crashed_at <= 1_500, "took {} ms", at - crashed_at);
    }

    #[test]
    fn membership_sim_leader_and_successor_fail_together() {
        let mut sim = scripted(4);
        settle(&mut sim, 3_000);
        let crashed_at = sim.now();
        sim.crash(1);
        sim.crash(2);
        let (at, view) = settle(&mut sim, 4_000);
        assert_eq!(view.members, ids(&[3, 4, 5]));
        assert_eq!(view.leader, 3);
        // Nobody watches node 1 any more, so node 3's takeover timer had to fire.
        let config = Config::default();
        assert!(at - crashed_at >= config.takeover_ms(2) - config.beacon_interval_ms);
        assert!(at - crashed_at <= 2_500, "took {} ms", at - crashed_at);
    }

    #[test]
    fn membership_sim_partition_forms_two_views_and_heals_into_one() {
        let mut sim = scripted(5);
        settle(&mut sim, 3_000);
        sim.partition(&[&[1, 2], &[3, 4, 5]]);
        let deadline = sim.now() + 5_000;
        let mut sides = None;
        while sim.now() < deadline {
            sim.run_until(sim.now() + 10).unwrap();
            if let (Some(a), Some(b)) = (
                sim.agreement_among(&[1, 2]),
                sim.agreement_among(&[3, 4, 5]),
            ) {
                sides = Some((a, b));
                break;
            }
        }
        let (a, b) = sides.unwrap_or_else(|| panic!("{}", sim.failure("sides".to_string())));
        assert_eq!(a.leader, 1);
        assert_eq!(b.leader, 3);
        sim.heal();
        let (_, view) = settle(&mut sim, 4_000);
        assert_eq!(view.members, ids(&[1, 2, 3, 4, 5]));
        assert_eq!(view.leader, 1);
        assert!(
            view.epoch > a.epoch.max(b.epoch),
            "{view} after {a} and {b}"
        );
    }

    #[test]
    fn membership_sim_restarted_node_rejoins_with_im_here() {
        let mut sim = scripted(6);
        settle(&mut sim, 3_000);
        sim.crash(3);
        let (_, view) = settle(&mut sim, 3_000);
        assert_eq!(view.members, ids(&[1, 2, 4, 5]));
        let im_here_before = sim.net_stats().sent_by_kind.get("im_here").copied();
        sim.restart(3);
        let (_, view) = settle(&mut sim, 3_000);
        assert_eq!(view.members, ids(&[1, 2, 3, 4, 5]));
        assert_eq!(view.leader, 1);
        let im_here_after = sim.net_stats().sent_by_kind.get("im_here").copied();
        assert!(im_here_after > im_here_before);
    }

    #[test]
    fn membership_sim_false_leader_is_suppressed() {
        let mut sim = scripted(7);
        let (_, before) = settle(&mut sim, 3_000);
        let forced_at = sim.now();
        sim.force_takeover(4).unwrap();
        let usurped = sim.view(4).unwrap().clone();
        assert_eq!(usurped.leader, 4);
        assert_eq!(usurped.members, ids(&[4, 5]));
        let (_, after) = settle(&mut sim, 2_000);
        assert_eq!(after.members, ids(&[1, 2, 3, 4, 5]));
        assert_eq!(after.leader, 1);
        assert!(after.epoch > usurped.epoch);
        // The nodes that knew the live leader never followed the usurper.
        for (at, id, view) in sim.view_history() {
            if *at >= forced_at && *id != 4 {
                assert_ne!(view.leader, 4, "node {id} followed the usurper at {at} ms");
            }
        }
        assert!(after.epoch > before.epoch);
    }

    #[test]
    fn membership_sim_same_seed_replays_exactly() {
        let cfg = SimConfig::default();
        let a = run_seed(11, &cfg);
        let b = run_seed(11, &cfg);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.convergence_ms, b.convergence_ms);
                assert_eq!(a.messages_sent, b.messages_sent);
                assert_eq!(a.view, b.view);
            }
            (a, b) => panic!("{a:?}\n{b:?}"),
        }
    }

    #[test]
    fn membership_sim_failure_names_the_seed() {
        let cfg = SimConfig {
            quiet_ms: 1,
            ..SimConfig::default()
        };
        let failure = run_seed(99, &cfg).unwrap_err();
        let text = failure.to_string();
        assert!(text.contains("seed 99"), "{text}");
        assert!(text.contains("replay with seed 99"), "{text}");
    }

    /// Many seeds of chaos then quiet: every one must converge and stay converged.
    #[test]
    fn membership_sim_seed_sweep() {
        let cfg = SimConfig::default();
        let started = std::time::Instant::now();
        let soak = soak(0, SWEEP_SEEDS, &cfg);
        println!("{soak} in {:?}", started.elapsed());
        for failure in &soak.failures {
            println!("{failure}\n");
        }
        assert!(
            soak.failures.is_empty(),
            "failing seeds: {:?}",
            soak.failures.iter().map(|f| f.seed).collect::<Vec<_>>()
        );
    }

    const SWEEP_SEEDS: u64 = 300;

    /// A longer soak with knobs from the environment, for release builds:
    /// `MEMBERSHIP_SOAK_SEEDS=10000 MEMBERSHIP_SOAK_NODES=9 MEMBERSHIP_SOAK_DROP=0.2
    /// cargo test --release -p cluster membership_sim_soak -- --ignored --nocapture`.
    #[test]
    #[ignore = "long; run by hand in release builds"]
    fn membership_sim_soak() {
        let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        let mut cfg = SimConfig::default();
        if let Some(nodes) = knob("MEMBERSHIP_SOAK_NODES") {
            cfg.nodes = nodes as u32;
        }
        if let Some(drop) = knob("MEMBERSHIP_SOAK_DROP") {
            cfg.drop_probability = drop;
        }
        let start = knob("MEMBERSHIP_SOAK_START").unwrap_or(0.0) as u64;
        let seeds = knob("MEMBERSHIP_SOAK_SEEDS").unwrap_or(2_000.0) as u64;
        let started = std::time::Instant::now();
        let soak = soak(start, seeds, &cfg);
        println!(
            "{} nodes, drop {}: {soak} in {:?}",
            cfg.nodes,
            cfg.drop_probability,
            started.elapsed()
        );
        for failure in soak.failures.iter().take(5) {
            println!("{failure}\n");
        }
        assert!(soak.failures.is_empty());
    }
}
