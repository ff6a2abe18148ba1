//! Hashing every node must compute alike: FNV-1a of names (stable across platforms and releases,
//! unlike `std`'s hasher), SplitMix64 to mix, and rendezvous (highest random weight) hashing of a
//! key over a set of members, which moves only the keys it must when a member joins or leaves.
//! Used by the mail service's user map and the web service's cache partitions. Pure.

use std::collections::BTreeSet;

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: a well-mixed 64-bit function of `x`.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The rendezvous weight of `member` for `key`.
pub fn weight(key: u64, member: u32) -> u64 {
    splitmix64(key.rotate_left(32) ^ u64::from(member))
}

/// The member that owns `key`: the one of highest weight (ties broken by the larger id); `None`
/// for no members.
pub fn rendezvous(key: u64, members: &BTreeSet<u32>) -> Option<u32> {
    members.iter().copied().max_by_key(|&m| (weight(key, m), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rendezvous_moves_only_a_leaving_members_keys() {
        let all: BTreeSet<u32> = [1, 2, 3, 4].into();
        let without_3: BTreeSet<u32> = [1, 2, 4].into();
        let mut moved = 0;
        for key in 0..4096u64 {
            let before = rendezvous(key, &all).unwrap();
            let after = rendezvous(key, &without_3).unwrap();
            if before != 3 {
                assert_eq!(before, after, "key {key} moved needlessly");
            } else {
                moved += 1;
            }
        }
        assert!(
            (800..1250).contains(&moved),
            "{moved} of 4096 keys were on 3"
        );
        assert_eq!(rendezvous(7, &BTreeSet::new()), None);
    }
}
