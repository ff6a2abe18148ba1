//! The store's state machine, without I/O: how a change becomes log records ([`sequence`]) and
//! how a durable record changes the index ([`apply`]). The writer thread runs it against the
//! real log (sequence a batch, write it, fsync, then apply and answer); the mail simulation
//! runs the same functions against a simulated disk, so what it checks is this code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::record::{self, Record};
use super::{
    seq_of, uid_of, FlagMode, Flags, Index, Location, MailboxSnapshot, MessageMeta, NewMessage,
    PendingPush, PROFILE_UID, UID_SEQ_MAX,
};

/// A change to the store, as the writer takes it (the answer goes back separately).
#[derive(Debug, Clone)]
pub enum Change {
    Deliver {
        message: NewMessage,
    },
    Flags {
        user: String,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
        ts_ms: i64,
        owe: bool,
    },
    Expunge {
        user: String,
        uids: Vec<u32>,
        owe: bool,
    },
    Retire {
        user: String,
        uids: Vec<u32>,
    },
    /// `node` has the state of `uid` this node owed it, as `sent`: settled unless the message
    /// changed since (checked here, against every change made durable before, so a change that
    /// raced the push stays owed).
    Settled {
        user: String,
        uid: u32,
        node: u32,
        sent: SentState,
    },
    Profile {
        user: String,
        password: String,
        ts_ms: i64,
        targets: Vec<u32>,
    },
    Acked {
        user: String,
        uid: u32,
        node: u32,
        /// For a profile push: the stamp of the profile sent. The profile may have changed
        /// while it was on its way; then the acknowledgement is skipped (decided when it is
        /// sequenced, against everything durable and earlier in the batch), so the new
        /// profile is still pushed there.
        profile_ts: Option<i64>,
    },
}

/// What a state push told another holder: the expunge, flags as of a stamp, or nothing (the
/// message is gone and no expunge is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentState {
    Expunged,
    Flags { ts_ms: i64 },
    Nothing,
}

/// The answer to a change, once its records are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Uids(Vec<u32>),
    Flags(Vec<(u32, Flags)>),
    Failed(String),
}

/// Decides what one change writes, given the index and what earlier changes of the batch
/// did: its answer (given once the records are durable), and the records.
pub fn sequence(
    index: &Index,
    overlay: &mut Overlay,
    node_id: u32,
    change: Change,
) -> (Reply, Vec<Record>) {
    match change {
        Change::Deliver { message } => {
            let mb = index.mailboxes.get(&message.user);
            let key = |uid| (message.user.clone(), uid);
            let uid = match message.uid {
                Some(uid) => {
                    // A replica: store it once, and never after an expunge.
                    let present = mb.is_some_and(|m| {
                        m.messages.contains_key(&uid) || m.expunged.contains(&uid)
                    }) || overlay.delivered.contains_key(&key(uid))
                        || overlay.gone.contains(&key(uid));
                    if !present {
                        uid
                    } else {
                        // Expunged here before its copy came (a client expunged a UID this node
                        // did not hold yet): the other replicas must learn the expunge too, or
                        // they would keep copies this node's tombstone only hides.
                        let expunged = mb.is_some_and(|m| m.expunged.contains(&uid))
                            || overlay.gone.contains(&key(uid));
                        let owed = index.owed.get(&key(uid));
                        let targets: Vec<u32> = message
                            .replicas
                            .iter()
                            .copied()
                            .filter(|&r| r != node_id && !owed.is_some_and(|o| o.contains(&r)))
                            .collect();
                        let records = if expunged && !targets.is_empty() {
                            vec![Record::Owe {
                                user: message.user.clone(),
                                uids: vec![uid],
                                targets,
                            }]
                        } else {
                            Vec::new()
                        };
                        return (Reply::Uids(vec![uid]), records);
                    }
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
                            Reply::Failed(format!("mailbox {} has used every UID", message.user)),
                            Vec::new(),
                        );
                    }
                    uid_of(seq, node_id)
                }
            };
            let max_seq = overlay
                .max_seq
                .entry(message.user.clone())
                .or_insert_with(|| mb.map_or(0, |m| m.max_seq));
            *max_seq = (*max_seq).max(seq_of(uid));
            overlay.delivered.insert(key(uid), message.replicas.clone());
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
            (Reply::Uids(vec![uid]), vec![record])
        }
        Change::Flags {
            user,
            uids,
            mode,
            flags,
            ts_ms,
            owe,
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
                    // The same stamp with other flags (holders that applied one change to
                    // different states, telling each other): one order on every node, so they
                    // settle on the same flags instead of swapping.
                    FlagMode::Replace if ts_ms == current_ts => {
                        if flags.precedes(&current) {
                            current.clone()
                        } else {
                            flags.clone()
                        }
                    }
                    FlagMode::Replace => flags.clone(),
                    FlagMode::Add => current.union(&flags),
                    FlagMode::Remove => current.difference(&flags),
                };
                changed.push((uid, new.clone()));
                // A newer stamp is kept even when the flags stay: every holder then compares
                // later changes against the same stamp.
                if new != current || ts_ms > current_ts {
                    // An add or remove older than the flags it changes makes a new state: it
                    // gets a newer stamp than theirs, or two holders would have one stamp for
                    // two different sets (and keep them).
                    let ts_ms = match mode {
                        FlagMode::Add | FlagMode::Remove
                            if new != current && ts_ms <= current_ts =>
                        {
                            current_ts.saturating_add(1)
                        }
                        _ => ts_ms.max(current_ts),
                    };
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
                // What is owed goes first: if a crash keeps only part of an unsynced batch, a
                // change never survives without its debt (a debt without the change only sends
                // the flags as they are).
                let uids: Vec<u32> = changed.iter().map(|(uid, _)| *uid).collect();
                let mut owed = owe_records(index, overlay, node_id, &user, &uids);
                owed.append(&mut records);
                records = owed;
            }
            (Reply::Flags(changed), records)
        }
        Change::Expunge { user, uids, owe } => {
            let mut removed = Vec::new();
            let mut tombstones = Vec::new();
            let mb = index.mailboxes.get(&user);
            for uid in uids {
                let key = (user.clone(), uid);
                let present = mb.is_some_and(|m| m.messages.contains_key(&uid))
                    || overlay.delivered.contains_key(&key);
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
            // What is owed goes first (as for flags).
            let mut records = if owe {
                owe_records(index, overlay, node_id, &user, &removed)
            } else {
                Vec::new()
            };
            if !tombstones.is_empty() {
                records.push(Record::Expunge {
                    user: user.clone(),
                    uids: tombstones.clone(),
                });
            }
            (Reply::Uids(removed), records)
        }
        Change::Retire { user, uids } => {
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
            (Reply::Uids(Vec::new()), records)
        }
        Change::Profile {
            user,
            password,
            ts_ms,
            targets,
        } => {
            if profile_wins((ts_ms, &password), current_profile(index, overlay, &user)) {
                overlay
                    .profiles
                    .insert(user.clone(), (ts_ms, password.clone()));
            }
            let record = Record::Profile {
                user,
                password,
                ts_ms,
                targets,
            };
            (Reply::Uids(Vec::new()), vec![record])
        }
        Change::Settled {
            user,
            uid,
            node,
            sent,
        } => {
            let key = (user.clone(), uid);
            let stale = match sent {
                SentState::Expunged | SentState::Nothing => false,
                SentState::Flags { ts_ms } => {
                    let now_ts = match overlay.flags.get(&key) {
                        Some((_, ts)) => Some(*ts),
                        None => index.message(&user, uid).map(|m| m.flags_ts),
                    };
                    overlay.gone.contains(&key)
                        || index.is_expunged(&user, uid)
                        || now_ts != Some(ts_ms)
                }
            };
            let waiting = !stale
                && index
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
            (Reply::Uids(Vec::new()), records)
        }
        Change::Acked {
            user,
            uid,
            node,
            profile_ts,
        } => {
            let stale = profile_ts.is_some_and(|sent| {
                current_profile(index, overlay, &user).map(|(ts, _)| ts) != Some(sent)
            });
            let waiting = !stale
                && index
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
            (Reply::Uids(Vec::new()), records)
        }
    }
}

/// One `Owe` record per message of `uids` held here: its new state is owed to its other
/// replicas.
fn owe_records(
    index: &Index,
    overlay: &Overlay,
    node_id: u32,
    user: &str,
    uids: &[u32],
) -> Vec<Record> {
    let mb = index.mailboxes.get(user);
    uids.iter()
        .filter_map(|uid| {
            // Held before this batch, or delivered earlier in it.
            let replicas = match mb.and_then(|mb| mb.messages.get(uid)) {
                Some(m) => &m.replicas,
                None => overlay.delivered.get(&(user.to_string(), *uid))?,
            };
            let targets: Vec<u32> = replicas.iter().copied().filter(|&r| r != node_id).collect();
            (!targets.is_empty()).then(|| Record::Owe {
                user: user.to_string(),
                uids: vec![*uid],
                targets,
            })
        })
        .collect()
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

/// Whether a profile (stamp, password) wins over the current one: the newest stamp, the
/// password breaking a tie, so every node keeps the same one.
fn profile_wins(new: (i64, &str), current: Option<(i64, &str)>) -> bool {
    current.is_none_or(|current| new > current)
}

/// `user`'s profile as it will be once the changes earlier in the batch are applied.
fn current_profile<'a>(
    index: &'a Index,
    overlay: &'a Overlay,
    user: &str,
) -> Option<(i64, &'a str)> {
    match overlay.profiles.get(user) {
        Some((ts, p)) => Some((*ts, p.as_str())),
        None => index.profiles.get(user).map(|(p, ts)| (*ts, p.as_str())),
    }
}

/// What earlier ops of the batch being sequenced did, before the index shows it.
#[derive(Default)]
pub struct Overlay {
    max_seq: HashMap<String, u32>,
    /// Messages delivered earlier in the batch, with their replicas.
    delivered: HashMap<(String, u32), Vec<u32>>,
    flags: HashMap<(String, u32), (Flags, i64)>,
    gone: HashSet<(String, u32)>,
    acked: HashSet<(String, u32, u32)>,
    settled: HashSet<(String, u32, u32)>,
    /// Profiles set earlier in the batch that win over the index's: user → (stamp, password).
    profiles: HashMap<String, (i64, String)>,
}

/// Applies one durable record to the index. `offset` is where the record's frame starts.
pub fn apply(index: &mut Index, segment: u32, offset: u64, record: &record::Record) {
    use record::Record;
    match record {
        Record::Deliver {
            user,
            uid,
            internal_date,
            flags,
            ts_ms,
            targets,
            replicas,
            body,
        } => {
            let body_offset = offset
                + (record::FRAME_HEADER_BYTES
                    + record::deliver_body_offset(user, flags, targets.len(), replicas.len()))
                    as u64;
            let mb = index.mailboxes.entry(user.clone()).or_default();
            mb.max_seq = mb.max_seq.max(seq_of(*uid));
            if mb.expunged.contains(uid) {
                return;
            }
            let meta = MessageMeta {
                uid: *uid,
                size: body.len() as u64,
                internal_date: *internal_date,
                flags: flags.clone(),
                flags_ts: *ts_ms,
                replicas: replicas.clone(),
                location: Some(Location {
                    segment,
                    offset: body_offset,
                }),
            };
            *index.segment_live.entry(segment).or_default() += body.len() as u64;
            match mb.messages.insert(*uid, meta) {
                None => {
                    index.messages += 1;
                    index.bytes += body.len() as u64;
                }
                // Copied forward by compaction: it lives in the new place now.
                Some(old) => {
                    if let Some(at) = old.location {
                        if let Some(live) = index.segment_live.get_mut(&at.segment) {
                            *live = live.saturating_sub(old.size);
                        }
                    }
                }
            }
            if !targets.is_empty() {
                index.pending.insert((user.clone(), *uid), targets.clone());
            }
        }
        Record::Flags {
            user,
            uid,
            flags,
            ts_ms,
        } => {
            if let Some(m) = index
                .mailboxes
                .get_mut(user)
                .and_then(|mb| mb.messages.get_mut(uid))
            {
                m.flags = flags.clone();
                m.flags_ts = *ts_ms;
            }
        }
        Record::Expunge { user, uids } => {
            let mb = index.mailboxes.entry(user.clone()).or_default();
            for uid in uids {
                mb.expunged.insert(*uid);
                if let Some(m) = mb.messages.remove(uid) {
                    index.messages -= 1;
                    index.bytes -= m.size;
                    if let Some(at) = m.location {
                        if let Some(live) = index.segment_live.get_mut(&at.segment) {
                            *live = live.saturating_sub(m.size);
                        }
                    }
                }
                index.pending.remove(&(user.clone(), *uid));
            }
        }
        Record::Acked { user, uid, node } => {
            let key = (user.clone(), *uid);
            if let Some(targets) = index.pending.get_mut(&key) {
                targets.retain(|t| t != node);
                if targets.is_empty() {
                    index.pending.remove(&key);
                }
            }
        }
        Record::Owe {
            user,
            uids,
            targets,
        } => {
            for uid in uids {
                index
                    .owed
                    .entry((user.clone(), *uid))
                    .or_default()
                    .extend(targets.iter().copied());
            }
        }
        Record::Settled { user, uid, node } => {
            let key = (user.clone(), *uid);
            if let Some(targets) = index.owed.get_mut(&key) {
                targets.remove(node);
                if targets.is_empty() {
                    index.owed.remove(&key);
                }
            }
        }
        Record::Retire { user, uids } => {
            if let Some(mb) = index.mailboxes.get_mut(user) {
                for uid in uids {
                    mb.expunged.remove(uid);
                }
            }
        }
        Record::Seq { user, max_seq } => {
            let mb = index.mailboxes.entry(user.clone()).or_default();
            mb.max_seq = mb.max_seq.max(*max_seq);
        }
        Record::Profile {
            user,
            password,
            ts_ms,
            targets,
        } => {
            let current = index.profiles.get(user).map(|(p, ts)| (*ts, p.as_str()));
            if profile_wins((*ts_ms, password), current) {
                index
                    .profiles
                    .insert(user.clone(), (password.clone(), *ts_ms));
            }
            if !targets.is_empty() {
                index
                    .pending
                    .insert((user.clone(), PROFILE_UID), targets.clone());
            }
        }
    }
}

/// What the rest of the node reads from the index (the store's handle locks it for each call).
impl Index {
    /// A consistent copy of `user`'s mailbox index (empty if the user has no mail yet).
    pub fn snapshot(&self, user: &str, uid_validity: u32) -> MailboxSnapshot {
        match self.mailboxes.get(user) {
            Some(mb) => MailboxSnapshot {
                uid_validity,
                uid_next: uid_of(mb.max_seq.min(UID_SEQ_MAX - 1) + 1, 0),
                messages: mb.messages.values().cloned().collect(),
            },
            None => MailboxSnapshot {
                uid_validity,
                uid_next: uid_of(1, 0),
                messages: Vec::new(),
            },
        }
    }

    /// Up to `limit` messages still to be pushed to replicas, oldest first.
    pub fn pending_pushes(&self, limit: usize) -> Vec<PendingPush> {
        self.pending
            .iter()
            .take(limit)
            .map(|((user, uid), targets)| PendingPush {
                user: user.clone(),
                uid: *uid,
                targets: targets.clone(),
            })
            .collect()
    }

    /// Up to `limit` state changes (flags or expunges) still owed to other holders.
    pub fn owed_changes(&self, limit: usize) -> Vec<PendingPush> {
        self.owed
            .iter()
            .take(limit)
            .map(|((user, uid), targets)| PendingPush {
                user: user.clone(),
                uid: *uid,
                targets: targets.iter().copied().collect(),
            })
            .collect()
    }

    /// Whether `uid` of `user` is known here to be expunged.
    pub fn is_expunged(&self, user: &str, uid: u32) -> bool {
        self.mailboxes
            .get(user)
            .is_some_and(|mb| mb.expunged.contains(&uid))
    }

    /// Whether this node still owes anyone the state of `uid`.
    pub fn owes(&self, user: &str, uid: u32) -> bool {
        self.owed.contains_key(&(user.to_string(), uid))
    }

    /// Every user with a message on this node, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .mailboxes
            .iter()
            .filter(|(_, mb)| !mb.messages.is_empty())
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        users
    }

    /// UIDs of `user` this node knows were expunged.
    pub fn expunged(&self, user: &str) -> Vec<u32> {
        let mut uids: Vec<u32> = self
            .mailboxes
            .get(user)
            .map_or_else(Vec::new, |mb| mb.expunged.iter().copied().collect());
        uids.sort_unstable();
        uids
    }

    /// The highest UID sequence number this node has seen for `user`.
    pub fn max_seq(&self, user: &str) -> u32 {
        self.mailboxes.get(user).map_or(0, |mb| mb.max_seq)
    }

    /// This node's copy of one message's metadata, if it holds it.
    pub fn message(&self, user: &str, uid: u32) -> Option<MessageMeta> {
        self.mailboxes
            .get(user)
            .and_then(|mb| mb.messages.get(&uid))
            .cloned()
    }

    /// Expunge tombstones kept, over all mailboxes.
    pub fn tombstones(&self) -> u64 {
        self.mailboxes
            .values()
            .map(|mb| mb.expunged.len() as u64)
            .sum()
    }

    /// Bytes of the message bodies held (what compaction weighs the log against).
    pub fn live_bytes(&self) -> u64 {
        self.bytes
    }

    /// Where a held message's body is: (segment, offset of its first byte).
    pub fn body_location(meta: &MessageMeta) -> Option<(u32, u64)> {
        meta.location.map(|l| (l.segment, l.offset))
    }

    /// The first way `other` differs from this index, if any: every mailbox (highest sequence,
    /// messages with their flags, stamps, replicas and where their bodies are, tombstones),
    /// pending pushes, owed changes, profiles, and the live bytes per segment. The simulation
    /// checks with it that replaying a node's log gives the index the node runs on.
    pub fn differs_from(&self, other: &Index) -> Option<String> {
        let users: BTreeSet<&String> = self
            .mailboxes
            .keys()
            .chain(other.mailboxes.keys())
            .collect();
        let empty = super::Mailbox::default();
        for user in users {
            // No mailbox and an empty one (nothing held, no tombstone, no UID yet) are the same.
            let a = self.mailboxes.get(user).unwrap_or(&empty);
            let b = other.mailboxes.get(user).unwrap_or(&empty);
            if a.max_seq != b.max_seq {
                return Some(format!("{user}: max_seq {} vs {}", a.max_seq, b.max_seq));
            }
            if a.expunged != b.expunged {
                return Some(format!("{user}: tombstones differ"));
            }
            for uid in a.messages.keys().chain(b.messages.keys()) {
                let (x, y) = (a.messages.get(uid), b.messages.get(uid));
                if x != y {
                    return Some(format!("{user} {uid}: {x:?} vs {y:?}"));
                }
            }
        }
        let live = |i: &Index| -> BTreeMap<u32, u64> {
            i.segment_live
                .iter()
                .filter(|(_, &b)| b > 0)
                .map(|(&s, &b)| (s, b))
                .collect()
        };
        let profiles = |i: &Index| -> BTreeMap<String, (String, i64)> {
            i.profiles
                .iter()
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect()
        };
        [
            ("message count", self.messages != other.messages),
            ("message bytes", self.bytes != other.bytes),
            ("pending pushes", self.pending != other.pending),
            ("owed changes", self.owed != other.owed),
            ("profiles", profiles(self) != profiles(other)),
            ("live bytes per segment", live(self) != live(other)),
        ]
        .into_iter()
        .find(|(_, differ)| *differ)
        .map(|(what, _)| format!("{what} differ"))
    }
}

impl Change {
    /// Whether the writer can log this change: what a peer sends is checked here, at the
    /// boundary, so nothing it says can trip the writer.
    pub fn check(&self) -> Result<(), super::StoreError> {
        use super::{check_nodes, check_uids, check_user, StoreError, PASSWORD_BYTES_MAX};
        match self {
            Change::Deliver { message } => message.check(),
            Change::Flags {
                user, uids, flags, ..
            } => {
                check_user(user)?;
                check_uids(uids)?;
                flags.check().map_err(StoreError::Invalid)
            }
            Change::Expunge { user, uids, .. } | Change::Retire { user, uids } => {
                check_user(user)?;
                check_uids(uids)
            }
            Change::Settled { user, .. } | Change::Acked { user, .. } => check_user(user),
            Change::Profile {
                user,
                password,
                targets,
                ..
            } => {
                check_user(user)?;
                check_nodes("targets", targets)?;
                if password.len() > PASSWORD_BYTES_MAX {
                    return Err(StoreError::Invalid(format!(
                        "a password of {} bytes (at most {PASSWORD_BYTES_MAX})",
                        password.len()
                    )));
                }
                Ok(())
            }
        }
    }
}

impl Index {
    /// A user's profile: (password, ts_ms), if one was ever set.
    pub fn profile(&self, user: &str) -> Option<(String, i64)> {
        self.profiles.get(user).cloned()
    }
}

/// When the oldest closed segment is compacted: when the log is more than twice what is live
/// in it and holds at least two segments' worth of garbage; after a compaction that reclaimed
/// little (what the log holds is mostly live state), or could not run, not again until the log
/// has grown by a segment. The writer and the simulation both decide with it.
#[derive(Debug, Default)]
pub struct CompactionPolicy {
    idle_below: u64,
}

impl CompactionPolicy {
    pub fn due(&self, log_bytes: u64, live_bytes: u64, segment_bytes: u64) -> bool {
        log_bytes > 2 * live_bytes + 2 * segment_bytes && log_bytes >= self.idle_below
    }

    /// After a compaction: the bytes it reclaimed, or `None` if it could not run.
    pub fn after(&mut self, log_bytes: u64, reclaimed: Option<u64>, segment_bytes: u64) {
        self.idle_below = match reclaimed {
            // At least a quarter of the segment: keep going while it pays.
            Some(r) if r >= segment_bytes / 4 => 0,
            _ => log_bytes + segment_bytes,
        };
    }
}

/// What compacting closed segment `id` (its records, in order, with their frame offsets)
/// appends to the head: the encoded bytes, and each carried record with the offset of its frame
/// within them.
pub fn compaction_copy(
    index: &Index,
    id: u32,
    records: Vec<(u64, Record)>,
) -> (Vec<u8>, Vec<(u64, Record)>) {
    let mut buf = Vec::new();
    let mut carried = Vec::new();
    for r in carry_forward(index, id, records) {
        let frame = buf.len() as u64;
        record::encode(&r, &mut buf);
        carried.push((frame, r));
    }
    (buf, carried)
}

/// Once the copy of segment `id`, appended at `start` of segment `head`, is durable: the index
/// finds the carried state there, and nothing live in `id` (which may then be deleted).
pub fn compaction_applied(
    index: &mut Index,
    id: u32,
    head: u32,
    start: u64,
    carried: &[(u64, Record)],
) {
    for (frame, r) in carried {
        apply(index, head, start + frame, r);
    }
    index.segment_live.remove(&id);
}

/// What of closed segment `id` (its records, in order) must be written again for a replay
/// without it to give the same index: the messages it holds that are still live (with their
/// current flags and pending pushes), tombstones still kept, owed changes still owed, current
/// profiles, and each user's highest UID sequence. Flags, acknowledgements and settlements in
/// it are folded into the records carried (it is the oldest segment: what they changed lives
/// in it, or was carried forward already, later in the log).
fn carry_forward(index: &Index, id: u32, records: Vec<(u64, Record)>) -> Vec<Record> {
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
