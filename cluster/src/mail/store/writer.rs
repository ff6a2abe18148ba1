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

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::record::{self, Record};
use super::segment::{self, Head};
use super::state::{self, apply, Change, CompactionPolicy, Overlay, Reply};
use super::Shared;
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

/// One change and where its answer goes.
pub struct Op {
    pub change: Change,
    pub reply: oneshot::Sender<Reply>,
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
                compaction: CompactionPolicy::default(),
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
    compaction: CompactionPolicy,
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
                let _ = op.reply.send(Reply::Failed(why.clone()));
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
                let reply = op.reply;
                let (answer, records) =
                    state::sequence(&index, &mut overlay, self.shared.node_id, op.change);
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
        if !self.compaction.due(log_bytes, live_bytes, segment_bytes) {
            return;
        }
        let reclaimed = self.compact(oldest);
        if let Err(e) = &reclaimed {
            tracing::warn!(segment = oldest, "compaction stopped: {e}");
        }
        self.compaction
            .after(log_bytes, reclaimed.ok(), segment_bytes);
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
        let (buf, carried) = {
            let index = self.shared.index.lock().unwrap();
            state::compaction_copy(&index, id, records)
        };
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
        state::compaction_applied(
            &mut self.shared.index.lock().unwrap(),
            id,
            self.head.id,
            start,
            &carried,
        );
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
