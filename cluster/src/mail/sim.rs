//! Deterministic, seeded simulation of a whole mail cluster, in the manner of TigerBeetle's VOPR
//! and FoundationDB's simulator.
//!
//! Every node runs the real state machines: membership (`core::membership::Membership`), the
//! mail service's cluster logic ([`Machine`]) and the store's (`store::state`: how a change
//! becomes log records, and how a durable record changes the index), over a simulated disk and
//! network:
//!
//! - the disk is each node's log as segments of bytes: a batch of changes is sequenced, its
//!   records encoded and appended to the head segment, and only after a simulated fsync applied
//!   and answered (as the writer thread does); a crash keeps what was synced plus, at random,
//!   part of what was not (a torn or a complete unsynced tail), and a restart replays the log
//!   with the real decoder, cutting off a torn tail as recovery does;
//! - between batches the writer compacts as the real one decides to: the oldest closed
//!   segment's live state is appended and synced, applied, and only then is the segment deleted
//!   (a crash in between leaves both); after each step a replay of the disk must give exactly
//!   the index the node runs on;
//! - the network delivers each message after a random delay (so messages overtake each other),
//!   loses some, duplicates some, and loses everything between the sides of a partition;
//! - faults come from a seeded schedule: crashes and restarts, partitions and heals, clock skew.
//!
//! Clients deliver, list, read, flag and expunge through random nodes meanwhile. After the
//! chaos phase the network heals, every node restarts, replication settles, and the checks run
//! (see [`run_seed`]). Everything random comes from the seed: a failing run replays exactly with
//! it, and prints the events that led to it.
//!
//! Like the membership simulation, this module never reads the real clock, uses unseeded
//! randomness or does I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;

use super::machine::{
    Answer, ClientOp, Ctx, Machine, MachineStats, MailConfig, Output, SplitMix64,
    PUSHES_IN_FLIGHT_MAX, REQUESTS_IN_FLIGHT_MAX, WAITING_MAX,
};
use super::placement::Placement;
use super::store::record::{self, Record};
use super::store::state::{self, Change, CompactionPolicy, Overlay, Reply};
use super::store::{FlagMode, Flags, Index, MessageMeta, QUEUE_OPS_MAX};
use super::usermap::UserMap;
use super::wire::{MailMessage, Request, Response};
use crate::core::membership::{Config as MembershipConfig, Membership, Message as MemberMessage};
use crate::core::sim::Scheduled;

/// User-map buckets in the simulated cluster.
const BUCKETS: u32 = 16;
/// How often each node's mail machine is ticked (simulated ms).
const MAIL_TICK_MS: u64 = 50;
/// Changes one simulated writer batch takes at most (as the real writer).
const BATCH_OPS_MAX: usize = 512;
/// Client operations in flight on one node at most.
const CLIENT_OPS_PER_NODE_MAX: usize = 16;
/// Events kept for a failure's trace.
const TRACE_MAX: usize = 20_000;
/// Lines of trace a failure prints at most.
const TRACE_PRINT_MAX: usize = 80;
/// How often, at most, a simulated writer looks at whether to compact (as the real one).
const COMPACTION_CHECK_MS: u64 = 200;
/// Unix ms the simulated clocks start at (2026-01-01).
const WALL_BASE_MS: i64 = 1_767_225_600_000;

/// What a simulated run does. Times are simulated milliseconds.
#[derive(Debug, Clone)]
pub struct MailSimConfig {
    /// Nodes `1..=nodes`.
    pub nodes: u32,
    pub replication: usize,
    pub users: u32,
    /// Length of the chaos phase (faults and client load).
    pub chaos_ms: u64,
    /// After the chaos: the network heals and every node restarts; membership must agree and
    /// replication settle (nothing owed anywhere) within this bound.
    pub settle_bound_ms: u64,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// Gaps between faults are drawn uniformly from this range.
    pub fault_gap_ms_min: u64,
    pub fault_gap_ms_max: u64,
    /// Gaps between client operations.
    pub op_gap_ms_min: u64,
    pub op_gap_ms_max: u64,
    /// Each fsync takes this long at most.
    pub fsync_ms_max: u64,
    /// Clock skew drawn within ±this.
    pub skew_ms_max: u64,
    /// `cluster.tombstone_grace_ms`.
    pub tombstone_grace_ms: u64,
    /// Log segments roll at this size (small, so that compaction comes often).
    pub segment_bytes: u64,
    pub placement: Placement,
    /// A run that processes more events than this fails (a message storm or a timer loop).
    pub events_max: u64,
}

impl Default for MailSimConfig {
    fn default() -> Self {
        MailSimConfig {
            nodes: 4,
            replication: 2,
            users: 3,
            chaos_ms: 6_000,
            settle_bound_ms: 40_000,
            drop_probability: 0.03,
            duplicate_probability: 0.02,
            delay_ms_min: 1,
            delay_ms_max: 30,
            fault_gap_ms_min: 150,
            fault_gap_ms_max: 1_200,
            op_gap_ms_min: 2,
            op_gap_ms_max: 40,
            fsync_ms_max: 8,
            skew_ms_max: 3_000,
            tombstone_grace_ms: 1_000,
            segment_bytes: 4 * 1024,
            placement: Placement::Dynamic,
            events_max: 2_000_000,
        }
    }
}

impl MailSimConfig {
    /// Checks the knobs, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.nodes > 32 {
            return Err("sim mail: `nodes` must be 1..=32".into());
        }
        if self.replication == 0 || self.replication > self.nodes as usize {
            return Err("sim mail: `replication` must be 1..=nodes".into());
        }
        if self.users == 0 || self.users > 1_000 {
            return Err("sim mail: `users` must be 1..=1000".into());
        }
        if !(1_024..=1 << 30).contains(&self.segment_bytes) {
            return Err("sim mail: `segment_bytes` must be 1024..=1073741824".into());
        }
        for (name, p) in [
            ("drop_probability", self.drop_probability),
            ("duplicate_probability", self.duplicate_probability),
        ] {
            if !(0.0..=0.5).contains(&p) {
                return Err(format!("sim mail: `{name}` must be within 0..=0.5"));
            }
        }
        if self.delay_ms_min > self.delay_ms_max
            || self.fault_gap_ms_min > self.fault_gap_ms_max
            || self.op_gap_ms_min > self.op_gap_ms_max
            || self.fault_gap_ms_min == 0
            || self.op_gap_ms_min == 0
        {
            return Err("sim mail: every `*_min` must be positive and at most its `*_max`".into());
        }
        Ok(())
    }
}

/// Deliberate bugs a run can switch on, to show the checks catch them (test builds only).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SimBugs {
    /// The writer answers a change before its fsync.
    pub ack_before_durable: bool,
    /// Compaction deletes the segment it copies before the copy is durable.
    pub compaction_deletes_before_the_copy_is_durable: bool,
    /// Compaction leaves the segment's expunge tombstones behind.
    pub compaction_forgets_tombstones: bool,
    pub machine: super::machine::Bugs,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct MailSimReport {
    pub seed: u64,
    pub events: u64,
    pub simulated_ms: u64,
    pub deliveries_acked: u64,
    pub deliveries_uncertain: u64,
    pub expunges_acked: u64,
    pub flag_changes: u64,
    pub reads_checked: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub skews: u64,
    pub torn_tails: u64,
    /// Segments compacted (copied forward, then deleted).
    pub compactions: u64,
    /// Crashes of a node between a compaction's copy and its delete.
    pub compaction_crashes: u64,
    /// Password changes acknowledged (each replicated to every node).
    pub profiles_acked: u64,
    /// Times a node's disk filled up, and writer batches refused for it.
    pub disk_fulls: u64,
    pub disk_full_refusals: u64,
    /// Times a node's disk turned slow.
    pub slow_disks: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// When replication had settled, after the heal.
    pub settled_after_ms: u64,
    /// Fault kinds that happened in this run (bit per kind), for coverage.
    pub fault_kinds: u32,
}

/// A failed run: the seed, what broke, and the events that led there.
#[derive(Debug, Clone)]
pub struct MailSimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub reason: String,
    pub trace: Vec<String>,
}

impl fmt::Display for MailSimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed at {} ms: {}",
            self.seed, self.at_ms, self.reason
        )?;
        writeln!(
            f,
            "replay: clusterbench sim mail --seed {} (last {} relevant events):",
            self.seed,
            self.trace.len()
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Many runs together.
#[derive(Debug, Default)]
pub struct MailSoak {
    pub reports: Vec<MailSimReport>,
    pub failures: Vec<MailSimFailure>,
}

impl MailSoak {
    pub fn events(&self) -> u64 {
        self.reports.iter().map(|r| r.events).sum()
    }

    pub fn simulated_ms(&self) -> u64 {
        self.reports.iter().map(|r| r.simulated_ms).sum()
    }

    /// Which combinations of fault kinds the runs covered: (distinct combinations, of how many).
    pub fn fault_combinations(&self) -> (usize, usize) {
        let seen: BTreeSet<u32> = self.reports.iter().map(|r| r.fault_kinds).collect();
        (seen.len(), 1 << FAULT_KINDS.len())
    }
}

impl fmt::Display for MailSoak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sum = |g: fn(&MailSimReport) -> u64| self.reports.iter().map(g).sum::<u64>();
        let (combos, of) = self.fault_combinations();
        write!(
            f,
            "{} seeds passed, {} failed; {} events, {:.2} simulated hours; {} deliveries acknowledged \
             ({} uncertain), {} expunges, {} flag changes, {} password changes, {} reads checked; \
             {} crashes, {} partitions, {} clock skews, {} torn tails, {} full disks ({} batches \
             refused), {} slow disks; {} compactions ({} crashed mid-way); {} messages ({} lost, \
             {} duplicated); slowest settle {} ms; fault combinations covered: {combos} of {of}",
            self.reports.len(),
            self.failures.len(),
            self.events(),
            self.simulated_ms() as f64 / 3_600_000.0,
            sum(|r| r.deliveries_acked),
            sum(|r| r.deliveries_uncertain),
            sum(|r| r.expunges_acked),
            sum(|r| r.flag_changes),
            sum(|r| r.profiles_acked),
            sum(|r| r.reads_checked),
            sum(|r| r.crashes),
            sum(|r| r.partitions),
            sum(|r| r.skews),
            sum(|r| r.torn_tails),
            sum(|r| r.disk_fulls),
            sum(|r| r.disk_full_refusals),
            sum(|r| r.slow_disks),
            sum(|r| r.compactions),
            sum(|r| r.compaction_crashes),
            sum(|r| r.messages_sent),
            sum(|r| r.messages_dropped),
            sum(|r| r.messages_duplicated),
            self.reports
                .iter()
                .map(|r| r.settled_after_ms)
                .max()
                .unwrap_or(0),
        )
    }
}

/// Runs seeds `start..start + count`.
pub fn soak(start: u64, count: u64, config: &MailSimConfig) -> MailSoak {
    let mut soak = MailSoak::default();
    for seed in start..start.saturating_add(count) {
        match run_seed(seed, config) {
            Ok(r) => soak.reports.push(r),
            Err(f) => soak.failures.push(f),
        }
    }
    soak
}

/// One run: chaos with client load, then heal, restart everything, settle, and check.
///
/// Checked throughout: a read returns exactly the bytes delivered under that UID; a UID is never
/// given to two messages; UIDVALIDITY never changes; queues stay within their bounds; once a
/// compaction's copy is durable, and again once the old segment is deleted, replaying the node's
/// log gives exactly the index it runs on. After the
/// run settles (every node up, one view, nothing owed or pending anywhere):
/// - every acknowledged delivery not expunged is listed exactly once, under its UID, and reads
///   back intact through another node;
/// - no acknowledged expunge shows, and no node holds the message;
/// - no message shows twice (two UIDs with one delivery's bytes);
/// - every replica of a message has the same flags;
/// - every replica a message names holds it;
/// - each user's manager locates every node that holds the user's messages.
#[allow(clippy::unit_arg)] // No bug switches outside tests.
pub fn run_seed(seed: u64, config: &MailSimConfig) -> Result<MailSimReport, MailSimFailure> {
    run_seed_with(seed, config, Default::default())
}

#[cfg(test)]
type BugSwitches = SimBugs;
#[cfg(not(test))]
type BugSwitches = ();

pub(crate) fn run_seed_with(
    seed: u64,
    config: &MailSimConfig,
    bugs: BugSwitches,
) -> Result<MailSimReport, MailSimFailure> {
    if let Err(e) = config.validate() {
        return Err(MailSimFailure {
            seed,
            at_ms: 0,
            reason: e,
            trace: Vec::new(),
        });
    }
    let mut sim = Sim::new(seed, config.clone(), bugs);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match result {
        Ok(Ok(())) => {
            if std::env::var_os("MAIL_SIM_FULL_TRACE").is_some() {
                for (at, line) in &sim.trace {
                    eprintln!("{at:>7} ms  {line}");
                }
            }
            sim.report.seed = seed;
            sim.report.events = sim.events;
            sim.report.simulated_ms = sim.now;
            Ok(sim.report)
        }
        Ok(Err(reason)) => Err(sim.failure(reason)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(sim.failure(format!("panicked: {what}")))
        }
    }
}

const FAULT_KINDS: [&str; 10] = [
    "crash",
    "restart",
    "partition",
    "heal",
    "skew",
    "crash_all",
    "torn_tail",
    "crash_mid_compaction",
    "disk_full",
    "slow_disk",
];

// ----- The simulated cluster -----

#[derive(Debug)]
enum NetMessage {
    Member(MemberMessage),
    Mail(MailMessage),
}

#[derive(Debug)]
enum Event {
    Net {
        from: u32,
        to: u32,
        message: NetMessage,
        /// A duplicate is delivered only to the incarnation the original was sent to (as a
        /// connection's retransmission would be; nothing crosses a restart twice).
        only_to: Option<u64>,
    },
    MemberTick {
        node: u32,
        incarnation: u64,
    },
    MailTick {
        node: u32,
        incarnation: u64,
    },
    /// The node dies while its compaction's copy is not yet durable.
    CrashMidCompaction {
        node: u32,
        incarnation: u64,
    },
    /// A compaction's copy is durable.
    CompactSynced {
        node: u32,
        incarnation: u64,
    },
    /// A compaction deletes the segment it copied.
    CompactDeleted {
        node: u32,
        incarnation: u64,
    },
    Fsync {
        node: u32,
        incarnation: u64,
    },
    ClientOp,
    Fault,
}

/// A node's disk: its log segments (id → bytes; the last is the head) and how much of the head
/// is durable (closed segments are, whole).
struct Disk {
    segments: BTreeMap<u32, Vec<u8>>,
    synced: usize,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            segments: BTreeMap::from([(1, Vec::new())]),
            synced: 0,
        }
    }
}

impl Disk {
    fn head_id(&self) -> u32 {
        *self.segments.keys().next_back().expect("a head segment")
    }

    fn head(&mut self) -> &mut Vec<u8> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a head segment")
    }

    fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len() as u64).sum()
    }

    /// A new, empty head (only when the old one is wholly synced).
    fn roll(&mut self) {
        let next = self.head_id() + 1;
        self.segments.insert(next, Vec::new());
        self.synced = 0;
    }

    /// Every good record of segment `id` with its frame offset; how long the good prefix is.
    fn records(&self, id: u32) -> (Vec<(u64, Record)>, usize) {
        let bytes = &self.segments[&id];
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            match record::decode(&bytes[at..]) {
                Ok((r, used)) => {
                    out.push((at as u64, r));
                    at += used;
                }
                Err(_) => break,
            }
        }
        (out, at)
    }

    /// Replays the log with the real decoder, as recovery does: returns the index and the length
    /// of the head's good prefix (a torn tail after it is cut off). Damage in a closed segment
    /// is an error: nothing here damages one.
    fn replay(&self) -> Result<(Index, usize), String> {
        let mut index = Index::default();
        let head = self.head_id();
        let mut good = 0;
        for &id in self.segments.keys() {
            let (records, len) = self.records(id);
            if id != head && len < self.segments[&id].len() {
                return Err(format!("closed segment {id} is damaged at {len}"));
            }
            for (at, r) in &records {
                state::apply(&mut index, id, *at, r);
            }
            good = len;
        }
        Ok((index, good))
    }
}

/// A compaction under way on a node.
struct Compacting {
    /// The segment copied forward.
    segment: u32,
    /// Where its copy starts in the head, and what it carries (frame offsets within the copy).
    start: u64,
    carried: Vec<(u64, Record)>,
    /// The log's size when it began, and what it reclaims (for the policy).
    log_bytes: u64,
    reclaimed: u64,
}

/// One copy of a message on a node: (node, flags, their stamp, the replicas it names).
type Held = (u32, Flags, i64, Vec<u32>);

/// A batch written and waiting for its fsync: (token, answer, records with their offsets).
type Batch = Vec<(u64, Reply, Vec<(u64, Record)>)>;

/// A running node.
struct Up {
    membership: Membership,
    machine: Machine,
    index: Index,
    /// Changes waiting for the writer.
    queue: VecDeque<(u64, Change)>,
    batch: Option<Batch>,
    compaction: CompactionPolicy,
    next_compaction_check: u64,
    compacting: Option<Compacting>,
    member_tick_at: Option<u64>,
    /// Client operations in flight: op id → what it was.
    ops: BTreeMap<u64, PendingOp>,
}

struct SimNode {
    incarnation: u64,
    up: Option<Up>,
    disk: Disk,
    skew_ms: i64,
    /// The disk is full (across restarts) until then.
    full: Option<DiskFull>,
    /// The disk is slow until then.
    slow_until: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct DiskFull {
    until: u64,
    /// Every batch is refused, not only those storing new messages.
    everything: bool,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Deliver {
        user: String,
        serial: u64,
    },
    Snapshot {
        user: String,
        verify: bool,
    },
    Read {
        user: String,
        uid: u32,
        verify: bool,
    },
    Flags,
    Expunge {
        user: String,
        uids: Vec<u32>,
    },
    Profile {
        user: String,
    },
}

/// What the clients know.
#[derive(Default)]
struct Model {
    next_serial: u64,
    /// serial → (user, body).
    bodies: BTreeMap<u64, (String, Arc<[u8]>)>,
    /// Acknowledged deliveries: (user, uid) → serial.
    acked: BTreeMap<(String, u32), u64>,
    /// Any UID seen with a body: (user, uid) → serial (acknowledged or not).
    uid_serial: BTreeMap<(String, u32), u64>,
    /// Deliveries that failed or went unanswered: they may or may not exist.
    uncertain: BTreeSet<u64>,
    /// Acknowledged expunges.
    expunged: BTreeSet<(String, u32)>,
    /// Expunges asked for whose outcome is unknown.
    maybe_expunged: BTreeSet<(String, u32)>,
    /// Passwords clients set for each user (acknowledged or not).
    passwords_tried: BTreeMap<String, BTreeSet<String>>,
    /// Users with an acknowledged password change.
    passwords_acked: BTreeSet<String>,
    /// What the final verification saw: (user) → listed UIDs; reads still to come.
    final_listed: BTreeMap<String, Vec<MessageMeta>>,
    final_read: BTreeMap<(String, u32), u64>,
}

struct Sim {
    config: MailSimConfig,
    seed: u64,
    now: u64,
    rng: SplitMix64,
    net_rng: SplitMix64,
    nodes: BTreeMap<u32, SimNode>,
    queue: BinaryHeap<Reverse<Scheduled<Event>>>,
    sequence: u64,
    events: u64,
    groups: Option<BTreeMap<u32, usize>>,
    chaos: bool,
    next_op: u64,
    model: Model,
    report: MailSimReport,
    trace: VecDeque<(u64, String)>,
    /// The user a failure is about, to pick the trace lines that matter.
    focus: Option<String>,
    focus_uid: Option<u32>,
    #[cfg_attr(not(test), allow(dead_code))]
    bugs: BugSwitches,
    /// Half the seeds churn: larger messages, and as many expunges (of messages still there) as
    /// deliveries, so that most of the log becomes garbage and compaction runs often.
    churn: bool,
}

impl Sim {
    fn new(seed: u64, config: MailSimConfig, bugs: BugSwitches) -> Sim {
        let mut sim = Sim {
            seed,
            now: 0,
            rng: SplitMix64::new(seed ^ 0x3A11_5EED_0000_0001),
            net_rng: SplitMix64::new(seed ^ 0x0E70_0000_0000_0002),
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            events: 0,
            groups: None,
            chaos: true,
            next_op: 0,
            model: Model::default(),
            report: MailSimReport::default(),
            trace: VecDeque::new(),
            focus: None,
            focus_uid: None,
            bugs,
            config,
            churn: false,
        };
        sim.churn = sim.rng.chance(0.5);
        for id in 1..=sim.config.nodes {
            sim.nodes.insert(
                id,
                SimNode {
                    incarnation: 0,
                    up: None,
                    disk: Disk::default(),
                    skew_ms: 0,
                    full: None,
                    slow_until: None,
                },
            );
        }
        sim
    }

    fn failure(&self, reason: String) -> MailSimFailure {
        if std::env::var_os("MAIL_SIM_FULL_TRACE").is_some() {
            for (at, line) in &self.trace {
                eprintln!("{at:>7} ms  {line}");
            }
        }
        let focus = self.focus.clone();
        let uid = self.focus_uid.or_else(|| {
            let rest = reason.split("UID ").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        let mut lines: Vec<String> = self
            .trace
            .iter()
            .filter(|(_, line)| {
                let general = line.contains("fault") || line.contains(" start ");
                let about_user = focus
                    .as_ref()
                    .is_none_or(|u| line.contains(&format!("{u} ")));
                let about_uid = uid.is_none_or(|uid| {
                    line.split(|c: char| !c.is_ascii_digit())
                        .any(|w| w == uid.to_string())
                });
                general || (about_user && about_uid)
            })
            .map(|(at, line)| format!("{at:>7} ms  {line}"))
            .collect();
        if lines.len() > TRACE_PRINT_MAX {
            lines.drain(..lines.len() - TRACE_PRINT_MAX);
        }
        MailSimFailure {
            seed: self.seed,
            at_ms: self.now,
            reason,
            trace: lines,
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back((self.now, line));
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            sequence: self.sequence,
            event,
        }));
    }

    fn run(&mut self) -> Result<(), String> {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start(id)?;
        }
        self.schedule(1, Event::ClientOp);
        let gap = self.fault_gap();
        self.schedule(gap, Event::Fault);
        let chaos_end = self.config.chaos_ms;
        self.run_until(chaos_end)?;
        self.heal_all()?;
        let bound = self.now + self.config.settle_bound_ms;
        self.run_until_settled(bound)?;
        self.report.settled_after_ms = self.now - chaos_end;
        // Tombstones ripen and retire; then look at everything.
        let until =
            self.now + self.config.tombstone_grace_ms + 2 * super::machine::PUSH_RETRY_INTERVAL_MS;
        self.run_until(until)?;
        self.check_state()?;
        self.verify_through_clients()?;
        Ok(())
    }

    fn run_until(&mut self, until: u64) -> Result<(), String> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(next) = self.queue.pop().expect("peeked");
            self.now = self.now.max(next.at);
            self.events += 1;
            if self.events > self.config.events_max {
                return Err(format!(
                    "more than {} events: a message storm or a timer loop",
                    self.config.events_max
                ));
            }
            self.process(next.event)?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    fn fault_gap(&mut self) -> u64 {
        self.now
            + self
                .rng
                .range_inclusive(self.config.fault_gap_ms_min, self.config.fault_gap_ms_max)
    }

    // ----- Nodes -----

    fn start(&mut self, id: u32) -> Result<(), String> {
        let all: BTreeSet<u32> = self.nodes.keys().copied().collect();
        let machine_seed = self.rng.u64();
        let config = MailConfig {
            id,
            replication: self.config.replication,
            spread: 2,
            placement: self.config.placement,
            all: all.clone(),
            uid_validity: 1_767_225_600,
            tombstone_grace: std::time::Duration::from_millis(self.config.tombstone_grace_ms),
        };
        let node = self.nodes.get_mut(&id).expect("configured node");
        node.incarnation += 1;
        // Recovery: replay the log with the real decoder; a torn tail is cut off.
        let (index, at) = node
            .disk
            .replay()
            .map_err(|e| format!("n{id} cannot recover: {e}"))?;
        let torn = node.disk.head().len() - at;
        node.disk.head().truncate(at);
        node.disk.synced = at;
        let membership = Membership::new(id, all, MembershipConfig::default(), self.now);
        let view = membership.view().clone();
        let usermap = Arc::new(UserMap::compute(&view.members, BUCKETS));
        #[allow(unused_mut)]
        let mut machine = Machine::new(config, machine_seed, view.clone(), usermap.clone());
        #[cfg(test)]
        {
            machine.bugs = self.bugs.machine;
        }
        node.up = Some(Up {
            membership,
            machine,
            index,
            queue: VecDeque::new(),
            batch: None,
            compaction: CompactionPolicy::default(),
            next_compaction_check: self.now + COMPACTION_CHECK_MS,
            compacting: None,
            member_tick_at: None,
            ops: BTreeMap::new(),
        });
        let incarnation = node.incarnation;
        if torn > 0 {
            self.note(format!("n{id} restart cut a torn tail of {torn} bytes"));
        }
        self.note(format!("n{id} start (incarnation {incarnation})"));
        self.with_machine(id, |m, ctx| m.on_view(ctx, view, usermap))?;
        self.after_membership(id)?;
        self.schedule(
            self.now + MAIL_TICK_MS,
            Event::MailTick {
                node: id,
                incarnation,
            },
        );
        Ok(())
    }

    fn crash(&mut self, id: u32) {
        let tear = self.rng.chance(0.5);
        let keep_frac = self.rng.below(1_000);
        let node = self.nodes.get_mut(&id).expect("configured node");
        let Some(up) = node.up.take() else {
            return;
        };
        if up.compacting.is_some() {
            self.report.compaction_crashes += 1;
            self.report.fault_kinds |= 1 << 7;
        }
        // The clients of operations in flight there never hear back: their outcome is unknown.
        for (_, pending) in up.ops {
            match pending {
                PendingOp::Deliver { serial, .. } => {
                    self.report.deliveries_uncertain += 1;
                    self.model.uncertain.insert(serial);
                }
                PendingOp::Expunge { user, uids } => {
                    for uid in uids {
                        self.model.maybe_expunged.insert((user.clone(), uid));
                    }
                }
                _ => {}
            }
        }
        let node = self.nodes.get_mut(&id).expect("configured node");
        // What was not synced may or may not have reached the disk, in part.
        let unsynced = node.disk.head().len() - node.disk.synced;
        let kept = if tear && unsynced > 0 {
            (unsynced as u64 * keep_frac / 1_000) as usize
        } else {
            0
        };
        let keep = node.disk.synced + kept;
        node.disk.head().truncate(keep);
        if kept > 0 {
            self.report.torn_tails += 1;
            self.report.fault_kinds |= 1 << 6;
        }
        self.report.crashes += 1;
        self.note(format!(
            "fault: n{id} crashes ({unsynced} unsynced bytes, {kept} of them kept)"
        ));
    }

    fn live(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn cut(&self, a: u32, b: u32) -> bool {
        self.groups.as_ref().is_some_and(|g| g.get(&a) != g.get(&b))
    }

    /// Runs `f` on node `id`'s mail machine with its context, then carries out what it asked.
    fn with_machine(&mut self, id: u32, f: impl FnOnce(&mut Machine, &Ctx)) -> Result<(), String> {
        let reachable: BTreeSet<u32> = self
            .nodes
            .iter()
            .filter(|(&n, node)| node.up.is_some() && !self.cut(id, n))
            .map(|(&n, _)| n)
            .collect();
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("configured node");
        let wall_ms = WALL_BASE_MS + now as i64 + node.skew_ms;
        let Some(up) = node.up.as_mut() else {
            return Ok(());
        };
        let connected = |peer: u32| reachable.contains(&peer);
        let ctx = Ctx {
            now_ms: now,
            wall_ms,
            index: &up.index,
            pending_ops: up.queue.len() as u64,
            connected: &connected,
        };
        f(&mut up.machine, &ctx);
        self.drain(id)
    }

    /// Carries out what node `id`'s machine asked for, until it asks for nothing more.
    fn drain(&mut self, id: u32) -> Result<(), String> {
        loop {
            let outputs = match self.nodes.get_mut(&id).and_then(|n| n.up.as_mut()) {
                Some(up) => up.machine.poll(),
                None => return Ok(()),
            };
            if outputs.is_empty() {
                break;
            }
            for output in outputs {
                match output {
                    Output::Send { to, message } => self.send_mail(id, to, message),
                    Output::Store { token, change } => {
                        let up = self.up_mut(id);
                        up.queue.push_back((token, change));
                        if up.queue.len() > QUEUE_OPS_MAX {
                            return Err(format!(
                                "n{id}'s store queue holds {} changes (bound {QUEUE_OPS_MAX})",
                                up.queue.len()
                            ));
                        }
                    }
                    Output::ReadBody { token, meta } => {
                        let bytes = self.read_body(id, &meta);
                        self.with_machine(id, |m, ctx| m.body(ctx, token, bytes))?;
                    }
                    Output::Done { op, result } => self.client_done(id, op, result)?,
                }
            }
        }
        self.check_bounds(id)?;
        self.kick_writer(id)
    }

    fn up_mut(&mut self, id: u32) -> &mut Up {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.up.as_mut())
            .expect("node is up")
    }

    fn read_body(&self, id: u32, meta: &MessageMeta) -> Result<Vec<u8>, String> {
        let node = &self.nodes[&id];
        let (segment, offset) = Index::body_location(meta).ok_or("not held here")?;
        let start = offset as usize;
        let end = start + meta.size as usize;
        node.disk
            .segments
            .get(&segment)
            .ok_or_else(|| format!("segment {segment} is gone"))?
            .get(start..end)
            .map(|b| b.to_vec())
            .ok_or_else(|| "beyond the end of the log".to_string())
    }

    fn check_bounds(&self, id: u32) -> Result<(), String> {
        let Some(up) = self.nodes[&id].up.as_ref() else {
            return Ok(());
        };
        let s: MachineStats = up.machine.stats();
        if s.pushes_in_flight > PUSHES_IN_FLIGHT_MAX
            || s.waiting > WAITING_MAX
            || s.requests_in_flight > REQUESTS_IN_FLIGHT_MAX
            || s.ripe > self.model.expunged.len() + self.model.maybe_expunged.len() + 64
        {
            return Err(format!("n{id}'s queues went past their bounds: {s:?}"));
        }
        Ok(())
    }

    // ----- The simulated writer and disk -----

    /// Starts the next batch if the writer is idle: sequence it against the index, append its
    /// records, and fsync (an event later).
    fn kick_writer(&mut self, id: u32) -> Result<(), String> {
        let fsync_ms = self.fsync_ms(id);
        #[cfg(test)]
        let ack_early = self.bugs.ack_before_durable;
        #[cfg(not(test))]
        let ack_early = false;
        let node = self.nodes.get_mut(&id).expect("configured node");
        let incarnation = node.incarnation;
        let Some(up) = node.up.as_mut() else {
            return Ok(());
        };
        if up.batch.is_some() || up.compacting.is_some() {
            return Ok(());
        }
        // Between batches, as the real writer.
        if self.maybe_compact(id)? {
            return Ok(());
        }
        let segment_bytes = self.config.segment_bytes;
        let node = self.nodes.get_mut(&id).expect("configured node");
        let up = node.up.as_mut().expect("node is up");
        if up.queue.is_empty() {
            return Ok(());
        }
        if node.disk.head().len() as u64 >= segment_bytes {
            node.disk.roll();
        }
        let head = node.disk.head_id();
        let mut batch: Batch = Vec::new();
        let mut overlay = Overlay::default();
        let take = up.queue.len().min(BATCH_OPS_MAX);
        let base = node.disk.head().len() as u64;
        let mut buf = Vec::new();
        for (token, change) in up.queue.drain(..take) {
            let (reply, records) = state::sequence(&up.index, &mut overlay, id, change);
            let mut placed = Vec::with_capacity(records.len());
            for r in records {
                let at = base + buf.len() as u64;
                record::encode(&r, &mut buf);
                placed.push((at, r));
            }
            batch.push((token, reply, placed));
        }
        // A full disk: as the real writer, a batch storing new messages is refused whole (only
        // changes that free space may use the last of it), or, fuller still, every batch. The
        // refusal is answered a moment later, like a batch.
        let refused = node.full.is_some_and(|f| {
            self.now < f.until
                && (f.everything
                    || batch.iter().any(|(_, _, records)| {
                        records
                            .iter()
                            .any(|(_, r)| matches!(r, Record::Deliver { .. }))
                    }))
        });
        if refused {
            for (_, reply, records) in &mut batch {
                *reply = Reply::Failed(format!("{}; try again later", super::store::DISK_FULL));
                records.clear();
            }
            self.report.disk_full_refusals += 1;
        } else {
            node.disk.head().extend_from_slice(&buf);
        }
        if ack_early {
            // The bug: answered (and visible) before the fsync.
            for (_, _, records) in &batch {
                for (at, r) in records {
                    state::apply(&mut up.index, head, *at, r);
                }
            }
            up.batch = Some(Vec::new());
            self.schedule(
                self.now + fsync_ms,
                Event::Fsync {
                    node: id,
                    incarnation,
                },
            );
            for (token, reply, _) in batch {
                self.with_machine(id, |m, ctx| m.stored(ctx, token, reply))?;
            }
            return Ok(());
        }
        up.batch = Some(batch);
        self.schedule(
            self.now + fsync_ms,
            Event::Fsync {
                node: id,
                incarnation,
            },
        );
        Ok(())
    }

    fn fsynced(&mut self, id: u32) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("configured node");
        node.disk.synced = node.disk.head().len();
        let head = node.disk.head_id();
        let Some(up) = node.up.as_mut() else {
            return Ok(());
        };
        let batch = up.batch.take().unwrap_or_default();
        for (_, _, records) in &batch {
            for (at, r) in records {
                state::apply(&mut up.index, head, *at, r);
            }
        }
        for (token, reply, _) in batch {
            self.with_machine(id, |m, ctx| m.stored(ctx, token, reply))?;
        }
        self.kick_writer(id)
    }

    /// How long node `id`'s next fsync takes: 1–`fsync_ms_max` ms, or on a slow disk 50 ms–2 s,
    /// and a tenth of the time a stall past the peers' write timeout.
    fn fsync_ms(&mut self, id: u32) -> u64 {
        let slow = self.nodes[&id].slow_until.is_some_and(|t| self.now < t);
        if !slow {
            1 + self.rng.below(self.config.fsync_ms_max.max(1))
        } else if self.rng.chance(0.1) {
            self.rng.range_inclusive(
                super::machine::WRITE_RPC_TIMEOUT_MS + 1,
                super::machine::WRITE_RPC_TIMEOUT_MS + 2_000,
            )
        } else {
            self.rng.range_inclusive(50, 2_000)
        }
    }

    /// Starts compacting the oldest closed segment if the writer's policy says so (looked at
    /// every `COMPACTION_CHECK_MS` at most): appends its live state to the head and fsyncs it
    /// (an event later). Returns whether it started.
    fn maybe_compact(&mut self, id: u32) -> Result<bool, String> {
        let now = self.now;
        let segment_bytes = self.config.segment_bytes;
        let fsync_ms = self.fsync_ms(id);
        let node = self.nodes.get_mut(&id).expect("configured node");
        let incarnation = node.incarnation;
        let up = node.up.as_mut().expect("node is up");
        if now < up.next_compaction_check {
            return Ok(false);
        }
        up.next_compaction_check = now + COMPACTION_CHECK_MS;
        let head = node.disk.head_id();
        let Some(oldest) = node.disk.segments.keys().copied().find(|&s| s != head) else {
            return Ok(false);
        };
        let log_bytes = node.disk.bytes();
        if !up
            .compaction
            .due(log_bytes, up.index.live_bytes(), segment_bytes)
        {
            return Ok(false);
        }
        #[allow(unused_mut)]
        let (mut records, _) = node.disk.records(oldest);
        #[cfg(test)]
        if self.bugs.compaction_forgets_tombstones {
            records.retain(|(_, r)| !matches!(r, Record::Expunge { .. }));
        }
        let (copy, carried) = state::compaction_copy(&up.index, oldest, records);
        if node.disk.head().len() as u64 >= segment_bytes {
            node.disk.roll();
        }
        let size = node.disk.segments[&oldest].len() as u64;
        let head = node.disk.head();
        let start = head.len() as u64;
        head.extend_from_slice(&copy);
        #[cfg(test)]
        if self.bugs.compaction_deletes_before_the_copy_is_durable {
            node.disk.segments.remove(&oldest);
        }
        up.compacting = Some(Compacting {
            segment: oldest,
            start,
            carried,
            log_bytes,
            reclaimed: size.saturating_sub(copy.len() as u64),
        });
        self.note(format!(
            "n{id} compacts segment {oldest} ({size} bytes, {} carried)",
            copy.len()
        ));
        self.schedule(
            self.now + fsync_ms,
            Event::CompactSynced {
                node: id,
                incarnation,
            },
        );
        // Now and then the node dies before the copy is durable (part of it may survive); as
        // an event, not from inside the writer.
        if self.chaos && self.rng.chance(0.03) {
            self.schedule(
                self.now,
                Event::CrashMidCompaction {
                    node: id,
                    incarnation,
                },
            );
        }
        Ok(true)
    }

    /// A compaction's copy is durable: the index finds the carried state in the head; the
    /// old segment is deleted a moment later (a crash in between leaves both on disk).
    fn compact_synced(&mut self, id: u32) -> Result<(), String> {
        let delay = self.fsync_ms(id);
        let node = self.nodes.get_mut(&id).expect("configured node");
        let incarnation = node.incarnation;
        node.disk.synced = node.disk.head().len();
        let head = node.disk.head_id();
        let up = node.up.as_mut().expect("node is up");
        let c = up.compacting.as_ref().expect("a compaction under way");
        state::compaction_applied(&mut up.index, c.segment, head, c.start, &c.carried);
        self.check_replay(id, "after a compaction's copy, before its delete")?;
        // Now and then the node dies right here: its restart replays both copies.
        if self.chaos && self.live().len() > 1 && self.rng.chance(0.05) {
            self.note(format!(
                "fault: n{id} crashes between a compaction's copy and delete"
            ));
            self.crash(id);
            return Ok(());
        }
        self.schedule(
            self.now + delay,
            Event::CompactDeleted {
                node: id,
                incarnation,
            },
        );
        Ok(())
    }

    fn compact_deleted(&mut self, id: u32) -> Result<(), String> {
        let segment_bytes = self.config.segment_bytes;
        let node = self.nodes.get_mut(&id).expect("configured node");
        let up = node.up.as_mut().expect("node is up");
        let c = up.compacting.take().expect("a compaction under way");
        node.disk.segments.remove(&c.segment);
        up.compaction
            .after(c.log_bytes, Some(c.reclaimed), segment_bytes);
        self.report.compactions += 1;
        self.check_replay(id, "after a compaction")?;
        self.kick_writer(id)
    }

    /// Replaying node `id`'s disk now must give exactly the index it runs on (called when no
    /// batch is in flight: everything applied is durable, and nothing durable is unapplied).
    fn check_replay(&self, id: u32, when: &str) -> Result<(), String> {
        let node = &self.nodes[&id];
        let up = node.up.as_ref().expect("node is up");
        let (index, good) = node
            .disk
            .replay()
            .map_err(|e| format!("n{id}: {e} {when}"))?;
        let head = &node.disk.segments[&node.disk.head_id()];
        if good != head.len() {
            return Err(format!(
                "n{id}: the head's records end at {good} of {} {when}",
                head.len()
            ));
        }
        match index.differs_from(&up.index) {
            Some(d) => Err(format!(
                "n{id}: replaying its log {when} gives another index: {d}"
            )),
            None => Ok(()),
        }
    }

    // ----- The network -----

    fn send_mail(&mut self, from: u32, to: u32, message: MailMessage) {
        if !matches!(message, MailMessage::Load { .. }) {
            let line = format!("n{from}→n{to} {}", describe(&message));
            self.note(line);
        }
        self.send(from, to, NetMessage::Mail(message));
    }

    fn send(&mut self, from: u32, to: u32, message: NetMessage) {
        self.report.messages_sent += 1;
        let drop = if self.chaos {
            self.config.drop_probability
        } else {
            0.0
        };
        if self.cut(from, to) || self.net_rng.chance(drop) {
            self.report.messages_dropped += 1;
            return;
        }
        let delay = self
            .net_rng
            .range_inclusive(self.config.delay_ms_min, self.config.delay_ms_max);
        let mut only_to = None;
        if self.chaos && self.net_rng.chance(self.config.duplicate_probability) {
            let incarnation = self.nodes[&to].incarnation;
            // Both copies reach only this incarnation of the receiver: a restart never sees
            // a message twice (as over a connection, which dies with the process).
            only_to = Some(incarnation);
            if let Some(copy) = duplicate(&message) {
                self.report.messages_duplicated += 1;
                let later = self
                    .net_rng
                    .range_inclusive(self.config.delay_ms_min, 4 * self.config.delay_ms_max);
                self.schedule(
                    self.now + later,
                    Event::Net {
                        from,
                        to,
                        message: copy,
                        only_to: Some(incarnation),
                    },
                );
            }
        }
        self.schedule(
            self.now + delay,
            Event::Net {
                from,
                to,
                message,
                only_to,
            },
        );
    }

    fn process(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Net {
                from,
                to,
                message,
                only_to,
            } => {
                if only_to.is_some_and(|i| i != self.nodes[&to].incarnation) {
                    return Ok(());
                }
                if self.cut(from, to) {
                    self.report.messages_dropped += 1;
                    return Ok(());
                }
                let now = self.now;
                let Some(up) = self.nodes.get_mut(&to).and_then(|n| n.up.as_mut()) else {
                    return Ok(());
                };
                match message {
                    NetMessage::Member(m) => {
                        up.membership.step(from, m, now);
                        self.after_membership(to)
                    }
                    NetMessage::Mail(m) => {
                        if let MailMessage::Request { .. } | MailMessage::Response { .. } = m {
                            let line = format!("n{to} gets from n{from}: {}", describe(&m));
                            self.note(line);
                        }
                        self.with_machine(to, |machine, ctx| machine.on_message(ctx, from, m))
                    }
                }
            }
            Event::MemberTick { node, incarnation } => {
                let now = self.now;
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if n.incarnation != incarnation {
                    return Ok(());
                }
                let Some(up) = n.up.as_mut() else {
                    return Ok(());
                };
                if up.member_tick_at != Some(now) {
                    return Ok(());
                }
                up.member_tick_at = None;
                up.membership.tick(now);
                self.after_membership(node)
            }
            Event::MailTick { node, incarnation } => {
                let alive = self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.incarnation == incarnation && n.up.is_some());
                if !alive {
                    return Ok(());
                }
                self.with_machine(node, |m, ctx| m.tick(ctx))?;
                self.schedule(
                    self.now + MAIL_TICK_MS,
                    Event::MailTick { node, incarnation },
                );
                Ok(())
            }
            Event::Fsync { node, incarnation } => {
                if self.nodes[&node].incarnation != incarnation {
                    return Ok(());
                }
                self.fsynced(node)
            }
            Event::CrashMidCompaction { node, incarnation } => {
                let n = &self.nodes[&node];
                if n.incarnation == incarnation && n.up.is_some() && self.live().len() > 1 {
                    self.note(format!("fault: n{node} crashes during a compaction's copy"));
                    self.crash(node);
                }
                Ok(())
            }
            Event::CompactSynced { node, incarnation } => {
                let n = &self.nodes[&node];
                if n.incarnation != incarnation || n.up.is_none() {
                    return Ok(());
                }
                self.compact_synced(node)
            }
            Event::CompactDeleted { node, incarnation } => {
                let n = &self.nodes[&node];
                if n.incarnation != incarnation || n.up.is_none() {
                    return Ok(());
                }
                self.compact_deleted(node)
            }
            Event::ClientOp => {
                if !self.chaos {
                    return Ok(());
                }
                self.client_op()?;
                let gap = self
                    .rng
                    .range_inclusive(self.config.op_gap_ms_min, self.config.op_gap_ms_max);
                self.schedule(self.now + gap, Event::ClientOp);
                Ok(())
            }
            Event::Fault => {
                if !self.chaos {
                    return Ok(());
                }
                self.fault()?;
                let at = self.fault_gap();
                self.schedule(at, Event::Fault);
                Ok(())
            }
        }
    }

    /// Membership produced output: send it, install a view change in the mail machine, and
    /// schedule the next tick.
    fn after_membership(&mut self, id: u32) -> Result<(), String> {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("configured node");
        let incarnation = node.incarnation;
        let Some(up) = node.up.as_mut() else {
            return Ok(());
        };
        let outgoing = up.membership.poll_outgoing();
        let change = up.membership.take_view_change();
        let deadline = up.membership.next_deadline().max(now + 1);
        let reschedule = up.member_tick_at != Some(deadline);
        if reschedule {
            up.member_tick_at = Some(deadline);
        }
        for (to, message) in outgoing {
            self.send(id, to, NetMessage::Member(message));
        }
        if reschedule {
            self.schedule(
                deadline,
                Event::MemberTick {
                    node: id,
                    incarnation,
                },
            );
        }
        if let Some(view) = change {
            self.note(format!(
                "n{id} installs view {} {:?}",
                view.epoch, view.members
            ));
            let usermap = Arc::new(UserMap::compute(&view.members, BUCKETS));
            self.with_machine(id, |m, ctx| m.on_view(ctx, view, usermap))?;
        }
        Ok(())
    }

    // ----- Faults -----

    fn fault(&mut self) -> Result<(), String> {
        let live = self.live();
        let down: Vec<u32> = self
            .nodes
            .keys()
            .copied()
            .filter(|n| !live.contains(n))
            .collect();
        let roll = self.rng.below(100);
        match roll {
            0..=24 if live.len() > 1 => {
                let id = live[self.rng.below(live.len() as u64) as usize];
                self.crash(id);
                self.report.fault_kinds |= 1 << 0;
            }
            25..=49 if !down.is_empty() => {
                let id = down[self.rng.below(down.len() as u64) as usize];
                self.note(format!("fault: n{id} restarts"));
                self.start(id)?;
                self.report.fault_kinds |= 1 << 1;
            }
            50..=64 => {
                let ids: Vec<u32> = self.nodes.keys().copied().collect();
                let mut groups = BTreeMap::new();
                for id in ids {
                    groups.insert(id, self.rng.below(2) as usize);
                }
                self.note(format!("fault: partition {groups:?}"));
                self.groups = Some(groups);
                self.report.partitions += 1;
                self.report.fault_kinds |= 1 << 2;
            }
            65..=79 if self.groups.is_some() => {
                self.groups = None;
                self.note("fault: partition healed".into());
                self.report.fault_kinds |= 1 << 3;
            }
            80..=87 => {
                let id = self.any_node();
                let max = self.config.skew_ms_max;
                let skew = self.rng.below(2 * max + 1) as i64 - max as i64;
                self.nodes.get_mut(&id).expect("node").skew_ms = skew;
                self.note(format!("fault: n{id} clock skew {skew} ms"));
                self.report.skews += 1;
                self.report.fault_kinds |= 1 << 4;
            }
            88..=92 => {
                // A node's disk fills up for a while: its writer refuses batches with new
                // messages, or (less often) every batch, until space returns.
                let id = self.any_node();
                let until = self.now + self.rng.range_inclusive(100, 2_000);
                let everything = self.rng.chance(0.3);
                self.nodes.get_mut(&id).expect("node").full = Some(DiskFull { until, everything });
                self.note(format!(
                    "fault: n{id}'s disk is full until {until} ms ({})",
                    if everything {
                        "every change refused"
                    } else {
                        "new messages refused"
                    }
                ));
                self.report.disk_fulls += 1;
                self.report.fault_kinds |= 1 << 8;
            }
            93..=95 => {
                // A node's disk turns slow for a while (fsyncs of up to 2 s, now and then a
                // stall past the peers' write timeout).
                let id = self.any_node();
                let until = self.now + self.rng.range_inclusive(500, 3_000);
                self.nodes.get_mut(&id).expect("node").slow_until = Some(until);
                self.note(format!("fault: n{id}'s disk is slow until {until} ms"));
                self.report.slow_disks += 1;
                self.report.fault_kinds |= 1 << 9;
            }
            96..=98 => {
                // Every node at once (a power cut), then all back.
                for id in live.clone() {
                    self.crash(id);
                }
                let ids: Vec<u32> = self.nodes.keys().copied().collect();
                self.note("fault: every node crashed; all restart".into());
                for id in ids {
                    self.start(id)?;
                }
                self.report.fault_kinds |= 1 << 5;
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of the chaos: no more faults, loss or duplication; partitions healed; every
    /// node up.
    /// A node drawn at random, up or down.
    fn any_node(&mut self) -> u32 {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        ids[self.rng.below(ids.len() as u64) as usize]
    }

    fn heal_all(&mut self) -> Result<(), String> {
        self.chaos = false;
        self.groups = None;
        for node in self.nodes.values_mut() {
            node.full = None;
        }
        self.note("fault: chaos over; heal, free space and restart everything".into());
        let down: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            self.start(id)?;
        }
        Ok(())
    }

    /// Whether every node is up, in one view of all nodes, with nothing pending or owed.
    fn settled(&self) -> Result<(), String> {
        let all: BTreeSet<u32> = self.nodes.keys().copied().collect();
        let mut epoch = None;
        for (&id, node) in &self.nodes {
            let up = node.up.as_ref().ok_or(format!("n{id} is down"))?;
            let view = up.membership.view();
            if view.members != all {
                return Err(format!(
                    "n{id} is in view {} {:?}",
                    view.epoch, view.members
                ));
            }
            if *epoch.get_or_insert(view.epoch) != view.epoch {
                return Err("the nodes are in different views".into());
            }
            if up.machine.view().epoch != view.epoch {
                return Err(format!("n{id}'s mail machine has not installed the view"));
            }
            if let Some(p) = up.index.pending_pushes(1).first() {
                return Err(format!(
                    "n{id} still has to push {} {} to {:?}",
                    p.user, p.uid, p.targets
                ));
            }
            if let Some(p) = up.index.owed_changes(1).first() {
                return Err(format!(
                    "n{id} still owes the state of {} {} to {:?}",
                    p.user, p.uid, p.targets
                ));
            }
            if !up.queue.is_empty() || up.batch.is_some() || up.compacting.is_some() {
                return Err(format!("n{id}'s writer is busy"));
            }
            if let Some(op) = up.ops.keys().next() {
                return Err(format!("n{id}'s client operation {op} has not finished"));
            }
        }
        Ok(())
    }

    fn run_until_settled(&mut self, bound: u64) -> Result<(), String> {
        loop {
            if self.settled().is_ok() {
                return Ok(());
            }
            if self.now >= bound {
                let why = self.settled().unwrap_err();
                if let Some(user) = why.split_whitespace().find(|w| w.starts_with("user")) {
                    self.focus = Some(user.to_string());
                }
                return Err(format!(
                    "not settled {} ms after the heal: {why}",
                    self.config.settle_bound_ms
                ));
            }
            let step = (self.now + 100).min(bound);
            self.run_until(step)?;
        }
    }

    // ----- Clients -----

    fn user(&mut self) -> String {
        format!("user{}", self.rng.below(u64::from(self.config.users)))
    }

    fn client_op(&mut self) -> Result<(), String> {
        let live = self.live();
        if live.is_empty() {
            return Ok(());
        }
        let id = live[self.rng.below(live.len() as u64) as usize];
        if self.up_mut(id).ops.len() >= CLIENT_OPS_PER_NODE_MAX {
            return Ok(());
        }
        let user = self.user();
        let known: Vec<u32> = self
            .model
            .uid_serial
            .keys()
            .filter(|(u, _)| *u == user)
            .map(|(_, uid)| *uid)
            .collect();
        let roll = self.rng.below(100);
        // Deliveries, listings and flag changes below these; expunges above.
        let (deliver, snapshot, flag) = if self.churn {
            (35, 50, 65)
        } else {
            (45, 65, 85)
        };
        let (pending, op) = match roll {
            r if r < deliver => {
                self.model.next_serial += 1;
                let serial = self.model.next_serial;
                let filler = self.rng.below(if self.churn { 1_500 } else { 200 }) as usize;
                let body: Arc<[u8]> = format!(
                    "From: sim@example.org\r\nSubject: {serial}\r\n\r\nseed {} serial {serial} {}\r\n",
                    self.seed,
                    "x".repeat(filler)
                )
                .into_bytes()
                .into();
                self.model
                    .bodies
                    .insert(serial, (user.clone(), body.clone()));
                (
                    PendingOp::Deliver {
                        user: user.clone(),
                        serial,
                    },
                    ClientOp::Deliver {
                        user,
                        body,
                        flags: Flags::empty(),
                        internal_date: 1_767_225_600,
                    },
                )
            }
            r if r < deliver + 4 => {
                self.model.next_serial += 1;
                let password = format!("pw{}", self.model.next_serial);
                self.model
                    .passwords_tried
                    .entry(user.clone())
                    .or_default()
                    .insert(password.clone());
                (
                    PendingOp::Profile { user: user.clone() },
                    ClientOp::SetProfile { user, password },
                )
            }
            r if r < snapshot => (
                PendingOp::Snapshot {
                    user: user.clone(),
                    verify: false,
                },
                ClientOp::Snapshot { user },
            ),
            r if r < flag && !known.is_empty() => {
                let uids = self.pick_uids(&known);
                let mode = match self.rng.below(3) {
                    0 => FlagMode::Add,
                    1 => FlagMode::Remove,
                    _ => FlagMode::Replace,
                };
                let bits = [Flags::SEEN, Flags::FLAGGED, Flags::ANSWERED];
                let mut flags = bits[self.rng.below(3) as usize].clone();
                if self.rng.chance(0.3) {
                    flags = flags.union(&Flags::keyword("$Label1").expect("valid keyword"));
                }
                self.report.flag_changes += 1;
                (
                    PendingOp::Flags,
                    ClientOp::SetFlags {
                        user,
                        uids,
                        mode,
                        flags,
                    },
                )
            }
            r if r >= flag && !known.is_empty() => {
                let present: Vec<u32> = known
                    .iter()
                    .copied()
                    .filter(|&uid| !self.model.expunged.contains(&(user.clone(), uid)))
                    .collect();
                let uids = if self.churn && !present.is_empty() {
                    self.pick_uids(&present)
                } else {
                    self.pick_uids(&known)
                };
                (
                    PendingOp::Expunge {
                        user: user.clone(),
                        uids: uids.clone(),
                    },
                    ClientOp::Expunge { user, uids },
                )
            }
            _ => return Ok(()),
        };
        self.submit(id, pending, op)
    }

    fn pick_uids(&mut self, known: &[u32]) -> Vec<u32> {
        let n = 1 + self.rng.below(2) as usize;
        let mut uids: Vec<u32> = (0..n)
            .map(|_| known[self.rng.below(known.len() as u64) as usize])
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    fn submit(&mut self, id: u32, pending: PendingOp, op: ClientOp) -> Result<(), String> {
        self.next_op += 1;
        let op_id = self.next_op;
        self.note(format!("client at n{id}: op {op_id} {}", describe_op(&op)));
        self.up_mut(id).ops.insert(op_id, pending);
        self.with_machine(id, |m, ctx| m.client(ctx, op_id, op))
    }

    fn client_done(
        &mut self,
        id: u32,
        op: u64,
        result: Result<Answer, super::machine::MailError>,
    ) -> Result<(), String> {
        let Some(pending) = self.up_mut(id).ops.remove(&op) else {
            return Ok(());
        };
        let outcome = match &result {
            Ok(a) => describe_answer(a),
            Err(e) => format!("error: {e}"),
        };
        let user = match &pending {
            PendingOp::Deliver { user, .. }
            | PendingOp::Snapshot { user, .. }
            | PendingOp::Read { user, .. }
            | PendingOp::Expunge { user, .. }
            | PendingOp::Profile { user } => user.clone(),
            PendingOp::Flags => String::new(),
        };
        self.note(format!(
            "client at n{id}: op {op} for {user} done: {outcome}"
        ));
        match (pending, result) {
            (PendingOp::Deliver { user, serial }, Ok(Answer::Delivered(uid))) => {
                self.report.deliveries_acked += 1;
                let key = (user.clone(), uid);
                if let Some(&other) = self.model.uid_serial.get(&key) {
                    if other != serial {
                        self.focus = Some(user.clone());
                        return Err(format!(
                            "{user} UID {uid} given to delivery {serial}, already delivery {other}'s"
                        ));
                    }
                }
                self.model.uid_serial.insert(key.clone(), serial);
                self.model.acked.insert(key, serial);
            }
            (PendingOp::Deliver { serial, .. }, _) => {
                self.report.deliveries_uncertain += 1;
                self.model.uncertain.insert(serial);
            }
            (PendingOp::Profile { user }, Ok(Answer::Profile(_))) => {
                self.report.profiles_acked += 1;
                self.model.passwords_acked.insert(user);
            }
            (PendingOp::Snapshot { user, verify }, Ok(Answer::Snapshot(snapshot))) => {
                if snapshot.uid_validity != 1_767_225_600 {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user} UIDVALIDITY changed to {}",
                        snapshot.uid_validity
                    ));
                }
                if verify {
                    self.model
                        .final_listed
                        .insert(user.clone(), snapshot.messages.clone());
                }
                // Read some (or, when verifying, all) of what is listed.
                let reads: Vec<MessageMeta> = if verify {
                    snapshot.messages.clone()
                } else {
                    snapshot
                        .messages
                        .iter()
                        .filter(|_| self.rng.chance(0.2))
                        .take(3)
                        .cloned()
                        .collect()
                };
                let live = self.live();
                for meta in reads {
                    let at = live[self.rng.below(live.len() as u64) as usize];
                    if !verify && self.up_mut(at).ops.len() >= CLIENT_OPS_PER_NODE_MAX {
                        continue;
                    }
                    let pending = PendingOp::Read {
                        user: user.clone(),
                        uid: meta.uid,
                        verify,
                    };
                    let op = ClientOp::Read {
                        user: user.clone(),
                        meta,
                    };
                    self.submit(at, pending, op)?;
                }
            }
            (PendingOp::Snapshot { user, verify: true }, Err(e)) => {
                self.focus = Some(user.clone());
                return Err(format!("listing {user} after the heal failed: {e}"));
            }
            (PendingOp::Read { user, uid, verify }, Ok(Answer::Body(bytes))) => {
                self.report.reads_checked += 1;
                let Some(serial) = serial_of(&bytes) else {
                    self.focus = Some(user.clone());
                    return Err(format!("{user} UID {uid} read back as bytes no one sent"));
                };
                let sent = self
                    .model
                    .bodies
                    .get(&serial)
                    .map(|(u, b)| (u.clone(), b.clone()));
                match sent {
                    Some((u, b)) if u == user && *b == *bytes => {}
                    _ => {
                        self.focus = Some(user.clone());
                        return Err(format!(
                            "{user} UID {uid} read back damaged or as another user's message"
                        ));
                    }
                }
                let key = (user.clone(), uid);
                match self.model.uid_serial.get(&key) {
                    Some(&s) if s != serial => {
                        self.focus = Some(user.clone());
                        return Err(format!(
                            "{user} UID {uid} read back as delivery {serial}, delivered as {s}"
                        ));
                    }
                    _ => {
                        self.model.uid_serial.insert(key.clone(), serial);
                    }
                }
                if verify {
                    self.model.final_read.insert(key, serial);
                }
            }
            (
                PendingOp::Read {
                    user,
                    uid,
                    verify: true,
                },
                Err(e),
            ) => {
                self.focus = Some(user.clone());
                return Err(format!(
                    "reading {user} UID {uid} after the heal failed: {e}"
                ));
            }
            (PendingOp::Expunge { user, uids }, Ok(Answer::Removed(removed))) => {
                for uid in &uids {
                    if removed.contains(uid) {
                        self.report.expunges_acked += 1;
                        self.model.expunged.insert((user.clone(), *uid));
                    } else {
                        self.model.maybe_expunged.insert((user.clone(), *uid));
                    }
                }
            }
            (PendingOp::Expunge { user, uids }, Err(_)) => {
                for uid in uids {
                    self.model.maybe_expunged.insert((user.clone(), uid));
                }
            }
            _ => {}
        }
        Ok(())
    }

    // ----- The checks after settling -----

    /// What the nodes hold, compared directly.
    fn check_state(&mut self) -> Result<(), String> {
        self.check_profiles()?;
        // (user, uid) → [(node, flags, ts)] of every copy held.
        let mut copies: BTreeMap<(String, u32), Vec<Held>> = BTreeMap::new();
        let users: Vec<String> = (0..self.config.users).map(|u| format!("user{u}")).collect();
        for (&id, node) in &self.nodes {
            let up = node.up.as_ref().expect("every node is up after the heal");
            for user in &users {
                for m in up.index.snapshot(user, 0).messages {
                    if m.is_local() {
                        copies.entry((user.clone(), m.uid)).or_default().push((
                            id,
                            m.flags.clone(),
                            m.flags_ts,
                            m.replicas.clone(),
                        ));
                    }
                }
            }
        }
        for ((user, uid), held) in &copies {
            if self.model.expunged.contains(&(user.clone(), *uid)) {
                self.focus = Some(user.clone());
                return Err(format!(
                    "{user} UID {uid} was expunged (acknowledged) but n{} still holds it",
                    held[0].0
                ));
            }
            let (first, flags, ts, replicas) = &held[0];
            for (node, f, t, _) in &held[1..] {
                if f != flags || t != ts {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user} UID {uid}: flags diverged: n{first} has {:?} @{ts}, n{node} has {:?} @{t}",
                        flags.names().collect::<Vec<_>>(),
                        f.names().collect::<Vec<_>>()
                    ));
                }
            }
            for r in replicas {
                let has = held.iter().any(|(n, ..)| n == r);
                let tombstone = self.nodes[r]
                    .up
                    .as_ref()
                    .is_some_and(|up| up.index.is_expunged(user, *uid));
                if !has && !tombstone {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user} UID {uid} names n{r} as a replica, which does not hold it"
                    ));
                }
            }
        }
        // Each user's manager locates every node holding the user's messages.
        for user in &users {
            let holders: BTreeSet<u32> = copies
                .iter()
                .filter(|((u, _), _)| u == user)
                .flat_map(|(_, held)| held.iter().map(|(n, ..)| *n))
                .collect();
            let any = self.nodes.values().find_map(|n| n.up.as_ref()).expect("up");
            let all: BTreeSet<u32> = self.nodes.keys().copied().collect();
            let usermap = UserMap::compute(&all, BUCKETS);
            let _ = any;
            let Some(manager) = usermap.manager_of(user) else {
                continue;
            };
            let located: BTreeSet<u32> = self.nodes[&manager]
                .up
                .as_ref()
                .expect("up")
                .machine
                .locate_here(user)
                .0
                .into_iter()
                .collect();
            if !holders.is_subset(&located) {
                self.focus = Some(user.clone());
                return Err(format!(
                    "{user}'s manager n{manager} locates {located:?}, but {holders:?} hold messages"
                ));
            }
        }
        Ok(())
    }

    /// Lists every mailbox and reads every message through the nodes, as clients would.
    fn verify_through_clients(&mut self) -> Result<(), String> {
        let users: Vec<String> = (0..self.config.users).map(|u| format!("user{u}")).collect();
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for user in &users {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let pending = PendingOp::Snapshot {
                user: user.clone(),
                verify: true,
            };
            self.submit(id, pending, ClientOp::Snapshot { user: user.clone() })?;
        }
        let until = self.now + 10_000;
        self.run_until(until)?;
        for user in &users {
            let Some(listed) = self.model.final_listed.get(user).cloned() else {
                self.focus = Some(user.clone());
                return Err(format!("listing {user} after the heal did not finish"));
            };
            let mut seen_serials: BTreeMap<u64, u32> = BTreeMap::new();
            let listed_uids: BTreeSet<u32> = listed.iter().map(|m| m.uid).collect();
            for m in &listed {
                let key = (user.clone(), m.uid);
                if self.model.expunged.contains(&key) {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user} UID {} shows again after its expunge",
                        m.uid
                    ));
                }
                let Some(&serial) = self.model.final_read.get(&key) else {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user} UID {} is listed but could not be read",
                        m.uid
                    ));
                };
                if let Some(other) = seen_serials.insert(serial, m.uid) {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user}: delivery {serial} shows twice, as UIDs {other} and {}",
                        m.uid
                    ));
                }
            }
            for ((u, uid), serial) in &self.model.acked {
                if u != user {
                    continue;
                }
                let key = (u.clone(), *uid);
                if self.model.expunged.contains(&key) || self.model.maybe_expunged.contains(&key) {
                    continue;
                }
                if !listed_uids.contains(uid) {
                    self.focus = Some(user.clone());
                    self.focus_uid = Some(*uid);
                    return Err(format!(
                        "{user} UID {uid} (delivery {serial}) was acknowledged and is lost"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The delivery serial a simulated message carries.
fn serial_of(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.split(" serial ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A copy of a message, as a network that duplicates would deliver it twice.
fn duplicate(message: &NetMessage) -> Option<NetMessage> {
    Some(match message {
        NetMessage::Member(m) => NetMessage::Member(m.clone()),
        NetMessage::Mail(m) => NetMessage::Mail(m.clone()),
    })
}

fn describe(message: &MailMessage) -> String {
    match message {
        MailMessage::Request { id, request } => {
            format!("request {id}: {}", describe_request(request))
        }
        MailMessage::Response { id, response } => {
            format!("response {id}: {}", describe_response(response))
        }
        MailMessage::Fragments {
            epoch, node, users, ..
        } => format!("fragments epoch {epoch} of n{node}: {} users", users.len()),
        MailMessage::AddFragment { user, nodes, .. } => format!("add-fragment {user} {nodes:?}"),
        MailMessage::Load { pending_io } => format!("load {pending_io}"),
        MailMessage::Retire { user, uids } => format!("retire {user} {uids:?}"),
    }
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Locate { user } => format!("locate {user} "),
        Request::Store(m) => format!(
            "store {} uid {:?} targets {:?} replicas {:?}",
            m.user, m.uid, m.targets, m.replicas
        ),
        Request::List { user } => format!("list {user} "),
        Request::Fetch { user, uid } => format!("fetch {user} {uid}"),
        Request::SetFlags {
            user,
            uids,
            mode,
            flags,
            ts_ms,
            owe,
        } => format!(
            "set-flags {user} {uids:?} {mode:?} {:?} @{ts_ms} owe {owe}",
            flags.names().collect::<Vec<_>>()
        ),
        Request::Profile {
            user,
            password,
            ts_ms,
        } => format!("profile {user} {password} at {ts_ms}"),
        Request::Expunge { user, uids, owe } => format!("expunge {user} {uids:?} owe {owe}"),
    }
}

fn describe_response(response: &Response) -> String {
    match response {
        Response::Located { nodes, max_seq } => format!("located {nodes:?} seq {max_seq}"),
        Response::Stored { uid } => format!("stored uid {uid}"),
        Response::Listing {
            messages, expunged, ..
        } => format!(
            "listing {:?} expunged {expunged:?}",
            messages.iter().map(|m| m.uid).collect::<Vec<_>>()
        ),
        Response::Body(b) => format!("body of {} bytes", b.len()),
        Response::Flags(f) => format!(
            "flags of {:?}",
            f.iter().map(|(u, _)| *u).collect::<Vec<_>>()
        ),
        Response::Removed(r) => format!("removed {r:?}"),
        Response::NotFound => "not found".into(),
        Response::Failed(e) => format!("failed: {e}"),
    }
}

impl Sim {
    /// Every node holds the same profile for each user; where a password change was
    /// acknowledged, it holds one, and one a client set.
    fn check_profiles(&mut self) -> Result<(), String> {
        for u in 0..self.config.users {
            let user = format!("user{u}");
            let mut held = self.nodes.iter().map(|(&id, node)| {
                let up = node.up.as_ref().expect("every node is up after the heal");
                (id, up.index.profile(&user))
            });
            let (first, profile) = held.next().expect("a node");
            if let Some((other, p)) = held.find(|(_, p)| *p != profile) {
                self.focus = Some(user.clone());
                return Err(format!(
                    "{user}'s profile differs: n{first} has {profile:?}, n{other} {p:?}"
                ));
            }
            let tried = self.model.passwords_tried.get(&user);
            match profile {
                Some((password, _)) if tried.is_some_and(|t| t.contains(&password)) => {}
                None if !self.model.passwords_acked.contains(&user) => {}
                other => {
                    self.focus = Some(user.clone());
                    return Err(format!(
                        "{user}'s profile is {other:?} after {:?} were set",
                        tried
                    ));
                }
            }
        }
        Ok(())
    }
}

fn describe_op(op: &ClientOp) -> String {
    match op {
        ClientOp::Deliver { user, body, .. } => format!(
            "deliver {user} (serial {})",
            serial_of(body).unwrap_or_default()
        ),
        ClientOp::Snapshot { user } => format!("list {user} "),
        ClientOp::Read { user, meta } => format!("read {user} {}", meta.uid),
        ClientOp::SetFlags {
            user,
            uids,
            mode,
            flags,
        } => format!(
            "set-flags {user} {uids:?} {mode:?} {:?}",
            flags.names().collect::<Vec<_>>()
        ),
        ClientOp::Expunge { user, uids } => format!("expunge {user} {uids:?}"),
        ClientOp::SetProfile { user, password } => format!("profile {user} {password}"),
    }
}

fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::Delivered(uid) => format!("delivered as uid {uid}"),
        Answer::Snapshot(s) => format!(
            "listing {:?}",
            s.messages.iter().map(|m| m.uid).collect::<Vec<_>>()
        ),
        Answer::Body(b) => format!("body of {} bytes", b.len()),
        Answer::Flags(f) => format!(
            "flags of {:?}",
            f.iter().map(|(u, _)| *u).collect::<Vec<_>>()
        ),
        Answer::Removed(r) => format!("removed {r:?}"),
        Answer::Profile(t) => format!("profile pushed to {t:?}"),
    }
}

#[cfg(test)]
mod tests;
