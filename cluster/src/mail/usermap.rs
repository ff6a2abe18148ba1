//! The user map: a fixed number of buckets, each managed by one node, computed from the
//! membership view alone.
//!
//! A user name hashes to a bucket; a bucket's manager is chosen by rendezvous (highest random
//! weight) hashing over the view's members, so every node that has the same view computes the
//! same map with no messages, and a view change moves only the buckets it must: those of a node
//! that left (spread over the survivors), or about 1/N of them to a node that joined.
//! This module is pure: no I/O, no clocks.

use std::collections::BTreeSet;

use crate::core::hashing::{fnv1a, splitmix64};

/// Default number of buckets (Porcupine used 256).
pub const BUCKETS_DEFAULT: u32 = 256;
/// Largest bucket count accepted, so a map always fits comfortably in memory and a message.
pub const BUCKETS_MAX: u32 = 65_536;

/// Bucket → managing node, for one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMap {
    managers: Vec<u32>,
}

impl UserMap {
    /// Computes the map for `members`. An empty view has no managers (every lookup is `None`).
    pub fn compute(members: &BTreeSet<u32>, buckets: u32) -> UserMap {
        assert!(
            buckets > 0 && buckets <= BUCKETS_MAX,
            "bucket count out of range"
        );
        let managers = if members.is_empty() {
            Vec::new()
        } else {
            (0..buckets)
                .map(|b| {
                    *members
                        .iter()
                        .max_by_key(|&&node| (weight(b, node), node))
                        .expect("members is not empty")
                })
                .collect()
        };
        UserMap { managers }
    }

    pub fn buckets(&self) -> u32 {
        self.managers.len() as u32
    }

    /// The bucket a user belongs to (user names are canonical lower case).
    pub fn bucket_of(user: &str, buckets: u32) -> u32 {
        (fnv1a(user.as_bytes()) % u64::from(buckets)) as u32
    }

    /// The node that manages `user`, if the view has any members.
    pub fn manager_of(&self, user: &str) -> Option<u32> {
        if self.managers.is_empty() {
            return None;
        }
        Some(self.managers[UserMap::bucket_of(user, self.buckets()) as usize])
    }

    pub fn manager_of_bucket(&self, bucket: u32) -> Option<u32> {
        self.managers.get(bucket as usize).copied()
    }

    /// The buckets `node` manages.
    pub fn buckets_of(&self, node: u32) -> Vec<u32> {
        (0..self.managers.len() as u32)
            .filter(|&b| self.managers[b as usize] == node)
            .collect()
    }

    /// Buckets whose manager differs between `self` and `other` (maps of equal size).
    pub fn moved(&self, other: &UserMap) -> Vec<u32> {
        (0..self.managers.len().max(other.managers.len()) as u32)
            .filter(|&b| self.manager_of_bucket(b) != other.manager_of_bucket(b))
            .collect()
    }
}

/// The rendezvous weight of `node` for `bucket`: a well-mixed 64-bit hash of both.
fn weight(bucket: u32, node: u32) -> u64 {
    splitmix64((u64::from(bucket) << 32) | u64::from(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn same_view_same_map_and_every_member_manages_some() {
        let a = UserMap::compute(&view(&[1, 2, 3, 4]), 256);
        let b = UserMap::compute(&view(&[4, 3, 2, 1]), 256);
        assert_eq!(a, b);
        for n in 1..=4 {
            let owned = a.buckets_of(n).len();
            // Rendezvous hashing balances well: each of 4 nodes gets roughly 64 of 256.
            assert!(
                (32..=96).contains(&owned),
                "node {n} manages {owned} buckets"
            );
        }
        assert_eq!(a.manager_of("user1"), b.manager_of("user1"));
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_buckets() {
        let before = UserMap::compute(&view(&[1, 2, 3, 4]), 256);
        let after = UserMap::compute(&view(&[1, 2, 4]), 256);
        let moved = before.moved(&after);
        assert_eq!(moved, before.buckets_of(3));
        for b in moved {
            assert_ne!(after.manager_of_bucket(b), Some(3));
        }
    }

    #[test]
    fn a_joining_node_takes_about_its_share() {
        let before = UserMap::compute(&view(&[1, 2, 3]), 1024);
        let after = UserMap::compute(&view(&[1, 2, 3, 4]), 1024);
        let moved = before.moved(&after);
        assert!(moved.iter().all(|&b| after.manager_of_bucket(b) == Some(4)));
        assert!(
            (150..=370).contains(&moved.len()),
            "{} buckets moved",
            moved.len()
        );
    }

    #[test]
    fn empty_view_has_no_manager() {
        let m = UserMap::compute(&BTreeSet::new(), 16);
        assert_eq!(m.manager_of("user1"), None);
        assert_eq!(
            UserMap::bucket_of("user1", 16),
            UserMap::bucket_of("user1", 16)
        );
    }
}
