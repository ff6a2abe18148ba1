//! The mail map: soft state on a user's manager, user → nodes holding fragments of the mailbox.
//!
//! Never written to disk: after every view change the manager starts over, and every member
//! reports the users it holds in the manager's buckets. Until every member of the view has
//! reported, the map is incomplete, so [`MailMap::locate`] answers with every live node (a
//! superset is always correct, just slower). Reports for a newer view than the manager has
//! installed are kept until it installs that view.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Reports kept for views this manager has not installed yet, at most.
const EARLY_REPORTS_MAX: usize = 64;

/// One member's report: its id, (user, highest UID seq) pairs, and whether it is the last part.
type Report = (u32, Vec<(String, u32)>, bool);

#[derive(Debug, Default)]
pub struct MailMap {
    epoch: u64,
    members: BTreeSet<u32>,
    reported: BTreeSet<u32>,
    entries: HashMap<String, Entry>,
    early: BTreeMap<u64, Vec<Report>>,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    nodes: BTreeSet<u32>,
    max_seq: u32,
}

impl MailMap {
    /// Starts over for a new view.
    pub fn install(&mut self, epoch: u64, members: BTreeSet<u32>) {
        self.epoch = epoch;
        self.members = members;
        self.reported.clear();
        self.entries.clear();
        let early = std::mem::take(&mut self.early);
        for (e, reports) in early {
            if e == epoch {
                for (node, users, last) in reports {
                    self.report(epoch, node, users, last);
                }
            } else if e > epoch {
                self.early.insert(e, reports);
            }
        }
    }

    /// Takes (part of) a member's report of the users it holds.
    pub fn report(&mut self, epoch: u64, node: u32, users: Vec<(String, u32)>, last: bool) {
        if epoch > self.epoch {
            if self.early.len() < EARLY_REPORTS_MAX || self.early.contains_key(&epoch) {
                self.early
                    .entry(epoch)
                    .or_default()
                    .push((node, users, last));
            }
            return;
        }
        if epoch < self.epoch {
            return;
        }
        for (user, max_seq) in users {
            self.add(&user, &[node], max_seq);
        }
        if last {
            self.reported.insert(node);
        }
    }

    /// Records that `nodes` hold messages of `user`.
    pub fn add(&mut self, user: &str, nodes: &[u32], max_seq: u32) {
        let entry = self.entries.entry(user.to_string()).or_default();
        entry.nodes.extend(nodes.iter().copied());
        entry.max_seq = entry.max_seq.max(max_seq);
    }

    /// Whether every member of the view has reported.
    pub fn complete(&self) -> bool {
        self.members.is_subset(&self.reported)
    }

    /// The live nodes that may hold `user`'s messages, and the highest UID seq known for them.
    pub fn locate(&self, user: &str) -> (Vec<u32>, u32) {
        let entry = self.entries.get(user);
        let max_seq = entry.map_or(0, |e| e.max_seq);
        if !self.complete() {
            return (self.members.iter().copied().collect(), max_seq);
        }
        let nodes = entry.map_or_else(Vec::new, |e| {
            e.nodes.intersection(&self.members).copied().collect()
        });
        (nodes, max_seq)
    }

    pub fn users(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn incomplete_maps_answer_with_every_member() {
        let mut m = MailMap::default();
        m.install(5, set(&[1, 2, 3]));
        m.report(5, 1, vec![("a".into(), 4)], true);
        assert_eq!(m.locate("a"), (vec![1, 2, 3], 4));
        m.report(5, 2, vec![], true);
        m.report(5, 3, vec![("a".into(), 9)], true);
        assert_eq!(m.locate("a"), (vec![1, 3], 9));
        assert_eq!(m.locate("b"), (vec![], 0));
    }

    #[test]
    fn reports_for_a_future_view_wait_and_old_ones_are_dropped() {
        let mut m = MailMap::default();
        m.install(5, set(&[1, 2]));
        m.report(6, 2, vec![("a".into(), 1)], true);
        m.report(4, 1, vec![("b".into(), 1)], true);
        m.install(6, set(&[1, 2]));
        m.report(6, 1, vec![], true);
        assert!(m.complete());
        assert_eq!(m.locate("a"), (vec![2], 1));
        assert_eq!(m.locate("b"), (vec![], 0));
    }
}
