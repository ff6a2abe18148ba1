//! Mailbox storage: a node-wide, append-only mail log with group commit, and the in-memory index
//! of every mailbox rebuilt from it on start.
//!
//! Every change (a delivered message, new flags, an expunge) is a checksummed record appended to
//! the current log segment. One writer thread sequences changes, assigns UIDs, writes a batch,
//! `fsync`s it once for the whole batch, and only then applies the batch to the index and answers
//! the callers: so a caller that was told "done" (and an SMTP client that got 250) can rely on the
//! change surviving `kill -9`, and concurrent sessions only ever see durable state, in log order.
//! On start the log is replayed; a torn record at the tail is detected by its checksum and cut off.
//!
//! This module never talks to clients; the protocol front ends call it.

pub mod record;
mod segment;
pub mod state;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::mail::config::{DiskConfig, StoreConfig};
use crate::mail::metrics::Metrics;

use state::apply;
pub use state::{Change, Reply, SentState};
pub use writer::FlagMode;

/// Pending changes the writer will queue before callers wait (backpressure instead of memory).
pub const QUEUE_OPS_MAX: usize = 4096;

/// Keywords one message may have at most.
pub const KEYWORDS_MAX: usize = 64;
/// Longest keyword, in bytes.
pub const KEYWORD_BYTES_MAX: usize = 100;

/// A message's IMAP flags: the system flags as a bit set, and keywords (`$Forwarded`, `$label1`,
/// ...): atoms, compared ignoring ASCII case, kept in the case first given, sorted, at most
/// [`KEYWORDS_MAX`] of [`KEYWORD_BYTES_MAX`] bytes each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Flags {
    bits: u8,
    keywords: Vec<String>,
}

impl Flags {
    pub const SEEN: Flags = Flags::system(1);
    pub const ANSWERED: Flags = Flags::system(2);
    pub const FLAGGED: Flags = Flags::system(4);
    pub const DELETED: Flags = Flags::system(8);
    pub const DRAFT: Flags = Flags::system(16);
    const ALL: [(u8, &'static str); 5] = [
        (1, "\\Seen"),
        (2, "\\Answered"),
        (4, "\\Flagged"),
        (8, "\\Deleted"),
        (16, "\\Draft"),
    ];

    /// A total order on flag sets, the same on every node: which of two settings with one
    /// stamp wins.
    pub fn precedes(&self, other: &Flags) -> bool {
        (self.bits, &self.keywords) < (other.bits, &other.keywords)
    }

    const fn system(bits: u8) -> Flags {
        Flags {
            bits,
            keywords: Vec::new(),
        }
    }

    pub fn empty() -> Flags {
        Flags::default()
    }
    /// The system flags' bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    pub fn from_bits(bits: u8) -> Flags {
        Flags::system(bits & 0x1f)
    }
    /// These system flags and keywords (checked, deduplicated ignoring case, sorted).
    pub fn with_keywords<S: AsRef<str>>(bits: u8, keywords: &[S]) -> Result<Flags, String> {
        if keywords.len() > KEYWORDS_MAX {
            return Err(format!("more than {KEYWORDS_MAX} keywords"));
        }
        let mut flags = Flags::from_bits(bits);
        for k in keywords {
            flags = flags.union(&Flags::keyword(k.as_ref())?);
        }
        Ok(flags)
    }
    /// One keyword as a flag set: an IMAP atom of at most [`KEYWORD_BYTES_MAX`] bytes.
    pub fn keyword(name: &str) -> Result<Flags, String> {
        let atom = !name.is_empty()
            && name
                .bytes()
                .all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b));
        if !atom {
            return Err(format!("{name:?} is not a keyword (an IMAP atom)"));
        }
        if name.len() > KEYWORD_BYTES_MAX {
            return Err(format!("a keyword longer than {KEYWORD_BYTES_MAX} bytes"));
        }
        Ok(Flags {
            bits: 0,
            keywords: vec![name.to_string()],
        })
    }
    /// Whether these flags are as [`Flags::with_keywords`] makes them (what a peer sends is
    /// checked with this: the log's encoding relies on it).
    pub fn check(&self) -> Result<(), String> {
        let normal = Flags::with_keywords(self.bits, &self.keywords)?;
        if normal != *self {
            return Err(
                "flags not in normal form (unknown bits, or keywords unsorted or repeated)".into(),
            );
        }
        Ok(())
    }
    /// The keywords, sorted ignoring case.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }
    pub fn is_empty(&self) -> bool {
        self.bits == 0 && self.keywords.is_empty()
    }
    pub fn contains(&self, other: &Flags) -> bool {
        self.bits & other.bits == other.bits && other.keywords.iter().all(|k| self.has_keyword(k))
    }
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
    }
    /// Both sets together (keywords past [`KEYWORDS_MAX`] are not added).
    pub fn union(&self, other: &Flags) -> Flags {
        let mut keywords = self.keywords.clone();
        for k in &other.keywords {
            if !self.has_keyword(k) && keywords.len() < KEYWORDS_MAX {
                keywords.push(k.clone());
            }
        }
        keywords.sort_by_key(|k| k.to_ascii_lowercase());
        Flags {
            bits: self.bits | other.bits,
            keywords,
        }
    }
    pub fn difference(&self, other: &Flags) -> Flags {
        Flags {
            bits: self.bits & !other.bits,
            keywords: self
                .keywords
                .iter()
                .filter(|k| !other.has_keyword(k))
                .cloned()
                .collect(),
        }
    }
    /// Parses one IMAP system flag name (case-insensitive); `None` for keywords and unknown flags.
    pub fn from_name(name: &str) -> Option<Flags> {
        Flags::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(f, _)| Flags::system(*f))
    }
    /// The IMAP names of the flags set: system flags in a fixed order, then keywords.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        Flags::ALL
            .into_iter()
            .filter(move |(f, _)| self.bits & f != 0)
            .map(|(_, n)| n)
            .chain(self.keywords.iter().map(String::as_str))
    }
}

/// Low bits of a UID that name the node that assigned it. UIDs are `seq << 6 | node`: nodes
/// never hand out the same UID for one user, even on two sides of a partition, and a node
/// assigns `seq` above every UID it has seen for the user, so new mail gets higher UIDs.
pub const UID_NODE_BITS: u32 = 6;
/// Largest per-user sequence number (the UID must fit in 32 bits).
pub const UID_SEQ_MAX: u32 = (1 << (32 - UID_NODE_BITS)) - 1;

/// An update stamp: when (unix ms on the updating node's clock) and which node, in one number,
/// so that "newest wins" is a total order: loosely synchronized clocks, node id as tie-break.
pub fn stamp(unix_ms: i64, node: u32) -> i64 {
    (unix_ms << UID_NODE_BITS) | i64::from(node)
}

/// The UID for sequence number `seq` assigned by `node`.
pub fn uid_of(seq: u32, node: u32) -> u32 {
    assert!(seq <= UID_SEQ_MAX && node < (1 << UID_NODE_BITS));
    (seq << UID_NODE_BITS) | node
}

/// The sequence number part of a UID.
pub fn seq_of(uid: u32) -> u32 {
    uid >> UID_NODE_BITS
}

/// The UID under which a user profile's pushes are logged and acknowledged: message UIDs are
/// never 0 (their sequence number starts at 1).
pub const PROFILE_UID: u32 = 0;

/// Longest password a profile may hold.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// What the index knows about one stored message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageMeta {
    pub uid: u32,
    /// Size in bytes of the stored message (what POP3 LIST and IMAP RFC822.SIZE report).
    pub size: u64,
    /// Unix seconds when the message was accepted.
    pub internal_date: i64,
    pub flags: Flags,
    /// When the flags were last set, as an update stamp ([`stamp`]): the newest wins.
    pub flags_ts: i64,
    /// Every node meant to hold a copy.
    pub replicas: Vec<u32>,
    /// Where the body is in this node's log; `None` for a message another node holds.
    #[serde(skip)]
    location: Option<Location>,
}

impl MessageMeta {
    /// Whether this node's store holds the body.
    pub fn is_local(&self) -> bool {
        self.location.is_some()
    }
}

/// A message the store should take in.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub user: String,
    pub body: Arc<[u8]>,
    pub flags: Flags,
    /// Unix seconds; `None` means now.
    pub internal_date: Option<i64>,
    /// `Some` for a replica of a message another node assigned a UID to; `None` to assign one.
    pub uid: Option<u32>,
    /// Assign a sequence number at least this (the highest the cluster is known to have used).
    pub seq_hint: u32,
    /// When the flags were set, as an update stamp ([`stamp`]).
    pub ts_ms: i64,
    /// Replicas this node must push the message to; logged with it, retried until acknowledged.
    pub targets: Vec<u32>,
    /// Every node meant to hold a copy (flag changes and expunges are owed to them).
    pub replicas: Vec<u32>,
}

/// A message this node still has to push to some replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPush {
    pub user: String,
    pub uid: u32,
    pub targets: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: u32,
    offset: u64,
}

/// A consistent copy of one mailbox's index, in UID order.
#[derive(Debug, Clone, Default)]
pub struct MailboxSnapshot {
    pub uid_validity: u32,
    /// The UID the next message will get at the earliest.
    pub uid_next: u32,
    pub messages: Vec<MessageMeta>,
}

/// Figures for `/status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StoreStats {
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    pub segments: u64,
    /// Changes queued for the writer and not yet durable.
    pub pending_ops: u64,
    /// Expunge tombstones kept (until every replica has the expunge).
    pub tombstones: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mail log I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the mail log writer has stopped after an earlier failure: {0}")]
    Failed(String),
    #[error("{0} is in use by another running node (its LOCK file is held); stop that node or use another data directory")]
    Locked(String),
    #[error("message not found (expunged)")]
    NotFound,
    /// A change that cannot be logged as asked (from a peer, or a caller's bug): refused before
    /// it reaches the writer, which carries on.
    #[error("invalid change refused: {0}")]
    Invalid(String),
}

/// The text of the temporary failure a change gets when the disk holding the log is full (the
/// front ends answer it with SMTP `452 4.3.1` and IMAP `NO`).
pub const DISK_FULL: &str = "the node's disk is full";

/// Longest user name a change may carry (the log allows 64 KiB; nothing real comes near).
pub const USER_BYTES_MAX: usize = 1024;
/// Most UIDs one flag change or expunge may name.
pub const UIDS_PER_CHANGE_MAX: usize = 1_000_000;
/// Largest message body the log takes (its record must fit [`record::PAYLOAD_BYTES_MAX`] with
/// room for the fields).
pub const BODY_BYTES_MAX: usize = record::PAYLOAD_BYTES_MAX - 64 * 1024;

fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.len() > USER_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "a user name of {} bytes (1 to {USER_BYTES_MAX})",
            user.len()
        )));
    }
    Ok(())
}

fn check_uids(uids: &[u32]) -> Result<(), StoreError> {
    if uids.len() > UIDS_PER_CHANGE_MAX {
        return Err(StoreError::Invalid(format!(
            "{} UIDs in one change (at most {UIDS_PER_CHANGE_MAX})",
            uids.len()
        )));
    }
    Ok(())
}

fn check_nodes(what: &str, nodes: &[u32]) -> Result<(), StoreError> {
    if nodes.len() > record::TARGETS_MAX {
        return Err(StoreError::Invalid(format!(
            "{} {what} (at most {})",
            nodes.len(),
            record::TARGETS_MAX
        )));
    }
    Ok(())
}

impl NewMessage {
    /// Whether the writer can log this message: what a peer sends is checked here, at the
    /// boundary, so nothing it says can trip the writer.
    pub fn check(&self) -> Result<(), StoreError> {
        check_user(&self.user)?;
        self.flags.check().map_err(StoreError::Invalid)?;
        check_nodes("targets", &self.targets)?;
        check_nodes("replicas", &self.replicas)?;
        if self.body.len() > BODY_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "a message of {} bytes (at most {BODY_BYTES_MAX})",
                self.body.len()
            )));
        }
        if self.seq_hint >= UID_SEQ_MAX {
            return Err(StoreError::Invalid(format!(
                "a UID sequence hint of {} (below {UID_SEQ_MAX})",
                self.seq_hint
            )));
        }
        if self.uid == Some(0) {
            return Err(StoreError::Invalid("UID 0".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    /// Highest UID sequence number seen for this user, on any node.
    max_seq: u32,
    messages: BTreeMap<u32, MessageMeta>,
    /// Expunged UIDs: a replica push that arrives after the expunge must not bring them back.
    expunged: HashSet<u32>,
}

/// The in-memory index of every mailbox on a node: what replaying its log gives.
#[derive(Default)]
pub struct Index {
    mailboxes: HashMap<String, Mailbox>,
    messages: u64,
    bytes: u64,
    /// (user, uid) → replicas still to push to.
    pending: BTreeMap<(String, u32), Vec<u32>>,
    /// (user, uid) → holders still to tell about the message's new state (flags or expunged).
    owed: BTreeMap<(String, u32), BTreeSet<u32>>,
    /// User profiles: user → (password, ts_ms). The newest setting wins.
    profiles: HashMap<String, (String, i64)>,
    /// Segment → bytes of the message bodies stored there that are still live (what
    /// compaction would have to copy).
    segment_live: HashMap<u32, u64>,
}

struct Shared {
    dir: PathBuf,
    /// This node's id: the low bits of every UID it assigns.
    node_id: u32,
    options: StoreConfig,
    uid_validity: u32,
    index: Mutex<Index>,
    /// Open segment files for reading message bodies.
    segments: RwLock<HashMap<u32, Arc<File>>>,
    metrics: Arc<Metrics>,
    pending_ops: std::sync::atomic::AtomicU64,
    /// Injected disk slowdown factor (f64 bits; 1.0 = none).
    disk_slowdown_bits: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn disk_slowdown(&self) -> f64 {
        f64::from_bits(
            self.disk_slowdown_bits
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// Owned by every handle together: when the last one goes, the writer is stopped and joined, and
/// only then is the directory lock released, so a reopen never races the old writer.
struct Lifetime {
    ops: Option<mpsc::Sender<writer::Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The flock that keeps a second node out of this directory. Dropped after `drop` below.
    _lock: File,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has answered what it holds.
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Handle to a node's mail store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    lifetime: Arc<Lifetime>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, replays the log, and starts the writer thread.
    /// Blocking: call at start-up, before serving.
    pub fn open(
        dir: &Path,
        node_id: u32,
        disk: DiskConfig,
        options: StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        assert!(
            node_id > 0 && node_id < (1 << UID_NODE_BITS),
            "node id out of UID range"
        );
        std::fs::create_dir_all(dir)?;
        let lock = segment::lock_dir(dir)?;
        let uid_validity = segment::load_or_create_uid_validity(dir)?;
        let mut index = Index::default();
        let mut files = HashMap::new();
        let recovered = segment::recover(dir, |seg, offset, record| {
            apply(&mut index, seg, offset, record);
        })?;
        for (id, file) in &recovered.readers {
            files.insert(*id, file.clone());
        }
        if recovered.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovered.truncated_bytes,
                "discarded a torn write at the tail of the mail log"
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            node_id,
            options,
            uid_validity,
            index: Mutex::new(index),
            segments: RwLock::new(files),
            metrics,
            pending_ops: Default::default(),
            disk_slowdown_bits: std::sync::atomic::AtomicU64::new(1.0f64.to_bits()),
        });
        let (tx, rx) = mpsc::channel(QUEUE_OPS_MAX);
        let writer = writer::spawn(shared.clone(), recovered.head, disk, rx)?;
        let lifetime = Arc::new(Lifetime {
            ops: Some(tx),
            writer: Some(writer),
            _lock: lock,
        });
        Ok(Store { shared, lifetime })
    }

    pub fn uid_validity(&self) -> u32 {
        self.shared.uid_validity
    }

    /// Stores one copy of `body` in each mailbox of `users` (UIDs assigned here, no replicas);
    /// returns once all are durable, with the UID each got. `internal_date` (unix seconds)
    /// defaults to now.
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
                self.store(NewMessage {
                    user,
                    body: body.clone(),
                    flags: flags.clone(),
                    internal_date,
                    uid: None,
                    seq_hint: 0,
                    ts_ms: stamp(chrono::Utc::now().timestamp_millis(), self.shared.node_id),
                    targets: Vec::new(),
                    replicas: Vec::new(),
                })
                .await?,
            );
        }
        Ok(uids)
    }

    /// Takes in one message (a new one, or a replica of one with its UID); returns its UID once
    /// it is durable. A replica already present, or already expunged, is not stored again.
    pub async fn store(&self, message: NewMessage) -> Result<u32, StoreError> {
        message.check()?;
        let internal_date = message
            .internal_date
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        match self
            .submit(Change::Deliver {
                message: NewMessage {
                    internal_date: Some(internal_date),
                    ..message
                },
            })
            .await?
        {
            Reply::Uids(uids) => Ok(uids[0]),
            Reply::Failed(e) => Err(StoreError::Failed(e)),
            Reply::Flags(_) => unreachable!("deliver op answered with flags"),
        }
    }

    /// Records that replica `node` has `uid`, so it is not pushed there again.
    pub async fn acked(&self, user: &str, uid: u32, node: u32) -> Result<(), StoreError> {
        check_user(user)?;
        self.submit_done(Change::Acked {
            user: user.to_string(),
            uid,
            node,
            profile_ts: None,
        })
        .await
    }

    /// Up to `limit` messages still to be pushed to replicas, oldest first.
    pub fn pending_pushes(&self, limit: usize) -> Vec<PendingPush> {
        self.shared.index.lock().unwrap().pending_pushes(limit)
    }

    /// Replica pushes and owed state changes not yet acknowledged (one per message and target).
    pub fn push_backlog(&self) -> u64 {
        let index = self.shared.index.lock().unwrap();
        index.pending.values().map(|t| t.len() as u64).sum::<u64>()
            + index.owed.values().map(|t| t.len() as u64).sum::<u64>()
    }

    /// Up to `limit` state changes (flags or expunges) still owed to other holders.
    pub fn owed_changes(&self, limit: usize) -> Vec<PendingPush> {
        self.shared.index.lock().unwrap().owed_changes(limit)
    }

    /// Whether `uid` of `user` is known here to be expunged.
    pub fn is_expunged(&self, user: &str, uid: u32) -> bool {
        self.shared.index.lock().unwrap().is_expunged(user, uid)
    }

    /// Forgets the tombstones of `uids` (those this node has): every replica has the expunges,
    /// so no copy can come back. Returns once durable.
    pub async fn retire(&self, user: &str, uids: Vec<u32>) -> Result<(), StoreError> {
        check_user(user)?;
        check_uids(&uids)?;
        self.submit_done(Change::Retire {
            user: user.to_string(),
            uids,
        })
        .await
    }

    /// Whether this node still owes anyone the state of `uid`.
    pub fn owes(&self, user: &str, uid: u32) -> bool {
        self.shared.index.lock().unwrap().owes(user, uid)
    }

    /// Records that `node` has the state of `uid` this node owed it, as `sent` (not if the
    /// message changed since: then the new state stays owed).
    pub async fn settled(
        &self,
        user: &str,
        uid: u32,
        node: u32,
        sent: SentState,
    ) -> Result<(), StoreError> {
        check_user(user)?;
        self.submit_done(Change::Settled {
            user: user.to_string(),
            uid,
            node,
            sent,
        })
        .await
    }

    /// Every user with a mailbox fragment on this node.
    pub fn users(&self) -> Vec<String> {
        self.shared.index.lock().unwrap().users()
    }

    /// Stores a user profile (creating the user, or changing the password) as of `ts_ms`, owed
    /// to `targets` until they acknowledge it. Returns once durable.
    pub async fn set_profile(
        &self,
        user: &str,
        password: &str,
        ts_ms: i64,
        targets: Vec<u32>,
    ) -> Result<(), StoreError> {
        check_user(user)?;
        check_nodes("targets", &targets)?;
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "a password of {} bytes (at most {PASSWORD_BYTES_MAX})",
                password.len()
            )));
        }
        self.submit_done(Change::Profile {
            user: user.to_string(),
            password: password.to_string(),
            ts_ms,
            targets,
        })
        .await
    }

    /// A user's profile: (password, ts_ms), if one was ever set.
    pub fn profile(&self, user: &str) -> Option<(String, i64)> {
        self.shared
            .index
            .lock()
            .unwrap()
            .profiles
            .get(user)
            .cloned()
    }

    /// Changes queued for the writer and not yet durable.
    pub fn pending_ops(&self) -> u64 {
        self.shared
            .pending_ops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes one change durable (checked first, as anything a peer sends); its answer.
    pub async fn change(&self, change: Change) -> Reply {
        if let Err(e) = change.check() {
            return Reply::Failed(e.to_string());
        }
        match self.submit(change).await {
            Ok(reply) => reply,
            Err(e) => Reply::Failed(e.to_string()),
        }
    }

    /// Runs `f` on the index (locked meanwhile: keep it short).
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.shared.index.lock().unwrap())
    }

    pub fn profiles(&self) -> usize {
        self.shared.index.lock().unwrap().profiles.len()
    }

    /// UIDs of `user` this node knows were expunged.
    pub fn expunged(&self, user: &str) -> Vec<u32> {
        self.shared.index.lock().unwrap().expunged(user)
    }

    /// The highest UID sequence number this node has seen for `user`.
    pub fn max_seq(&self, user: &str) -> u32 {
        self.shared.index.lock().unwrap().max_seq(user)
    }

    /// This node's copy of one message's metadata, if it holds it.
    pub fn message(&self, user: &str, uid: u32) -> Option<MessageMeta> {
        self.shared.index.lock().unwrap().message(user, uid)
    }

    /// Changes flags of `uids` (those still present) and returns their new flags.
    pub async fn set_flags(
        &self,
        user: &str,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
    ) -> Result<Vec<(u32, Flags)>, StoreError> {
        let ts_ms = stamp(chrono::Utc::now().timestamp_millis(), self.shared.node_id);
        self.set_flags_at(user, uids, mode, flags, ts_ms, false)
            .await
    }

    /// Like [`Store::set_flags`], as of `ts_ms`: a `Replace` older than the flags a message has
    /// is ignored (last writer wins across replicas). With `owe`, the resulting flags are owed
    /// to the message's other replicas (logged with the change, retried until settled).
    pub async fn set_flags_at(
        &self,
        user: &str,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
        ts_ms: i64,
        owe: bool,
    ) -> Result<Vec<(u32, Flags)>, StoreError> {
        check_user(user)?;
        check_uids(&uids)?;
        flags.check().map_err(StoreError::Invalid)?;
        match self
            .submit(Change::Flags {
                user: user.to_string(),
                uids,
                mode,
                flags,
                ts_ms,
                owe,
            })
            .await?
        {
            Reply::Flags(v) => Ok(v),
            Reply::Failed(e) => Err(StoreError::Failed(e)),
            Reply::Uids(_) => unreachable!("flags op answered with uids"),
        }
    }

    /// Removes `uids` (those still present); returns the UIDs actually removed.
    pub async fn expunge(&self, user: &str, uids: Vec<u32>) -> Result<Vec<u32>, StoreError> {
        self.expunge_owing(user, uids, false).await
    }

    /// Like [`Store::expunge`]; with `owe`, each removal is owed to the message's other replicas
    /// (logged, retried until settled). UIDs not held here are remembered as expunged all the
    /// same, so a late replica cannot bring them back.
    pub async fn expunge_owing(
        &self,
        user: &str,
        uids: Vec<u32>,
        owe: bool,
    ) -> Result<Vec<u32>, StoreError> {
        check_user(user)?;
        check_uids(&uids)?;
        match self
            .submit(Change::Expunge {
                user: user.to_string(),
                uids,
                owe,
            })
            .await?
        {
            Reply::Uids(uids) => Ok(uids),
            Reply::Failed(e) => Err(StoreError::Failed(e)),
            Reply::Flags(_) => unreachable!("expunge op answered with flags"),
        }
    }

    /// Submits an op whose only answer is done or failed.
    async fn submit_done(&self, change: Change) -> Result<(), StoreError> {
        match self.submit(change).await? {
            Reply::Failed(e) => Err(StoreError::Failed(e)),
            _ => Ok(()),
        }
    }

    async fn submit(&self, change: Change) -> Result<Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ops = self
            .lifetime
            .ops
            .as_ref()
            .expect("the channel lives as long as a handle");
        let sent = ops.send(writer::Op { change, reply: tx }).await;
        let result = match sent {
            Ok(()) => rx
                .await
                .map_err(|_| StoreError::Failed("the writer thread exited".into())),
            Err(_) => Err(StoreError::Failed("the writer thread exited".into())),
        };
        self.shared
            .pending_ops
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// A consistent copy of `user`'s mailbox index (empty if the user has no mail yet).
    pub fn snapshot(&self, user: &str) -> MailboxSnapshot {
        self.shared
            .index
            .lock()
            .unwrap()
            .snapshot(user, self.shared.uid_validity)
    }

    /// Reads a stored message's bytes.
    pub async fn read(&self, message: &MessageMeta) -> Result<Vec<u8>, StoreError> {
        let location = message.location.ok_or(StoreError::NotFound)?;
        let file = self
            .shared
            .segments
            .read()
            .unwrap()
            .get(&location.segment)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let len = message.size as usize;
        let offset = location.offset;
        let metrics = self.shared.metrics.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            metrics.messages_retrieved_total.inc();
            Ok(buf)
        })
        .await
        .map_err(|e| StoreError::Failed(format!("reader task: {e}")))?
    }

    pub fn stats(&self) -> StoreStats {
        let index = self.shared.index.lock().unwrap();
        StoreStats {
            mailboxes: index.mailboxes.len() as u64,
            messages: index.messages,
            bytes: index.bytes,
            segments: self.shared.segments.read().unwrap().len() as u64,
            tombstones: index
                .mailboxes
                .values()
                .map(|mb| mb.expunged.len() as u64)
                .sum(),
            pending_ops: self
                .shared
                .pending_ops
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Stretches every sync by `factor` (an injected slow-disk fault; 1.0 clears it).
    pub fn set_disk_slowdown(&self, factor: f64) {
        assert!(factor >= 1.0, "a slowdown factor is at least 1");
        self.shared
            .disk_slowdown_bits
            .store(factor.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

#[cfg(test)]
mod tests;
