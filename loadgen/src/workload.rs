//! The workload model (who does what, how often, how big) and the seeded schedule it turns into.
//!
//! A [`Workload`] is the `[workload]` table of an experiment file: a user population with
//! Zipf-skewed activity, an operation mix, message sizes, recipients per message and an arrival
//! process ([`Rate`]). Every knob has a default, unknown keys are rejected, and every wrong value
//! is an error naming its key (`workload.skew: must be >= 0`).
//!
//! A [`Schedule`] is the lazy, deterministic sequence of [`Planned`] operations one agent performs:
//! the same workload, seed and [`Share`] always give the same operations at the same intended
//! start times. It holds a few numbers and two random generators, never the whole run, so an
//! hours-long run at a high rate costs no memory.
//!
//! How the run is split across agents: agent `index` of `count` gets `1/count` of the rate (the
//! same shape, scaled) and its own seed derived from the run's seed; the user population is *not*
//! partitioned, so any agent may target any user, exactly as independent clients of a real service
//! would. Sequence numbers are `n * count + index`, unique across agents.
//!
//! This module never does I/O and never reads a clock: times are offsets from the run's start,
//! which the engine owns.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, LogNormal, Poisson, Zipf};
use serde::{Deserialize, Serialize};

use crate::OpKind;

/// Largest user population: Zipf sampling works in `f64`, exact for integers far beyond this.
pub const USERS_MAX: u64 = 100_000_000;
/// Largest Zipf exponent; beyond this almost every operation goes to user 0 anyway.
pub const SKEW_MAX: f64 = 10.0;
/// Largest `workload.hot_nodes`.
pub const HOT_NODES_MAX: u32 = 4096;
/// Longest run: one week.
pub const DURATION_S_MAX: f64 = 7.0 * 86_400.0;
/// Highest arrival rate of the whole run (all agents together).
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
/// Most entries in `rate.steps`.
pub const STEPS_MAX: usize = 10_000;
/// Most closed-loop sessions of the whole run (all agents together).
pub const CLOSED_SESSIONS_MAX: u32 = 100_000;
/// Smallest message: room for the headers every generated message carries.
pub const MESSAGE_BYTES_MIN: usize = 256;
/// Largest `message_size.max_bytes`.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest log-normal `sigma` of message sizes (`e^4` ≈ 55× spread per standard deviation).
pub const MESSAGE_SIGMA_MAX: f64 = 4.0;
/// Largest `recipients.max`.
pub const RECIPIENTS_MAX: u32 = 100;
/// Zipf draws per recipient before falling back to the next free user: with a high skew over a
/// small population, distinct draws of rare users could otherwise take practically forever.
const RECIPIENT_DRAWS_PER_RECIPIENT_MAX: u32 = 16;

/// The workload of one experiment, as written in its `[workload]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Size of the user population; users are numbered `0..users`.
    pub users: u64,
    /// How `skew` is read: a Zipf exponent (the default) or, with `"hot-node"`, the share of
    /// mail and sessions that go to the users of one home node.
    pub skew_model: SkewModel,
    /// `skew_model = "zipf"`: the Zipf exponent of user activity over the population (user 0 is
    /// the busiest); 0 = uniform. `"hot-node"`: the share (0 to 1) of operations whose user is
    /// drawn from the hot set; the others draw uniformly from everyone.
    pub skew: f64,
    /// `skew_model = "hot-node"`: the number of home nodes the users are hashed over (FNV-1a of
    /// the login name modulo this, the static home mapping of the bundled cluster); the hot set
    /// is the users of the first. Defaults to `cluster.nodes` against the bundled cluster.
    pub hot_nodes: Option<u32>,
    /// Length of the run, warmup included.
    pub duration_s: f64,
    /// The first part of the run, excluded from the totals (but shown in the time series).
    pub warmup_s: f64,
    pub rate: Rate,
    pub mix: Mix,
    pub message_size: MessageSize,
    pub recipients: Recipients,
    /// Web experiments: the trace replayed (see [`crate::experiment::TraceWorkload`]).
    pub trace: Option<crate::experiment::TraceWorkload>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            users: 1000,
            skew_model: SkewModel::Zipf,
            skew: 1.0,
            hot_nodes: None,
            duration_s: 60.0,
            warmup_s: 5.0,
            rate: Rate::default(),
            mix: Mix::default(),
            message_size: MessageSize::default(),
            recipients: Recipients::default(),
            trace: None,
        }
    }
}

impl Workload {
    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=USERS_MAX).contains(&self.users) {
            return Err(format!("workload.users: must be between 1 and {USERS_MAX}"));
        }
        if !(self.skew >= 0.0 && self.skew <= SKEW_MAX) {
            return Err(format!(
                "workload.skew: must be >= 0 and <= {SKEW_MAX} (0 = uniform)"
            ));
        }
        if self.skew_model == SkewModel::HotNode {
            if self.skew > 1.0 {
                return Err(
                    "workload.skew: with skew_model = \"hot-node\" it is a share, 0 to 1".into(),
                );
            }
            if let Some(n) = self.hot_nodes {
                if !(1..=HOT_NODES_MAX).contains(&n) {
                    return Err(format!("workload.hot_nodes: must be 1 to {HOT_NODES_MAX}"));
                }
            }
        } else if self.hot_nodes.is_some() {
            return Err(
                "workload.hot_nodes: only means something with skew_model = \"hot-node\"".into(),
            );
        }
        if !(self.duration_s > 0.0 && self.duration_s <= DURATION_S_MAX) {
            return Err(format!(
                "workload.duration_s: must be > 0 and <= {DURATION_S_MAX}"
            ));
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s < self.duration_s) {
            return Err("workload.warmup_s: must be >= 0 and < workload.duration_s".to_string());
        }
        self.rate.validate()?;
        self.mix.validate()?;
        self.message_size.validate()?;
        self.recipients.validate()?;
        Ok(())
    }
}

/// How `workload.skew` shapes who the operations are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkewModel {
    /// Zipf over the population: a few busy users, a long tail.
    Zipf,
    /// A share of everything goes to the users homed on one node, the rest is uniform: the
    /// skew of Porcupine's load-balancing experiment, where a statically partitioned cluster is
    /// only as fast as its busiest node.
    HotNode,
}

/// The home slot of a login name among `slots` nodes: FNV-1a of the name modulo `slots`, the
/// mapping the bundled cluster's static placement uses for home nodes.
pub fn home_slot(login: &str, slots: u32) -> u32 {
    let hash = login.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(slots.max(1))) as u32
}

/// The arrival process: open loop (operations start at their intended times whatever the
/// target's speed) or closed loop (a fixed number of sessions, each starting its next operation
/// when the previous one ends).
///
/// In TOML it is one table with exactly one form: `{ per_s = 300 }`,
/// `{ per_s = 300, arrivals = "constant" }`, `{ ramp = [from_per_s, to_per_s] }`,
/// `{ steps = [[at_s, per_s], ...] }` or `{ closed = 32 }`. `arrivals` applies to every open
/// form and defaults to `"poisson"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RateTable", into = "RateTable")]
pub enum Rate {
    Open {
        arrivals: Arrivals,
        shape: RateShape,
    },
    Closed {
        sessions: u32,
    },
}

impl Default for Rate {
    fn default() -> Self {
        Rate::Open {
            arrivals: Arrivals::Poisson,
            shape: RateShape::Constant(100.0),
        }
    }
}

/// How arrivals are spaced under the rate curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Independent arrivals (exponential gaps at a constant rate): what many independent users
    /// produce, bursts included.
    #[default]
    Poisson,
    /// Evenly spaced under the rate curve: no bursts, for isolating the target's own variance.
    Constant,
}

/// The rate over the run, in operations per second for the whole run (all agents together).
#[derive(Debug, Clone, PartialEq)]
pub enum RateShape {
    /// The same rate throughout.
    Constant(f64),
    /// Linear from the first rate at the start to the second at the end of the run.
    Ramp(f64, f64),
    /// Piecewise constant: `(at_s, per_s)` pairs with increasing `at_s`; each rate holds from its
    /// `at_s` to the next one (or the end of the run). Before the first step there is no load.
    Steps(Vec<(f64, f64)>),
}

impl RateShape {
    /// The intended rate at `t_s` seconds into a run of `duration_s`.
    pub fn per_s_at(&self, t_s: f64, duration_s: f64) -> f64 {
        match self {
            RateShape::Constant(per_s) => *per_s,
            RateShape::Ramp(from, to) => from + (to - from) * (t_s / duration_s).clamp(0.0, 1.0),
            RateShape::Steps(steps) => steps
                .iter()
                .take_while(|(at_s, _)| *at_s <= t_s)
                .last()
                .map_or(0.0, |(_, per_s)| *per_s),
        }
    }

    /// The expected number of operations over a run of `duration_s` (the integral of the rate).
    pub fn expected_ops(&self, duration_s: f64) -> f64 {
        RateCurve::new(self, duration_s).ops_until(duration_s)
    }

    /// Evenly spaced arrivals under this curve: the `k`-th (from 0) at `Λ⁻¹(k)`, so that the
    /// spacing follows the rate of the moment (what `arrivals = "constant"` gives a schedule, for
    /// sequences made elsewhere, such as a replayed log).
    pub fn even_arrivals(&self, duration_s: f64) -> EvenArrivals {
        EvenArrivals {
            curve: RateCurve::new(self, duration_s),
            cursor: 0,
        }
    }
}

/// See [`RateShape::even_arrivals`].
#[derive(Debug, Clone)]
pub struct EvenArrivals {
    curve: RateCurve,
    cursor: usize,
}

impl EvenArrivals {
    /// When arrival `k` is due, in seconds from the start; call with increasing `k`.
    pub fn at(&mut self, k: u64) -> f64 {
        self.curve.time_of(k as f64, &mut self.cursor)
    }
}

impl Rate {
    /// Checks the values of the rate; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |per_s: f64| (0.0..=RATE_PER_S_MAX).contains(&per_s);
        match self {
            Rate::Open { shape, .. } => match shape {
                RateShape::Constant(per_s) => {
                    if !(*per_s > 0.0 && in_range(*per_s)) {
                        return Err(format!(
                            "workload.rate.per_s: must be > 0 and <= {RATE_PER_S_MAX}"
                        ));
                    }
                }
                RateShape::Ramp(from, to) => {
                    if !(in_range(*from) && in_range(*to)) {
                        return Err(format!(
                            "workload.rate.ramp: both rates must be >= 0 and <= {RATE_PER_S_MAX}"
                        ));
                    }
                    if *from == 0.0 && *to == 0.0 {
                        return Err("workload.rate.ramp: at least one rate must be > 0".into());
                    }
                }
                RateShape::Steps(steps) => {
                    if steps.is_empty() || steps.len() > STEPS_MAX {
                        return Err(format!(
                            "workload.rate.steps: give between 1 and {STEPS_MAX} [at_s, per_s] pairs"
                        ));
                    }
                    let mut previous_at_s = None;
                    for (i, (at_s, per_s)) in steps.iter().enumerate() {
                        if !(*at_s >= 0.0 && at_s.is_finite()) {
                            return Err(format!("workload.rate.steps[{i}]: at_s must be >= 0"));
                        }
                        if previous_at_s.is_some_and(|previous| *at_s <= previous) {
                            return Err(format!(
                                "workload.rate.steps[{i}]: at_s must be greater than the previous step's"
                            ));
                        }
                        if !in_range(*per_s) {
                            return Err(format!(
                                "workload.rate.steps[{i}]: per_s must be >= 0 and <= {RATE_PER_S_MAX}"
                            ));
                        }
                        previous_at_s = Some(*at_s);
                    }
                    if steps.iter().all(|(_, per_s)| *per_s == 0.0) {
                        return Err("workload.rate.steps: at least one rate must be > 0".into());
                    }
                }
            },
            Rate::Closed { sessions } => {
                if !(1..=CLOSED_SESSIONS_MAX).contains(sessions) {
                    return Err(format!(
                        "workload.rate.closed: must be between 1 and {CLOSED_SESSIONS_MAX}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// For a closed loop, how many sessions agent `share` runs: its part of the total, the
    /// remainder going to the lowest indices (so it may be zero when there are more agents than
    /// sessions). `None` for an open loop.
    pub fn sessions_for(&self, share: Share) -> Option<u32> {
        match self {
            Rate::Open { .. } => None,
            Rate::Closed { sessions } => {
                let count = share.count.max(1);
                Some(sessions / count + u32::from(share.index < sessions % count))
            }
        }
    }
}

/// The `rate` table as written: every form's key, at most one of which may be given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arrivals: Option<Arrivals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ramp: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<(f64, f64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed: Option<u32>,
}

impl TryFrom<RateTable> for Rate {
    type Error = String;

    fn try_from(table: RateTable) -> Result<Self, Self::Error> {
        let forms = [
            table.per_s.is_some(),
            table.ramp.is_some(),
            table.steps.is_some(),
            table.closed.is_some(),
        ];
        if forms.iter().filter(|given| **given).count() != 1 {
            return Err("workload.rate: give exactly one of per_s, ramp, steps, closed".into());
        }
        let arrivals = table.arrivals.unwrap_or_default();
        let rate = if let Some(sessions) = table.closed {
            if table.arrivals.is_some() {
                return Err(
                    "workload.rate.arrivals: applies to open loops only (per_s, ramp, steps), not closed"
                        .into(),
                );
            }
            Rate::Closed { sessions }
        } else if let Some(per_s) = table.per_s {
            Rate::Open {
                arrivals,
                shape: RateShape::Constant(per_s),
            }
        } else if let Some((from, to)) = table.ramp {
            Rate::Open {
                arrivals,
                shape: RateShape::Ramp(from, to),
            }
        } else {
            Rate::Open {
                arrivals,
                shape: RateShape::Steps(table.steps.unwrap_or_default()),
            }
        };
        rate.validate()?;
        Ok(rate)
    }
}

impl From<Rate> for RateTable {
    fn from(rate: Rate) -> Self {
        match rate {
            Rate::Closed { sessions } => RateTable {
                closed: Some(sessions),
                ..RateTable::default()
            },
            Rate::Open { arrivals, shape } => {
                // Poisson is the default: leave it out so the table reads as it was written.
                let arrivals = (arrivals != Arrivals::Poisson).then_some(arrivals);
                match shape {
                    RateShape::Constant(per_s) => RateTable {
                        per_s: Some(per_s),
                        arrivals,
                        ..RateTable::default()
                    },
                    RateShape::Ramp(from, to) => RateTable {
                        ramp: Some((from, to)),
                        arrivals,
                        ..RateTable::default()
                    },
                    RateShape::Steps(steps) => RateTable {
                        steps: Some(steps),
                        arrivals,
                        ..RateTable::default()
                    },
                }
            }
        }
    }
}

/// Relative weights of the operation kinds (normalized, so `{ smtp = 9, pop3 = 1 }` is fine). A
/// kind a given mix leaves out has weight 0: `mix = { smtp = 1.0 }` is SMTP only. Without a
/// `mix` at all the default mix applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub smtp: f64,
    #[serde(default)]
    pub pop3: f64,
    #[serde(default)]
    pub imap: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            smtp: 0.9,
            pop3: 0.05,
            imap: 0.05,
        }
    }
}

impl Mix {
    pub fn validate(&self) -> Result<(), String> {
        for kind in OpKind::MAIL {
            let weight = self.weight(kind);
            if !(weight >= 0.0 && weight.is_finite()) {
                return Err(format!(
                    "workload.mix.{}: must be >= 0 and finite",
                    kind.name()
                ));
            }
        }
        // Each weight is finite and >= 0 by now, so the sum is too.
        if self.total() <= 0.0 {
            return Err("workload.mix: the weights must sum to more than 0".into());
        }
        Ok(())
    }

    /// The weight of `kind` as written.
    pub fn weight(&self, kind: OpKind) -> f64 {
        match kind {
            OpKind::Smtp => self.smtp,
            OpKind::Pop3 => self.pop3,
            OpKind::Imap => self.imap,
            // HTTP requests come from a trace, never from the mix.
            _ => 0.0,
        }
    }

    /// The fraction of operations that are `kind` (weights normalized to sum to 1).
    pub fn fraction(&self, kind: OpKind) -> f64 {
        self.weight(kind) / self.total()
    }

    fn total(&self) -> f64 {
        OpKind::MAIL.iter().map(|kind| self.weight(*kind)).sum()
    }
}

/// Message sizes: log-normal with the given median and spread, capped at `max_bytes` and at
/// least [`MESSAGE_BYTES_MIN`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageSize {
    pub median_bytes: usize,
    pub max_bytes: usize,
    /// Standard deviation of the size's natural logarithm; 0 = every message `median_bytes`.
    pub sigma: f64,
}

impl Default for MessageSize {
    fn default() -> Self {
        MessageSize {
            median_bytes: 4700,
            max_bytes: 1_048_576,
            sigma: 1.0,
        }
    }
}

impl MessageSize {
    pub fn validate(&self) -> Result<(), String> {
        if !(MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX).contains(&self.max_bytes) {
            return Err(format!(
                "workload.message_size.max_bytes: must be between {MESSAGE_BYTES_MIN} and {MESSAGE_BYTES_MAX}"
            ));
        }
        if !(MESSAGE_BYTES_MIN..=self.max_bytes).contains(&self.median_bytes) {
            return Err(format!(
                "workload.message_size.median_bytes: must be between {MESSAGE_BYTES_MIN} and workload.message_size.max_bytes"
            ));
        }
        if !(self.sigma >= 0.0 && self.sigma <= MESSAGE_SIGMA_MAX) {
            return Err(format!(
                "workload.message_size.sigma: must be >= 0 and <= {MESSAGE_SIGMA_MAX}"
            ));
        }
        Ok(())
    }
}

/// Recipients per message: `1 + Poisson(mean - 1)`, capped at `max` (and at the population),
/// all distinct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipients {
    pub mean: f64,
    pub max: u32,
}

impl Default for Recipients {
    fn default() -> Self {
        Recipients { mean: 1.3, max: 10 }
    }
}

impl Recipients {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=RECIPIENTS_MAX).contains(&self.max) {
            return Err(format!(
                "workload.recipients.max: must be between 1 and {RECIPIENTS_MAX}"
            ));
        }
        if !(self.mean >= 1.0 && self.mean <= f64::from(self.max)) {
            return Err(
                "workload.recipients.mean: must be >= 1 and <= workload.recipients.max".into(),
            );
        }
        Ok(())
    }
}

/// This agent's share of a run split across `count` agents: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

impl Share {
    /// The whole run, on one agent.
    pub const ALL: Share = Share { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Share, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "agent share {index} of {count}: need count >= 1 and index < count"
            ));
        }
        Ok(Share { index, count })
    }

    /// The seed of this agent, derived from the run's seed so that agents draw independent
    /// streams (and share 0 of 1 still differs from a plain `seed`, which callers may use for
    /// something else).
    pub fn derive_seed(self, seed: u64) -> u64 {
        mix64(seed ^ mix64(u64::from(self.index) | (u64::from(self.count) << 32)))
    }
}

impl Default for Share {
    fn default() -> Self {
        Share::ALL
    }
}

/// One operation to perform; users are indices into the population (`0..users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedOp {
    Smtp {
        from: u64,
        to: Vec<u64>,
        size_bytes: usize,
    },
    Pop3 {
        user: u64,
    },
    Imap {
        user: u64,
    },
}

impl PlannedOp {
    pub fn kind(&self) -> OpKind {
        match self {
            PlannedOp::Smtp { .. } => OpKind::Smtp,
            PlannedOp::Pop3 { .. } => OpKind::Pop3,
            PlannedOp::Imap { .. } => OpKind::Imap,
        }
    }
}

/// One operation of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Unique across agents: `n * share.count + share.index` for this agent's `n`-th operation.
    pub seq: u64,
    /// Intended start, from the run's start; latency is measured from here. Zero in a closed
    /// loop, where an operation starts when its session's previous one ends.
    pub at: Duration,
    pub op: PlannedOp,
}

/// The lazy, seeded sequence of one agent's operations. Open loop: in order of intended start,
/// ending at `duration_s`. Closed loop: endless, every `at` zero (the engine stops it).
#[derive(Debug, Clone)]
pub struct Schedule {
    share: Share,
    next_n: u64,
    clock: Option<ArrivalClock>,
    ops: OpSampler,
}

impl Schedule {
    /// # Panics
    ///
    /// If `workload` fails [`Workload::validate`] or `share` is not a valid share (check with
    /// [`Share::new`]): both are checked where the configuration is read.
    pub fn new(workload: &Workload, seed: u64, share: Share) -> Schedule {
        if let Err(problem) = workload.validate() {
            panic!("Schedule::new needs a validated workload: {problem}");
        }
        if let Err(problem) = Share::new(share.index, share.count) {
            panic!("Schedule::new needs a valid share: {problem}");
        }
        let agent_seed = share.derive_seed(seed);
        // Separate streams for arrival times and operation contents, so that the n-th operation
        // is the same whatever the rate shape: comparing rates compares the same work.
        let clock = match &workload.rate {
            Rate::Closed { .. } => None,
            Rate::Open { arrivals, shape } => Some(ArrivalClock::new(
                *arrivals,
                RateCurve::new(shape, workload.duration_s),
                workload.duration_s,
                share,
                StdRng::seed_from_u64(mix64(agent_seed ^ STREAM_ARRIVALS)),
            )),
        };
        let ops = OpSampler::new(
            workload,
            StdRng::seed_from_u64(mix64(agent_seed ^ STREAM_OPS)),
        );
        Schedule {
            share,
            next_n: 0,
            clock,
            ops,
        }
    }

    /// `skew_model = "hot-node"`: the users of the hot node, by index (the engine finds them
    /// from their login names with [`home_slot`]). An empty list keeps the default.
    pub fn with_hot_users(mut self, users: Vec<u64>) -> Schedule {
        if let Some((_, hot)) = &mut self.ops.hot {
            if !users.is_empty() {
                *hot = users;
            }
        }
        self
    }

    /// The share this schedule was built for.
    pub fn share(&self) -> Share {
        self.share
    }
}

impl Iterator for Schedule {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        let at = match &mut self.clock {
            None => Duration::ZERO,
            Some(clock) => clock.next_at()?,
        };
        let seq = self.next_n * u64::from(self.share.count) + u64::from(self.share.index);
        self.next_n += 1;
        Some(Planned {
            seq,
            at,
            op: self.ops.sample(),
        })
    }
}

const STREAM_ARRIVALS: u64 = 0x6172_7269_7661_6c73; // "arrivals"
const STREAM_OPS: u64 = 0x6f70_6572_6174_696f; // "operatio"

/// SplitMix64's finalizer: spreads nearby inputs (seed 1, seed 2; agent 0, agent 1) over
/// unrelated outputs.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rate curve as its integral `Λ(t)` (expected operations by `t`) and the inverse, so that
/// arrivals for any shape come from one rule: a unit-rate process in `Λ` mapped back to time
/// (exponential gaps of 1 give a Poisson process of the curve's rate; gaps of exactly 1 give
/// evenly spaced arrivals). Exact, unlike thinning, and needs no rate bound.
#[derive(Debug, Clone)]
enum RateCurve {
    Constant {
        per_s: f64,
    },
    Ramp {
        from_per_s: f64,
        slope_per_s2: f64,
    },
    Steps {
        /// `(start_s, per_s, Λ(start_s))`, starting with the zero-rate segment before the first
        /// step.
        segments: Vec<(f64, f64, f64)>,
    },
}

impl RateCurve {
    fn new(shape: &RateShape, duration_s: f64) -> RateCurve {
        match shape {
            RateShape::Constant(per_s) => RateCurve::Constant { per_s: *per_s },
            RateShape::Ramp(from, to) => RateCurve::Ramp {
                from_per_s: *from,
                slope_per_s2: (to - from) / duration_s,
            },
            RateShape::Steps(steps) => {
                let mut segments = Vec::with_capacity(steps.len() + 1);
                let (mut start_s, mut per_s, mut ops) = (0.0, 0.0, 0.0);
                segments.push((start_s, per_s, ops));
                for (at_s, step_per_s) in steps {
                    ops += per_s * (at_s - start_s);
                    start_s = *at_s;
                    per_s = *step_per_s;
                    segments.push((start_s, per_s, ops));
                }
                RateCurve::Steps { segments }
            }
        }
    }

    /// `Λ(t)`: expected operations from the start to `t_s`.
    fn ops_until(&self, t_s: f64) -> f64 {
        match self {
            RateCurve::Constant { per_s } => per_s * t_s,
            RateCurve::Ramp {
                from_per_s,
                slope_per_s2,
            } => from_per_s * t_s + 0.5 * slope_per_s2 * t_s * t_s,
            RateCurve::Steps { segments } => {
                let (start_s, per_s, ops) = segments
                    .iter()
                    .take_while(|(start_s, _, _)| *start_s <= t_s)
                    .last()
                    .copied()
                    .unwrap_or((0.0, 0.0, 0.0));
                ops + per_s * (t_s - start_s)
            }
        }
    }

    /// `Λ⁻¹(ops)`: the time by which `ops` operations are expected; `cursor` remembers the step
    /// segment of the previous call, since calls come in increasing order.
    fn time_of(&self, ops: f64, cursor: &mut usize) -> f64 {
        match self {
            RateCurve::Constant { per_s } => ops / per_s,
            RateCurve::Ramp {
                from_per_s,
                slope_per_s2,
            } => {
                if ops <= 0.0 {
                    return 0.0;
                }
                // Root of slope/2·t² + from·t − ops = 0, in the form that stays accurate when the
                // slope is tiny or negative; rounding may push the discriminant just below zero
                // at the end of a ramp down to zero.
                let discriminant = (from_per_s * from_per_s + 2.0 * slope_per_s2 * ops).max(0.0);
                let denominator = from_per_s + discriminant.sqrt();
                if denominator > 0.0 {
                    2.0 * ops / denominator
                } else {
                    f64::INFINITY
                }
            }
            RateCurve::Steps { segments } => {
                while *cursor + 1 < segments.len() && segments[*cursor + 1].2 <= ops {
                    *cursor += 1;
                }
                // A zero-rate segment that reaches `ops` is followed by one that starts there and
                // has a rate, except for the last one, which never reaches it.
                let (start_s, per_s, segment_ops) = segments[*cursor];
                if per_s > 0.0 {
                    start_s + (ops - segment_ops) / per_s
                } else {
                    f64::INFINITY
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ArrivalClock {
    arrivals: Arrivals,
    curve: RateCurve,
    duration_s: f64,
    share: Share,
    /// `Λ` of the next arrival, in operations of the whole run (all agents).
    next_ops: f64,
    /// This agent's arrivals so far (for evenly spaced arrivals).
    n: u64,
    cursor: usize,
    rng: StdRng,
}

impl ArrivalClock {
    fn new(
        arrivals: Arrivals,
        curve: RateCurve,
        duration_s: f64,
        share: Share,
        rng: StdRng,
    ) -> ArrivalClock {
        ArrivalClock {
            arrivals,
            curve,
            duration_s,
            share,
            next_ops: 0.0,
            n: 0,
            cursor: 0,
            rng,
        }
    }

    fn next_at(&mut self) -> Option<Duration> {
        let count = f64::from(self.share.count);
        self.next_ops = match self.arrivals {
            // An agent's process has 1/count of the rate; the union of the agents' independent
            // processes is again Poisson with the full rate.
            Arrivals::Poisson => {
                let gap: f64 = Exp1.sample(&mut self.rng);
                self.next_ops + gap * count
            }
            // Agents take every count-th slot of the whole run's evenly spaced arrivals, so
            // together they produce exactly what one agent would.
            Arrivals::Constant => (self.n as f64) * count + f64::from(self.share.index),
        };
        self.n += 1;
        let at_s = self.curve.time_of(self.next_ops, &mut self.cursor);
        (at_s < self.duration_s).then(|| Duration::from_secs_f64(at_s))
    }
}

/// Draws the contents of operations: kind, users, size, recipients.
#[derive(Debug, Clone)]
struct OpSampler {
    rng: StdRng,
    users: u64,
    active_user: Zipf<f64>,
    /// `skew_model = "hot-node"`: the share that goes to the hot set, and the set (users whose
    /// home slot is 0; until [`Schedule::with_hot_users`] names them, the first
    /// `users / hot_nodes`).
    hot: Option<(f64, Vec<u64>)>,
    mix: Mix,
    size: LogNormal<f64>,
    size_max_bytes: usize,
    /// Recipients beyond the first; `None` when the mean is exactly 1.
    extra_recipients: Option<Poisson<f64>>,
    recipients_max: usize,
}

impl OpSampler {
    fn new(workload: &Workload, rng: StdRng) -> OpSampler {
        // The workload is validated, so the distributions' own checks cannot fail.
        let active_user = Zipf::new(workload.users as f64, workload.skew)
            .expect("validated: users >= 1 and skew >= 0");
        let size = LogNormal::new(
            (workload.message_size.median_bytes as f64).ln(),
            workload.message_size.sigma,
        )
        .expect("validated: sigma finite");
        let extra_mean = workload.recipients.mean - 1.0;
        let extra_recipients = (extra_mean > 0.0)
            .then(|| Poisson::new(extra_mean).expect("validated: 0 < mean - 1 < RECIPIENTS_MAX"));
        let recipients_max = u64::from(workload.recipients.max).min(workload.users) as usize;
        let hot = (workload.skew_model == SkewModel::HotNode).then(|| {
            let slots = u64::from(workload.hot_nodes.unwrap_or(1).max(1));
            let first = (workload.users / slots).max(1);
            (workload.skew, (0..first).collect())
        });
        OpSampler {
            rng,
            users: workload.users,
            active_user,
            hot,
            mix: workload.mix.clone(),
            size,
            size_max_bytes: workload.message_size.max_bytes,
            extra_recipients,
            recipients_max,
        }
    }

    fn sample(&mut self) -> PlannedOp {
        match self.kind() {
            OpKind::Smtp => {
                // Anyone may send mail to a user; it is the mailboxes whose activity is skewed.
                let from = self.rng.random_range(0..self.users);
                let to = self.recipients();
                let size_bytes = self.size_bytes();
                PlannedOp::Smtp {
                    from,
                    to,
                    size_bytes,
                }
            }
            OpKind::Pop3 => PlannedOp::Pop3 {
                user: self.active_user(),
            },
            // `kind` draws from the mail mix only.
            _ => PlannedOp::Imap {
                user: self.active_user(),
            },
        }
    }

    fn kind(&mut self) -> OpKind {
        let x = self.rng.random::<f64>() * self.mix.total();
        let mut cumulative = 0.0;
        let mut last_possible = OpKind::Smtp;
        for kind in OpKind::MAIL {
            let weight = self.mix.weight(kind);
            if weight > 0.0 {
                cumulative += weight;
                last_possible = kind;
                if x < cumulative {
                    return kind;
                }
            }
        }
        // Rounding may leave x at the very top: it belongs to the last kind with a weight.
        last_possible
    }

    /// A user by the skew model: Zipf-distributed (rank 1 is user 0, the busiest), or with
    /// `hot-node` from the hot set with probability `skew`, else uniform.
    fn active_user(&mut self) -> u64 {
        if let Some((share, hot)) = &self.hot {
            if !hot.is_empty() && self.rng.random::<f64>() < *share {
                return hot[self.rng.random_range(0..hot.len())];
            }
            return self.rng.random_range(0..self.users);
        }
        let rank: f64 = self.active_user.sample(&mut self.rng);
        (rank as u64).saturating_sub(1).min(self.users - 1)
    }

    fn recipients(&mut self) -> Vec<u64> {
        let extra = match &self.extra_recipients {
            Some(poisson) => poisson.sample(&mut self.rng) as usize,
            None => 0,
        };
        let count = (1 + extra).min(self.recipients_max);
        let mut to = Vec::with_capacity(count);
        let mut draws_left = RECIPIENT_DRAWS_PER_RECIPIENT_MAX * count as u32;
        while to.len() < count && draws_left > 0 {
            draws_left -= 1;
            let user = self.active_user();
            if !to.contains(&user) {
                to.push(user);
            }
        }
        // Out of draws (high skew over few users): take the next free users after a uniform one.
        // There are enough, as count <= users.
        while to.len() < count {
            let mut user = self.rng.random_range(0..self.users);
            while to.contains(&user) {
                user = (user + 1) % self.users;
            }
            to.push(user);
        }
        to
    }

    fn size_bytes(&mut self) -> usize {
        let bytes: f64 = self.size.sample(&mut self.rng);
        (bytes.round() as usize).clamp(MESSAGE_BYTES_MIN, self.size_max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(rate: Rate, duration_s: f64) -> Workload {
        Workload {
            duration_s,
            warmup_s: 0.0,
            rate,
            ..Workload::default()
        }
    }

    fn poisson(per_s: f64) -> Rate {
        Rate::Open {
            arrivals: Arrivals::Poisson,
            shape: RateShape::Constant(per_s),
        }
    }

    fn closed_ops(workload: &Workload, seed: u64, n: usize) -> Vec<PlannedOp> {
        let closed = Workload {
            rate: Rate::Closed { sessions: 1 },
            ..workload.clone()
        };
        Schedule::new(&closed, seed, Share::ALL)
            .take(n)
            .map(|planned| planned.op)
            .collect()
    }

    fn assert_near(actual: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tolerance * expected,
            "{what}: {actual} not within {}% of {expected}",
            tolerance * 100.0
        );
    }

    #[test]
    fn workload_defaults_are_valid_and_match_the_documented_values() {
        let parsed: Workload = toml::from_str("").unwrap();
        assert_eq!(parsed, Workload::default());
        parsed.validate().unwrap();
        assert_eq!(parsed.users, 1000);
        assert_eq!(parsed.rate, poisson(100.0));
        assert_eq!(parsed.message_size.median_bytes, 4700);
    }

    #[test]
    fn workload_parses_every_rate_form() {
        let cases = [
            ("rate = { per_s = 300 }", poisson(300.0)),
            (
                "rate = { per_s = 300, arrivals = \"constant\" }",
                Rate::Open {
                    arrivals: Arrivals::Constant,
                    shape: RateShape::Constant(300.0),
                },
            ),
            (
                "rate = { ramp = [10, 500] }",
                Rate::Open {
                    arrivals: Arrivals::Poisson,
                    shape: RateShape::Ramp(10.0, 500.0),
                },
            ),
            (
                "rate = { steps = [[0, 100], [30, 300.5]] }",
                Rate::Open {
                    arrivals: Arrivals::Poisson,
                    shape: RateShape::Steps(vec![(0.0, 100.0), (30.0, 300.5)]),
                },
            ),
            ("rate = { closed = 32 }", Rate::Closed { sessions: 32 }),
        ];
        for (text, expected) in cases {
            let parsed: Workload = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.rate, expected, "{text}");
            // And back: the serialized form parses to the same workload.
            let written = toml::to_string(&parsed).unwrap();
            let reparsed: Workload = toml::from_str(&written).unwrap();
            assert_eq!(reparsed, parsed, "{written}");
        }
    }

    #[test]
    fn workload_invalid_values_name_their_key() {
        let cases = [
            ("users = 0", "workload.users"),
            ("skew = -0.5", "workload.skew"),
            ("duration_s = 0", "workload.duration_s"),
            ("duration_s = 10\nwarmup_s = 10", "workload.warmup_s"),
            ("rate = {}", "workload.rate: give exactly one"),
            (
                "rate = { per_s = 10, closed = 4 }",
                "workload.rate: give exactly one",
            ),
            ("rate = { per_s = 0 }", "workload.rate.per_s"),
            ("rate = { per_s = 1e9 }", "workload.rate.per_s"),
            ("rate = { per_s = 10, arrivals = \"bursty\" }", "arrivals"),
            (
                "rate = { closed = 4, arrivals = \"constant\" }",
                "workload.rate.arrivals",
            ),
            ("rate = { closed = 0 }", "workload.rate.closed"),
            ("rate = { ramp = [0, 0] }", "workload.rate.ramp"),
            ("rate = { ramp = [-1, 10] }", "workload.rate.ramp"),
            ("rate = { steps = [] }", "workload.rate.steps"),
            (
                "rate = { steps = [[0, 10], [0, 20]] }",
                "workload.rate.steps[1]",
            ),
            (
                "rate = { steps = [[0, 10], [5, -1]] }",
                "workload.rate.steps[1]",
            ),
            ("rate = { steps = [[-1, 10]] }", "workload.rate.steps[0]"),
            ("mix = { smtp = -1 }", "workload.mix.smtp"),
            ("mix = { smtp = 0, pop3 = 0, imap = 0 }", "workload.mix"),
            (
                "message_size = { median_bytes = 100 }",
                "workload.message_size.median_bytes",
            ),
            (
                "message_size = { median_bytes = 5000, max_bytes = 4000 }",
                "workload.message_size.median_bytes",
            ),
            ("message_size = { max_bytes = 1e12 }", "max_bytes"),
            (
                "message_size = { sigma = -1 }",
                "workload.message_size.sigma",
            ),
            ("recipients = { mean = 0.5 }", "workload.recipients.mean"),
            (
                "recipients = { mean = 20, max = 10 }",
                "workload.recipients.mean",
            ),
            ("recipients = { max = 0 }", "workload.recipients.max"),
        ];
        for (text, key) in cases {
            let problem = match toml::from_str::<Workload>(text) {
                Err(e) => e.to_string(),
                Ok(parsed) => parsed
                    .validate()
                    .expect_err(&format!("{text} should be invalid")),
            };
            assert!(
                problem.contains(key),
                "{text}: {problem:?} does not name {key}"
            );
        }
    }

    #[test]
    fn a_mix_that_leaves_a_kind_out_has_none_of_it() {
        let w: Workload = toml::from_str("mix = { smtp = 1.0 }").unwrap();
        assert_eq!((w.mix.smtp, w.mix.pop3, w.mix.imap), (1.0, 0.0, 0.0));
        let w: Workload = toml::from_str("mix = { imap = 2 }").unwrap();
        assert_eq!((w.mix.smtp, w.mix.pop3, w.mix.imap), (0.0, 0.0, 2.0));
        let w: Workload = toml::from_str("users = 5").unwrap();
        assert_eq!(w.mix, Mix::default());
    }

    #[test]
    fn workload_unknown_keys_are_named() {
        for (text, key) in [
            ("userz = 10", "userz"),
            ("rate = { per_s = 10, burst = 3 }", "burst"),
            ("mix = { http = 1 }", "http"),
            ("message_size = { mean_bytes = 1 }", "mean_bytes"),
            ("recipients = { min = 1 }", "min"),
        ] {
            let problem = toml::from_str::<Workload>(text).unwrap_err().to_string();
            assert!(
                problem.contains(key),
                "{text}: {problem:?} does not name {key}"
            );
        }
    }

    #[test]
    fn workload_same_seed_same_schedule_different_seed_different() {
        let workload = workload(poisson(200.0), 20.0);
        let a: Vec<Planned> = Schedule::new(&workload, 7, Share::ALL).collect();
        let b: Vec<Planned> = Schedule::new(&workload, 7, Share::ALL).collect();
        let c: Vec<Planned> = Schedule::new(&workload, 8, Share::ALL).collect();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn workload_poisson_rate_is_met_and_arrivals_are_ordered_within_the_run() {
        let workload = workload(poisson(1000.0), 100.0);
        let mut previous = Duration::ZERO;
        let mut n = 0u64;
        for planned in Schedule::new(&workload, 1, Share::ALL) {
            assert!(planned.at >= previous);
            assert!(planned.at < Duration::from_secs(100));
            assert_eq!(planned.seq, n);
            previous = planned.at;
            n += 1;
        }
        assert_near(n as f64, 100_000.0, 0.02, "ops");
    }

    #[test]
    fn workload_constant_arrivals_are_evenly_spaced() {
        let rate = Rate::Open {
            arrivals: Arrivals::Constant,
            shape: RateShape::Constant(50.0),
        };
        let planned: Vec<Planned> = Schedule::new(&workload(rate, 10.0), 1, Share::ALL).collect();
        assert_eq!(planned.len(), 500);
        for (n, p) in planned.iter().enumerate() {
            assert!((p.at.as_secs_f64() - n as f64 / 50.0).abs() < 1e-6);
        }
    }

    #[test]
    fn workload_ramp_and_steps_follow_their_curve() {
        let ramp = Rate::Open {
            arrivals: Arrivals::Poisson,
            shape: RateShape::Ramp(0.0, 400.0),
        };
        let at: Vec<f64> = Schedule::new(&workload(ramp, 100.0), 3, Share::ALL)
            .map(|p| p.at.as_secs_f64())
            .collect();
        // Λ(50) = 5_000 of Λ(100) = 20_000.
        let first_half = at.iter().filter(|t| **t < 50.0).count();
        assert_near(at.len() as f64, 20_000.0, 0.03, "ramp ops");
        assert_near(first_half as f64, 5_000.0, 0.05, "ramp first half");

        let steps = Rate::Open {
            arrivals: Arrivals::Poisson,
            shape: RateShape::Steps(vec![(5.0, 200.0), (15.0, 0.0), (25.0, 600.0)]),
        };
        let at: Vec<f64> = Schedule::new(&workload(steps, 30.0), 3, Share::ALL)
            .map(|p| p.at.as_secs_f64())
            .collect();
        assert!(at
            .iter()
            .all(|t| (5.0..15.0).contains(t) || (25.0..30.0).contains(t)));
        let early = at.iter().filter(|t| **t < 15.0).count();
        assert_near(early as f64, 2_000.0, 0.08, "first step");
        assert_near((at.len() - early) as f64, 3_000.0, 0.08, "last step");
        assert_near(
            RateShape::Steps(vec![(5.0, 200.0), (15.0, 0.0), (25.0, 600.0)]).expected_ops(30.0),
            5_000.0,
            1e-9,
            "expected ops",
        );
    }

    #[test]
    fn workload_skew_concentrates_activity_on_user_zero() {
        let mut skewed = Workload {
            mix: Mix {
                smtp: 0.0,
                pop3: 1.0,
                imap: 0.0,
            },
            ..Workload::default()
        };
        let users_of = |w: &Workload| {
            let mut counts = vec![0u64; w.users as usize];
            for op in closed_ops(w, 5, 100_000) {
                let PlannedOp::Pop3 { user } = op else {
                    panic!("mix is all pop3");
                };
                counts[user as usize] += 1;
            }
            counts
        };
        let counts = users_of(&skewed);
        // Zipf(1) over 1000 users: user 0 gets ~1/H(1000) ≈ 13%, user 999 a thousandth of that.
        assert!(counts[0] > 10_000, "{}", counts[0]);
        assert!(counts[0] > 100 * counts[999].max(1));

        skewed.skew = 0.0;
        let counts = users_of(&skewed);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 100 per user expected; Poisson noise stays well within this band.
        assert!(*min > 50 && *max < 160, "uniform: min {min} max {max}");
    }

    #[test]
    fn hot_node_skew_sends_its_share_to_the_users_of_one_home_node() {
        let users = 1000;
        let hot: Vec<u64> = (0..users)
            .filter(|u| home_slot(&format!("user{u}"), 4) == 0)
            .collect();
        assert!((200..300).contains(&hot.len()), "{}", hot.len());
        for share in [0.0, 0.5, 1.0] {
            let w = Workload {
                users,
                skew_model: SkewModel::HotNode,
                skew: share,
                hot_nodes: Some(4),
                rate: Rate::Closed { sessions: 1 },
                ..Workload::default()
            };
            w.validate().unwrap();
            let ops: Vec<PlannedOp> = Schedule::new(&w, 9, Share::ALL)
                .with_hot_users(hot.clone())
                .take(20_000)
                .map(|p| p.op)
                .collect();
            let mut in_hot = 0;
            let mut total = 0;
            for op in &ops {
                let us: Vec<u64> = match op {
                    PlannedOp::Smtp { to, .. } => to.clone(),
                    PlannedOp::Pop3 { user } | PlannedOp::Imap { user } => vec![*user],
                };
                total += us.len();
                in_hot += us.iter().filter(|u| hot.contains(u)).count();
            }
            // A quarter of the users are hot anyway; the share sends that much more there.
            let expected = share + (1.0 - share) * hot.len() as f64 / users as f64;
            assert_near(in_hot as f64 / total as f64, expected, 0.05, "hot share");
        }
        let bad = Workload {
            skew_model: SkewModel::HotNode,
            skew: 1.5,
            ..Workload::default()
        };
        assert!(bad.validate().unwrap_err().contains("workload.skew"));
        let stray = Workload {
            hot_nodes: Some(4),
            ..Workload::default()
        };
        assert!(stray.validate().unwrap_err().contains("workload.hot_nodes"));
    }

    #[test]
    fn workload_mix_proportions_are_met() {
        let w = Workload {
            mix: Mix {
                smtp: 6.0,
                pop3: 3.0,
                imap: 1.0,
            },
            ..Workload::default()
        };
        let ops = closed_ops(&w, 9, 100_000);
        for (kind, expected) in [
            (OpKind::Smtp, 0.6),
            (OpKind::Pop3, 0.3),
            (OpKind::Imap, 0.1),
        ] {
            let n = ops.iter().filter(|op| op.kind() == kind).count();
            assert_near(n as f64 / ops.len() as f64, expected, 0.03, kind.name());
        }
        let none_imap = Workload {
            mix: Mix {
                smtp: 1.0,
                pop3: 1.0,
                imap: 0.0,
            },
            ..Workload::default()
        };
        assert!(closed_ops(&none_imap, 9, 10_000)
            .iter()
            .all(|op| op.kind() != OpKind::Imap));
    }

    #[test]
    fn workload_sizes_have_the_median_and_respect_the_cap() {
        let w = Workload {
            mix: Mix {
                smtp: 1.0,
                pop3: 0.0,
                imap: 0.0,
            },
            message_size: MessageSize {
                median_bytes: 4700,
                max_bytes: 20_000,
                sigma: 1.0,
            },
            ..Workload::default()
        };
        let mut sizes: Vec<usize> = closed_ops(&w, 11, 50_000)
            .into_iter()
            .map(|op| match op {
                PlannedOp::Smtp { size_bytes, .. } => size_bytes,
                other => panic!("mix is all smtp: {other:?}"),
            })
            .collect();
        sizes.sort_unstable();
        assert_near(sizes[sizes.len() / 2] as f64, 4700.0, 0.05, "median size");
        assert!(*sizes.last().unwrap() <= 20_000);
        assert!(*sizes.first().unwrap() >= MESSAGE_BYTES_MIN);
        // sigma = 1 puts ~7% above e^1.5 × median = 21 kB: the cap is actually exercised.
        assert!(sizes.iter().filter(|s| **s == 20_000).count() > 1000);
    }

    #[test]
    fn workload_recipients_are_distinct_bounded_and_have_the_mean() {
        for (users, skew) in [(1000, 1.0), (5, 8.0)] {
            let w = Workload {
                users,
                skew,
                mix: Mix {
                    smtp: 1.0,
                    pop3: 0.0,
                    imap: 0.0,
                },
                recipients: Recipients { mean: 2.0, max: 4 },
                ..Workload::default()
            };
            let mut total = 0usize;
            let ops = closed_ops(&w, 13, 20_000);
            for op in &ops {
                let PlannedOp::Smtp { from, to, .. } = op else {
                    panic!("mix is all smtp");
                };
                assert!(*from < users);
                assert!(!to.is_empty() && to.len() <= 4);
                assert!(to.iter().all(|user| *user < users));
                let mut distinct = to.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), to.len(), "{to:?}");
                total += to.len();
            }
            if users == 1000 {
                // 1 + Poisson(1) capped at 4 has mean 1.98.
                assert_near(
                    total as f64 / ops.len() as f64,
                    1.98,
                    0.03,
                    "mean recipients",
                );
            }
        }
    }

    #[test]
    fn workload_shares_split_the_rate_with_unique_seqs() {
        let w = workload(poisson(1000.0), 40.0);
        let whole = Schedule::new(&w, 21, Share::ALL).count() as f64;
        let a: Vec<Planned> = Schedule::new(&w, 21, Share::new(0, 2).unwrap()).collect();
        let b: Vec<Planned> = Schedule::new(&w, 21, Share::new(1, 2).unwrap()).collect();
        assert_near(a.len() as f64, whole / 2.0, 0.04, "share 0");
        assert_near(b.len() as f64, whole / 2.0, 0.04, "share 1");
        assert_ne!(a[0].op, b[0].op, "agents draw independent streams");
        let mut seqs: Vec<u64> = a.iter().chain(&b).map(|p| p.seq).collect();
        seqs.sort_unstable();
        let n = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), n);

        // Evenly spaced arrivals interleave into exactly the whole run's arrivals.
        let constant = workload(
            Rate::Open {
                arrivals: Arrivals::Constant,
                shape: RateShape::Constant(30.0),
            },
            10.0,
        );
        let whole: Vec<(u64, Duration)> = Schedule::new(&constant, 1, Share::ALL)
            .map(|p| (p.seq, p.at))
            .collect();
        let mut split: Vec<(u64, Duration)> = (0..3)
            .flat_map(|index| Schedule::new(&constant, 1, Share::new(index, 3).unwrap()))
            .map(|p| (p.seq, p.at))
            .collect();
        split.sort_unstable();
        assert_eq!(split, whole);
    }

    #[test]
    fn workload_closed_loop_is_endless_at_zero_and_splits_sessions() {
        let rate = Rate::Closed { sessions: 5 };
        let w = workload(rate.clone(), 1.0);
        assert!(Schedule::new(&w, 1, Share::ALL)
            .take(10_000)
            .all(|p| p.at == Duration::ZERO));
        let sessions: Vec<u32> = (0..3)
            .map(|index| rate.sessions_for(Share::new(index, 3).unwrap()).unwrap())
            .collect();
        assert_eq!(sessions, [2, 2, 1]);
        assert_eq!(poisson(1.0).sessions_for(Share::ALL), None);
    }

    #[test]
    fn workload_invalid_share_is_an_error() {
        assert!(Share::new(2, 2).is_err());
        assert!(Share::new(0, 0).is_err());
    }
}
