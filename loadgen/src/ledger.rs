//! What the correctness checker needs to remember of every message, kept small enough for a
//! day-long run: which messages the target acknowledged (by sequence number) and to whom, which
//! of them sessions read back intact during the run, and how many they found corrupted.
//!
//! A message's id is `RUNID-SEQ` (see [`message_id`]); the ledger keeps only the sequence number
//! and the recipients' indices in the user population, about 21 bytes a message (16 for the
//! entry, 4 per recipient), against about a kilobyte for ids and names as strings. The end-of-run
//! check ([`Check`]) takes mailbox listings one at a time, so its own memory is a sorted list of
//! what was found (16 bytes per message found) rather than every listing at once.
//!
//! Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

use crate::message::Verified;

/// The id of message `seq` of run `run_id`: what its id header says.
pub fn message_id(run_id: &str, seq: u64) -> String {
    format!("{run_id}-{seq}")
}

/// The sequence number of a message id of run `run_id`; `None` for another run's or a foreign id.
pub fn parse_seq(run_id: &str, id: &str) -> Option<u64> {
    let rest = id.strip_prefix(run_id)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// One acknowledged message: its sequence number and where its recipients start in
/// [`Ledger::recipients`] (they end where the next entry's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    recipients_from: u32,
}

/// Acknowledged messages and what sessions read back during the run. Additive: an agent hands
/// over what it recorded since its last delta ([`Ledger::take`]) and the coordinator
/// [`merge`](Ledger::merge)s them. A ledger made with [`Ledger::counting`] keeps only the number
/// of acknowledged messages: when nothing can be read back (a sink without POP3) or the check is
/// off, that is all the checker can use, and a long run's memory stays flat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Keep no entries, only `count`.
    #[serde(default)]
    counting: bool,
    /// Messages acknowledged (entries kept or not).
    #[serde(default)]
    count: u64,
    acked: Vec<Entry>,
    /// Recipients' indices in the user population, entry after entry.
    recipients: Vec<u32>,
    /// Messages of this run read back intact during the run: (sequence number, user index).
    read: Vec<(u64, u32)>,
    /// Messages of this run read back during the run whose body did not match its checksum.
    corrupted: u64,
}

/// Most recipient entries one ledger holds (the index is a `u32`).
pub const RECIPIENTS_MAX: usize = u32::MAX as usize;

impl Ledger {
    /// A ledger that keeps only the number of acknowledged messages.
    pub fn counting() -> Ledger {
        Ledger {
            counting: true,
            ..Ledger::default()
        }
    }

    /// Whether it keeps only a count.
    pub fn is_counting(&self) -> bool {
        self.counting
    }

    /// Records that message `seq` to `users` (indices in the population) was acknowledged.
    pub fn ack(&mut self, seq: u64, users: &[u64]) {
        self.count += 1;
        if self.counting {
            return;
        }
        let from = self.recipients.len();
        self.acked.push(Entry {
            seq,
            recipients_from: u32::try_from(from).unwrap_or(u32::MAX),
        });
        // Past four billion recipient entries (weeks at full speed) recipients are no longer
        // kept, and such messages count as unverified, never as lost.
        if from + users.len() <= RECIPIENTS_MAX {
            self.recipients
                .extend(users.iter().map(|&u| u32::try_from(u).unwrap_or(u32::MAX)));
        }
    }

    /// Records what a session of user `user` read back during the run: messages of this run by
    /// sequence number, intact or corrupted; messages of other runs or senders are not ours to
    /// judge, unless their checksum says they were damaged.
    pub fn read(&mut self, run_id: &str, user: u64, found: &Verified) {
        if self.counting {
            return;
        }
        let Some(id) = &found.id else { return };
        if !found.intact {
            self.corrupted += 1;
            return;
        }
        if let Some(seq) = parse_seq(run_id, id) {
            self.read
                .push((seq, u32::try_from(user).unwrap_or(u32::MAX)));
        }
    }

    /// Messages acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.count
    }

    /// Everything recorded so far, leaving this ledger empty (and of the same kind).
    pub fn take(&mut self) -> Ledger {
        let fresh = Ledger {
            counting: self.counting,
            ..Ledger::default()
        };
        std::mem::replace(self, fresh)
    }

    /// Adds another ledger's records (an agent's delta) to this one.
    pub fn merge(&mut self, other: Ledger) {
        self.count += other.count;
        self.counting |= other.counting;
        let offset = self.recipients.len() as u64;
        for e in other.acked {
            self.acked.push(Entry {
                seq: e.seq,
                recipients_from: u32::try_from(u64::from(e.recipients_from) + offset)
                    .unwrap_or(u32::MAX),
            });
        }
        self.recipients.extend(other.recipients);
        self.read.extend(other.read);
        self.corrupted += other.corrupted;
    }

    /// The users that were sent mail, each once, in order.
    pub fn users(&self) -> Vec<u64> {
        let mut users: Vec<u32> = self.recipients.clone();
        users.sort_unstable();
        users.dedup();
        users.into_iter().map(u64::from).collect()
    }

    /// Bytes this ledger holds per acknowledged message (its vectors' capacity included).
    pub fn bytes_per_message(&self) -> f64 {
        let bytes = self.acked.capacity() * std::mem::size_of::<Entry>()
            + self.recipients.capacity() * std::mem::size_of::<u32>()
            + self.read.capacity() * std::mem::size_of::<(u64, u32)>();
        bytes as f64 / self.acked.len().max(1) as f64
    }

    fn recipients_of(&self, i: usize) -> &[u32] {
        let from = self.acked[i].recipients_from as usize;
        let to = self
            .acked
            .get(i + 1)
            .map_or(self.recipients.len(), |e| e.recipients_from as usize);
        &self.recipients[from.min(self.recipients.len())..to.min(self.recipients.len())]
    }
}

/// Counts of a correctness check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Correctness {
    pub acknowledged: u64,
    /// Acknowledged messages found, during the run or at the end (at least once, intact).
    pub retrieved: u64,
    /// Acknowledged messages missing from a mailbox that could be read.
    pub lost: u64,
    /// Acknowledged messages found more than once in one final listing.
    pub duplicated: u64,
    /// Messages whose body did not match their checksum.
    pub corrupted: u64,
    /// Messages found that no one acknowledged (sent but the 250 was lost, or foreign).
    pub unacknowledged_found: u64,
    /// Mailboxes that could not be read at the end.
    pub unreadable_mailboxes: u64,
    /// Acknowledged messages that could not be checked, because a recipient's mailbox could not
    /// be read back (an SMTP sink keeps none): neither lost nor retrieved.
    pub unverified: u64,
    /// Why messages are unverified (the first reason a mailbox could not be read).
    pub unverified_reason: Option<String>,
    /// A few lost ids, for the report.
    pub lost_examples: Vec<String>,
}

/// Lost ids kept for the report.
const LOST_EXAMPLES_MAX: usize = 20;

impl Correctness {
    /// Every acknowledged message of `ledger` unverified, for `reason` (nothing can be read
    /// back).
    pub fn unverifiable(ledger: &Ledger, reason: &str) -> Correctness {
        Correctness {
            acknowledged: ledger.acknowledged(),
            unverified: ledger.acknowledged(),
            unverified_reason: (ledger.acknowledged() > 0).then(|| reason.to_string()),
            ..Correctness::default()
        }
    }
}

/// The end-of-run judgement: every acknowledged message must have been read intact during the
/// run or be in its recipients' mailboxes now. Feed it each mailbox's listing (or why it could
/// not be read) with [`Check::listing`], then [`Check::finish`].
pub struct Check<'a> {
    ledger: &'a Ledger,
    run_id: &'a str,
    /// (sequence number, user) found intact, during the run or now; sorted at the end.
    found: Vec<(u64, u32)>,
    /// Acknowledged sequence numbers, sorted.
    acked_seqs: Vec<u64>,
    /// Users whose mailbox could not be read, sorted at the end.
    unreadable: Vec<u32>,
    unverified_reason: Option<String>,
    duplicated: Vec<u64>,
    corrupted: u64,
    unacknowledged_found: u64,
}

impl<'a> Check<'a> {
    pub fn new(ledger: &'a Ledger, run_id: &'a str) -> Check<'a> {
        let mut acked_seqs: Vec<u64> = ledger.acked.iter().map(|e| e.seq).collect();
        acked_seqs.sort_unstable();
        Check {
            ledger,
            run_id,
            found: ledger.read.clone(),
            acked_seqs,
            unreadable: Vec::new(),
            unverified_reason: None,
            duplicated: Vec::new(),
            corrupted: ledger.corrupted,
            unacknowledged_found: 0,
        }
    }

    /// What user `user`'s mailbox holds now, or why it could not be read.
    pub fn listing(&mut self, user: u64, listing: Result<Vec<Verified>, String>) {
        let user = u32::try_from(user).unwrap_or(u32::MAX);
        let listing = match listing {
            Ok(listing) => listing,
            Err(why) => {
                self.unreadable.push(user);
                self.unverified_reason.get_or_insert(why);
                return;
            }
        };
        let mut seqs: Vec<u64> = Vec::with_capacity(listing.len());
        for v in &listing {
            let Some(id) = &v.id else { continue };
            if !v.intact {
                self.corrupted += 1;
                continue;
            }
            match parse_seq(self.run_id, id) {
                Some(seq) if self.acked_seqs.binary_search(&seq).is_ok() => seqs.push(seq),
                _ => self.unacknowledged_found += 1,
            }
        }
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[0] == pair[1] && self.duplicated.last() != Some(&pair[0]) {
                self.duplicated.push(pair[0]);
            }
        }
        seqs.dedup();
        self.found.extend(seqs.into_iter().map(|seq| (seq, user)));
    }

    pub fn finish(mut self) -> Correctness {
        self.found.sort_unstable();
        self.found.dedup();
        self.unreadable.sort_unstable();
        self.duplicated.sort_unstable();
        self.duplicated.dedup();
        let mut c = Correctness {
            acknowledged: self.ledger.acknowledged(),
            corrupted: self.corrupted,
            unacknowledged_found: self.unacknowledged_found,
            unreadable_mailboxes: self.unreadable.len() as u64,
            duplicated: self.duplicated.len() as u64,
            ..Correctness::default()
        };
        let mut lowest_lost = std::collections::BinaryHeap::new();
        for (i, entry) in self.ledger.acked.iter().enumerate() {
            let missing: Vec<u32> = self
                .ledger
                .recipients_of(i)
                .iter()
                .copied()
                .filter(|&u| self.found.binary_search(&(entry.seq, u)).is_err())
                .collect();
            if self.ledger.recipients_of(i).is_empty() {
                c.unverified += 1;
            } else if missing.is_empty() {
                c.retrieved += 1;
            } else if missing
                .iter()
                .all(|u| self.unreadable.binary_search(u).is_ok())
            {
                c.unverified += 1;
            } else {
                c.lost += 1;
                // The lowest sequence numbers, whatever order the messages were recorded in.
                lowest_lost.push(entry.seq);
                if lowest_lost.len() > LOST_EXAMPLES_MAX {
                    lowest_lost.pop();
                }
            }
        }
        c.lost_examples = lowest_lost
            .into_sorted_vec()
            .into_iter()
            .map(|seq| message_id(self.run_id, seq))
            .collect();
        if c.unverified > 0 {
            c.unverified_reason = self.unverified_reason;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "quick-20261129";

    fn ours(seq: u64, intact: bool) -> Verified {
        Verified {
            id: Some(message_id(RUN, seq)),
            intact,
        }
    }

    #[test]
    fn ids_round_trip_and_foreign_ids_are_not_ours() {
        assert_eq!(parse_seq(RUN, &message_id(RUN, 42)), Some(42));
        assert_eq!(parse_seq(RUN, "other-run-42"), None);
        assert_eq!(parse_seq(RUN, &format!("{RUN}-")), None);
        assert_eq!(parse_seq(RUN, &format!("{RUN}-4x")), None);
        assert_eq!(parse_seq(RUN, &format!("{RUN}4")), None);
    }

    #[test]
    fn the_check_counts_lost_duplicated_corrupted_and_unverified() {
        let mut ledger = Ledger::default();
        ledger.ack(1, &[1]);
        ledger.ack(2, &[1, 2]);
        ledger.ack(3, &[2]);
        ledger.ack(4, &[2]);
        ledger.ack(5, &[3]);
        ledger.ack(6, &[2, 3]);
        ledger.read(RUN, 1, &ours(1, true));
        let mut check = Check::new(&ledger, RUN);
        check.listing(1, Ok(vec![ours(2, true)]));
        check.listing(
            2,
            Ok(vec![
                ours(2, true),
                ours(3, true),
                ours(3, true),
                ours(4, false),
                ours(99, true),
            ]),
        );
        check.listing(3, Err("no POP3 front end".into()));
        let c = check.finish();
        assert_eq!(c.acknowledged, 6);
        // 1 read during the run, 2 and 3 found now.
        assert_eq!(c.retrieved, 3);
        // 4 is corrupted in user 2's box, 6 is missing from it though user 3's is unreadable.
        assert_eq!(c.lost, 2);
        assert_eq!(
            c.lost_examples,
            vec![message_id(RUN, 4), message_id(RUN, 6)]
        );
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.corrupted, 1);
        assert_eq!(c.unacknowledged_found, 1);
        // 5 went only to user 3, whose mailbox could not be read.
        assert_eq!(c.unverified, 1);
        assert_eq!(c.unverified_reason.as_deref(), Some("no POP3 front end"));
        assert_eq!(c.unreadable_mailboxes, 1);
    }

    #[test]
    fn merged_deltas_check_like_one_ledger() {
        let mut whole = Ledger::default();
        let mut first = Ledger::default();
        let mut second = Ledger::default();
        for seq in 0..100u64 {
            let users = [seq % 7, (seq + 3) % 7];
            whole.ack(seq, &users[..1 + (seq % 2) as usize]);
            let part = if seq % 3 == 0 {
                &mut first
            } else {
                &mut second
            };
            part.ack(seq, &users[..1 + (seq % 2) as usize]);
        }
        let mut merged = Ledger::default();
        merged.merge(first.take());
        merged.merge(second);
        assert!(first.acked.is_empty());
        assert_eq!(merged.acknowledged(), 100);
        assert_eq!(merged.users(), whole.users());
        let judge = |l: &Ledger| {
            let mut check = Check::new(l, RUN);
            for user in l.users() {
                let found = (0..100u64)
                    .filter(|s| s % 5 != 0)
                    .map(|s| ours(s, true))
                    .collect();
                check.listing(user, Ok(found));
            }
            check.finish()
        };
        assert_eq!(judge(&merged), judge(&whole));
    }

    #[test]
    fn a_counting_ledger_keeps_only_the_count() {
        let mut ledger = Ledger::counting();
        for seq in 0..10_000u64 {
            ledger.ack(seq, &[seq % 10]);
        }
        ledger.read(RUN, 1, &ours(1, true));
        assert_eq!(ledger.acknowledged(), 10_000);
        assert!(ledger.users().is_empty());
        let delta = ledger.take();
        assert!(ledger.is_counting() && delta.is_counting());
        let mut merged = Ledger::counting();
        merged.merge(delta);
        assert_eq!(merged.acknowledged(), 10_000);
        let c = Correctness::unverifiable(&merged, "no POP3");
        assert_eq!((c.acknowledged, c.unverified, c.lost), (10_000, 10_000, 0));
        assert_eq!(c.unverified_reason.as_deref(), Some("no POP3"));
    }

    #[test]
    fn a_message_costs_a_few_dozen_bytes() {
        let mut ledger = Ledger::default();
        for seq in 0..1_000_000u64 {
            let users = [seq % 1000, (seq * 7) % 1000];
            ledger.ack(seq, &users[..1 + usize::from(seq % 3 == 0)]);
        }
        let per_message = ledger.bytes_per_message();
        assert!(per_message <= 100.0, "{per_message} bytes a message");
    }
}
