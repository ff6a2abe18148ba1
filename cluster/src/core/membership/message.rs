//! Wire types of the Wombat membership protocol: the view and the messages nodes exchange.
//!
//! These are plain serde data so a transport can send them; this module must never do I/O or
//! decide anything about the protocol. The only logic here is pure questions about a view (its
//! order, a node's predecessor, whether it is well formed).

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One node's belief about who is in the cluster.
///
/// Invariant of every view a node holds or accepts: `members` is not empty and `leader` is its
/// minimum (lower id = higher rank, and the leader is the best-ranked member).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    /// Bumped by every leader that changes the view. A node's epoch never decreases.
    pub epoch: u64,
    pub leader: u32,
    pub members: BTreeSet<u32>,
}

impl View {
    /// The view a node holds before it has heard of any other: itself alone, epoch 0.
    pub fn singleton(id: u32) -> View {
        View {
            epoch: 0,
            leader: id,
            members: BTreeSet::from([id]),
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.members.contains(&id)
    }

    /// The order in which views supersede each other: higher epoch first, and between two views
    /// of the same epoch (two leaders that bumped independently, e.g. on both sides of a
    /// partition) the one led by the better-ranked (lower) id. Equal keys are the same leader's
    /// same view.
    pub fn order(&self, other: &View) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| other.leader.cmp(&self.leader))
    }

    /// The member that `id` pings: the next higher-ranked (lower id) member, and for the leader
    /// the lowest-ranked (highest id) member, so every member is watched by exactly one other.
    /// `None` when the view holds fewer than two members or does not hold `id`.
    pub fn predecessor(&self, id: u32) -> Option<u32> {
        if self.members.len() < 2 || !self.contains(id) {
            return None;
        }
        self.members
            .range(..id)
            .next_back()
            .or_else(|| self.members.last())
            .copied()
    }

    /// Whether this view could have been sent by a correct leader of a cluster whose configured
    /// ids are `all_ids` (leaders only send views they made, so epoch 0 is never sent). Anything
    /// else is dropped on receipt.
    pub fn is_well_formed(&self, all_ids: &BTreeSet<u32>) -> bool {
        self.epoch > 0
            && self.members.first() == Some(&self.leader)
            && self.members.len() <= all_ids.len()
            && self.members.is_subset(all_ids)
    }
}

/// Everything one membership node says to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The leader's view, broadcast to every configured node (members or not, so that rejoining
    /// nodes and the other side of a healed partition hear it), and also sent to a single leader
    /// to make it merge or step down.
    Beacon {
        view: View,
    },
    /// "Are you alive?", from a node to its predecessor.
    Ping,
    PingAck,
    /// "I'm here too": the sender is alive and wants to be in the leader's view. `epoch` is the
    /// sender's current epoch, so a leader whose epoch is behind bumps past it and its next view
    /// is one the sender can adopt.
    ImHere {
        epoch: u64,
    },
    /// "Node `node` has failed", from its successor to the leader, about the view of `epoch`.
    Failed {
        node: u32,
        epoch: u64,
    },
}

impl Message {
    /// A short name for logs and per-kind counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Beacon { .. } => "beacon",
            Message::Ping => "ping",
            Message::PingAck => "ping_ack",
            Message::ImHere { .. } => "im_here",
            Message::Failed { .. } => "failed",
        }
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {} leader {} members {:?}",
            self.epoch, self.leader, self.members
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64, members: &[u32]) -> View {
        View {
            epoch,
            leader: members[0],
            members: members.iter().copied().collect(),
        }
    }

    #[test]
    fn membership_predecessor_wraps_from_leader_to_lowest_rank() {
        let v = view(1, &[1, 2, 4, 5]);
        assert_eq!(v.predecessor(1), Some(5));
        assert_eq!(v.predecessor(2), Some(1));
        assert_eq!(v.predecessor(4), Some(2));
        assert_eq!(v.predecessor(5), Some(4));
        assert_eq!(v.predecessor(3), None);
        assert_eq!(view(1, &[7]).predecessor(7), None);
    }

    #[test]
    fn membership_view_order_is_epoch_then_rank() {
        use Ordering::*;
        assert_eq!(view(2, &[3]).order(&view(1, &[1])), Greater);
        assert_eq!(view(2, &[1]).order(&view(2, &[3])), Greater);
        assert_eq!(view(2, &[3, 4]).order(&view(2, &[3])), Equal);
    }

    #[test]
    fn membership_well_formed_views() {
        let all = BTreeSet::from([1, 2, 3]);
        assert!(view(1, &[1, 3]).is_well_formed(&all));
        let wrong_leader = View {
            epoch: 1,
            leader: 3,
            members: BTreeSet::from([1, 3]),
        };
        assert!(!wrong_leader.is_well_formed(&all));
        assert!(!view(1, &[1, 9]).is_well_formed(&all));
        assert!(!View::singleton(1).is_well_formed(&all));
        let empty = View {
            epoch: 1,
            leader: 1,
            members: BTreeSet::new(),
        };
        assert!(!empty.is_well_formed(&all));
    }

    #[test]
    fn membership_messages_round_trip_through_serde() {
        let messages = [
            Message::Beacon {
                view: view(3, &[1, 2]),
            },
            Message::Ping,
            Message::PingAck,
            Message::ImHere { epoch: 4 },
            Message::Failed { node: 2, epoch: 3 },
        ];
        for message in messages {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), message);
        }
    }
}
