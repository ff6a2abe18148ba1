//! The single writer: sequences changes, assigns UIDs, appends a batch to the log, fsyncs it
//! once, then applies it to the index and answers every caller in the batch.
//!
//! Because one thread assigns UIDs and applies batches in log order, UIDs become visible in
//! ascending order and a reader never sees a change that is not yet durable. After a write or
//! fsync failure the writer stops accepting changes (the state of the file is unknown; retrying
//! an fsync can silently drop data), and every later change gets an error — except for want of
//! space: a batch that would cut into the free space the log must leave, or whose write fails
//! with `ENOSPC` (cut off again, durably), is refused with a temporary failure and the writer
//! carries on, taking changes again once space returns.
//!
//! Between batches the writer compacts: when the log is more than twice what is live in it, the
//! oldest closed segment's live state (messages still present, with their current flags and
//! pending pushes; expunge tombstones; owed changes; profiles; each user's highest UID sequence)
//! is appended to the head and fsynced, and only then is the segment deleted. A crash between the
//! two replays both, which gives the same index; so compaction is crash-safe without a rename.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::record::{self, Record};
use super::segment::{self, Head};
use super::{apply, seq_of, uid_of, Flags, Index, NewMessage, Shared, UID_SEQ_MAX};
use crate::mail::config::DiskConfig;

/// Changes taken into one batch at most (one fsync covers them all).
const BATCH_OPS_MAX: usize = 512;
/// Bytes written in one batch at most, so a burst of large messages does not build one huge buffer.
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How often, at most, the writer looks at whether to compact.
const COMPACTION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a compacted segment stays open for readers that looked its messages up before the
/// copy (its file is already deleted; the space returns when it is closed).
const RETIRED_SEGMENT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// How a flags change combines with the flags a message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FlagMode {
    Replace,
    Add,
    Remove,
}

pub enum Op {
    Deliver {
        message: NewMessage,
        reply: oneshot::Sender<Reply>,
    },
    Flags {
        user: String,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
        ts_ms: i64,
        owe: bool,
        reply: oneshot::Sender<Reply>,
    },
    Expunge {
        user: String,
        uids: Vec<u32>,
        owe: bool,
        reply: oneshot::Sender<Reply>,
    },
    Retire {
        user: String,
        uids: Vec<u32>,
        reply: oneshot::Sender<Reply>,
    },
    Settled {
        user: String,
        uid: u32,
        node: u32,
        reply: oneshot::Sender<Reply>,
    },
    Profile {
        user: String,
        password: String,
        ts_ms: i64,
        targets: Vec<u32>,
        reply: oneshot::Sender<Reply>,
    },
    Acked {
        user: String,
        uid: u32,
        node: u32,
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
                retired: Vec::new(),
                last_compaction_check: std::time::Instant::now(),
                compaction_idle_below: 0,
            }
            .run(ops)
        })
}

struct Writer {
    shared: Arc<Shared>,
    head: Head,
    disk: DiskConfig,
    failed: Option<String>,
    /// Compacted segments still open for readers: (id, when deleted).
    retired: Vec<(u32, std::time::Instant)>,
    last_compaction_check: std::time::Instant,
    /// After a compaction that reclaimed little (what the log holds is mostly live state), or
    /// could not run: no more until the log has grown past this.
    compaction_idle_below: u64,
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
            self.maybe_compact();
        }
    }

    fn process(&mut self, batch: Vec<Op>) {
        if let Some(why) = &self.failed {
            for op in batch {
                let _ = reply_of(op).send(Reply::Failed(why.clone()));
            }
            return;
        }
        if self.head.len >= self.shared.options.segment_bytes {
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
            // what this batch delivers, flags, expunges and acknowledges is tracked here.
            let index = self.shared.index.lock().unwrap();
            let mut overlay = Overlay::default();
            for op in batch {
                if buf.len() >= BATCH_BYTES_MAX {
                    carry.push(op);
                    continue;
                }
                let base = self.head.len + buf.len() as u64;
                let (reply, answer, records) = self.sequence(&index, &mut overlay, op);
                let mut at = base;
                let mut placed = Vec::with_capacity(records.len());
                for r in records {
                    let before = buf.len();
                    record::encode(&r, &mut buf);
                    placed.push((at, r));
                    at += (buf.len() - before) as u64;
                }
                pending.push(Pending {
                    reply,
                    answer,
                    records: placed,
                });
            }
        }
        if !buf.is_empty() {
            // Room first: a batch that would cut into the space the log leaves free is
            // refused, for now. A batch without new messages (deletions, flags, bookkeeping:
            // how space is freed) may use half of that space.
            let delivers = pending
                .iter()
                .flat_map(|p| &p.records)
                .any(|(_, r)| matches!(r, Record::Deliver { .. }));
            let reserve = if delivers {
                self.shared.options.free_bytes_min
            } else {
                self.shared.options.free_bytes_min / 2
            };
            let needed = buf.len() as u64 + reserve;
            if segment::free_bytes(&self.shared.dir).is_some_and(|free| free < needed) {
                self.refuse_full(pending);
                return self.process(carry);
            }
            // The modelled device charges a sync per message copy written; the bookkeeping
            // records (flags, expunges, acknowledgements, owed changes) ride along in the same
            // batch on an NVRAM-like log, and cost a sync each on a log on the disk.
            let every_record = matches!(
                self.disk,
                DiskConfig::Modelled {
                    log: crate::mail::config::LogDevice::Disk,
                    ..
                }
            );
            let records = pending
                .iter()
                .flat_map(|p| &p.records)
                .filter(|(_, r)| every_record || matches!(r, Record::Deliver { .. }))
                .count();
            let written = self.head.file.write_all_at(&buf, self.head.len);
            if written
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
            {
                // Nothing of it may survive a crash: cut it off, durably, and refuse the batch
                // for now. If even that fails, the file's state is unknown: stop.
                match self
                    .head
                    .file
                    .set_len(self.head.len)
                    .and_then(|()| self.head.file.sync_all())
                {
                    Ok(()) => {
                        self.refuse_full(pending);
                        return self.process(carry);
                    }
                    Err(e) => {
                        self.fail(format!("cannot cut off a write the full disk refused: {e}"));
                        self.answer_failed(pending);
                        return self.process(carry);
                    }
                }
            }
            let result = written.and_then(|()| self.sync(records));
            if let Err(e) = result {
                self.shared.metrics.store_errors_total.inc();
                // Cut off whatever part of the batch reached the file, so a restart does not
                // resurrect changes whose callers were told they failed.
                let _ = self.head.file.set_len(self.head.len);
                self.fail(format!("write or fsync of the mail log failed: {e}"));
                self.answer_failed(pending);
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
                ..
            } => {
                let device = crate::core::device::DeviceModel {
                    units_per_s: syncs_per_s,
                    latency_ms,
                };
                self.shared
                    .metrics
                    .modelled_syncs_total
                    .inc_by(records as u64);
                std::thread::sleep(device.batch_time(records as f64, slowdown));
                Ok(())
            }
        }
    }

    /// Decides what one op writes, given the index and what earlier ops of the batch did.
    fn sequence(
        &self,
        index: &Index,
        overlay: &mut Overlay,
        op: Op,
    ) -> (oneshot::Sender<Reply>, Reply, Vec<Record>) {
        match op {
            Op::Deliver { message, reply } => {
                let mb = index.mailboxes.get(&message.user);
                let key = |uid| (message.user.clone(), uid);
                let uid = match message.uid {
                    Some(uid) => {
                        // A replica: store it once, and never after an expunge.
                        let present = mb.is_some_and(|m| {
                            m.messages.contains_key(&uid) || m.expunged.contains(&uid)
                        }) || overlay.delivered.contains(&key(uid))
                            || overlay.gone.contains(&key(uid));
                        if present {
                            return (reply, Reply::Uids(vec![uid]), Vec::new());
                        }
                        uid
                    }
                    None => {
                        let seen = overlay
                            .max_seq
                            .get(&message.user)
                            .copied()
                            .unwrap_or_else(|| mb.map_or(0, |m| m.max_seq));
                        // Checked: a hint is validated at the boundary, but the writer never
                        // trusts arithmetic on what a peer said.
                        let seq = seen.max(message.seq_hint).saturating_add(1);
                        if seq > UID_SEQ_MAX {
                            return (
                                reply,
                                Reply::Failed(format!(
                                    "mailbox {} has used every UID",
                                    message.user
                                )),
                                Vec::new(),
                            );
                        }
                        uid_of(seq, self.shared.node_id)
                    }
                };
                let max_seq = overlay
                    .max_seq
                    .entry(message.user.clone())
                    .or_insert_with(|| mb.map_or(0, |m| m.max_seq));
                *max_seq = (*max_seq).max(seq_of(uid));
                overlay.delivered.insert(key(uid));
                let record = Record::Deliver {
                    user: message.user,
                    uid,
                    internal_date: message.internal_date.unwrap_or(0),
                    flags: message.flags,
                    ts_ms: message.ts_ms,
                    targets: message.targets,
                    replicas: message.replicas,
                    body: message.body,
                };
                (reply, Reply::Uids(vec![uid]), vec![record])
            }
            Op::Flags {
                user,
                uids,
                mode,
                flags,
                ts_ms,
                owe,
                reply,
            } => {
                let mut changed = Vec::new();
                let mut records = Vec::new();
                for uid in uids {
                    let key = (user.clone(), uid);
                    if overlay.gone.contains(&key) {
                        continue;
                    }
                    let (current, current_ts) = match overlay.flags.get(&key) {
                        Some(f) => f.clone(),
                        None => match index
                            .mailboxes
                            .get(&user)
                            .and_then(|m| m.messages.get(&uid))
                        {
                            Some(m) => (m.flags.clone(), m.flags_ts),
                            None => continue,
                        },
                    };
                    let new = match mode {
                        // An older replace (a late replica push) loses to a newer setting.
                        FlagMode::Replace if ts_ms < current_ts => current.clone(),
                        FlagMode::Replace => flags.clone(),
                        FlagMode::Add => current.union(&flags),
                        FlagMode::Remove => current.difference(&flags),
                    };
                    changed.push((uid, new.clone()));
                    if new != current {
                        let ts_ms = ts_ms.max(current_ts);
                        records.push(Record::Flags {
                            user: user.clone(),
                            uid,
                            flags: new.clone(),
                            ts_ms,
                        });
                        overlay.flags.insert(key, (new, ts_ms));
                    }
                }
                if owe {
                    let uids: Vec<u32> = changed.iter().map(|(uid, _)| *uid).collect();
                    records.extend(self.owe_records(index, &user, &uids));
                }
                (reply, Reply::Flags(changed), records)
            }
            Op::Expunge {
                user,
                uids,
                owe,
                reply,
            } => {
                let mut removed = Vec::new();
                let mut tombstones = Vec::new();
                let mb = index.mailboxes.get(&user);
                for uid in uids {
                    let key = (user.clone(), uid);
                    let present = mb.is_some_and(|m| m.messages.contains_key(&uid))
                        || overlay.delivered.contains(&key);
                    let known_gone = mb.is_some_and(|m| m.expunged.contains(&uid));
                    if overlay.gone.insert(key) {
                        if present {
                            removed.push(uid);
                        }
                        // Remembered even if not held here: a replica still on its way must
                        // not bring it back.
                        if !known_gone {
                            tombstones.push(uid);
                        }
                    }
                }
                let mut records = Vec::new();
                if !tombstones.is_empty() {
                    records.push(Record::Expunge {
                        user: user.clone(),
                        uids: tombstones.clone(),
                    });
                }
                if owe {
                    records.extend(self.owe_records(index, &user, &removed));
                }
                (reply, Reply::Uids(removed), records)
            }
            Op::Retire { user, uids, reply } => {
                let kept: Vec<u32> = index.mailboxes.get(&user).map_or_else(Vec::new, |mb| {
                    uids.into_iter()
                        .filter(|u| mb.expunged.contains(u))
                        .collect()
                });
                let records = if kept.is_empty() {
                    Vec::new()
                } else {
                    vec![Record::Retire { user, uids: kept }]
                };
                (reply, Reply::Uids(Vec::new()), records)
            }
            Op::Profile {
                user,
                password,
                ts_ms,
                targets,
                reply,
            } => {
                let record = Record::Profile {
                    user,
                    password,
                    ts_ms,
                    targets,
                };
                (reply, Reply::Uids(Vec::new()), vec![record])
            }
            Op::Settled {
                user,
                uid,
                node,
                reply,
            } => {
                let waiting = index
                    .owed
                    .get(&(user.clone(), uid))
                    .is_some_and(|t| t.contains(&node));
                let records = retire_once(
                    waiting,
                    &mut overlay.settled,
                    user,
                    uid,
                    node,
                    |user, uid, node| Record::Settled { user, uid, node },
                );
                (reply, Reply::Uids(Vec::new()), records)
            }
            Op::Acked {
                user,
                uid,
                node,
                reply,
            } => {
                let waiting = index
                    .pending
                    .get(&(user.clone(), uid))
                    .is_some_and(|t| t.contains(&node));
                let records = retire_once(
                    waiting,
                    &mut overlay.acked,
                    user,
                    uid,
                    node,
                    |user, uid, node| Record::Acked { user, uid, node },
                );
                (reply, Reply::Uids(Vec::new()), records)
            }
        }
    }

    /// One `Owe` record per message of `uids` held here: its new state is owed to its other
    /// replicas.
    fn owe_records(&self, index: &Index, user: &str, uids: &[u32]) -> Vec<Record> {
        let Some(mb) = index.mailboxes.get(user) else {
            return Vec::new();
        };
        uids.iter()
            .filter_map(|uid| {
                let targets: Vec<u32> = mb
                    .messages
                    .get(uid)?
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&r| r != self.shared.node_id)
                    .collect();
                (!targets.is_empty()).then(|| Record::Owe {
                    user: user.to_string(),
                    uids: vec![*uid],
                    targets,
                })
            })
            .collect()
    }

    /// Answers every op of a batch with the writer's failure.
    fn answer_failed(&self, pending: Vec<Pending>) {
        for p in pending {
            let _ = p
                .reply
                .send(Reply::Failed(self.failed.clone().unwrap_or_default()));
        }
    }

    /// Answers a batch that found no room with a temporary failure.
    fn refuse_full(&self, pending: Vec<Pending>) {
        self.shared.metrics.disk_full_refusals_total.inc();
        tracing::warn!(
            dir = %self.shared.dir.display(),
            "refusing changes: the disk holding the mail log is full"
        );
        for p in pending {
            let _ = p.reply.send(Reply::Failed(format!(
                "{}; try again later",
                super::DISK_FULL
            )));
        }
    }

    /// Compacts the oldest closed segment if the log is more than twice what is live in it (and
    /// holds at least two segments' worth of garbage); closes compacted segments whose grace
    /// has passed.
    fn maybe_compact(&mut self) {
        if self.failed.is_some() || self.last_compaction_check.elapsed() < COMPACTION_CHECK_INTERVAL
        {
            return;
        }
        self.last_compaction_check = std::time::Instant::now();
        let expired: Vec<u32> = self
            .retired
            .iter()
            .filter(|(_, at)| at.elapsed() >= RETIRED_SEGMENT_GRACE)
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            let mut segments = self.shared.segments.write().unwrap();
            for id in &expired {
                segments.remove(id);
            }
            self.retired.retain(|(id, _)| !expired.contains(id));
        }
        let segment_bytes = self.shared.options.segment_bytes;
        let (oldest, log_bytes) = {
            let segments = self.shared.segments.read().unwrap();
            let live: Vec<(u32, &Arc<std::fs::File>)> = segments
                .iter()
                .filter(|(id, _)| !self.retired.iter().any(|(r, _)| r == *id))
                .map(|(id, f)| (*id, f))
                .collect();
            let log_bytes: u64 = live
                .iter()
                .map(|(id, f)| {
                    if *id == self.head.id {
                        self.head.len
                    } else {
                        f.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum();
            let oldest = live
                .iter()
                .map(|(id, _)| *id)
                .filter(|&id| id < self.head.id)
                .min();
            (oldest, log_bytes)
        };
        let live_bytes = self.shared.index.lock().unwrap().bytes;
        let Some(oldest) = oldest else { return };
        if log_bytes <= 2 * live_bytes + 2 * segment_bytes || log_bytes < self.compaction_idle_below
        {
            return;
        }
        match self.compact(oldest) {
            // Reclaimed at least a quarter of the segment: keep going while it pays.
            Ok(reclaimed) if reclaimed >= segment_bytes / 4 => self.compaction_idle_below = 0,
            Ok(_) => self.compaction_idle_below = log_bytes + segment_bytes,
            Err(e) => {
                tracing::warn!(segment = oldest, "compaction stopped: {e}");
                self.compaction_idle_below = log_bytes + segment_bytes;
            }
        }
    }

    /// Appends the live state of closed segment `id` to the head, makes it durable, applies it,
    /// then deletes the segment. Returns the bytes reclaimed.
    fn compact(&mut self, id: u32) -> std::io::Result<u64> {
        let Some(file) = self.shared.segments.read().unwrap().get(&id).cloned() else {
            return Ok(0);
        };
        let size = file.metadata()?.len();
        // Room for what will be copied (its message bodies; the rest is small) before reading.
        let live = self
            .shared
            .index
            .lock()
            .unwrap()
            .segment_live
            .get(&id)
            .copied()
            .unwrap_or(0);
        let free = segment::free_bytes(&self.shared.dir).unwrap_or(u64::MAX);
        if free < live + self.shared.options.free_bytes_min / 2 {
            return Err(std::io::Error::other(format!(
                "{live} bytes of messages to copy forward, {free} free"
            )));
        }
        let records = segment::read_all(&file, id)?;
        let carried = {
            let index = self.shared.index.lock().unwrap();
            carry_forward(&index, id, records)
        };
        let mut buf = Vec::new();
        // Where each carried record's frame starts within what is appended.
        let mut frames = Vec::with_capacity(carried.len());
        for r in &carried {
            frames.push(buf.len() as u64);
            record::encode(r, &mut buf);
        }
        let free = segment::free_bytes(&self.shared.dir).unwrap_or(u64::MAX);
        if free < buf.len() as u64 + self.shared.options.free_bytes_min / 2 {
            return Err(std::io::Error::other(format!(
                "{} bytes to copy forward, {free} free",
                buf.len()
            )));
        }
        if self.head.len >= self.shared.options.segment_bytes {
            self.roll()?;
        }
        let start = self.head.len;
        if let Err(e) = self
            .head
            .file
            .write_all_at(&buf, start)
            .and_then(|()| self.head.file.sync_data())
        {
            // As for a batch: cut off what reached the file; if even that fails, stop.
            if let Err(cut) = self
                .head
                .file
                .set_len(start)
                .and_then(|()| self.head.file.sync_all())
            {
                self.fail(format!(
                    "compaction could not cut off a failed write: {cut}"
                ));
            }
            return Err(e);
        }
        self.head.len += buf.len() as u64;
        {
            let mut index = self.shared.index.lock().unwrap();
            for (r, frame) in carried.iter().zip(&frames) {
                apply(&mut index, self.head.id, start + frame, r);
            }
            index.segment_live.remove(&id);
        }
        segment::delete_segment(&self.shared.dir, id)?;
        self.retired.push((id, std::time::Instant::now()));
        self.shared.metrics.compactions_total.inc();
        self.shared.metrics.compacted_bytes_total.inc_by(size);
        tracing::debug!(
            segment = id,
            size,
            carried = buf.len(),
            "compacted a mail log segment"
        );
        Ok(size.saturating_sub(buf.len() as u64))
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
        Op::Deliver { reply, .. }
        | Op::Flags { reply, .. }
        | Op::Expunge { reply, .. }
        | Op::Retire { reply, .. }
        | Op::Acked { reply, .. }
        | Op::Settled { reply, .. }
        | Op::Profile { reply, .. } => reply,
    }
}

/// The record retiring `node` from what `uid` is owed, if it is still owed and not already
/// retired earlier in this batch.
fn retire_once(
    waiting: bool,
    retired: &mut HashSet<(String, u32, u32)>,
    user: String,
    uid: u32,
    node: u32,
    record: impl FnOnce(String, u32, u32) -> Record,
) -> Vec<Record> {
    if waiting && retired.insert((user.clone(), uid, node)) {
        vec![record(user, uid, node)]
    } else {
        Vec::new()
    }
}

/// What earlier ops of the batch being sequenced did, before the index shows it.
#[derive(Default)]
struct Overlay {
    max_seq: HashMap<String, u32>,
    delivered: HashSet<(String, u32)>,
    flags: HashMap<(String, u32), (Flags, i64)>,
    gone: HashSet<(String, u32)>,
    acked: HashSet<(String, u32, u32)>,
    settled: HashSet<(String, u32, u32)>,
}

/// What of closed segment `id` (its records, in order) must be written again for a replay
/// without it to give the same index: the messages it holds that are still live (with their
/// current flags and pending pushes), tombstones still kept, owed changes still owed, current
/// profiles, and each user's highest UID sequence. Flags, acknowledgements and settlements in
/// it are folded into the records carried (it is the oldest segment: what they changed lives
/// in it, or was carried forward already, later in the log).
pub(super) fn carry_forward(index: &Index, id: u32, records: Vec<(u64, Record)>) -> Vec<Record> {
    let mut out = Vec::new();
    let mut users = BTreeSet::new();
    let mut owed_done: HashSet<(String, u32)> = HashSet::new();
    let mut profiles_done: HashSet<String> = HashSet::new();
    let owe = |out: &mut Vec<Record>, done: &mut HashSet<(String, u32)>, user: &str, uid: u32| {
        if !done.insert((user.to_string(), uid)) {
            return;
        }
        if let Some(targets) = index.owed.get(&(user.to_string(), uid)) {
            out.push(Record::Owe {
                user: user.to_string(),
                uids: vec![uid],
                targets: targets.iter().copied().collect(),
            });
        }
    };
    for (_, record) in records {
        match record {
            Record::Deliver {
                user, uid, body, ..
            } => {
                let meta = index
                    .mailboxes
                    .get(&user)
                    .and_then(|mb| mb.messages.get(&uid))
                    .filter(|m| m.location.is_some_and(|l| l.segment == id));
                if let Some(m) = meta {
                    out.push(Record::Deliver {
                        user: user.clone(),
                        uid,
                        internal_date: m.internal_date,
                        flags: m.flags.clone(),
                        ts_ms: m.flags_ts,
                        targets: index
                            .pending
                            .get(&(user.clone(), uid))
                            .cloned()
                            .unwrap_or_default(),
                        replicas: m.replicas.clone(),
                        body,
                    });
                    owe(&mut out, &mut owed_done, &user, uid);
                }
                users.insert(user);
            }
            Record::Expunge { user, uids } => {
                let kept: Vec<u32> = index.mailboxes.get(&user).map_or_else(Vec::new, |mb| {
                    uids.iter()
                        .copied()
                        .filter(|u| mb.expunged.contains(u))
                        .collect()
                });
                if !kept.is_empty() {
                    out.push(Record::Expunge {
                        user: user.clone(),
                        uids: kept,
                    });
                }
                for uid in uids {
                    owe(&mut out, &mut owed_done, &user, uid);
                }
                users.insert(user);
            }
            Record::Owe { user, uids, .. } => {
                for uid in uids {
                    owe(&mut out, &mut owed_done, &user, uid);
                }
            }
            Record::Profile { user, .. } => {
                if profiles_done.insert(user.clone()) {
                    if let Some((password, ts_ms)) = index.profiles.get(&user) {
                        out.push(Record::Profile {
                            user: user.clone(),
                            password: password.clone(),
                            ts_ms: *ts_ms,
                            targets: index
                                .pending
                                .get(&(user.clone(), super::PROFILE_UID))
                                .cloned()
                                .unwrap_or_default(),
                        });
                    }
                }
            }
            Record::Flags { user, .. } | Record::Seq { user, .. } => {
                users.insert(user);
            }
            Record::Acked { .. } | Record::Settled { .. } | Record::Retire { .. } => {}
        }
    }
    for user in users {
        if let Some(mb) = index.mailboxes.get(&user).filter(|mb| mb.max_seq > 0) {
            out.push(Record::Seq {
                user,
                max_seq: mb.max_seq,
            });
        }
    }
    out
}
