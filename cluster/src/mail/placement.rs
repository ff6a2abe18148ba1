//! Where a new message goes: the placement policies the cluster compares.
//!
//! - `dynamic` (Porcupine's): a mailbox may grow onto at most `spread` nodes (a soft limit);
//!   within those (or, while it has fewer, among all live nodes) the least loaded nodes, by
//!   pending disk I/O, take the message.
//! - `random`: any live nodes, uniformly.
//! - `static`: the "conventional" design: each user has a fixed home node (by hash of the name
//!   over every configured node, live or not) and replicas on the nodes after it; if the home is
//!   down, its users cannot receive mail.
//!
//! Pure: the caller passes the view, the mailbox's fragments, the loads and the random source.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    #[default]
    Dynamic,
    Random,
    Static,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Dynamic => "dynamic",
            Placement::Random => "random",
            Placement::Static => "static",
        }
    }
}

/// Why no node can take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no live node can store mail")]
    NoLiveNode,
    #[error("the home node {0} of this user is down (static placement)")]
    HomeDown(u32),
}

/// What placement decides from.
pub struct Inputs<'a> {
    pub policy: Placement,
    pub user: &'a str,
    pub replication: usize,
    pub spread: usize,
    /// Members of the current view.
    pub live: &'a BTreeSet<u32>,
    /// Every configured node.
    pub all: &'a BTreeSet<u32>,
    /// Nodes that already hold messages of this user.
    pub fragments: &'a BTreeSet<u32>,
    /// Nodes to avoid (a first choice that just failed).
    pub exclude: &'a BTreeSet<u32>,
}

/// Chooses the nodes for one message: the first stores it and pushes it to the others. Returns
/// fewer than `replication` nodes when fewer are live (dynamic, random).
pub fn choose(
    inputs: &Inputs,
    load: impl Fn(u32) -> u64,
    rng: &mut impl Rng,
) -> Result<Vec<u32>, PlacementError> {
    let live: Vec<u32> = inputs
        .live
        .iter()
        .copied()
        .filter(|n| !inputs.exclude.contains(n))
        .collect();
    if live.is_empty() {
        return Err(PlacementError::NoLiveNode);
    }
    let r = inputs.replication.max(1);
    match inputs.policy {
        Placement::Static => {
            let all: Vec<u32> = inputs.all.iter().copied().collect();
            let home_index =
                (crate::mail::usermap::UserMap::bucket_of(inputs.user, all.len() as u32)) as usize;
            let home = all[home_index];
            if !live.contains(&home) {
                return Err(PlacementError::HomeDown(home));
            }
            Ok((0..r.min(all.len()))
                .map(|k| all[(home_index + k) % all.len()])
                .collect())
        }
        Placement::Random => {
            let mut nodes = live;
            nodes.shuffle(rng);
            nodes.truncate(r);
            Ok(nodes)
        }
        Placement::Dynamic => {
            let held: Vec<u32> = live
                .iter()
                .copied()
                .filter(|n| inputs.fragments.contains(n))
                .collect();
            // Within the spread once the mailbox has reached it; otherwise it may grow.
            let mut candidates = if held.len() >= inputs.spread.max(r) {
                held
            } else {
                live
            };
            // Least pending I/O first; ties broken at random so equal nodes share the work.
            candidates.shuffle(rng);
            candidates.sort_by_key(|&n| (load(n), !inputs.fragments.contains(&n)));
            candidates.truncate(r);
            Ok(candidates)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    fn run(
        policy: Placement,
        user: &str,
        r: usize,
        live: &[u32],
        fragments: &[u32],
        load: impl Fn(u32) -> u64,
    ) -> Result<Vec<u32>, PlacementError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (live, all, fragments, exclude) =
            (set(live), set(&[1, 2, 3, 4]), set(fragments), set(&[]));
        choose(
            &Inputs {
                policy,
                user,
                replication: r,
                spread: 2,
                live: &live,
                all: &all,
                fragments: &fragments,
                exclude: &exclude,
            },
            load,
            &mut rng,
        )
    }

    #[test]
    fn dynamic_stays_within_the_spread_once_reached_and_prefers_idle_nodes() {
        let busy_3 = |n| if n == 3 { 100 } else { 0 };
        let t = run(Placement::Dynamic, "u", 1, &[1, 2, 3, 4], &[3, 4], busy_3).unwrap();
        assert_eq!(t, vec![4]);
        // Below the spread, any live node may take it: the idlest.
        let t = run(Placement::Dynamic, "u", 1, &[1, 2, 3, 4], &[], |n| {
            10 - n as u64
        })
        .unwrap();
        assert_eq!(t, vec![4]);
        let t = run(Placement::Dynamic, "u", 2, &[1, 2, 3, 4], &[1, 2], |_| 0).unwrap();
        assert_eq!(set(&t), set(&[1, 2]));
    }

    #[test]
    fn static_uses_the_home_node_and_fails_when_it_is_down() {
        let t = run(Placement::Static, "user7", 2, &[1, 2, 3, 4], &[], |_| 0).unwrap();
        assert_eq!(t.len(), 2);
        let home = t[0];
        let others: Vec<u32> = [1, 2, 3, 4].into_iter().filter(|&n| n != home).collect();
        assert_eq!(
            run(Placement::Static, "user7", 1, &others, &[], |_| 0),
            Err(PlacementError::HomeDown(home))
        );
    }

    #[test]
    fn random_and_dynamic_degrade_to_the_live_nodes() {
        let t = run(Placement::Random, "u", 3, &[2, 4], &[], |_| 0).unwrap();
        assert_eq!(set(&t), set(&[2, 4]));
        assert_eq!(
            run(Placement::Dynamic, "u", 1, &[], &[], |_| 0),
            Err(PlacementError::NoLiveNode)
        );
    }
}
