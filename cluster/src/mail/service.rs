//! The cluster's mail service: what the SMTP, POP3 and IMAP front ends call instead of the local
//! store, so that any node serves any user.
//!
//! A thin shell around the state machine in `machine.rs`, which decides everything (placement,
//! replication, retries, merging, tombstones, the mail map): this module feeds it client
//! operations, peer messages, view changes, store completions, bodies read and a tick every
//! [`TICK`], and carries out what it asks — messages onto the transport, changes into the store
//! (answered once durable), body reads — handing each answer back to the caller that waits for
//! it. The seeded simulation (`mail::sim`) runs the same machine.
//!
//! A node with no peers takes the same paths with every call answered locally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::machine::{Answer, ClientOp, Ctx, Machine, Output};
pub use super::machine::{MailConfig, MailError};
pub use super::placement::Placement;
use super::wire::MailMessage;
use crate::core::faults::FaultSwitch;
use crate::core::peering::{PeerMessage, ViewInfo};
use crate::core::transport::Transport;
use crate::mail::store::{FlagMode, Flags, MailboxSnapshot, MessageMeta, Store, StoreError};
use crate::mail::usermap::UserMap;

/// The view as the mail service sees it: the membership view and its user map.
pub type MailView = ViewInfo<UserMap>;
/// What mail nodes say to each other.
pub type MailPeerMessage = PeerMessage<MailMessage>;

/// How often the machine is ticked (request timeouts, push retries, beacons).
pub const TICK: Duration = Duration::from_millis(50);

pub struct MailService {
    store: Store,
    view: watch::Receiver<MailView>,
    transport: Option<Transport<MailPeerMessage>>,
    config: MailConfig,
    faults: Arc<FaultSwitch>,
    machine: Mutex<Machine>,
    started: Instant,
    next_op: AtomicU64,
    /// Client operations waiting for their answer.
    clients: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, MailError>>>>,
    /// This service itself, for the tasks it spawns.
    me: std::sync::Weak<MailService>,
}

impl MailService {
    /// Starts the service's background tasks: the inbound dispatcher, the view follower and the
    /// ticker.
    pub fn start(
        store: Store,
        view: watch::Receiver<MailView>,
        transport: Option<Transport<MailPeerMessage>>,
        config: MailConfig,
        faults: Arc<FaultSwitch>,
        inbound: mpsc::Receiver<(u32, MailMessage)>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<MailService> {
        let info = view.borrow().clone();
        let machine = Machine::new(
            config.clone(),
            rand::random::<u64>(),
            info.view.clone(),
            info.derived.clone(),
        );
        let service = Arc::new_cyclic(|me| MailService {
            me: me.clone(),
            store,
            view,
            transport,
            config,
            faults,
            machine: Mutex::new(machine),
            started: Instant::now(),
            next_op: AtomicU64::new(1),
            clients: Mutex::new(HashMap::new()),
        });
        tokio::spawn(service.clone().dispatch(inbound, shutdown.clone()));
        tokio::spawn(service.clone().follow_views(shutdown.clone()));
        tokio::spawn(service.clone().tick(shutdown));
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
        self.machine.lock().unwrap().mailmap_users()
    }

    // ----- Driving the machine -----

    /// Runs `f` on the machine with the current time and this node's index, then carries out
    /// what the machine asked for.
    fn feed(&self, f: impl FnOnce(&mut Machine, &Ctx)) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let wall_ms = chrono::Utc::now().timestamp_millis() + self.faults.clock_skew_ms();
        let pending_ops = self.store.pending_ops();
        let transport = self.transport.clone();
        let connected = move |peer: u32| transport.as_ref().is_some_and(|t| t.is_connected(peer));
        // The index first, then the machine (nothing takes them the other way round).
        let outputs = self.store.with_index(|index| {
            let ctx = Ctx {
                now_ms,
                wall_ms,
                index,
                pending_ops,
                connected: &connected,
            };
            let mut machine = self.machine.lock().unwrap();
            f(&mut machine, &ctx);
            machine.poll()
        });
        for output in outputs {
            self.carry_out(output);
        }
    }

    fn carry_out(&self, output: Output) {
        match output {
            Output::Send { to, message } => {
                if let Some(t) = &self.transport {
                    t.send(to, PeerMessage::Service(message));
                }
            }
            Output::Store { token, change } => {
                let Some(service) = self.me.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    let reply = service.store.change(change).await;
                    service.feed(|m, ctx| m.stored(ctx, token, reply));
                });
            }
            Output::ReadBody { token, meta } => {
                let Some(service) = self.me.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    let bytes = service.store.read(&meta).await.map_err(|e| e.to_string());
                    service.feed(|m, ctx| m.body(ctx, token, bytes));
                });
            }
            Output::Done { op, result } => {
                if let Some(tx) = self.clients.lock().unwrap().remove(&op) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// One client operation, answered when the machine says it is done.
    async fn ask(&self, op: ClientOp) -> Result<Answer, MailError> {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.clients.lock().unwrap().insert(id, tx);
        self.feed(|m, ctx| m.client(ctx, id, op));
        rx.await.unwrap_or_else(|_| {
            Err(MailError::Store(StoreError::Failed(
                "the mail service stopped".into(),
            )))
        })
    }

    async fn dispatch(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<(u32, MailMessage)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let next = tokio::select! {
                m = inbound.recv() => m,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some((from, message)) = next else { return };
            self.feed(|m, ctx| m.on_message(ctx, from, message));
        }
    }

    /// Installs every view change in the machine (its first view came with it).
    async fn follow_views(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut view = self.view.clone();
        loop {
            // The machine started in the first view; it still installs it (and reports its
            // users for it) here.
            let info = view.borrow_and_update().clone();
            self.feed(|m, ctx| m.on_view(ctx, info.view, info.derived));
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn tick(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.feed(|m, ctx| m.tick(ctx));
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
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
        let internal_date = internal_date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        let mut uids = Vec::with_capacity(users.len());
        for user in users {
            let op = ClientOp::Deliver {
                user,
                body: body.clone(),
                flags: flags.clone(),
                internal_date,
            };
            match self.ask(op).await? {
                Answer::Delivered(uid) => uids.push(uid),
                other => return Err(unexpected(other)),
            }
        }
        Ok(uids)
    }

    /// The whole mailbox of `user`, merged from every node that holds a fragment. Holders that do
    /// not answer are left out (their messages show again when they do).
    pub async fn snapshot(&self, user: &str) -> MailboxSnapshot {
        let op = ClientOp::Snapshot {
            user: user.to_string(),
        };
        match self.ask(op).await {
            Ok(Answer::Snapshot(s)) => s,
            _ => self.store.snapshot(user),
        }
    }

    /// A message's bytes, from this node if it holds them, else from any holder.
    pub async fn read(&self, user: &str, meta: &MessageMeta) -> Result<Vec<u8>, StoreError> {
        let op = ClientOp::Read {
            user: user.to_string(),
            meta: meta.clone(),
        };
        match self.ask(op).await? {
            Answer::Body(bytes) => Ok(bytes),
            other => Err(unexpected(other)),
        }
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
        let op = ClientOp::SetFlags {
            user: user.to_string(),
            uids,
            mode,
            flags,
        };
        match self.ask(op).await? {
            Answer::Flags(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    /// Expunges on every holder (each owes it to the other replicas); returns the UIDs removed
    /// anywhere.
    pub async fn expunge(&self, user: &str, uids: Vec<u32>) -> Result<Vec<u32>, StoreError> {
        let op = ClientOp::Expunge {
            user: user.to_string(),
            uids,
        };
        match self.ask(op).await? {
            Answer::Removed(removed) => Ok(removed),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a user or changes its password: durable here, then pushed to every other node
    /// (retried until each acknowledges).
    pub async fn set_profile(&self, user: &str, password: &str) -> Result<Vec<u32>, StoreError> {
        let op = ClientOp::SetProfile {
            user: user.to_string(),
            password: password.to_string(),
        };
        match self.ask(op).await? {
            Answer::Profile(targets) => Ok(targets),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(answer: Answer) -> StoreError {
    StoreError::Failed(format!("the mail service answered {answer:?}"))
}
