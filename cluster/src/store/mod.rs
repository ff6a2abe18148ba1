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
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::config::DiskConfig;
use crate::metrics::Metrics;

pub use writer::FlagMode;

/// Pending changes the writer will queue before callers wait (backpressure instead of memory).
pub const QUEUE_OPS_MAX: usize = 4096;

/// IMAP system flags, as a bit set (the only flags this store keeps; no keywords).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    const ALL: [(Flags, &'static str); 5] = [
        (Flags::SEEN, "\\Seen"),
        (Flags::ANSWERED, "\\Answered"),
        (Flags::FLAGGED, "\\Flagged"),
        (Flags::DELETED, "\\Deleted"),
        (Flags::DRAFT, "\\Draft"),
    ];

    pub fn empty() -> Flags {
        Flags(0)
    }
    pub fn bits(self) -> u8 {
        self.0
    }
    pub fn from_bits(bits: u8) -> Flags {
        Flags(bits & 0x1f)
    }
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub fn difference(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
    /// Parses one IMAP flag name (case-insensitive); `None` for keywords and unknown flags.
    pub fn from_name(name: &str) -> Option<Flags> {
        Flags::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(f, _)| *f)
    }
    /// The IMAP names of the flags set, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Flags::ALL
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

/// What the index knows about one stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    /// Size in bytes of the stored message (what POP3 LIST and IMAP RFC822.SIZE report).
    pub size: u64,
    /// Unix seconds when the message was accepted.
    pub internal_date: i64,
    pub flags: Flags,
    location: Location,
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
}

#[derive(Debug, Default)]
struct Mailbox {
    uid_next: u32,
    messages: BTreeMap<u32, MessageMeta>,
}

#[derive(Default)]
struct Index {
    mailboxes: HashMap<String, Mailbox>,
    messages: u64,
    bytes: u64,
}

struct Shared {
    dir: PathBuf,
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
    pub fn open(dir: &Path, disk: DiskConfig, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
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

    /// Stores one copy of `body` in each mailbox of `users`; returns once all are durable, with
    /// the UID each got. `internal_date` (unix seconds) defaults to now.
    pub async fn deliver(
        &self,
        users: Vec<String>,
        body: Arc<[u8]>,
        flags: Flags,
        internal_date: Option<i64>,
    ) -> Result<Vec<u32>, StoreError> {
        let internal_date = internal_date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        match self
            .submit(|reply| writer::Op::Deliver {
                users,
                body,
                flags,
                internal_date,
                reply,
            })
            .await?
        {
            writer::Reply::Uids(uids) => Ok(uids),
            writer::Reply::Failed(e) => Err(StoreError::Failed(e)),
            writer::Reply::Flags(_) => unreachable!("deliver op answered with flags"),
        }
    }

    /// Changes flags of `uids` (those still present) and returns their new flags.
    pub async fn set_flags(
        &self,
        user: &str,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
    ) -> Result<Vec<(u32, Flags)>, StoreError> {
        match self
            .submit(|reply| writer::Op::Flags {
                user: user.to_string(),
                uids,
                mode,
                flags,
                reply,
            })
            .await?
        {
            writer::Reply::Flags(v) => Ok(v),
            writer::Reply::Failed(e) => Err(StoreError::Failed(e)),
            writer::Reply::Uids(_) => unreachable!("flags op answered with uids"),
        }
    }

    /// Removes `uids` (those still present); returns the UIDs actually removed.
    pub async fn expunge(&self, user: &str, uids: Vec<u32>) -> Result<Vec<u32>, StoreError> {
        match self
            .submit(|reply| writer::Op::Expunge {
                user: user.to_string(),
                uids,
                reply,
            })
            .await?
        {
            writer::Reply::Uids(uids) => Ok(uids),
            writer::Reply::Failed(e) => Err(StoreError::Failed(e)),
            writer::Reply::Flags(_) => unreachable!("expunge op answered with flags"),
        }
    }

    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<writer::Reply>) -> writer::Op,
    ) -> Result<writer::Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ops = self
            .lifetime
            .ops
            .as_ref()
            .expect("the channel lives as long as a handle");
        let sent = ops.send(make(tx)).await;
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
        let index = self.shared.index.lock().unwrap();
        match index.mailboxes.get(user) {
            Some(mb) => MailboxSnapshot {
                uid_validity: self.shared.uid_validity,
                uid_next: mb.uid_next.max(1),
                messages: mb.messages.values().cloned().collect(),
            },
            None => MailboxSnapshot {
                uid_validity: self.shared.uid_validity,
                uid_next: 1,
                messages: Vec::new(),
            },
        }
    }

    /// Reads a stored message's bytes.
    pub async fn read(&self, message: &MessageMeta) -> Result<Vec<u8>, StoreError> {
        let file = self
            .shared
            .segments
            .read()
            .unwrap()
            .get(&message.location.segment)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let len = message.size as usize;
        let offset = message.location.offset;
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

/// Applies one durable record to the index. `offset` is where the record's frame starts.
fn apply(index: &mut Index, segment: u32, offset: u64, record: &record::Record) {
    use record::Record;
    match record {
        Record::Deliver {
            user,
            uid,
            internal_date,
            flags,
            body,
        } => {
            let body_offset =
                offset + (record::FRAME_HEADER_BYTES + record::deliver_body_offset(user)) as u64;
            let mb = index.mailboxes.entry(user.clone()).or_default();
            let meta = MessageMeta {
                uid: *uid,
                size: body.len() as u64,
                internal_date: *internal_date,
                flags: *flags,
                location: Location {
                    segment,
                    offset: body_offset,
                },
            };
            mb.uid_next = mb.uid_next.max(uid + 1);
            if mb.messages.insert(*uid, meta).is_none() {
                index.messages += 1;
                index.bytes += body.len() as u64;
            }
        }
        Record::Flags { user, uid, flags } => {
            if let Some(m) = index
                .mailboxes
                .get_mut(user)
                .and_then(|mb| mb.messages.get_mut(uid))
            {
                m.flags = *flags;
            }
        }
        Record::Expunge { user, uids } => {
            if let Some(mb) = index.mailboxes.get_mut(user) {
                for uid in uids {
                    if let Some(m) = mb.messages.remove(uid) {
                        index.messages -= 1;
                        index.bytes -= m.size;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
