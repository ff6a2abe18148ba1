//! The cluster's mail service: what the SMTP, POP3 and IMAP front ends call instead of the local
//! store, so that any node serves any user.
//!
//! - Delivery asks the user's manager (from the user map) where the mailbox lives, picks nodes by
//!   the placement policy, and has the first of them store the message durably with the pushes
//!   to the other replicas logged; it answers only then. The pusher on that node sends the
//!   replicas and retires each push when acknowledged, retrying (also after a restart) until then.
//! - Retrieval asks the manager for the fragments, lists every holder, and merges: one entry per
//!   UID, the newest flags win, and a UID any holder knows was expunged is gone.
//! - Flags and expunges go to every holder.
//! - After each view change every node reports its users to their (new) managers, which rebuild
//!   the mail map (soft state) from those reports.
//!
//! A node with no peers takes the same paths with every call answered locally.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::core::faults::FaultSwitch;
use crate::core::peering::{PeerMessage, ViewInfo};

/// The view as the mail service sees it: the membership view and its user map.
pub type MailView = ViewInfo<UserMap>;
/// What mail nodes say to each other.
pub type MailPeerMessage = PeerMessage<MailMessage>;
use super::machine::{
    self, merge_flag_answers, merge_listings, push_state_request, PUSHES_IN_FLIGHT_MAX,
    REPORT_CHUNK_USERS, REQUESTS_IN_FLIGHT_MAX, RIPE_TOMBSTONES_MAX,
};
pub use super::machine::{MailConfig, MailError};
use super::mailmap::MailMap;
use super::placement::Inputs;
pub use super::placement::Placement;
use super::wire::{MailMessage, Request, Response, StoreMessage};
use crate::core::transport::Transport;
use crate::mail::store::{
    FlagMode, Flags, MailboxSnapshot, MessageMeta, NewMessage, SentState, Store, StoreError,
    PROFILE_UID,
};
use crate::mail::usermap::UserMap;

/// How long a request to another node may take before it counts as failed.
pub const RPC_TIMEOUT: Duration = Duration::from_millis(machine::RPC_TIMEOUT_MS);
/// Requests that wait for the other node's disk may queue behind it; they get longer.
pub const WRITE_RPC_TIMEOUT: Duration = Duration::from_millis(machine::WRITE_RPC_TIMEOUT_MS);
/// How often the pusher looks for pushes to retry, and the load beacon is sent.
pub const PUSH_RETRY_INTERVAL: Duration = Duration::from_millis(machine::PUSH_RETRY_INTERVAL_MS);
pub const LOAD_BEACON_INTERVAL: Duration = Duration::from_millis(machine::LOAD_BEACON_INTERVAL_MS);
/// UIDs per Retire message.
const RETIRE_CHUNK_UIDS: usize = 10_000;

/// One push in flight: (user, uid, target, what).
type PushKey = (String, u32, u32, Owed);

/// What a push carries: a message to a replica, or a message's new state to another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owed {
    Message,
    State,
}

pub struct MailService {
    id: u32,
    store: Store,
    view: watch::Receiver<MailView>,
    transport: Option<Transport<MailPeerMessage>>,
    config: MailConfig,
    faults: Arc<FaultSwitch>,
    next_request: AtomicU64,
    /// Requests sent and not yet answered: id → (peer, where the answer goes).
    waiting: Mutex<HashMap<u64, (u32, oneshot::Sender<Response>)>>,
    mailmap: Mutex<MailMap>,
    loads: Mutex<HashMap<u32, u64>>,
    push_now: Notify,
    /// Expunges every replica has (user, uid, since when), waiting out their grace.
    ripe: Mutex<std::collections::VecDeque<(String, u32, std::time::Instant)>>,
    /// Expunges a client's request made here (so this node owes them to every other replica):
    /// only such a node may find one ripe, as only it knows when every replica has it.
    originated: Mutex<HashSet<(String, u32)>>,
    /// What this node has told users' managers in the current view (see [`FragmentReports`]).
    fragments: Mutex<FragmentReports>,
}

/// The users a node has told their managers it holds, in the view of `epoch`: its report at the
/// view change, and one-user reports for users first stored here since. Those are sent again
/// every [`machine::REPORT_REFRESH_MS`] for [`machine::REPORT_REFRESH_WINDOW_MS`], as one may be
/// lost (a brief partition, a full queue) without a view change to repair it.
#[derive(Default)]
struct FragmentReports {
    epoch: u64,
    reported: HashSet<String>,
    fresh: std::collections::VecDeque<(String, u32, std::time::Instant)>,
    last_refresh: Option<std::time::Instant>,
}

/// One-user reports kept for sending again, at most.
const FRESH_USERS_MAX: usize = 10_000;

impl MailService {
    /// Starts the service's background tasks: the inbound dispatcher, the mail-map reporter,
    /// the replica pusher and the load beacon.
    pub fn start(
        store: Store,
        view: watch::Receiver<MailView>,
        transport: Option<Transport<MailPeerMessage>>,
        config: MailConfig,
        faults: Arc<FaultSwitch>,
        inbound: mpsc::Receiver<(u32, MailMessage)>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<MailService> {
        let service = Arc::new(MailService {
            id: config.id,
            store,
            view,
            transport,
            config,
            faults,
            // Random, so that a late answer meant for this node's previous life (before a
            // restart) cannot be taken for an answer to a new request.
            next_request: AtomicU64::new(rand::random::<u64>() >> 1),
            waiting: Mutex::new(HashMap::new()),
            mailmap: Mutex::new(MailMap::default()),
            loads: Mutex::new(HashMap::new()),
            push_now: Notify::new(),
            ripe: Mutex::new(std::collections::VecDeque::new()),
            originated: Mutex::new(HashSet::new()),
            fragments: Mutex::new(FragmentReports::default()),
        });
        tokio::spawn(service.clone().dispatch(inbound, shutdown.clone()));
        tokio::spawn(service.clone().report_on_view_change(shutdown.clone()));
        tokio::spawn(service.clone().push_replicas(shutdown.clone()));
        if service.transport.is_some() {
            tokio::spawn(service.clone().beacon_load(shutdown.clone()));
            tokio::spawn(service.clone().abandon_lost_requests(shutdown));
        }
        service
    }

    pub fn uid_validity(&self) -> u32 {
        self.config.uid_validity
    }

    pub fn config(&self) -> &MailConfig {
        &self.config
    }

    /// The local store (this node's fragments).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Users whose mailbox this node's mail map knows (it manages their buckets).
    pub fn mailmap_users(&self) -> usize {
        self.mailmap.lock().unwrap().users()
    }

    /// An update stamp for now: this node's clock (with any injected skew) and its id.
    fn now_stamp(&self) -> i64 {
        crate::mail::store::stamp(
            chrono::Utc::now().timestamp_millis() + self.faults.clock_skew_ms(),
            self.id,
        )
    }

    fn current_view(&self) -> MailView {
        self.view.borrow().clone()
    }

    // ----- Front-end operations -----

    /// Delivers one copy of `body` to each of `users`; returns their UIDs once every copy is
    /// durable on its first replica.
    pub async fn deliver(
        &self,
        users: Vec<String>,
        body: Arc<[u8]>,
        flags: Flags,
        internal_date: Option<i64>,
    ) -> Result<Vec<u32>, StoreError> {
        let mut uids = Vec::with_capacity(users.len());
        for user in users {
            uids.push(
                self.deliver_one(&user, body.clone(), flags.clone(), internal_date)
                    .await?,
            );
        }
        Ok(uids)
    }

    async fn deliver_one(
        &self,
        user: &str,
        body: Arc<[u8]>,
        flags: Flags,
        internal_date: Option<i64>,
    ) -> Result<u32, MailError> {
        let view = self.current_view();
        let (fragments, max_seq) = self.locate(user, &view).await;
        let internal_date = internal_date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        let mut exclude = BTreeSet::new();
        let mut last_error = None;
        // A first replica that fails is avoided on a second try.
        for _ in 0..2 {
            let chosen = {
                let loads = self.loads.lock().unwrap();
                let own_load = self.store.stats().pending_ops;
                super::placement::choose(
                    &Inputs {
                        policy: self.config.placement,
                        user,
                        replication: self.config.replication,
                        spread: self.config.spread,
                        live: &view.view.members,
                        all: &self.config.all,
                        fragments: &fragments.iter().copied().collect(),
                        exclude: &exclude,
                    },
                    |n| {
                        if n == self.id {
                            own_load
                        } else {
                            loads.get(&n).copied().unwrap_or(0)
                        }
                    },
                    &mut rand::rng(),
                )
            };
            let targets = match (chosen, last_error) {
                (Ok(targets), _) => targets,
                // No other node to try: the first one's failure is the answer.
                (Err(_), Some(e)) => return Err(e),
                (Err(e), None) => return Err(e.into()),
            };
            let primary = targets[0];
            let message = StoreMessage {
                user: user.to_string(),
                body: body.to_vec(),
                flags: flags.clone(),
                internal_date,
                uid: None,
                seq_hint: max_seq,
                ts_ms: self.now_stamp(),
                targets: targets[1..].to_vec(),
                replicas: targets.clone(),
            };
            match self.call(primary, Request::Store(message)).await {
                Ok(Response::Stored { uid }) => {
                    self.tell_manager(
                        user,
                        &view.derived,
                        MailMessage::AddFragment {
                            user: user.to_string(),
                            nodes: targets.clone(),
                            max_seq: crate::mail::store::seq_of(uid),
                        },
                    );
                    return Ok(uid);
                }
                Ok(Response::Failed(e)) => last_error = Some(MailError::Remote(primary, e)),
                Ok(other) => {
                    last_error = Some(MailError::Remote(
                        primary,
                        format!("unexpected answer {other:?}"),
                    ))
                }
                // Sent but unanswered: it may have been stored. Trying another node could store
                // it twice, so the client is told to try later instead.
                Err(e @ MailError::NoAnswer(_)) => return Err(e),
                Err(e) => last_error = Some(e),
            }
            exclude.insert(primary);
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    /// The whole mailbox of `user`, merged from every node that holds a fragment. Holders that do
    /// not answer are left out (their messages show again when they do).
    pub async fn snapshot(&self, user: &str) -> MailboxSnapshot {
        let view = self.current_view();
        let (holders, _) = self.locate(user, &view).await;
        let mut calls = Vec::new();
        for node in holders {
            calls.push(self.call(
                node,
                Request::List {
                    user: user.to_string(),
                },
            ));
        }
        // Every holder at once: a silent one costs one timeout, not one each.
        let listings = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|answer| match answer {
                Ok(Response::Listing {
                    messages,
                    expunged,
                    max_seq,
                }) => Some((messages, expunged, max_seq)),
                _ => None,
            });
        merge_listings(self.config.uid_validity, listings)
    }

    /// A message's bytes, from this node if it holds them, else from any holder.
    pub async fn read(&self, user: &str, meta: &MessageMeta) -> Result<Vec<u8>, StoreError> {
        if let Some(local) = self.store.message(user, meta.uid) {
            return self.store.read(&local).await;
        }
        let view = self.current_view();
        let (holders, _) = self.locate(user, &view).await;
        for node in holders.into_iter().filter(|&n| n != self.id) {
            if let Ok(Response::Body(bytes)) = self
                .call(
                    node,
                    Request::Fetch {
                        user: user.to_string(),
                        uid: meta.uid,
                    },
                )
                .await
            {
                return Ok(bytes);
            }
        }
        Err(StoreError::NotFound)
    }

    /// Changes flags on every holder; returns the new flags of the messages that exist. Every
    /// holder that applies it also owes it to the message's other replicas (logged, retried
    /// until acknowledged), so a replica that is down gets it when it returns.
    pub async fn set_flags(
        &self,
        user: &str,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
    ) -> Result<Vec<(u32, Flags)>, StoreError> {
        let ts_ms = self.now_stamp();
        let request = Request::SetFlags {
            user: user.to_string(),
            uids,
            mode,
            flags,
            ts_ms,
            owe: true,
        };
        let answers = self.to_holders(user, request).await?;
        Ok(merge_flag_answers(self.id, answers))
    }

    /// Expunges on every holder (each owes it to the other replicas); returns the UIDs removed
    /// anywhere.
    pub async fn expunge(&self, user: &str, uids: Vec<u32>) -> Result<Vec<u32>, StoreError> {
        let request = Request::Expunge {
            user: user.to_string(),
            uids,
            owe: true,
        };
        let mut removed = BTreeSet::new();
        for (_, response) in self.to_holders(user, request).await? {
            if let Response::Removed(gone) = response {
                removed.extend(gone);
            }
        }
        Ok(removed.into_iter().collect())
    }

    /// Sends a change to every live holder of `user`'s mailbox; returns the answers of those
    /// that applied it, or an error if none did.
    async fn to_holders(
        &self,
        user: &str,
        request: Request,
    ) -> Result<Vec<(u32, Response)>, StoreError> {
        let view = self.current_view();
        let (holders, _) = self.locate(user, &view).await;
        let mut answers = Vec::new();
        // Every holder at once: a silent one costs one timeout, not one each.
        let calls = holders.iter().map(|&node| self.call(node, request.clone()));
        let replies = futures_util::future::join_all(calls).await;
        for (node, reply) in holders.into_iter().zip(replies) {
            match reply {
                Ok(Response::Failed(e)) => {
                    tracing::debug!(node, "a holder refused a mailbox change: {e}")
                }
                Ok(r) => answers.push((node, r)),
                Err(e) => tracing::debug!(node, "a holder did not take a mailbox change: {e}"),
            }
        }
        if answers.is_empty() {
            return Err(StoreError::Failed(
                "no node holding the mailbox answered".into(),
            ));
        }
        Ok(answers)
    }

    // ----- The mail map -----

    /// Asks `user`'s manager which live nodes hold the mailbox. If the manager cannot be asked,
    /// every live node might.
    async fn locate(&self, user: &str, view: &MailView) -> (Vec<u32>, u32) {
        let everyone = || view.view.members.iter().copied().collect::<Vec<u32>>();
        let Some(manager) = view.derived.manager_of(user) else {
            return (vec![self.id], 0);
        };
        let located = if manager == self.id {
            let (nodes, max_seq) = self.mailmap.lock().unwrap().locate(user);
            (nodes, max_seq)
        } else {
            match self
                .call(
                    manager,
                    Request::Locate {
                        user: user.to_string(),
                    },
                )
                .await
            {
                Ok(Response::Located { nodes, max_seq }) => (nodes, max_seq),
                _ => (everyone(), 0),
            }
        };
        // This node's own fragment counts even before the manager has heard of it.
        let (mut nodes, max_seq) = located;
        if self.store.max_seq(user) > 0 && !nodes.contains(&self.id) {
            nodes.push(self.id);
        }
        (nodes, max_seq.max(self.store.max_seq(user)))
    }

    fn tell_manager(&self, user: &str, usermap: &UserMap, message: MailMessage) {
        match usermap.manager_of(user) {
            Some(m) if m == self.id => self.on_message(self.id, message),
            Some(m) => self.send(m, message),
            None => {}
        }
    }

    /// After each view change: install it in this node's mail map and report every local user
    /// to its manager.
    async fn report_on_view_change(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut view = self.view.clone();
        loop {
            let info = view.borrow_and_update().clone();
            self.mailmap
                .lock()
                .unwrap()
                .install(info.view.epoch, info.view.members.clone());
            let mut by_manager: BTreeMap<u32, Vec<(String, u32)>> =
                info.view.members.iter().map(|&m| (m, Vec::new())).collect();
            // Held while the users are listed: a message stored meanwhile is either listed or
            // reported after, for this view.
            let users = {
                let mut fragments = self.fragments.lock().unwrap();
                let users = self.store.users();
                *fragments = FragmentReports {
                    epoch: info.view.epoch,
                    reported: users.iter().cloned().collect(),
                    ..FragmentReports::default()
                };
                users
            };
            for user in users {
                if let Some(m) = info.derived.manager_of(&user) {
                    let seq = self.store.max_seq(&user);
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
                        epoch: info.view.epoch,
                        node: self.id,
                        users: chunk,
                        last: i + 1 == n,
                    };
                    if manager == self.id {
                        self.on_message(self.id, report);
                    } else {
                        self.send(manager, report);
                    }
                }
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    // ----- Replication -----

    /// Pushes every logged replica target until it acknowledges; retried while the target is
    /// down or unreachable, and after a restart (the targets are in the log).
    async fn push_replicas(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let in_flight: Arc<Mutex<HashSet<PushKey>>> = Default::default();
        let limit = Arc::new(Semaphore::new(PUSHES_IN_FLIGHT_MAX));
        loop {
            let live = self.current_view().view.members;
            let messages = self.store.pending_pushes(4 * PUSHES_IN_FLIGHT_MAX);
            let states = self.store.owed_changes(4 * PUSHES_IN_FLIGHT_MAX);
            let work = messages
                .into_iter()
                .map(|p| (p, Owed::Message))
                .chain(states.into_iter().map(|p| (p, Owed::State)));
            for (push, owed) in work {
                for target in push.targets {
                    if !live.contains(&target) {
                        continue;
                    }
                    let key = (push.user.clone(), push.uid, target, owed);
                    if !in_flight.lock().unwrap().insert(key.clone()) {
                        continue;
                    }
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let service = self.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        let result = match owed {
                            Owed::Message if key.1 == PROFILE_UID => {
                                service.push_profile(&key.0, key.2).await
                            }
                            Owed::Message => service.push_one(&key.0, key.1, key.2).await,
                            Owed::State => service.push_state(&key.0, key.1, key.2).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!(user = %key.0, uid = key.1, target = key.2, "push failed: {e}");
                        }
                        in_flight.lock().unwrap().remove(&key);
                        drop(permit);
                    });
                }
            }
            self.retire_ripe().await;
            self.refresh_reports();
            tokio::select! {
                _ = self.push_now.notified() => {},
                _ = tokio::time::sleep(PUSH_RETRY_INTERVAL) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// A message of `user` is now held here: if this node has not told the user's manager it
    /// holds the user's messages in this view, it does now (a part of its report for the view,
    /// so a manager already in a newer view ignores it: the report for that one, made after
    /// this store, names the user).
    fn report_fragment(&self, user: &str, uid: u32) {
        let epoch = {
            let mut f = self.fragments.lock().unwrap();
            if f.reported.contains(user) || f.reported.len() >= RIPE_TOMBSTONES_MAX {
                return;
            }
            f.reported.insert(user.to_string());
            if f.fresh.len() < FRESH_USERS_MAX {
                f.fresh.push_back((
                    user.to_string(),
                    crate::mail::store::seq_of(uid),
                    std::time::Instant::now(),
                ));
            }
            f.epoch
        };
        self.send_fragment(epoch, user, crate::mail::store::seq_of(uid));
    }

    fn send_fragment(&self, epoch: u64, user: &str, seq: u32) {
        let view = self.current_view();
        let report = MailMessage::Fragments {
            epoch,
            node: self.id,
            users: vec![(user.to_string(), seq)],
            last: false,
        };
        self.tell_manager(user, &view.derived, report);
    }

    /// Sends the recent one-user reports again, once a [`machine::REPORT_REFRESH_MS`].
    fn refresh_reports(&self) {
        let (epoch, due) = {
            let mut f = self.fragments.lock().unwrap();
            if f.last_refresh
                .is_some_and(|at| at.elapsed() < Duration::from_millis(machine::REPORT_REFRESH_MS))
            {
                return;
            }
            f.last_refresh = Some(std::time::Instant::now());
            let window = Duration::from_millis(machine::REPORT_REFRESH_WINDOW_MS);
            while f
                .fresh
                .front()
                .is_some_and(|(_, _, at)| at.elapsed() >= window)
            {
                f.fresh.pop_front();
            }
            let due: Vec<(String, u32)> = f
                .fresh
                .iter()
                .map(|(u, seq, _)| (u.clone(), *seq))
                .collect();
            (f.epoch, due)
        };
        for (user, seq) in due {
            self.send_fragment(epoch, &user, seq);
        }
    }

    /// Notes that every replica has the expunge of `uid`, if so: it is expunged here and owed to
    /// no one.
    fn ripen(&self, user: &str, uid: u32) {
        let key = (user.to_string(), uid);
        if !self.store.is_expunged(user, uid)
            || self.store.owes(user, uid)
            || !self.originated.lock().unwrap().remove(&key)
        {
            return;
        }
        let mut ripe = self.ripe.lock().unwrap();
        if ripe.len() < RIPE_TOMBSTONES_MAX {
            ripe.push_back((user.to_string(), uid, std::time::Instant::now()));
        }
    }

    /// Retires the tombstones whose grace has passed, here and on every other live node.
    async fn retire_ripe(&self) {
        let mut due: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        {
            let mut ripe = self.ripe.lock().unwrap();
            while ripe
                .front()
                .is_some_and(|(_, _, at)| at.elapsed() >= self.config.tombstone_grace)
            {
                let (user, uid, _) = ripe.pop_front().expect("checked");
                due.entry(user).or_default().push(uid);
            }
        }
        if due.is_empty() {
            return;
        }
        let others: Vec<u32> = self
            .current_view()
            .view
            .members
            .into_iter()
            .filter(|&m| m != self.id)
            .collect();
        for (user, uids) in due {
            for chunk in uids.chunks(RETIRE_CHUNK_UIDS) {
                if let Err(e) = self.store.retire(&user, chunk.to_vec()).await {
                    tracing::debug!(user, "retiring tombstones failed: {e}");
                }
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

    async fn push_one(&self, user: &str, uid: u32, target: u32) -> Result<(), MailError> {
        let Some(meta) = self.store.message(user, uid) else {
            // Expunged meanwhile: the expunge retired the push.
            return Ok(());
        };
        let body = self.store.read(&meta).await?;
        let message = StoreMessage {
            user: user.to_string(),
            body,
            flags: meta.flags,
            internal_date: meta.internal_date,
            uid: Some(uid),
            seq_hint: 0,
            ts_ms: meta.flags_ts,
            targets: Vec::new(),
            replicas: meta.replicas.clone(),
        };
        match self.call(target, Request::Store(message)).await? {
            Response::Stored { .. } => {
                self.store.acked(user, uid, target).await?;
                Ok(())
            }
            other => Err(MailError::Remote(target, format!("{other:?}"))),
        }
    }

    /// Creates a user or changes its password: durable here, then pushed to every other node
    /// (retried until each acknowledges).
    pub async fn set_profile(&self, user: &str, password: &str) -> Result<Vec<u32>, StoreError> {
        let targets: Vec<u32> = self
            .config
            .all
            .iter()
            .copied()
            .filter(|&n| n != self.id)
            .collect();
        self.store
            .set_profile(user, password, self.now_stamp(), targets.clone())
            .await?;
        self.push_now.notify_one();
        Ok(targets)
    }

    async fn push_profile(&self, user: &str, target: u32) -> Result<(), MailError> {
        let Some((password, ts_ms)) = self.store.profile(user) else {
            return Ok(());
        };
        let request = Request::Profile {
            user: user.to_string(),
            password,
            ts_ms,
        };
        match self.call(target, request).await? {
            Response::Stored { .. } => {
                self.store.acked(user, PROFILE_UID, target).await?;
                Ok(())
            }
            other => Err(MailError::Remote(target, format!("{other:?}"))),
        }
    }

    /// Tells `target` the state of `uid` this node owes it: expunged, or its current flags.
    async fn push_state(&self, user: &str, uid: u32, target: u32) -> Result<(), MailError> {
        let state = self
            .store
            .with_index(|index| push_state_request(index, user, uid));
        let Some((request, sent)) = state else {
            // Nothing left to tell.
            self.store
                .settled(user, uid, target, SentState::Nothing)
                .await?;
            return Ok(());
        };
        match self.call(target, request).await? {
            // Flags for a message the target does not hold yet (its copy is still on the way
            // from the first replica, which pushes the flags it has then): owed still.
            r if !machine::state_taken(&r, uid) => Ok(()),
            Response::Flags(_) | Response::Removed(_) => {
                // Changed while the state was on its way (new flags, or expunged): what is owed
                // now is the new state, which the next round sends (settling now would leave the
                // target with the old flags, or let the tombstone go early).
                if self
                    .store
                    .with_index(|index| sent.is_stale(index, user, uid))
                {
                    return Ok(());
                }
                self.store.settled(user, uid, target, sent).await?;
                self.ripen(user, uid);
                Ok(())
            }
            other => Err(MailError::Remote(target, format!("{other:?}"))),
        }
    }

    // ----- Load -----

    async fn beacon_load(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let pending_io = self.store.stats().pending_ops;
            let members = self.current_view().view.members;
            for m in members.into_iter().filter(|&m| m != self.id) {
                self.send(m, MailMessage::Load { pending_io });
            }
            tokio::select! {
                _ = tokio::time::sleep(LOAD_BEACON_INTERVAL) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    // ----- Messaging -----

    fn send(&self, to: u32, message: MailMessage) {
        if let Some(t) = &self.transport {
            t.send(to, PeerMessage::Service(message));
        }
    }

    /// One request to `to` (answered here if `to` is this node).
    async fn call(&self, to: u32, request: Request) -> Result<Response, MailError> {
        if to == self.id {
            return Ok(self.handle(request).await);
        }
        let Some(transport) = &self.transport else {
            return Err(MailError::Unreachable(to));
        };
        // A peer whose link is down fails at once: its requests would only time out.
        if !transport.is_connected(to) {
            return Err(MailError::Unreachable(to));
        }
        let limit = match request {
            Request::Locate { .. } | Request::List { .. } | Request::Fetch { .. } => RPC_TIMEOUT,
            _ => WRITE_RPC_TIMEOUT,
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, (to, tx));
        let sent = transport.send(
            to,
            PeerMessage::Service(MailMessage::Request { id, request }),
        );
        if !sent {
            self.waiting.lock().unwrap().remove(&id);
            return Err(MailError::Unreachable(to));
        }
        let answer = tokio::time::timeout(limit, rx)
            .await
            .ok()
            .and_then(|r| r.ok());
        self.waiting.lock().unwrap().remove(&id);
        answer.ok_or(MailError::NoAnswer(to))
    }

    /// Requests waiting on a peer whose link has gone down will never be answered: they end at
    /// once (as unanswered) instead of waiting out their timeout.
    async fn abandon_lost_requests(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(transport) = self.transport.clone() else {
            return;
        };
        loop {
            self.waiting
                .lock()
                .unwrap()
                .retain(|_, (peer, _)| transport.is_connected(*peer));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn dispatch(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<(u32, MailMessage)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let limit = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        loop {
            let next = tokio::select! {
                m = inbound.recv() => m,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some((from, message)) = next else { return };
            match message {
                MailMessage::Request { id, request } => {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let service = self.clone();
                    tokio::spawn(async move {
                        let response = service.handle(request).await;
                        service.send(from, MailMessage::Response { id, response });
                        drop(permit);
                    });
                }
                other => self.on_message(from, other),
            }
        }
    }

    /// Handles a one-way message (or a response).
    fn on_message(&self, from: u32, message: MailMessage) {
        match message {
            MailMessage::Response { id, response } => {
                if let Some((_, tx)) = self.waiting.lock().unwrap().remove(&id) {
                    let _ = tx.send(response);
                }
            }
            MailMessage::Fragments {
                epoch,
                node,
                users,
                last,
            } => self
                .mailmap
                .lock()
                .unwrap()
                .report(epoch, node, users, last),
            MailMessage::AddFragment {
                user,
                nodes,
                max_seq,
            } => self.mailmap.lock().unwrap().add(&user, &nodes, max_seq),
            MailMessage::Load { pending_io } => {
                self.loads.lock().unwrap().insert(from, pending_io);
            }
            MailMessage::Retire { user, uids } => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.retire(&user, uids).await {
                        tracing::debug!(user, "retiring tombstones failed: {e}");
                    }
                });
            }
            MailMessage::Request { .. } => {
                unreachable!("requests are dispatched, not handled here")
            }
        }
    }

    /// Answers a request against this node's store and mail map.
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Locate { user } => {
                let (nodes, max_seq) = self.mailmap.lock().unwrap().locate(&user);
                Response::Located { nodes, max_seq }
            }
            Request::Store(m) => {
                let has_targets = !m.targets.is_empty();
                let user = m.user.clone();
                let result = self
                    .store
                    .store(NewMessage {
                        user: m.user,
                        body: Arc::from(m.body),
                        flags: m.flags,
                        internal_date: Some(m.internal_date),
                        uid: m.uid,
                        seq_hint: m.seq_hint,
                        ts_ms: m.ts_ms,
                        targets: m.targets,
                        replicas: m.replicas,
                    })
                    .await;
                match result {
                    Ok(uid) => {
                        if has_targets {
                            self.push_now.notify_one();
                        }
                        self.report_fragment(&user, uid);
                        Response::Stored { uid }
                    }
                    Err(e) => Response::Failed(e.to_string()),
                }
            }
            Request::List { user } => {
                let snapshot = self.store.snapshot(&user);
                Response::Listing {
                    messages: snapshot.messages,
                    expunged: self.store.expunged(&user),
                    max_seq: self.store.max_seq(&user),
                }
            }
            Request::Fetch { user, uid } => match self.store.message(&user, uid) {
                Some(meta) => match self.store.read(&meta).await {
                    Ok(bytes) => Response::Body(bytes),
                    Err(e) => Response::Failed(e.to_string()),
                },
                None => Response::NotFound,
            },
            Request::SetFlags {
                user,
                uids,
                mode,
                flags,
                ts_ms,
                owe,
            } => {
                match self
                    .store
                    .set_flags_at(&user, uids, mode, flags, ts_ms, owe)
                    .await
                {
                    Ok(changed) => {
                        if owe {
                            self.push_now.notify_one();
                        }
                        Response::Flags(changed)
                    }
                    Err(e) => Response::Failed(e.to_string()),
                }
            }
            Request::Profile {
                user,
                password,
                ts_ms,
            } => match self
                .store
                .set_profile(&user, &password, ts_ms, Vec::new())
                .await
            {
                Ok(()) => Response::Stored { uid: PROFILE_UID },
                Err(e) => Response::Failed(e.to_string()),
            },
            Request::Expunge { user, uids, owe } => {
                // Copies this node knows no other replica holds are ripe at once; the rest ripen
                // when the other replicas have acknowledged the expunge (a message still on its
                // way here, not yet in the index, is not counted as single).
                let single: HashSet<u32> = uids
                    .iter()
                    .copied()
                    .filter(|&uid| {
                        self.store
                            .message(&user, uid)
                            .is_some_and(|m| m.replicas.iter().all(|&r| r == self.id))
                    })
                    .collect();
                match self.store.expunge_owing(&user, uids, owe).await {
                    Ok(removed) => {
                        if owe {
                            self.push_now.notify_one();
                            {
                                let mut originated = self.originated.lock().unwrap();
                                for &uid in &removed {
                                    if originated.len() < RIPE_TOMBSTONES_MAX {
                                        originated.insert((user.clone(), uid));
                                    }
                                }
                            }
                            for &uid in removed.iter().filter(|u| single.contains(u)) {
                                self.ripen(&user, uid);
                            }
                        }
                        Response::Removed(removed)
                    }
                    Err(e) => Response::Failed(e.to_string()),
                }
            }
        }
    }
}
