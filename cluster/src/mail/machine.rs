//! The mail service's cluster logic as a state machine without I/O, in the style of
//! `core::membership`: client operations, peer messages, store completions, message bodies read
//! and ticks go in; messages to send, store changes to make durable, bodies to read and answers to
//! clients come out ([`Output`]). Time comes in with every input ([`Ctx`]), randomness from a seed
//! given at construction, and the node's index is read through [`Ctx::index`] (changes to it only
//! ever go out as [`Change`]s, applied by whoever runs the store once durable).
//!
//! What it decides, as the tokio service does:
//! - delivery: ask the user's manager where the mailbox lives, pick nodes by the placement
//!   policy, have the first store the message durably with the pushes to the others logged;
//!   a first node that refuses is avoided on a second try; one that does not answer ends the
//!   delivery (retrying could store the message twice);
//! - retrieval: list every holder at once and merge ([`merge_listings`]);
//! - flags and expunges: to every holder at once, each owing the change to the other replicas;
//! - the pusher: retries every logged push and owed change until the target acknowledges;
//! - tombstones: ripe once no replica is owed the expunge, retired after a grace;
//! - the mail map: rebuilt on the user's manager from every node's report after a view change.
//!
//! Every node runs it: the tokio service (`service.rs`) is a thin shell that feeds it and carries
//! out what it asks. The seeded simulation (`mail::sim`) runs the same machine, with the store's
//! own state machine (`store::state`) on a simulated disk, under crashes, partitions, loss,
//! duplication, delay and clock skew.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::mailmap::MailMap;
use super::placement::{self, Inputs, Placement, PlacementError};
use super::store::{
    seq_of, stamp, uid_of, Change, FlagMode, Flags, Index, MailboxSnapshot, MessageMeta,
    NewMessage, Reply, SentState, StoreError, PROFILE_UID, UID_SEQ_MAX,
};
use super::usermap::UserMap;
use super::wire::{MailMessage, Request, Response, StoreMessage};
use crate::core::membership::View;
pub use crate::core::sim::SplitMix64;

/// How long a read from another node (locate, list, fetch) may take before it counts as failed.
pub const RPC_TIMEOUT_MS: u64 = 2_000;
/// Requests that wait for the other node's disk (store, flags, expunge, profile) may queue
/// behind it when it is saturated; they get longer.
pub const WRITE_RPC_TIMEOUT_MS: u64 = 20_000;
/// Requests from other nodes waiting for this node's store at once, at most (more are refused).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Replica pushes in flight at once, at most.
pub const PUSHES_IN_FLIGHT_MAX: usize = 32;
/// How often the pusher looks for pushes to retry.
pub const PUSH_RETRY_INTERVAL_MS: u64 = 250;
/// How often the load beacon goes out.
pub const LOAD_BEACON_INTERVAL_MS: u64 = 200;
/// Users per mail-map report message.
pub const REPORT_CHUNK_USERS: usize = 5_000;
/// Expunges waiting out their grace at most (past it, tombstones are simply kept).
pub const RIPE_TOMBSTONES_MAX: usize = 1_000_000;
/// UIDs per Retire message.
const RETIRE_CHUNK_UIDS: usize = 10_000;
/// New-message requests remembered for answering duplicates, at most.
const RECENT_STORES_MAX: usize = 4_096;

/// Users a node remembers having reported in one view, at most (past it, no more reports until
/// the next view: the manager still finds the user on the next view change).
const REPORTED_USERS_MAX: usize = 1_000_000;
/// How often the one-user reports of users new on this node are sent again, and for how long.
pub const REPORT_REFRESH_MS: u64 = 1_000;
pub const REPORT_REFRESH_WINDOW_MS: u64 = 30_000;
/// One-user reports kept for sending again, at most.
const FRESH_USERS_MAX: usize = 10_000;
/// Requests of this node's own waiting for an answer at once, at most (more fail at once).
pub const WAITING_MAX: usize = 65_536;

/// The cluster settings the mail service follows.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// This node's id.
    pub id: u32,
    pub replication: usize,
    pub spread: usize,
    pub placement: Placement,
    /// Every configured node id.
    pub all: BTreeSet<u32>,
    pub uid_validity: u32,
    /// How long after every replica has an expunge its tombstones are retired.
    pub tombstone_grace: std::time::Duration,
}

/// Why a mail operation failed, as the front ends report it.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Placement(#[from] PlacementError),
    #[error("node {0} cannot be reached")]
    Unreachable(u32),
    /// The request was sent but no answer came in time: it may or may not have been carried out.
    #[error("node {0} did not answer in time")]
    NoAnswer(u32),
    #[error("node {0} failed: {1}")]
    Remote(u32, String),
}

impl From<MailError> for StoreError {
    fn from(e: MailError) -> StoreError {
        match e {
            MailError::Store(e) => e,
            other => StoreError::Failed(other.to_string()),
        }
    }
}

/// What the machine reads at each input: the time, and this node's index.
pub struct Ctx<'a> {
    /// Monotonic milliseconds (timers).
    pub now_ms: u64,
    /// Unix milliseconds on this node's clock, skew included (update stamps).
    pub wall_ms: i64,
    pub index: &'a Index,
    /// Changes queued for this node's store and not yet durable (what placement balances on).
    pub pending_ops: u64,
    /// Whether the link to a peer is up: a request to a peer whose link is down fails at once.
    pub connected: &'a dyn Fn(u32) -> bool,
}

/// What a client asks of the mail service.
#[derive(Debug, Clone)]
pub enum ClientOp {
    Deliver {
        user: String,
        body: Arc<[u8]>,
        flags: Flags,
        /// Unix seconds.
        internal_date: i64,
    },
    Snapshot {
        user: String,
    },
    Read {
        user: String,
        meta: MessageMeta,
    },
    SetFlags {
        user: String,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
    },
    Expunge {
        user: String,
        uids: Vec<u32>,
    },
    SetProfile {
        user: String,
        password: String,
    },
}

/// The answer to a client operation.
#[derive(Debug, Clone)]
pub enum Answer {
    Delivered(u32),
    Snapshot(MailboxSnapshot),
    Body(Vec<u8>),
    Flags(Vec<(u32, Flags)>),
    Removed(Vec<u32>),
    /// The nodes the profile is pushed to.
    Profile(Vec<u32>),
}

/// What the machine asks its runner to do.
#[derive(Debug)]
pub enum Output {
    Send {
        to: u32,
        message: MailMessage,
    },
    /// Make `change` durable in this node's store, then call [`Machine::stored`] with `token`.
    Store {
        token: u64,
        change: Change,
    },
    /// Read this locally held message's body, then call [`Machine::body`] with `token`.
    ReadBody {
        token: u64,
        meta: MessageMeta,
    },
    /// Client operation `op` is finished.
    Done {
        op: u64,
        result: Result<Answer, MailError>,
    },
}

/// Deliberate bugs, for showing that the simulation catches them. Compiled into test builds
/// only; every switch is off by default.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bugs {
    /// Ripen a tombstone while replicas are still owed the expunge.
    pub ripen_while_owed: bool,
    /// Settle an owed change even if the message changed (new flags, or expunged) while it
    /// was on its way.
    pub settle_stale_state: bool,
    /// Try another node after a first node that did not answer a delivery.
    pub retry_unanswered_delivery: bool,
}

/// (user, uid, target, what) of one push.
type PushKey = (String, u32, u32, Owed);

/// What a push carries: a message to a replica, or a message's new state to another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owed {
    Message,
    State,
}

/// What became of a peer's request to store a new message.
#[derive(Debug, Clone)]
enum Recent {
    /// Being stored: a duplicate is left to the first's answer.
    Taken,
    /// Stored under this UID: a duplicate gets the same answer.
    Stored(u32),
    /// Refused: so is a duplicate (the sender has placed the message elsewhere).
    Failed(String),
}

/// What an answer to one of this node's requests resumes.
#[derive(Debug)]
enum Cont {
    Locate {
        op: u64,
    },
    DeliverStore {
        op: u64,
        primary: u32,
    },
    Gather {
        op: u64,
        node: u32,
    },
    Fetch {
        op: u64,
    },
    /// A copy pushed to a replica, or (with the stamp sent) a profile.
    PushMessage {
        key: PushKey,
        profile_ts: Option<i64>,
    },
    PushState {
        key: PushKey,
        sent: SentState,
    },
}

/// Where the answer to a request goes.
#[derive(Debug)]
enum ReplyTo {
    Peer { from: u32, id: u64 },
    Local(Cont),
}

/// What a store completion resumes.
#[derive(Debug)]
enum StoreCont {
    /// A request's answer.
    Answer {
        to: ReplyTo,
        kind: AnswerKind,
    },
    Acked {
        key: PushKey,
    },
    Settled {
        key: PushKey,
        ripen: bool,
    },
    Profile {
        op: u64,
        targets: Vec<u32>,
    },
    Nothing,
}

#[derive(Debug)]
enum AnswerKind {
    Stored {
        push: bool,
        user: String,
        /// A new message's request, remembered to answer a duplicate of it the same way.
        dedupe: Option<(u32, u64)>,
    },
    Flags {
        push: bool,
    },
    Removed {
        owe: bool,
        user: String,
        single: HashSet<u32>,
    },
    Profile,
}

/// What a body read resumes.
#[derive(Debug)]
enum BodyCont {
    Request { to: ReplyTo },
    Push { key: PushKey, meta: MessageMeta },
    Client { op: u64 },
}

/// One client operation in progress.
struct Job {
    user: String,
    kind: JobKind,
}

enum JobKind {
    Deliver {
        body: Arc<[u8]>,
        flags: Flags,
        internal_date: i64,
        fragments: BTreeSet<u32>,
        max_seq: u32,
        exclude: BTreeSet<u32>,
        tries: u8,
        last_error: Option<MailError>,
        members: BTreeSet<u32>,
        /// The nodes of the attempt in flight, the first storing it.
        chosen: Vec<u32>,
    },
    Gather {
        what: Gathering,
        request: Request,
        waiting: usize,
        answers: Vec<(u32, Result<Response, MailError>)>,
    },
    Read {
        uid: u32,
        holders: VecDeque<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathering {
    Snapshot,
    Flags,
    Expunge,
}

struct Waiting {
    to: u32,
    deadline: u64,
    cont: Cont,
}

/// Sizes of the machine's queues, for checking that they stay bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineStats {
    pub jobs: usize,
    pub waiting: usize,
    pub pushes_in_flight: usize,
    pub ripe: usize,
    pub store_in_flight: usize,
    pub requests_in_flight: usize,
}

/// The mail service of one node.
pub struct Machine {
    config: MailConfig,
    rng: SplitMix64,
    view: View,
    usermap: Arc<UserMap>,
    mailmap: MailMap,
    loads: HashMap<u32, u64>,
    next_id: u64,
    waiting: BTreeMap<u64, Waiting>,
    jobs: HashMap<u64, Job>,
    store_waiting: HashMap<u64, StoreCont>,
    body_waiting: HashMap<u64, BodyCont>,
    pushes: HashSet<PushKey>,
    requests_in_flight: usize,
    /// New-message requests from peers, recently taken: (from, request id) → what became of it.
    recent_stores: HashMap<(u32, u64), Recent>,
    recent_order: VecDeque<(u32, u64)>,
    /// Users this node has told their manager about in the current view (its report, and
    /// messages stored since).
    reported: HashSet<String>,
    /// Users first stored here since the view's report: (user, seq, reported at ms). Their
    /// one-user reports are sent again every [`REPORT_REFRESH_MS`] for a while, as one may be
    /// lost (a brief partition, a full queue) without any view change to repair it.
    fresh: VecDeque<(String, u32, u64)>,
    next_refresh_ms: u64,
    /// Expunges no replica is owed any more (user, uid, since when), waiting out their grace.
    ripe: VecDeque<(String, u32, u64)>,
    /// Expunges a client's request made here (so this node owes them to every other replica):
    /// only such a node may find one ripe, as only it knows when every replica has it.
    originated: HashSet<(String, u32)>,
    push_now: bool,
    next_push_ms: u64,
    next_beacon_ms: u64,
    out: Vec<Output>,
    #[cfg(test)]
    pub bugs: Bugs,
}

impl Machine {
    /// A node's machine at start-up, in the view it starts in.
    pub fn new(config: MailConfig, seed: u64, view: View, usermap: Arc<UserMap>) -> Machine {
        let mut rng = SplitMix64::new(seed);
        // Random, so that a late answer meant for this node's previous life (before a restart)
        // cannot be taken for an answer to a new request.
        let next_id = rand::RngCore::next_u64(&mut rng) >> 1;
        let mut machine = Machine {
            config,
            rng,
            view: View::singleton(0),
            usermap: usermap.clone(),
            mailmap: MailMap::default(),
            loads: HashMap::new(),
            next_id,
            waiting: BTreeMap::new(),
            jobs: HashMap::new(),
            store_waiting: HashMap::new(),
            body_waiting: HashMap::new(),
            pushes: HashSet::new(),
            requests_in_flight: 0,
            recent_stores: HashMap::new(),
            recent_order: VecDeque::new(),
            reported: HashSet::new(),
            fresh: VecDeque::new(),
            next_refresh_ms: 0,
            ripe: VecDeque::new(),
            originated: HashSet::new(),
            push_now: true,
            next_push_ms: 0,
            next_beacon_ms: 0,
            out: Vec::new(),
            #[cfg(test)]
            bugs: Bugs::default(),
        };
        machine.view = view;
        machine
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// What the machine asks to be done since the last call.
    pub fn poll(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn stats(&self) -> MachineStats {
        MachineStats {
            jobs: self.jobs.len(),
            waiting: self.waiting.len(),
            pushes_in_flight: self.pushes.len(),
            ripe: self.ripe.len(),
            store_in_flight: self.store_waiting.len(),
            requests_in_flight: self.requests_in_flight,
        }
    }

    /// The mail map's answer for `user` on this node (meaningful on the user's manager).
    pub fn locate_here(&self, user: &str) -> (Vec<u32>, u32) {
        self.mailmap.locate(user)
    }

    pub fn mailmap_users(&self) -> usize {
        self.mailmap.users()
    }

    /// The other members of the current view.
    fn others(&self) -> Vec<u32> {
        self.view
            .members
            .iter()
            .copied()
            .filter(|&m| m != self.config.id)
            .collect()
    }

    fn next(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn stamp(&self, ctx: &Ctx) -> i64 {
        stamp(ctx.wall_ms, self.config.id)
    }

    fn send(&mut self, to: u32, message: MailMessage) {
        self.out.push(Output::Send { to, message });
    }

    fn store(&mut self, change: Change, cont: StoreCont) {
        let token = self.next();
        self.store_waiting.insert(token, cont);
        self.out.push(Output::Store { token, change });
    }

    fn finish(&mut self, op: u64, result: Result<Answer, MailError>) {
        self.jobs.remove(&op);
        self.out.push(Output::Done { op, result });
    }

    // ----- Inputs -----

    /// A new view (and the user map derived from it): the mail map starts over, and this node
    /// reports every local user to its manager.
    pub fn on_view(&mut self, ctx: &Ctx, view: View, usermap: Arc<UserMap>) {
        self.view = view;
        self.usermap = usermap;
        self.mailmap
            .install(self.view.epoch, self.view.members.clone());
        let mut by_manager: BTreeMap<u32, Vec<(String, u32)>> =
            self.view.members.iter().map(|&m| (m, Vec::new())).collect();
        self.reported.clear();
        self.fresh.clear();
        for user in ctx.index.users() {
            self.reported.insert(user.clone());
            if let Some(m) = self.usermap.manager_of(&user) {
                let seq = ctx.index.max_seq(&user);
                by_manager.entry(m).or_default().push((user, seq));
            }
        }
        for (manager, users) in by_manager {
            let chunks: Vec<Vec<(String, u32)>> = if users.is_empty() {
                vec![Vec::new()]
            } else {
                users
                    .chunks(REPORT_CHUNK_USERS)
                    .map(|c| c.to_vec())
                    .collect()
            };
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let report = MailMessage::Fragments {
                    epoch: self.view.epoch,
                    node: self.config.id,
                    users: chunk,
                    last: i + 1 == n,
                };
                if manager == self.config.id {
                    self.on_message(ctx, self.config.id, report);
                } else {
                    self.send(manager, report);
                }
            }
        }
    }

    /// A client operation; its answer comes out as [`Output::Done`] with `op`.
    pub fn client(&mut self, ctx: &Ctx, op: u64, request: ClientOp) {
        match request {
            ClientOp::Deliver {
                user,
                body,
                flags,
                internal_date,
            } => {
                let members = self.view.members.clone();
                self.jobs.insert(
                    op,
                    Job {
                        user,
                        kind: JobKind::Deliver {
                            body,
                            flags,
                            internal_date,
                            fragments: BTreeSet::new(),
                            max_seq: 0,
                            exclude: BTreeSet::new(),
                            tries: 0,
                            last_error: None,
                            members,
                            chosen: Vec::new(),
                        },
                    },
                );
                self.locate(ctx, op);
            }
            ClientOp::Snapshot { user } => {
                let request = Request::List { user: user.clone() };
                self.gather(ctx, op, user, Gathering::Snapshot, request);
            }
            ClientOp::SetFlags {
                user,
                uids,
                mode,
                flags,
            } => {
                let request = Request::SetFlags {
                    user: user.clone(),
                    uids,
                    mode,
                    flags,
                    ts_ms: self.stamp(ctx),
                    owe: true,
                };
                self.gather(ctx, op, user, Gathering::Flags, request);
            }
            ClientOp::Expunge { user, uids } => {
                let request = Request::Expunge {
                    user: user.clone(),
                    uids,
                    owe: true,
                };
                self.gather(ctx, op, user, Gathering::Expunge, request);
            }
            ClientOp::Read { user, meta } => {
                if let Some(local) = ctx.index.message(&user, meta.uid) {
                    if local.is_local() {
                        let token = self.next();
                        self.body_waiting.insert(token, BodyCont::Client { op });
                        self.out.push(Output::ReadBody { token, meta: local });
                        return;
                    }
                }
                self.jobs.insert(
                    op,
                    Job {
                        user,
                        kind: JobKind::Read {
                            uid: meta.uid,
                            holders: VecDeque::new(),
                        },
                    },
                );
                self.locate(ctx, op);
            }
            ClientOp::SetProfile { user, password } => {
                let targets: Vec<u32> = self
                    .config
                    .all
                    .iter()
                    .copied()
                    .filter(|&n| n != self.config.id)
                    .collect();
                let change = Change::Profile {
                    user,
                    password,
                    ts_ms: self.stamp(ctx),
                    targets: targets.clone(),
                };
                if let Err(e) = change.check() {
                    self.finish(op, Err(e.into()));
                    return;
                }
                self.store(change, StoreCont::Profile { op, targets });
            }
        }
    }

    /// A message from a peer (or a response to one of this node's requests).
    pub fn on_message(&mut self, ctx: &Ctx, from: u32, message: MailMessage) {
        match message {
            MailMessage::Request { id, request } => {
                self.handle_request(ctx, request, ReplyTo::Peer { from, id })
            }
            MailMessage::Response { id, response } => {
                if let Some(w) = self.waiting.remove(&id) {
                    if w.to == from {
                        self.resume(ctx, w.cont, Ok(response));
                    } else {
                        self.waiting.insert(id, w);
                    }
                }
            }
            MailMessage::Fragments {
                epoch,
                node,
                users,
                last,
            } => self.mailmap.report(epoch, node, users, last),
            MailMessage::AddFragment {
                user,
                nodes,
                max_seq,
            } => self.mailmap.add(&user, &nodes, max_seq),
            MailMessage::Load { pending_io } => {
                if self.config.all.contains(&from) {
                    self.loads.insert(from, pending_io);
                }
            }
            MailMessage::Retire { user, uids } => {
                let change = Change::Retire { user, uids };
                if change.check().is_ok() {
                    self.store(change, StoreCont::Nothing);
                }
            }
        }
    }

    /// A store change asked for with [`Output::Store`] is durable (or failed).
    pub fn stored(&mut self, ctx: &Ctx, token: u64, reply: Reply) {
        let Some(cont) = self.store_waiting.remove(&token) else {
            return;
        };
        match cont {
            StoreCont::Answer { to, kind } => {
                self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
                let response = match (kind, reply) {
                    (AnswerKind::Stored { push, user, dedupe }, Reply::Uids(uids)) => {
                        if push {
                            self.push_now = true;
                        }
                        if let Some(key) = dedupe {
                            self.remember_store(key, Recent::Stored(uids[0]));
                        }
                        self.report_fragment(ctx, &user, uids[0]);
                        Response::Stored { uid: uids[0] }
                    }
                    (AnswerKind::Stored { dedupe, .. }, Reply::Failed(e)) => {
                        // A duplicate arriving later is refused too: the sender has moved on
                        // (placed the message elsewhere), so storing it now would store it twice.
                        if let Some(key) = dedupe {
                            self.remember_store(key, Recent::Failed(e.clone()));
                        }
                        Response::Failed(e)
                    }
                    (_, Reply::Failed(e)) => Response::Failed(e),
                    (AnswerKind::Flags { push }, Reply::Flags(changed)) => {
                        if push {
                            self.push_now = true;
                        }
                        Response::Flags(changed)
                    }
                    (AnswerKind::Removed { owe, user, single }, Reply::Uids(removed)) => {
                        if owe {
                            self.push_now = true;
                            for &uid in &removed {
                                if self.originated.len() < RIPE_TOMBSTONES_MAX {
                                    self.originated.insert((user.clone(), uid));
                                }
                            }
                            for &uid in removed.iter().filter(|u| single.contains(u)) {
                                self.ripen(ctx, &user, uid);
                            }
                        }
                        Response::Removed(removed)
                    }
                    (AnswerKind::Profile, Reply::Uids(_)) => Response::Stored { uid: PROFILE_UID },
                    (kind, reply) => Response::Failed(format!(
                        "the store answered {reply:?} to a change of kind {kind:?}"
                    )),
                };
                self.respond(ctx, to, response);
            }
            StoreCont::Acked { key } => {
                self.pushes.remove(&key);
            }
            StoreCont::Settled { key, ripen } => {
                if ripen && !matches!(reply, Reply::Failed(_)) {
                    self.ripen(ctx, &key.0, key.1);
                }
                self.pushes.remove(&key);
            }
            StoreCont::Profile { op, targets } => match reply {
                Reply::Failed(e) => self.finish(op, Err(StoreError::Failed(e).into())),
                _ => {
                    self.push_now = true;
                    self.finish(op, Ok(Answer::Profile(targets)));
                }
            },
            StoreCont::Nothing => {}
        }
    }

    /// A body asked for with [`Output::ReadBody`] was read (or could not be).
    pub fn body(&mut self, ctx: &Ctx, token: u64, bytes: Result<Vec<u8>, String>) {
        let Some(cont) = self.body_waiting.remove(&token) else {
            return;
        };
        match cont {
            BodyCont::Request { to } => {
                let response = match bytes {
                    Ok(b) => Response::Body(b),
                    Err(e) => Response::Failed(e),
                };
                self.respond(ctx, to, response);
            }
            BodyCont::Client { op } => {
                let result = bytes
                    .map(Answer::Body)
                    .map_err(|e| MailError::Store(StoreError::Failed(e)));
                self.finish(op, result);
            }
            BodyCont::Push { key, meta } => match bytes {
                Ok(body) => {
                    let message = StoreMessage {
                        user: key.0.clone(),
                        body,
                        flags: meta.flags,
                        internal_date: meta.internal_date,
                        uid: Some(key.1),
                        seq_hint: 0,
                        ts_ms: meta.flags_ts,
                        targets: Vec::new(),
                        replicas: meta.replicas,
                    };
                    let to = key.2;
                    self.call(
                        ctx,
                        to,
                        Request::Store(message),
                        Cont::PushMessage {
                            key,
                            profile_ts: None,
                        },
                    );
                }
                Err(_) => {
                    self.pushes.remove(&key);
                }
            },
        }
    }

    /// Time passes: requests time out (or end at once when their peer's link is down), pushes
    /// are retried, ripe tombstones retired, the load beacon sent.
    pub fn tick(&mut self, ctx: &Ctx) {
        let now = ctx.now_ms;
        let expired: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now || !(ctx.connected)(w.to))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.waiting.remove(&id) {
                self.resume(ctx, w.cont, Err(MailError::NoAnswer(w.to)));
            }
        }
        if self.push_now || now >= self.next_push_ms {
            self.push_now = false;
            self.next_push_ms = now + PUSH_RETRY_INTERVAL_MS;
            self.push_replicas(ctx);
            self.retire_ripe(ctx);
        }
        if now >= self.next_refresh_ms {
            self.next_refresh_ms = now + REPORT_REFRESH_MS;
            self.refresh_reports(ctx);
        }
        if now >= self.next_beacon_ms {
            self.next_beacon_ms = now + LOAD_BEACON_INTERVAL_MS;
            for m in self.others() {
                self.send(
                    m,
                    MailMessage::Load {
                        pending_io: ctx.pending_ops,
                    },
                );
            }
        }
    }

    // ----- Requests to other nodes -----

    fn call(&mut self, ctx: &Ctx, to: u32, request: Request, cont: Cont) {
        if to == self.config.id {
            return self.handle_request(ctx, request, ReplyTo::Local(cont));
        }
        if !(ctx.connected)(to) {
            return self.resume(ctx, cont, Err(MailError::Unreachable(to)));
        }
        if self.waiting.len() >= WAITING_MAX {
            return self.resume(ctx, cont, Err(MailError::Unreachable(to)));
        }
        let timeout = match request {
            Request::Locate { .. } | Request::List { .. } | Request::Fetch { .. } => RPC_TIMEOUT_MS,
            _ => WRITE_RPC_TIMEOUT_MS,
        };
        let id = self.next();
        self.waiting.insert(
            id,
            Waiting {
                to,
                deadline: ctx.now_ms + timeout,
                cont,
            },
        );
        self.send(to, MailMessage::Request { id, request });
    }

    fn respond(&mut self, ctx: &Ctx, to: ReplyTo, response: Response) {
        match to {
            ReplyTo::Peer { from, id } => self.send(from, MailMessage::Response { id, response }),
            ReplyTo::Local(cont) => self.resume(ctx, cont, Ok(response)),
        }
    }

    /// An answer (or the lack of one) to a request of this node's.
    fn resume(&mut self, ctx: &Ctx, cont: Cont, answer: Result<Response, MailError>) {
        match cont {
            Cont::Locate { op } => {
                let (nodes, max_seq) = match answer {
                    Ok(Response::Located { nodes, max_seq }) => (nodes, max_seq),
                    // The manager cannot be asked: every live node might hold the mailbox.
                    _ => (self.view.members.iter().copied().collect(), 0),
                };
                self.located(ctx, op, nodes, max_seq);
            }
            Cont::DeliverStore { op, primary } => self.delivered(ctx, op, primary, answer),
            Cont::Gather { op, node } => {
                let Some(Job {
                    kind:
                        JobKind::Gather {
                            waiting, answers, ..
                        },
                    ..
                }) = self.jobs.get_mut(&op)
                else {
                    return;
                };
                answers.push((node, answer));
                *waiting -= 1;
                if *waiting == 0 {
                    self.gathered(op);
                }
            }
            Cont::Fetch { op } => match answer {
                Ok(Response::Body(bytes)) => self.finish(op, Ok(Answer::Body(bytes))),
                _ => self.fetch_next(ctx, op),
            },
            Cont::PushMessage { key, profile_ts } => match answer {
                Ok(Response::Stored { .. }) => {
                    let change = Change::Acked {
                        user: key.0.clone(),
                        uid: key.1,
                        node: key.2,
                        profile_ts,
                    };
                    self.store(change, StoreCont::Acked { key });
                }
                _ => {
                    self.pushes.remove(&key);
                }
            },
            Cont::PushState { key, sent } => match answer {
                // Flags for a message the target does not hold yet (its copy is still on the
                // way from the first replica, which pushes the flags it has then): owed still.
                Ok(ref r) if !state_taken(r, key.1) => {
                    self.pushes.remove(&key);
                }
                Ok(Response::Flags(_) | Response::Removed(_)) => {
                    // Settled as sent: the writer skips it if the message changed while the
                    // state was on its way (new flags, or expunged), and the next round sends
                    // the new state.
                    #[cfg(test)]
                    let stale_ok = self.bugs.settle_stale_state;
                    #[cfg(not(test))]
                    let stale_ok = false;
                    let change = Change::Settled {
                        user: key.0.clone(),
                        uid: key.1,
                        node: key.2,
                        // (The bug settles whatever changed meanwhile.)
                        sent: if stale_ok { SentState::Nothing } else { sent },
                    };
                    self.store(change, StoreCont::Settled { key, ripen: true });
                }
                _ => {
                    self.pushes.remove(&key);
                }
            },
        }
    }

    // ----- Client operations -----

    /// Asks `user`'s manager which live nodes hold the mailbox; [`Machine::located`] goes on.
    fn locate(&mut self, ctx: &Ctx, op: u64) {
        let Some(user) = self.jobs.get(&op).map(|j| j.user.clone()) else {
            return;
        };
        match self.usermap.manager_of(&user) {
            None => self.located(ctx, op, vec![self.config.id], 0),
            Some(m) if m == self.config.id => {
                let (nodes, max_seq) = self.mailmap.locate(&user);
                self.located(ctx, op, nodes, max_seq);
            }
            Some(m) => self.call(ctx, m, Request::Locate { user }, Cont::Locate { op }),
        }
    }

    fn located(&mut self, ctx: &Ctx, op: u64, mut nodes: Vec<u32>, max_seq: u32) {
        let Some(job) = self.jobs.get_mut(&op) else {
            return;
        };
        // This node's own fragment counts even before the manager has heard of it.
        let own = ctx.index.max_seq(&job.user);
        if own > 0 && !nodes.contains(&self.config.id) {
            nodes.push(self.config.id);
        }
        let max_seq = max_seq.max(own);
        match &mut job.kind {
            JobKind::Deliver {
                fragments,
                max_seq: seq,
                ..
            } => {
                *fragments = nodes.into_iter().collect();
                *seq = max_seq;
                self.attempt_delivery(ctx, op);
            }
            JobKind::Gather {
                request,
                waiting,
                answers,
                ..
            } => {
                if nodes.is_empty() {
                    return self.gathered(op);
                }
                *waiting = nodes.len();
                answers.clear();
                let request = request.clone();
                for node in nodes {
                    self.call(ctx, node, request.clone(), Cont::Gather { op, node });
                }
            }
            JobKind::Read { holders, .. } => {
                *holders = nodes.into_iter().filter(|&n| n != self.config.id).collect();
                self.fetch_next(ctx, op);
            }
        }
    }

    fn attempt_delivery(&mut self, ctx: &Ctx, op: u64) {
        let own_load = ctx.pending_ops;
        let Some(Job {
            user,
            kind:
                JobKind::Deliver {
                    body,
                    flags,
                    internal_date,
                    fragments,
                    max_seq,
                    exclude,
                    tries,
                    last_error,
                    members,
                    chosen: attempt,
                },
        }) = self.jobs.get_mut(&op)
        else {
            return;
        };
        if *tries >= 2 {
            let e = last_error.take().expect("a failed attempt left its error");
            return self.finish(op, Err(e));
        }
        *tries += 1;
        let loads = &self.loads;
        let id = self.config.id;
        let chosen = placement::choose(
            &Inputs {
                policy: self.config.placement,
                user,
                replication: self.config.replication,
                spread: self.config.spread,
                live: members,
                all: &self.config.all,
                fragments,
                exclude,
            },
            |n| {
                if n == id {
                    own_load
                } else {
                    loads.get(&n).copied().unwrap_or(0)
                }
            },
            &mut self.rng,
        );
        let targets = match (chosen, last_error.take()) {
            (Ok(targets), _) => targets,
            // No other node to try: the first one's failure is the answer.
            (Err(_), Some(e)) => return self.finish(op, Err(e)),
            (Err(e), None) => return self.finish(op, Err(e.into())),
        };
        let primary = targets[0];
        *attempt = targets.clone();
        let message = StoreMessage {
            user: user.clone(),
            body: body.to_vec(),
            flags: flags.clone(),
            internal_date: *internal_date,
            uid: None,
            seq_hint: *max_seq,
            ts_ms: stamp(ctx.wall_ms, id),
            targets: targets[1..].to_vec(),
            replicas: targets.clone(),
        };
        self.call(
            ctx,
            primary,
            Request::Store(message),
            Cont::DeliverStore { op, primary },
        );
    }

    fn delivered(&mut self, ctx: &Ctx, op: u64, primary: u32, answer: Result<Response, MailError>) {
        #[cfg(test)]
        let retry_unanswered = self.bugs.retry_unanswered_delivery;
        #[cfg(not(test))]
        let retry_unanswered = false;
        let Some(Job {
            user,
            kind:
                JobKind::Deliver {
                    exclude,
                    last_error,
                    chosen,
                    ..
                },
        }) = self.jobs.get_mut(&op)
        else {
            return;
        };
        let error = match answer {
            Ok(Response::Stored { uid }) => {
                let user = user.clone();
                let nodes = std::mem::take(chosen);
                self.tell_manager(
                    ctx,
                    &user,
                    MailMessage::AddFragment {
                        user: user.clone(),
                        nodes,
                        max_seq: seq_of(uid),
                    },
                );
                return self.finish(op, Ok(Answer::Delivered(uid)));
            }
            Ok(Response::Failed(e)) => MailError::Remote(primary, e),
            Ok(other) => MailError::Remote(primary, format!("unexpected answer {other:?}")),
            // Sent but unanswered: it may have been stored. Trying another node could store
            // it twice, so the client is told to try later instead.
            Err(e @ MailError::NoAnswer(_)) if !retry_unanswered => {
                return self.finish(op, Err(e));
            }
            Err(e) => e,
        };
        *last_error = Some(error);
        exclude.insert(primary);
        self.attempt_delivery(ctx, op);
    }

    /// Remembers a new-message request (bounded: the oldest are forgotten).
    fn remember_store(&mut self, key: (u32, u64), what: Recent) {
        if self.recent_stores.insert(key, what).is_none() {
            self.recent_order.push_back(key);
            while self.recent_order.len() > RECENT_STORES_MAX {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent_stores.remove(&old);
                }
            }
        }
    }

    /// A message of `user` is now held here: if this node has not yet told the user's manager
    /// it holds the user's messages in this view, it does now (a part of its report for this
    /// view, so a manager already in a newer view ignores it: the report for that view, made
    /// after this store, names the user).
    fn report_fragment(&mut self, ctx: &Ctx, user: &str, uid: u32) {
        if self.reported.contains(user) || self.reported.len() >= REPORTED_USERS_MAX {
            return;
        }
        self.reported.insert(user.to_string());
        if self.fresh.len() < FRESH_USERS_MAX {
            self.fresh
                .push_back((user.to_string(), seq_of(uid), ctx.now_ms));
        }
        self.send_fragment(ctx, user, seq_of(uid));
    }

    fn send_fragment(&mut self, ctx: &Ctx, user: &str, seq: u32) {
        let report = MailMessage::Fragments {
            epoch: self.view.epoch,
            node: self.config.id,
            users: vec![(user.to_string(), seq)],
            last: false,
        };
        self.tell_manager(ctx, user, report);
    }

    /// Sends the recent one-user reports again (see [`Machine::fresh`]).
    fn refresh_reports(&mut self, ctx: &Ctx) {
        while self
            .fresh
            .front()
            .is_some_and(|(_, _, at)| ctx.now_ms >= at + REPORT_REFRESH_WINDOW_MS)
        {
            self.fresh.pop_front();
        }
        let fresh: Vec<(String, u32)> = self
            .fresh
            .iter()
            .map(|(u, seq, _)| (u.clone(), *seq))
            .collect();
        for (user, seq) in fresh {
            self.send_fragment(ctx, &user, seq);
        }
    }

    fn tell_manager(&mut self, ctx: &Ctx, user: &str, message: MailMessage) {
        match self.usermap.manager_of(user) {
            Some(m) if m == self.config.id => self.on_message(ctx, self.config.id, message),
            Some(m) => self.send(m, message),
            None => {}
        }
    }

    fn gather(&mut self, ctx: &Ctx, op: u64, user: String, what: Gathering, request: Request) {
        self.jobs.insert(
            op,
            Job {
                user,
                kind: JobKind::Gather {
                    what,
                    request,
                    waiting: 0,
                    answers: Vec::new(),
                },
            },
        );
        self.locate(ctx, op);
    }

    /// Every holder answered (or failed to): merge.
    fn gathered(&mut self, op: u64) {
        let Some(Job {
            kind: JobKind::Gather { what, answers, .. },
            ..
        }) = self.jobs.remove(&op)
        else {
            return;
        };
        let result = match what {
            Gathering::Snapshot => Ok(Answer::Snapshot(merge_listings(
                self.config.uid_validity,
                answers.into_iter().filter_map(|(_, a)| match a {
                    Ok(Response::Listing {
                        messages,
                        expunged,
                        max_seq,
                    }) => Some((messages, expunged, max_seq)),
                    _ => None,
                }),
            ))),
            Gathering::Flags | Gathering::Expunge => {
                let applied: Vec<(u32, Response)> = answers
                    .into_iter()
                    .filter_map(|(node, a)| match a {
                        Ok(Response::Failed(_)) | Err(_) => None,
                        Ok(r) => Some((node, r)),
                    })
                    .collect();
                if applied.is_empty() {
                    Err(MailError::Store(StoreError::Failed(
                        "no node holding the mailbox answered".into(),
                    )))
                } else if what == Gathering::Flags {
                    Ok(Answer::Flags(merge_flag_answers(self.config.id, applied)))
                } else {
                    let mut removed = BTreeSet::new();
                    for (_, r) in applied {
                        if let Response::Removed(gone) = r {
                            removed.extend(gone);
                        }
                    }
                    Ok(Answer::Removed(removed.into_iter().collect()))
                }
            }
        };
        self.out.push(Output::Done { op, result });
    }

    fn fetch_next(&mut self, ctx: &Ctx, op: u64) {
        let Some(Job {
            user,
            kind: JobKind::Read { uid, holders },
        }) = self.jobs.get_mut(&op)
        else {
            return;
        };
        match holders.pop_front() {
            Some(node) => {
                let request = Request::Fetch {
                    user: user.clone(),
                    uid: *uid,
                };
                self.call(ctx, node, request, Cont::Fetch { op });
            }
            None => self.finish(op, Err(MailError::Store(StoreError::NotFound))),
        }
    }

    // ----- Requests from other nodes (and this one) -----

    fn handle_request(&mut self, ctx: &Ctx, request: Request, to: ReplyTo) {
        let change = match request {
            Request::Locate { user } => {
                let (nodes, max_seq) = self.mailmap.locate(&user);
                return self.respond(ctx, to, Response::Located { nodes, max_seq });
            }
            Request::List { user } => {
                let snapshot = ctx.index.snapshot(&user, self.config.uid_validity);
                let response = Response::Listing {
                    messages: snapshot.messages,
                    expunged: ctx.index.expunged(&user),
                    max_seq: ctx.index.max_seq(&user),
                };
                return self.respond(ctx, to, response);
            }
            Request::Fetch { user, uid } => {
                return match ctx.index.message(&user, uid).filter(|m| m.is_local()) {
                    Some(meta) => {
                        let token = self.next();
                        self.body_waiting.insert(token, BodyCont::Request { to });
                        self.out.push(Output::ReadBody { token, meta });
                    }
                    None => self.respond(ctx, to, Response::NotFound),
                };
            }
            Request::Store(m) => {
                let push = !m.targets.is_empty();
                let user = m.user.clone();
                // A new message's request, seen again (a duplicate on the network): answered as
                // the first was, or left to the first's answer, never stored twice.
                let dedupe = match (&to, m.uid) {
                    (ReplyTo::Peer { from, id }, None) => Some((*from, *id)),
                    _ => None,
                };
                if let Some(key) = dedupe {
                    match self.recent_stores.get(&key) {
                        Some(Recent::Stored(uid)) => {
                            let uid = *uid;
                            return self.respond(ctx, to, Response::Stored { uid });
                        }
                        Some(Recent::Failed(e)) => {
                            let e = e.clone();
                            return self.respond(ctx, to, Response::Failed(e));
                        }
                        Some(Recent::Taken) => return,
                        None => self.remember_store(key, Recent::Taken),
                    }
                }
                let change = Change::Deliver {
                    message: NewMessage {
                        user: m.user,
                        body: Arc::from(m.body),
                        flags: m.flags,
                        internal_date: Some(m.internal_date),
                        uid: m.uid,
                        seq_hint: m.seq_hint,
                        ts_ms: m.ts_ms,
                        targets: m.targets,
                        replicas: m.replicas,
                    },
                };
                (change, AnswerKind::Stored { push, user, dedupe })
            }
            Request::SetFlags {
                user,
                uids,
                mode,
                flags,
                ts_ms,
                owe,
            } => (
                Change::Flags {
                    user,
                    uids,
                    mode,
                    flags,
                    ts_ms,
                    owe,
                },
                AnswerKind::Flags { push: owe },
            ),
            Request::Profile {
                user,
                password,
                ts_ms,
            } => (
                Change::Profile {
                    user,
                    password,
                    ts_ms,
                    targets: Vec::new(),
                },
                AnswerKind::Profile,
            ),
            Request::Expunge { user, uids, owe } => {
                // Copies this node knows no other replica holds are ripe at once; the rest ripen
                // when the other replicas have acknowledged the expunge (a message still on its
                // way here, not yet in the index, is not counted as single).
                let id = self.config.id;
                let single: HashSet<u32> = uids
                    .iter()
                    .copied()
                    .filter(|&uid| {
                        ctx.index
                            .message(&user, uid)
                            .is_some_and(|m| m.replicas.iter().all(|&r| r == id))
                    })
                    .collect();
                (
                    Change::Expunge {
                        user: user.clone(),
                        uids,
                        owe,
                    },
                    AnswerKind::Removed { owe, user, single },
                )
            }
        };
        let (change, kind) = change;
        let refused = match change.check() {
            Err(e) => Some(e.to_string()),
            Ok(())
                if matches!(to, ReplyTo::Peer { .. })
                    && self.requests_in_flight >= REQUESTS_IN_FLIGHT_MAX =>
            {
                Some("too many requests in flight; try again later".into())
            }
            Ok(()) => None,
        };
        if let Some(e) = refused {
            if let AnswerKind::Stored {
                dedupe: Some(key), ..
            } = &kind
            {
                self.remember_store(*key, Recent::Failed(e.clone()));
            }
            return self.respond(ctx, to, Response::Failed(e));
        }
        self.requests_in_flight += 1;
        self.store(change, StoreCont::Answer { to, kind });
    }

    // ----- Replication -----

    /// Starts a push for every logged replica target and owed change not in flight, to live
    /// targets, up to [`PUSHES_IN_FLIGHT_MAX`] at once.
    fn push_replicas(&mut self, ctx: &Ctx) {
        let messages = ctx.index.pending_pushes(4 * PUSHES_IN_FLIGHT_MAX);
        let states = ctx.index.owed_changes(4 * PUSHES_IN_FLIGHT_MAX);
        let work = messages
            .into_iter()
            .map(|p| (p, Owed::Message))
            .chain(states.into_iter().map(|p| (p, Owed::State)));
        for (push, owed) in work {
            for target in push.targets {
                if !self.view.members.contains(&target) {
                    continue;
                }
                if self.pushes.len() >= PUSHES_IN_FLIGHT_MAX {
                    return;
                }
                let key = (push.user.clone(), push.uid, target, owed);
                if !self.pushes.insert(key.clone()) {
                    continue;
                }
                self.start_push(ctx, key);
            }
        }
    }

    fn start_push(&mut self, ctx: &Ctx, key: PushKey) {
        let (user, uid, target, owed) = (key.0.clone(), key.1, key.2, key.3);
        match owed {
            Owed::Message if uid == PROFILE_UID => {
                let Some((password, ts_ms)) = ctx.index.profile(&user) else {
                    self.pushes.remove(&key);
                    return;
                };
                let request = Request::Profile {
                    user,
                    password,
                    ts_ms,
                };
                let cont = Cont::PushMessage {
                    key,
                    profile_ts: Some(ts_ms),
                };
                self.call(ctx, target, request, cont);
            }
            Owed::Message => match ctx.index.message(&user, uid).filter(|m| m.is_local()) {
                Some(meta) => {
                    let token = self.next();
                    self.body_waiting.insert(
                        token,
                        BodyCont::Push {
                            key,
                            meta: meta.clone(),
                        },
                    );
                    self.out.push(Output::ReadBody { token, meta });
                }
                // Expunged meanwhile: the expunge retired the push.
                None => {
                    self.pushes.remove(&key);
                }
            },
            Owed::State => match push_state_request(ctx.index, &user, uid) {
                Some((request, sent)) => {
                    self.call(ctx, target, request, Cont::PushState { key, sent })
                }
                None => {
                    // Nothing left to tell.
                    let change = Change::Settled {
                        user,
                        uid,
                        node: target,
                        sent: SentState::Nothing,
                    };
                    self.store(change, StoreCont::Settled { key, ripen: false });
                }
            },
        }
    }

    /// Notes that every replica has the expunge of `uid`, if so: it is expunged here and owed to
    /// no one.
    fn ripen(&mut self, ctx: &Ctx, user: &str, uid: u32) {
        #[cfg(test)]
        let owed_ok = self.bugs.ripen_while_owed;
        #[cfg(not(test))]
        let owed_ok = false;
        let key = (user.to_string(), uid);
        if !ctx.index.is_expunged(user, uid)
            || (!owed_ok && (ctx.index.owes(user, uid) || !self.originated.contains(&key)))
        {
            return;
        }
        self.originated.remove(&key);
        if self.ripe.len() < RIPE_TOMBSTONES_MAX {
            self.ripe.push_back((user.to_string(), uid, ctx.now_ms));
        }
    }

    /// Retires the tombstones whose grace has passed, here and on every other live node.
    fn retire_ripe(&mut self, ctx: &Ctx) {
        let grace = self.config.tombstone_grace.as_millis() as u64;
        let mut due: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        while self
            .ripe
            .front()
            .is_some_and(|(_, _, at)| ctx.now_ms >= at + grace)
        {
            let (user, uid, _) = self.ripe.pop_front().expect("checked");
            due.entry(user).or_default().push(uid);
        }
        let others = self.others();
        for (user, uids) in due {
            for chunk in uids.chunks(RETIRE_CHUNK_UIDS) {
                let change = Change::Retire {
                    user: user.clone(),
                    uids: chunk.to_vec(),
                };
                self.store(change, StoreCont::Nothing);
                for &m in &others {
                    self.send(
                        m,
                        MailMessage::Retire {
                            user: user.clone(),
                            uids: chunk.to_vec(),
                        },
                    );
                }
            }
        }
    }
}

/// Whether a holder's answer to a state push shows it took the state: an expunge always
/// (unheld UIDs are remembered as expunged), flags only for a message it holds.
pub fn state_taken(response: &Response, uid: u32) -> bool {
    match response {
        Response::Removed(_) => true,
        Response::Flags(changed) => changed.iter().any(|(u, _)| *u == uid),
        _ => false,
    }
}

/// Merges every holder's listing of one mailbox: one entry per UID, the newest flags win (this
/// node's own copy on a tie), and a UID any holder knows was expunged is gone.
pub fn merge_listings(
    uid_validity: u32,
    listings: impl IntoIterator<Item = (Vec<MessageMeta>, Vec<u32>, u32)>,
) -> MailboxSnapshot {
    let mut merged: BTreeMap<u32, MessageMeta> = BTreeMap::new();
    let mut expunged: HashSet<u32> = HashSet::new();
    let mut max_seq = 0;
    for (messages, gone, seq) in listings {
        max_seq = max_seq.max(seq);
        expunged.extend(gone);
        for m in messages {
            match merged.get(&m.uid) {
                Some(have)
                    if have.flags_ts > m.flags_ts
                        || (have.flags_ts == m.flags_ts && have.is_local()) => {}
                _ => {
                    merged.insert(m.uid, m);
                }
            }
        }
    }
    let messages: Vec<MessageMeta> = merged
        .into_values()
        .filter(|m| !expunged.contains(&m.uid))
        .collect();
    // Above every UID seen, and where the next sequence number starts.
    let seq_next = max_seq.min(UID_SEQ_MAX - 1) + 1;
    let uid_next = messages
        .last()
        .map_or(0, |m| m.uid.saturating_add(1))
        .max(uid_of(seq_next, 0));
    MailboxSnapshot {
        uid_validity,
        uid_next,
        messages,
    }
}

/// Merges the holders' answers to a flags change: the new flags of each message, this node's
/// answer first if it holds the message.
pub fn merge_flag_answers(own_id: u32, answers: Vec<(u32, Response)>) -> Vec<(u32, Flags)> {
    let mut result: BTreeMap<u32, (Flags, bool)> = BTreeMap::new();
    for (node, response) in answers {
        if let Response::Flags(changed) = response {
            for (uid, f) in changed {
                let mine = node == own_id;
                match result.get(&uid) {
                    Some((_, true)) if !mine => {}
                    _ => {
                        result.insert(uid, (f, mine));
                    }
                }
            }
        }
    }
    result.into_iter().map(|(uid, (f, _))| (uid, f)).collect()
}

/// What to tell another holder about `uid` this node owes it: the expunge, or its current flags
/// (and what was sent); `None` when nothing is left to tell.
pub fn push_state_request(index: &Index, user: &str, uid: u32) -> Option<(Request, SentState)> {
    if index.is_expunged(user, uid) {
        return Some((
            Request::Expunge {
                user: user.to_string(),
                uids: vec![uid],
                owe: false,
            },
            SentState::Expunged,
        ));
    }
    let meta = index.message(user, uid)?;
    let sent = SentState::Flags {
        ts_ms: meta.flags_ts,
    };
    Some((
        Request::SetFlags {
            user: user.to_string(),
            uids: vec![uid],
            mode: FlagMode::Replace,
            flags: meta.flags,
            ts_ms: meta.flags_ts,
            owe: false,
        },
        sent,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: u32) -> Machine {
        let all: BTreeSet<u32> = [1, 2].into();
        let view = View {
            epoch: 1,
            leader: 1,
            members: all.clone(),
        };
        let usermap = Arc::new(UserMap::compute(&view.members, 16));
        let config = MailConfig {
            id,
            replication: 2,
            spread: 2,
            placement: Placement::Dynamic,
            all,
            uid_validity: 1,
            tombstone_grace: std::time::Duration::from_secs(1),
        };
        Machine::new(config, 7, view, usermap)
    }

    fn store_request(id: u64) -> MailMessage {
        MailMessage::Request {
            id,
            request: Request::Store(StoreMessage {
                user: "u".into(),
                body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
                flags: Flags::empty(),
                internal_date: 1,
                uid: None,
                seq_hint: 0,
                ts_ms: 1,
                targets: vec![1],
                replicas: vec![1, 2],
            }),
        }
    }

    /// What the machine asked for: (store tokens, responses sent).
    fn outputs(m: &mut Machine) -> (Vec<u64>, Vec<Response>) {
        let mut tokens = Vec::new();
        let mut responses = Vec::new();
        for o in m.poll() {
            match o {
                Output::Store { token, .. } => tokens.push(token),
                Output::Send {
                    message: MailMessage::Response { response, .. },
                    ..
                } => responses.push(response),
                _ => {}
            }
        }
        (tokens, responses)
    }

    /// Found by the simulation (a disk that filled up, and a network that duplicates): a new
    /// message's request refused for want of space, then seen again after space returned, was
    /// stored although its sender had placed the message elsewhere — twice in the mailbox. A
    /// duplicate of a refused request is refused again; of a stored one, answered the same.
    #[test]
    fn a_duplicate_of_a_new_message_request_gets_the_first_answer() {
        let index = Index::default();
        let connected = |_: u32| true;
        let ctx = Ctx {
            now_ms: 0,
            wall_ms: 0,
            index: &index,
            pending_ops: 0,
            connected: &connected,
        };
        let mut m = machine(2);
        m.on_message(&ctx, 1, store_request(10));
        let (first, _) = outputs(&mut m);
        assert_eq!(first.len(), 1);
        // While it is being stored, a duplicate is left to the first's answer.
        m.on_message(&ctx, 1, store_request(10));
        let (tokens, responses) = outputs(&mut m);
        assert!(tokens.is_empty() && responses.is_empty(), "{responses:?}");
        m.stored(
            &ctx,
            first[0],
            Reply::Failed("the node's disk is full".into()),
        );
        let (_, responses) = outputs(&mut m);
        assert!(
            matches!(&responses[..], [Response::Failed(_)]),
            "{responses:?}"
        );
        // Space returns; the duplicate arrives: refused again, nothing stored.
        m.on_message(&ctx, 1, store_request(10));
        let (tokens, responses) = outputs(&mut m);
        assert!(tokens.is_empty(), "stored a duplicate of a refused request");
        assert!(
            matches!(&responses[..], [Response::Failed(_)]),
            "{responses:?}"
        );

        // A stored one: its duplicate gets the same UID, and nothing is stored again.
        m.on_message(&ctx, 1, store_request(11));
        let (tokens, _) = outputs(&mut m);
        m.stored(&ctx, tokens[0], Reply::Uids(vec![4242]));
        let (_, responses) = outputs(&mut m);
        assert!(matches!(&responses[..], [Response::Stored { uid: 4242 }]));
        m.on_message(&ctx, 1, store_request(11));
        let (tokens, responses) = outputs(&mut m);
        assert!(tokens.is_empty());
        assert!(matches!(&responses[..], [Response::Stored { uid: 4242 }]));
    }
}
