//! The single writer: sequences changes, assigns UIDs, appends a batch to the log, fsyncs it
//! once, then applies it to the index and answers every caller in the batch.
//!
//! Because one thread assigns UIDs and applies batches in log order, UIDs become visible in
//! ascending order and a reader never sees a change that is not yet durable. After a write or
//! fsync failure the writer stops accepting changes (the state of the file is unknown; retrying
//! an fsync can silently drop data), and every later change gets an error.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::record::{self, Record};
use super::segment::{self, Head, SEGMENT_BYTES_TARGET};
use super::{apply, Flags, Shared};
use crate::config::DiskConfig;

/// Changes taken into one batch at most (one fsync covers them all).
const BATCH_OPS_MAX: usize = 512;
/// Bytes written in one batch at most, so a burst of large messages does not build one huge buffer.
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How a flags change combines with the flags a message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    Replace,
    Add,
    Remove,
}

pub enum Op {
    Deliver {
        users: Vec<String>,
        body: Arc<[u8]>,
        flags: Flags,
        internal_date: i64,
        reply: oneshot::Sender<Reply>,
    },
    Flags {
        user: String,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
        reply: oneshot::Sender<Reply>,
    },
    Expunge {
        user: String,
        uids: Vec<u32>,
        reply: oneshot::Sender<Reply>,
    },
}

pub enum Reply {
    Uids(Vec<u32>),
    Flags(Vec<(u32, Flags)>),
    Failed(String),
}

pub fn spawn(
    shared: Arc<Shared>,
    head: Head,
    disk: DiskConfig,
    ops: mpsc::Receiver<Op>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("mail-log-writer".into())
        .spawn(move || {
            Writer {
                shared,
                head,
                disk,
                failed: None,
            }
            .run(ops)
        })
}

struct Writer {
    shared: Arc<Shared>,
    head: Head,
    disk: DiskConfig,
    failed: Option<String>,
}

/// What one op of the batch wrote, to be applied once the batch is durable.
struct Pending {
    reply: oneshot::Sender<Reply>,
    answer: Reply,
    /// (frame offset within the segment, record) for each record the op wrote.
    records: Vec<(u64, Record)>,
}

impl Writer {
    fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        // Ends when every Store handle (and so every sender) is dropped.
        while let Some(first) = ops.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH_OPS_MAX {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
    }

    fn process(&mut self, batch: Vec<Op>) {
        if let Some(why) = &self.failed {
            for op in batch {
                let _ = reply_of(op).send(Reply::Failed(why.clone()));
            }
            return;
        }
        if self.head.len >= SEGMENT_BYTES_TARGET {
            if let Err(e) = self.roll() {
                self.fail(format!("cannot start a new log segment: {e}"));
                return self.process(batch);
            }
        }
        let mut buf = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut carry: Vec<Op> = Vec::new();
        {
            // Sequence the batch against the index as it will be once earlier ops are applied:
            // UIDs handed out in this batch, and flags changed in it, are tracked here.
            let index = self.shared.index.lock().unwrap();
            let mut next_uid: HashMap<String, u32> = HashMap::new();
            let mut flags_now: HashMap<(String, u32), Flags> = HashMap::new();
            let mut gone: HashSet<(String, u32)> = HashSet::new();
            for op in batch {
                if buf.len() >= BATCH_BYTES_MAX {
                    carry.push(op);
                    continue;
                }
                let base = self.head.len;
                match op {
                    Op::Deliver {
                        users,
                        body,
                        flags,
                        internal_date,
                        reply,
                    } => {
                        let mut uids = Vec::with_capacity(users.len());
                        let mut records = Vec::with_capacity(users.len());
                        for user in users {
                            let uid = match next_uid.get(&user) {
                                Some(&n) => n,
                                None => index
                                    .mailboxes
                                    .get(&user)
                                    .map(|m| m.uid_next.max(1))
                                    .unwrap_or(1),
                            };
                            let r = Record::Deliver {
                                user: user.clone(),
                                uid,
                                internal_date,
                                flags,
                                body: body.clone(),
                            };
                            let at = base + buf.len() as u64;
                            record::encode(&r, &mut buf);
                            records.push((at, r));
                            uids.push(uid);
                            next_uid.insert(user, uid + 1);
                        }
                        pending.push(Pending {
                            reply,
                            answer: Reply::Uids(uids),
                            records,
                        });
                    }
                    Op::Flags {
                        user,
                        uids,
                        mode,
                        flags,
                        reply,
                    } => {
                        let mut changed = Vec::new();
                        let mut records = Vec::new();
                        for uid in uids {
                            let key = (user.clone(), uid);
                            if gone.contains(&key) {
                                continue;
                            }
                            let current = match flags_now.get(&key) {
                                Some(f) => *f,
                                None => match index
                                    .mailboxes
                                    .get(&user)
                                    .and_then(|m| m.messages.get(&uid))
                                {
                                    Some(m) => m.flags,
                                    None => continue,
                                },
                            };
                            let new = match mode {
                                FlagMode::Replace => flags,
                                FlagMode::Add => current.union(flags),
                                FlagMode::Remove => current.difference(flags),
                            };
                            changed.push((uid, new));
                            if new != current {
                                let r = Record::Flags {
                                    user: user.clone(),
                                    uid,
                                    flags: new,
                                };
                                let at = base + buf.len() as u64;
                                record::encode(&r, &mut buf);
                                records.push((at, r));
                                flags_now.insert(key, new);
                            }
                        }
                        pending.push(Pending {
                            reply,
                            answer: Reply::Flags(changed),
                            records,
                        });
                    }
                    Op::Expunge { user, uids, reply } => {
                        let mut removed = Vec::new();
                        if let Some(mb) = index.mailboxes.get(&user) {
                            for uid in uids {
                                let key = (user.clone(), uid);
                                if mb.messages.contains_key(&uid) && !gone.contains(&key) {
                                    gone.insert(key);
                                    removed.push(uid);
                                }
                            }
                        }
                        let mut records = Vec::new();
                        if !removed.is_empty() {
                            let r = Record::Expunge {
                                user,
                                uids: removed.clone(),
                            };
                            let at = base + buf.len() as u64;
                            record::encode(&r, &mut buf);
                            records.push((at, r));
                        }
                        pending.push(Pending {
                            reply,
                            answer: Reply::Uids(removed),
                            records,
                        });
                    }
                }
            }
        }
        if !buf.is_empty() {
            let records = pending.iter().map(|p| p.records.len()).sum();
            let result = self
                .head
                .file
                .write_all_at(&buf, self.head.len)
                .and_then(|()| self.sync(records));
            if let Err(e) = result {
                self.shared.metrics.store_errors_total.inc();
                // Cut off whatever part of the batch reached the file, so a restart does not
                // resurrect changes whose callers were told they failed.
                let _ = self.head.file.set_len(self.head.len);
                self.fail(format!("write or fsync of the mail log failed: {e}"));
                for p in pending {
                    let _ = p
                        .reply
                        .send(Reply::Failed(self.failed.clone().unwrap_or_default()));
                }
                return self.process(carry);
            }
            self.head.len += buf.len() as u64;
        }
        {
            let mut index = self.shared.index.lock().unwrap();
            for p in &pending {
                for (at, r) in &p.records {
                    if let Record::Deliver { body, .. } = r {
                        self.shared.metrics.messages_stored_total.inc();
                        self.shared
                            .metrics
                            .message_bytes_stored_total
                            .inc_by(body.len() as u64);
                    }
                    if let Record::Expunge { uids, .. } = r {
                        self.shared
                            .metrics
                            .messages_expunged_total
                            .inc_by(uids.len() as u64);
                    }
                    apply(&mut index, self.head.id, *at, r);
                }
            }
        }
        for p in pending {
            let _ = p.reply.send(p.answer);
        }
        if !carry.is_empty() {
            self.process(carry);
        }
    }

    /// Makes the batch just written durable: a real fsync, or the modelled device's time for
    /// `records` syncs. An injected disk slowdown stretches either by its factor.
    fn sync(&self, records: usize) -> std::io::Result<()> {
        let slowdown = self.shared.disk_slowdown();
        match self.disk {
            DiskConfig::Real => {
                self.shared.metrics.fsyncs_total.inc();
                let start = std::time::Instant::now();
                self.head.file.sync_data()?;
                if slowdown > 1.0 {
                    std::thread::sleep(start.elapsed().mul_f64(slowdown - 1.0));
                }
                Ok(())
            }
            DiskConfig::Modelled {
                syncs_per_s,
                latency_ms,
            } => {
                let seconds = records as f64 / syncs_per_s + latency_ms / 1000.0;
                self.shared
                    .metrics
                    .modelled_syncs_total
                    .inc_by(records as u64);
                std::thread::sleep(std::time::Duration::from_secs_f64(seconds * slowdown));
                Ok(())
            }
        }
    }

    fn roll(&mut self) -> std::io::Result<()> {
        let next = segment::create_segment(&self.shared.dir, self.head.id + 1)?;
        self.shared
            .segments
            .write()
            .unwrap()
            .insert(next.id, next.file.clone());
        self.head = next;
        Ok(())
    }

    fn fail(&mut self, why: String) {
        tracing::error!("{why}; the node will refuse further changes");
        self.failed = Some(why);
    }
}

fn reply_of(op: Op) -> oneshot::Sender<Reply> {
    match op {
        Op::Deliver { reply, .. } | Op::Flags { reply, .. } | Op::Expunge { reply, .. } => reply,
    }
}
