//! The Wombat membership state machine of one node, sans-I/O in the style of raft-rs.
//!
//! Messages go in through [`Membership::step`], the passage of time through [`Membership::tick`];
//! messages to send come out of [`Membership::poll_outgoing`], new views out of
//! [`Membership::take_view_change`], and [`Membership::next_deadline`] says when the caller must
//! tick next. This module must never read a clock, sleep, do I/O or use randomness: "now" is
//! always given by the caller, so a seeded simulation can replay any run exactly.
//!
//! # Rules (the slides leave these open; here is what this implementation does)
//!
//! * Rank: lower id = higher rank. A view's leader is always its minimum member.
//! * View order: by epoch, then by the leader's rank ([`View::order`]). A node only ever installs
//!   a view that is not older than its current one in this order, so its epoch never decreases.
//! * Adoption (minion): a beacon is adopted when its leader is the minion's current leader or a
//!   better one, and its view is not older. Once the lease on its leader has run out
//!   (`leader_lease_ms` without an adopted beacon), a minion also adopts beacons from a worse
//!   leader as long as that leader outranks the minion itself; beacons from leaders it outranks
//!   it leaves to its own takeover timer. Any other beacon is ignored ("I don't think so").
//! * A node adopting a view that does not contain it holds the view plus itself and says
//!   "I'm here" to the leader on every beacon until the leader includes it.
//! * A beacon from an acceptable leader whose epoch is behind the node's (a restarted leader, or
//!   the better side of a healed partition) is answered with "I'm here" carrying the node's epoch,
//!   so that the leader's next view is newer than anything the node holds.
//! * Leader meets worse leader: broadcast the union of both views with epoch max(seen)+1 (or, if
//!   that adds nothing and ours is already newer, send our view to the usurper alone).
//! * Leader meets better leader: step down and adopt if its view is not older; otherwise send it
//!   our view, which makes it broadcast the union with a newer epoch.
//! * Every new view a node makes has epoch max(every epoch it has seen)+1.
//! * Leader on "I'm here": adds the sender with a new epoch; if the sender is already a member
//!   but holds a newer epoch (from some other leader), bumps past it with the same members.
//! * Takeover: the takeover timer (`takeover_base_ms + rank_index * takeover_step_ms`, the rank
//!   index counted among all configured ids) runs from the last adopted beacon. When it fires the
//!   node leads the members of its view that it outranks: the better-ranked ones are presumed
//!   dead, and if one is not, it merges us back as a worse leader. The leader's successor does not
//!   wait for its timer: it takes over as soon as its pings to the leader time out.
//! * A node that starts is "joining": silent, holding {itself} at epoch 0, until it hears a
//!   beacon or its takeover timer fires. A joiner that outranks the beacon's leader takes over at
//!   once with the union, since the best live node must lead.
//! * "Node p has failed" is acted on only if its epoch equals the leader's current epoch: an
//!   older report may be about a previous incarnation of a node that has since rejoined.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::config::{Config, ConfigError, NODES_MAX};
use super::message::{Message, View};

/// What a node currently does in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Started (or restarted) and has not yet adopted any beacon nor taken over.
    Joining,
    Minion,
    Leader,
}

/// Counters for observability; they never influence the protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages put on the outgoing queue.
    pub messages_queued: u64,
    /// Messages dropped because the caller let the outgoing queue fill up.
    pub messages_dropped_queue_full: u64,
    /// Received messages dropped as malformed or from an unknown sender.
    pub messages_rejected: u64,
    /// Views installed that differ from the previous one.
    pub view_changes: u64,
}

/// The membership state of one node.
#[derive(Debug)]
pub struct Membership {
    id: u32,
    all_ids: BTreeSet<u32>,
    /// Position of `id` among `all_ids` (0 = best rank); sets the takeover timer length.
    rank_index: usize,
    config: Config,
    /// Latest time the caller has given us. Never decreases.
    now: u64,
    role: Role,
    view: View,
    /// Highest epoch seen in any message or view; new views get this plus one.
    epoch_seen_max: u64,
    view_changed: bool,
    /// When this node last adopted a beacon (or started): the takeover timer and the leader lease
    /// both run from here.
    leader_heard_at: u64,
    predecessor: Option<u32>,
    /// Last ack from the predecessor, or when it became our predecessor (a grace period).
    predecessor_heard_at: u64,
    ping_next_at: u64,
    beacon_next_at: u64,
    beacon_fast_until: u64,
    outgoing: Vec<(u32, Message)>,
    /// Bound on `outgoing`; see [`Membership::outgoing_max`].
    outgoing_max: usize,
    stats: Stats,
}

impl Membership {
    /// A node `id` of the cluster whose configured ids are `all_ids`, starting at time `now`.
    ///
    /// The node starts joining: it holds the view {id} at epoch 0, says nothing, and waits for a
    /// beacon; if none comes within its takeover timer it declares itself leader of {id}. (A
    /// cluster configured with this node alone has nobody to wait for: it leads at once.)
    /// Restarting a node means calling `new` again: all soft state is lost by design.
    ///
    /// # Panics
    ///
    /// If [`Membership::try_new`] would fail: the configuration is checked when it is loaded, so
    /// a bad one here is a programming error.
    pub fn new(id: u32, all_ids: BTreeSet<u32>, config: Config, now: u64) -> Membership {
        match Membership::try_new(id, all_ids, config, now) {
            Ok(membership) => membership,
            Err(err) => panic!("Membership::new: {err}"),
        }
    }

    /// As [`Membership::new`], but returns an error naming what is wrong: an invalid `config`,
    /// an empty or oversized `all_ids` (more than [`NODES_MAX`]), id 0, or an `id` missing from
    /// `all_ids`.
    pub fn try_new(
        id: u32,
        all_ids: BTreeSet<u32>,
        config: Config,
        now: u64,
    ) -> Result<Membership, ConfigError> {
        config.validate()?;
        if all_ids.is_empty() || all_ids.len() > NODES_MAX {
            return Err(ConfigError {
                field: "all_ids",
                reason: format!("must hold 1 to {NODES_MAX} ids, not {}", all_ids.len()),
            });
        }
        if all_ids.contains(&0) {
            return Err(ConfigError {
                field: "all_ids",
                reason: "ids start at 1; 0 is not a node id".to_string(),
            });
        }
        let Some(rank_index) = all_ids.iter().position(|&other| other == id) else {
            return Err(ConfigError {
                field: "id",
                reason: format!("{id} is not one of the configured ids {all_ids:?}"),
            });
        };
        // A broadcast is one message per other node; a step or tick queues at most one broadcast
        // plus a ping, a report and an answer. Room for two such rounds lets a caller that
        // drains late lose nothing; beyond that we drop, which the protocol tolerates.
        let outgoing_max = 2 * (all_ids.len() + 3);
        let alone = all_ids.len() == 1;
        let mut membership = Membership {
            id,
            all_ids,
            rank_index,
            config,
            now,
            role: Role::Joining,
            view: View::singleton(id),
            epoch_seen_max: 0,
            view_changed: false,
            leader_heard_at: now,
            predecessor: None,
            predecessor_heard_at: now,
            ping_next_at: now,
            beacon_next_at: now,
            beacon_fast_until: now,
            outgoing: Vec::with_capacity(outgoing_max),
            outgoing_max,
            stats: Stats::default(),
        };
        if alone {
            membership.take_over();
        }
        membership.check_invariants();
        Ok(membership)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The node's current view. Always contains the node itself.
    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Most messages the outgoing queue holds; further messages are dropped and counted in
    /// [`Stats::messages_dropped_queue_full`]. A caller that drains after every `step` and `tick`
    /// never reaches it.
    pub fn outgoing_max(&self) -> usize {
        self.outgoing_max
    }

    /// The view, if it changed since the last call.
    pub fn take_view_change(&mut self) -> Option<View> {
        if std::mem::take(&mut self.view_changed) {
            Some(self.view.clone())
        } else {
            None
        }
    }

    /// Takes the queued messages, each with the id it must be sent to.
    pub fn poll_outgoing(&mut self) -> Vec<(u32, Message)> {
        std::mem::take(&mut self.outgoing)
    }

    /// When the caller must call [`Membership::tick`] next (it may call it earlier or later;
    /// later only delays the protocol).
    pub fn next_deadline(&self) -> u64 {
        let mut deadline = match self.role {
            Role::Leader => self.beacon_next_at,
            Role::Joining | Role::Minion => self.takeover_at(),
        };
        if self.predecessor.is_some() {
            deadline = deadline.min(self.ping_next_at);
        }
        deadline
    }

    /// Handles one message from node `from`.
    pub fn step(&mut self, from: u32, message: Message, now: u64) {
        self.advance(now);
        if from == self.id || !self.all_ids.contains(&from) {
            self.stats.messages_rejected += 1;
            return;
        }
        match message {
            Message::Beacon { view } => self.on_beacon(from, view),
            Message::Ping => self.send(from, Message::PingAck),
            Message::PingAck => {
                if self.predecessor == Some(from) {
                    self.predecessor_heard_at = self.now;
                }
            }
            Message::ImHere { epoch } => self.on_im_here(from, epoch),
            Message::Failed { node, epoch } => self.on_failed(node, epoch),
        }
        self.check_invariants();
    }

    /// Runs every timer that is due at `now`.
    pub fn tick(&mut self, now: u64) {
        self.advance(now);
        if self.role != Role::Leader && self.now >= self.takeover_at() {
            // No leader better than us has been heard for our rank's timer: "I must be in
            // control".
            self.take_over();
        }
        if self.role == Role::Leader && self.now >= self.beacon_next_at {
            self.broadcast();
        }
        if self.predecessor.is_some() && self.now >= self.ping_next_at {
            self.ping_tick();
        }
        self.check_invariants();
    }

    /// Broadcasts as leader now, as if the takeover timer had fired. For operators and for
    /// simulating a false leader; a correct cluster suppresses an unjustified takeover.
    pub fn force_takeover(&mut self, now: u64) {
        self.advance(now);
        if self.role != Role::Leader {
            self.take_over();
        }
        self.check_invariants();
    }

    fn advance(&mut self, now: u64) {
        // The caller's clock must be monotonic; tolerate a step back in release builds by
        // treating it as no time passing.
        debug_assert!(now >= self.now, "time went back from {} to {now}", self.now);
        self.now = self.now.max(now);
    }

    fn takeover_at(&self) -> u64 {
        self.leader_heard_at
            .saturating_add(self.config.takeover_ms(self.rank_index))
    }

    fn lease_live(&self) -> bool {
        self.now < self.leader_heard_at + self.config.leader_lease_ms
    }

    fn on_beacon(&mut self, from: u32, beacon: View) {
        if beacon.leader != from || !beacon.is_well_formed(&self.all_ids) {
            self.stats.messages_rejected += 1;
            return;
        }
        self.epoch_seen_max = self.epoch_seen_max.max(beacon.epoch);
        let newer_or_same = beacon.order(&self.view).is_ge();
        match self.role {
            Role::Joining => {
                if from < self.id {
                    self.adopt(beacon);
                } else {
                    // We outrank the only leader we have heard of: lead the union.
                    self.merge(&beacon);
                }
            }
            Role::Leader => {
                if from > self.id {
                    self.merge(&beacon);
                } else if newer_or_same {
                    // A better leader: step down.
                    self.adopt(beacon);
                } else {
                    // A better leader that is behind us (it restarted, or was cut off): show it
                    // our view so it merges ours and bumps past our epoch.
                    self.send(
                        from,
                        Message::Beacon {
                            view: self.view.clone(),
                        },
                    );
                }
            }
            Role::Minion => {
                let acceptable = from <= self.view.leader || (!self.lease_live() && from < self.id);
                if !acceptable {
                    // A usurper while we know a better live leader (who hears the usurper's
                    // broadcast too and will correct it), or a worse leader we will replace
                    // ourselves when our takeover timer fires.
                    return;
                }
                if newer_or_same {
                    self.adopt(beacon);
                } else {
                    self.send(
                        from,
                        Message::ImHere {
                            epoch: self.view.epoch,
                        },
                    );
                }
            }
        }
    }

    fn on_im_here(&mut self, from: u32, epoch: u64) {
        self.epoch_seen_max = self.epoch_seen_max.max(epoch);
        if self.role != Role::Leader || from < self.id {
            // Not ours to answer: the sender will hear the real leader's beacons. A better node
            // never needs our consent; it takes over when it hears our beacon.
            return;
        }
        if !self.view.contains(from) || epoch > self.view.epoch {
            let mut members = self.view.members.clone();
            members.insert(from);
            self.lead(members);
        }
    }

    fn on_failed(&mut self, node: u32, epoch: u64) {
        self.epoch_seen_max = self.epoch_seen_max.max(epoch);
        if self.role != Role::Leader
            || epoch != self.view.epoch
            || node == self.id
            || !self.view.contains(node)
        {
            return;
        }
        let mut members = self.view.members.clone();
        members.remove(&node);
        self.lead(members);
    }

    /// Called when a ping is due: act on a silent predecessor, then ping it.
    fn ping_tick(&mut self) {
        let Some(predecessor) = self.predecessor else {
            return;
        };
        if self.now - self.predecessor_heard_at >= self.config.failure_timeout_ms {
            match self.role {
                Role::Leader => {
                    let mut members = self.view.members.clone();
                    members.remove(&predecessor);
                    self.lead(members);
                }
                Role::Minion if predecessor == self.view.leader => {
                    // "Successor knows that the failed node was the leader": broadcast as
                    // leader without it. We are the second-ranked member, so we lead the rest.
                    self.take_over();
                }
                Role::Minion => {
                    // Repeated every ping interval until the leader's view drops it, since the
                    // report or the leader's beacon may be lost.
                    self.send(
                        self.view.leader,
                        Message::Failed {
                            node: predecessor,
                            epoch: self.view.epoch,
                        },
                    );
                }
                Role::Joining => unreachable!("a joining node has no predecessor"),
            }
        }
        // The view may have changed above; ping whoever is the predecessor now.
        if let Some(predecessor) = self.predecessor {
            self.send(predecessor, Message::Ping);
        }
        self.ping_next_at = self.now + self.config.ping_interval_ms;
    }

    /// Lead the members of our view that we outrank: the better-ranked ones are presumed dead.
    fn take_over(&mut self) {
        let members = self.view.members.range(self.id..).copied().collect();
        self.lead(members);
    }

    /// Lead the union of our view and a worse leader's, unless that would tell nobody anything
    /// new, in which case we only show the usurper our (newer) view so it steps down.
    fn merge(&mut self, other: &View) {
        debug_assert!(other.leader > self.id);
        let union: BTreeSet<u32> = self.view.members.union(&other.members).copied().collect();
        if self.role != Role::Leader || union != self.view.members || other.epoch >= self.view.epoch
        {
            self.lead(union);
        } else {
            self.send(
                other.leader,
                Message::Beacon {
                    view: self.view.clone(),
                },
            );
        }
    }

    /// Install a new view led by us with a fresh epoch and announce it at once, then beacon fast
    /// for a while: the view is changing, so lost beacons must be repaired quickly.
    fn lead(&mut self, members: BTreeSet<u32>) {
        let epoch = self.epoch_seen_max.max(self.view.epoch) + 1;
        let view = View {
            epoch,
            leader: self.id,
            members,
        };
        self.install(view);
        self.role = Role::Leader;
        self.beacon_fast_until = self.now + self.config.beacon_fast_duration_ms;
        self.broadcast();
    }

    /// Become (or stay) a minion of the beacon's leader.
    fn adopt(&mut self, beacon: View) {
        debug_assert!(beacon.leader < self.id);
        let included = beacon.contains(self.id);
        let leader = beacon.leader;
        let mut view = beacon;
        view.members.insert(self.id);
        self.install(view);
        self.role = Role::Minion;
        self.leader_heard_at = self.now;
        if !included {
            self.send(
                leader,
                Message::ImHere {
                    epoch: self.view.epoch,
                },
            );
        }
    }

    fn install(&mut self, view: View) {
        debug_assert!(view.order(&self.view).is_ge(), "view went back");
        debug_assert!(view.contains(self.id));
        debug_assert!(view.is_well_formed(&self.all_ids));
        self.epoch_seen_max = self.epoch_seen_max.max(view.epoch);
        if view != self.view {
            self.view_changed = true;
            self.stats.view_changes += 1;
        }
        self.view = view;
        let predecessor = self.view.predecessor(self.id);
        if predecessor != self.predecessor {
            // A new predecessor gets a full failure timeout from now, and a ping right away.
            self.predecessor = predecessor;
            self.predecessor_heard_at = self.now;
            self.ping_next_at = self.now;
        }
    }

    fn broadcast(&mut self) {
        debug_assert_eq!(self.view.leader, self.id);
        let others: Vec<u32> = self
            .all_ids
            .iter()
            .copied()
            .filter(|&other| other != self.id)
            .collect();
        for other in others {
            self.send(
                other,
                Message::Beacon {
                    view: self.view.clone(),
                },
            );
        }
        let interval = if self.now < self.beacon_fast_until {
            self.config.beacon_fast_interval_ms
        } else {
            self.config.beacon_interval_ms
        };
        self.beacon_next_at = self.now + interval;
    }

    fn send(&mut self, to: u32, message: Message) {
        debug_assert!(to != self.id && self.all_ids.contains(&to));
        if self.outgoing.len() >= self.outgoing_max {
            self.stats.messages_dropped_queue_full += 1;
            return;
        }
        self.outgoing.push((to, message));
        self.stats.messages_queued += 1;
    }

    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.view.contains(self.id),
            "own view lacks self: {}",
            self.view
        );
        assert_eq!(
            self.view.members.first(),
            Some(&self.view.leader),
            "leader is not the minimum member: {}",
            self.view
        );
        assert!(self.view.members.is_subset(&self.all_ids));
        assert!(self.epoch_seen_max >= self.view.epoch);
        assert_eq!(
            self.role == Role::Leader,
            self.view.leader == self.id && self.role != Role::Joining,
            "role {:?} disagrees with view {}",
            self.role,
            self.view
        );
        assert_eq!(self.role == Role::Joining, self.view.epoch == 0);
        assert_eq!(self.predecessor, self.view.predecessor(self.id));
        assert!(self.outgoing.len() <= self.outgoing_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [u32; 5] = [1, 2, 3, 4, 5];

    fn node(id: u32) -> Membership {
        Membership::new(id, IDS.into_iter().collect(), Config::default(), 0)
    }

    fn view(epoch: u64, members: &[u32]) -> View {
        View {
            epoch,
            leader: members[0],
            members: members.iter().copied().collect(),
        }
    }

    fn beacon(epoch: u64, members: &[u32]) -> Message {
        Message::Beacon {
            view: view(epoch, members),
        }
    }

    /// A minion of `view` as of time `now`.
    fn minion(id: u32, v: View, now: u64) -> Membership {
        let mut m = node(id);
        let leader = v.leader;
        m.step(leader, Message::Beacon { view: v }, now);
        m.poll_outgoing();
        m.take_view_change();
        assert_eq!(m.role(), Role::Minion);
        m
    }

    /// A leader of `members` (led by `id`, the minimum) at `epoch`, as of time `now`.
    fn leader(id: u32, epoch: u64, members: &[u32], now: u64) -> Membership {
        let mut m = node(id);
        m.advance(now);
        m.epoch_seen_max = epoch - 1;
        m.lead(members.iter().copied().collect());
        assert_eq!(m.view(), &view(epoch, members));
        m.poll_outgoing();
        m.take_view_change();
        m
    }

    fn sent_to(out: &[(u32, Message)], to: u32) -> Vec<&Message> {
        out.iter()
            .filter(|(t, _)| *t == to)
            .map(|(_, m)| m)
            .collect()
    }

    #[test]
    fn membership_new_rejects_bad_ids() {
        let all: BTreeSet<u32> = IDS.into_iter().collect();
        let err = Membership::try_new(9, all, Config::default(), 0).unwrap_err();
        assert_eq!(err.field, "id");
        let err = Membership::try_new(0, BTreeSet::from([0, 1]), Config::default(), 0).unwrap_err();
        assert_eq!(err.field, "all_ids");
        let config = Config {
            takeover_step_ms: 0,
            ..Config::default()
        };
        let err = Membership::try_new(1, BTreeSet::from([1]), config, 0).unwrap_err();
        assert_eq!(err.field, "takeover_step_ms");
    }

    #[test]
    fn membership_single_node_cluster_leads_at_once() {
        let mut m = Membership::new(7, BTreeSet::from([7]), Config::default(), 0);
        assert_eq!(m.role(), Role::Leader);
        assert_eq!(m.take_view_change(), Some(view(1, &[7])));
        m.tick(m.next_deadline());
        assert!(m.poll_outgoing().is_empty());
    }

    #[test]
    fn membership_joining_node_is_silent_then_leads_itself() {
        let mut m = node(3);
        assert_eq!(m.role(), Role::Joining);
        assert_eq!(m.view(), &View::singleton(3));
        let deadline = m.next_deadline();
        assert_eq!(deadline, Config::default().takeover_ms(2));
        m.tick(deadline - 1);
        assert!(m.poll_outgoing().is_empty());
        m.tick(deadline);
        assert_eq!(m.role(), Role::Leader);
        assert_eq!(m.take_view_change(), Some(view(1, &[3])));
        let out = m.poll_outgoing();
        assert_eq!(out.len(), 4, "a beacon to every other configured node");
        assert!(out.iter().all(|(_, msg)| msg == &beacon(1, &[3])));
    }

    #[test]
    fn membership_joiner_not_in_view_says_im_here() {
        let mut m = node(4);
        m.step(1, beacon(7, &[1, 2]), 10);
        assert_eq!(m.role(), Role::Minion);
        assert_eq!(m.view(), &view(7, &[1, 2, 4]));
        assert_eq!(m.poll_outgoing(), vec![(1, Message::ImHere { epoch: 7 })]);
        // It pings its predecessor in the view it holds.
        assert_eq!(m.next_deadline(), 10);
        m.tick(10);
        assert_eq!(m.poll_outgoing(), vec![(2, Message::Ping)]);
    }

    #[test]
    fn membership_joiner_outranking_the_leader_takes_over_with_union() {
        let mut m = node(1);
        m.step(2, beacon(9, &[2, 3, 4]), 5);
        assert_eq!(m.role(), Role::Leader);
        assert_eq!(m.view(), &view(10, &[1, 2, 3, 4]));
        assert_eq!(m.poll_outgoing().len(), 4);
    }

    #[test]
    fn membership_leader_adds_im_here_and_bumps_epoch() {
        let mut m = leader(1, 3, &[1, 2], 0);
        m.step(3, Message::ImHere { epoch: 3 }, 10);
        assert_eq!(m.view(), &view(4, &[1, 2, 3]));
        assert_eq!(m.take_view_change(), Some(view(4, &[1, 2, 3])));
        let out = m.poll_outgoing();
        assert_eq!(sent_to(&out, 3), vec![&beacon(4, &[1, 2, 3])]);
        // A repeat from a member with an older epoch changes nothing.
        m.step(3, Message::ImHere { epoch: 3 }, 11);
        assert_eq!(m.view().epoch, 4);
        assert!(m.poll_outgoing().is_empty());
        // A member that holds a newer epoch (from some other leader) makes us bump past it.
        m.step(2, Message::ImHere { epoch: 9 }, 12);
        assert_eq!(m.view(), &view(10, &[1, 2, 3]));
    }

    #[test]
    fn membership_leader_acts_only_on_current_failure_reports() {
        let mut m = leader(1, 5, &[1, 2, 3], 0);
        m.step(3, Message::Failed { node: 2, epoch: 4 }, 10);
        assert_eq!(m.view().epoch, 5, "a report about an older view is ignored");
        m.step(3, Message::Failed { node: 2, epoch: 5 }, 11);
        assert_eq!(m.view(), &view(6, &[1, 3]));
        m.step(3, Message::Failed { node: 1, epoch: 6 }, 12);
        assert_eq!(m.view(), &view(6, &[1, 3]), "never removes itself");
    }

    #[test]
    fn membership_ping_is_acked_by_anyone() {
        let mut m = node(5);
        m.step(2, Message::Ping, 1);
        assert_eq!(m.poll_outgoing(), vec![(2, Message::PingAck)]);
    }

    #[test]
    fn membership_minion_reports_silent_predecessor_to_leader() {
        let config = Config::default();
        let mut m = minion(3, view(2, &[1, 2, 3]), 0);
        m.tick(0);
        assert_eq!(m.poll_outgoing(), vec![(2, Message::Ping)]);
        // Acks keep the predecessor alive.
        m.step(2, Message::PingAck, 50);
        let mut now = 0;
        while now < 50 + config.failure_timeout_ms - config.ping_interval_ms {
            now = m.next_deadline();
            m.tick(now);
            m.step(1, beacon(2, &[1, 2, 3]), now);
            assert!(sent_to(&m.poll_outgoing(), 1).is_empty(), "t={now}");
        }
        // Then silence until the failure timeout.
        let mut reported = false;
        while now <= 50 + config.failure_timeout_ms + config.ping_interval_ms {
            now = m.next_deadline();
            m.tick(now);
            m.step(1, beacon(2, &[1, 2, 3]), now);
            let out = m.poll_outgoing();
            if sent_to(&out, 1).contains(&&Message::Failed { node: 2, epoch: 2 }) {
                reported = true;
                assert!(
                    now >= 50 + config.failure_timeout_ms,
                    "reported early at {now}"
                );
            }
        }
        assert!(reported);
    }

    #[test]
    fn membership_successor_of_failed_leader_takes_over() {
        let config = Config::default();
        let mut m = minion(2, view(4, &[1, 2, 3]), 0);
        let mut now = 0;
        while m.role() == Role::Minion {
            now = m.next_deadline();
            m.tick(now);
        }
        assert!(now >= config.failure_timeout_ms);
        assert!(
            now < config.takeover_ms(1),
            "the ping, not the takeover timer, fired"
        );
        assert_eq!(m.view(), &view(5, &[2, 3]));
        let out = m.poll_outgoing();
        assert!(sent_to(&out, 3).contains(&&beacon(5, &[2, 3])));
    }

    #[test]
    fn membership_leader_removes_silent_predecessor() {
        let mut m = leader(1, 2, &[1, 2, 3], 0);
        let mut now = 0;
        while m.view().epoch == 2 {
            now = m.next_deadline();
            m.tick(now);
            m.poll_outgoing();
        }
        assert_eq!(
            m.view(),
            &view(3, &[1, 2]),
            "the leader watches the lowest rank"
        );
        assert!(now >= Config::default().failure_timeout_ms);
    }

    #[test]
    fn membership_minion_ignores_usurper_while_leader_lease_is_live() {
        let config = Config::default();
        let mut m = minion(4, view(3, &[1, 2, 3, 4]), 0);
        m.step(3, beacon(9, &[3, 4]), 100);
        assert_eq!(m.view(), &view(3, &[1, 2, 3, 4]), "I don't think so");
        assert!(m.poll_outgoing().is_empty());
        // After the lease runs out, a leader that outranks us is followed.
        m.step(3, beacon(9, &[3, 4]), config.leader_lease_ms);
        assert_eq!(m.view(), &view(9, &[3, 4]));
        // But never one we outrank: our own takeover timer handles that.
        let mut m = minion(4, view(3, &[1, 2, 3, 4]), 0);
        m.step(5, beacon(9, &[5]), config.leader_lease_ms + 1);
        assert_eq!(m.view().leader, 1);
    }

    #[test]
    fn membership_minion_teaches_stale_better_leader_its_epoch() {
        let mut m = minion(3, view(8, &[2, 3]), 0);
        m.step(1, beacon(2, &[1]), 10);
        assert_eq!(m.view().epoch, 8);
        assert_eq!(m.poll_outgoing(), vec![(1, Message::ImHere { epoch: 8 })]);
    }

    #[test]
    fn membership_leader_merges_worse_leader_and_usurper_steps_down() {
        let mut real = leader(1, 4, &[1, 2], 0);
        let mut usurper = leader(3, 6, &[3, 4], 0);
        real.step(3, beacon(6, &[3, 4]), 10);
        assert_eq!(
            real.view(),
            &view(7, &[1, 2, 3, 4]),
            "the union, newer than both"
        );
        let out = real.poll_outgoing();
        let to_usurper = sent_to(&out, 3)[0].clone();
        usurper.step(1, to_usurper, 11);
        assert_eq!(usurper.role(), Role::Minion);
        assert_eq!(usurper.view(), &view(7, &[1, 2, 3, 4]));
        assert!(usurper.poll_outgoing().is_empty());
        // A later stale beacon from the usurper only earns it our view again, no new epoch.
        real.step(3, beacon(6, &[3, 4]), 12);
        assert_eq!(real.view().epoch, 7);
        assert_eq!(real.poll_outgoing(), vec![(3, beacon(7, &[1, 2, 3, 4]))]);
    }

    #[test]
    fn membership_leader_shows_stale_better_leader_its_view() {
        let mut m = leader(2, 9, &[2, 3], 0);
        m.step(1, beacon(1, &[1]), 10);
        assert_eq!(m.role(), Role::Leader);
        assert_eq!(m.poll_outgoing(), vec![(1, beacon(9, &[2, 3]))]);
        // And steps down for a better leader that is not behind.
        m.step(1, beacon(10, &[1, 2, 3]), 20);
        assert_eq!(m.role(), Role::Minion);
        assert_eq!(m.view(), &view(10, &[1, 2, 3]));
    }

    #[test]
    fn membership_rejects_malformed_beacons() {
        let mut m = node(2);
        let bad = View {
            epoch: 3,
            leader: 3,
            members: BTreeSet::from([1, 3]),
        };
        m.step(3, Message::Beacon { view: bad }, 1);
        m.step(1, beacon(3, &[1, 9]), 2);
        m.step(3, beacon(3, &[1, 3]), 3);
        m.step(42, Message::Ping, 4);
        assert_eq!(m.stats().messages_rejected, 4);
        assert_eq!(m.role(), Role::Joining);
    }

    #[test]
    fn membership_outgoing_queue_is_bounded() {
        let mut m = leader(1, 2, &[1, 2, 3, 4, 5], 0);
        for _ in 0..10 {
            let deadline = m.next_deadline();
            m.tick(deadline);
        }
        assert!(m.poll_outgoing().len() <= m.outgoing_max());
        assert!(m.stats().messages_dropped_queue_full > 0);
    }
}
