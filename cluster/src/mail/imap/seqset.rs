//! Message sets (RFC 3501 `sequence-set`): `1`, `2:4`, `7:*`, `*` and comma lists of them. One
//! type serves both message sequence numbers and UIDs; `*` stands for "the largest number in use"
//! and is only resolved when the set is applied to a mailbox view.
//!
//! A set is never expanded into a list of numbers: `1:4294967295` costs two integers, so a client
//! cannot make the server allocate in proportion to the numbers it names.

/// One end of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Num(u32),
    /// `*`: the largest number in use.
    Star,
}

impl Bound {
    fn value(self, star: u32) -> u32 {
        match self {
            Bound::Num(n) => n,
            Bound::Star => star,
        }
    }
}

/// A parsed `sequence-set`; a single number `n` is the range `n:n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<(Bound, Bound)>);

/// A set with `*` resolved: sorted, merged, inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<(u32, u32)>);

impl SeqSet {
    /// Resolves `*` to `star` (0 for an empty mailbox, which then matches nothing).
    pub fn resolve(&self, star: u32) -> Ranges {
        let mut ranges: Vec<(u32, u32)> = self
            .0
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.value(star), b.value(star));
                (a.min(b), a.max(b))
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ranges(merged)
    }

    /// Whether this set, read as message sequence numbers, names a message that does not exist
    /// in a mailbox of `exists` messages (a client error). Ranges that end in `*` are clamped
    /// instead (`1:*` on an empty mailbox names nothing, `5:*` of 3 messages names message 3),
    /// because clients routinely send them without knowing the mailbox size.
    pub fn names_missing(&self, exists: u32) -> bool {
        self.0.iter().any(|&(a, b)| match (a, b) {
            (Bound::Num(a), Bound::Num(b)) => a == 0 || b == 0 || a.max(b) > exists,
            (Bound::Num(n), Bound::Star) | (Bound::Star, Bound::Num(n)) => n == 0,
            (Bound::Star, Bound::Star) => false,
        })
    }
}

impl Ranges {
    pub fn contains(&self, n: u32) -> bool {
        // The ranges are sorted and disjoint: find the last one starting at or before n.
        let i = self.0.partition_point(|&(lo, _)| lo <= n);
        i > 0 && self.0[i - 1].1 >= n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[(Bound, Bound)]) -> SeqSet {
        SeqSet(v.to_vec())
    }

    #[test]
    fn ranges_merge_and_match() {
        use Bound::*;
        let s = set(&[
            (Num(5), Num(3)),
            (Num(4), Num(8)),
            (Num(10), Num(10)),
            (Num(20), Star),
        ]);
        let r = s.resolve(15);
        assert_eq!(r, Ranges(vec![(3, 8), (10, 10), (15, 20)]));
        for n in [3, 5, 8, 10, 15, 20] {
            assert!(r.contains(n), "{n}");
        }
        for n in [0, 1, 2, 9, 11, 14, 21, u32::MAX] {
            assert!(!r.contains(n), "{n}");
        }
    }

    #[test]
    fn star_on_an_empty_mailbox_matches_nothing() {
        use Bound::*;
        // With no messages there is nothing to match; `*` itself resolves to no valid number.
        assert!(!set(&[(Star, Star)]).resolve(0).contains(1));
        assert!(!set(&[(Num(1), Star)]).names_missing(0));
        assert!(set(&[(Num(1), Num(1))]).names_missing(0));
        assert!(set(&[(Num(2), Num(4))]).names_missing(3));
        assert!(!set(&[(Num(2), Num(3)), (Star, Star)]).names_missing(3));
    }

    #[test]
    fn huge_uid_range_costs_nothing() {
        use Bound::*;
        let r = set(&[(Num(1), Num(u32::MAX))]).resolve(7);
        assert!(r.contains(u32::MAX) && r.contains(1));
    }
}
