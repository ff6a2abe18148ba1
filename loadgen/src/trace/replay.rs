//! Replay schedules from a trace: when each logged request should be sent again, to what URL,
//! and as which user.
//!
//! [`Replay`] turns parsed [`Entry`]s (from [`clf::Reader`](super::clf::Reader), or anything else)
//! into [`Replayed`] requests with an intended start, in log order. Two timings ([`Timing`]):
//!
//! - `Trace { speedup }`: the log's own timing, compressed: an entry's start is its time minus
//!   the first entry's, divided by `speedup`. Logs are only roughly sorted (a server logs a
//!   request when it ends), so an entry older than one already seen is scheduled at the time of
//!   the latest seen, never backwards, and counted ([`Replay::reordered`]). CLF times have a
//!   resolution of one second, so requests logged in the same second start together.
//! - `Rate { per_s }`: the log's requests in its order, evenly spaced at a constant rate,
//!   whatever their times.
//!
//! Clients become users: a request's user is the log's authuser when there is one, else its
//! client host, so a driver keying sessions or profiles by user keeps each client's requests
//! together. A target logged as a path is made absolute against the base origin given
//! (`http://HOST:PORT`); an absolute one (a proxy's log) is kept as it is.
//!
//! This module holds a few numbers per replay and never the trace; it does no I/O and reads no
//! clock (times are offsets from the replay's start, which the engine owns), and it uses no
//! randomness.

use std::time::Duration;

use super::clf::Entry;

/// Fastest `Timing::Trace` speed-up (a day in under a tenth of a second).
pub const SPEEDUP_MAX: f64 = 1_000_000.0;
/// Slowest `Timing::Trace` speed-up (a slow-motion replay, 1000 times longer than the log).
pub const SPEEDUP_MIN: f64 = 0.001;
/// Highest `Timing::Rate` rate.
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
/// Longest base origin.
pub const BASE_BYTES_MAX: usize = 1024;

/// How a replay spaces its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// The log's timing divided by `speedup` (2 = twice as fast).
    Trace { speedup: f64 },
    /// The log's order at a constant rate, its times ignored.
    Rate { per_s: f64 },
}

impl Timing {
    /// Checks the value; the error names the key (`timing.speedup`, `timing.per_s`).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Timing::Trace { speedup } => {
                if !(SPEEDUP_MIN..=SPEEDUP_MAX).contains(&speedup) {
                    return Err(format!(
                        "timing.speedup: must be between {SPEEDUP_MIN} and {SPEEDUP_MAX}, not {speedup}"
                    ));
                }
            }
            Timing::Rate { per_s } => {
                if !(per_s > 0.0 && per_s <= RATE_PER_S_MAX) {
                    return Err(format!(
                        "timing.per_s: must be > 0 and <= {RATE_PER_S_MAX}, not {per_s}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One request to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Intended start, from the replay's start.
    pub at: Duration,
    /// The entry's position among the entries replayed, from 0.
    pub index: u64,
    pub method: String,
    /// The target made absolute: `base + path`, or the logged absolute URL.
    pub url: String,
    /// The authuser, else the client host.
    pub user: String,
    /// The body size the log recorded, if it did.
    pub expected_bytes: Option<u64>,
}

/// The replay of a trace, streamed: the entries in log order with their intended starts. Errors
/// of the entries' source (an I/O error of a log being read) pass through unchanged.
#[derive(Debug)]
pub struct Replay<I> {
    entries: I,
    timing: Timing,
    base: String,
    /// The first entry's time, once seen.
    first_ms: Option<i64>,
    /// The latest time seen so far.
    latest_ms: i64,
    next_index: u64,
    reordered: u64,
}

impl<I, E> Replay<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    /// A replay of `entries` at `timing`, paths made absolute against `base`
    /// (`http://HOST[:PORT]`, a trailing `/` allowed). Errors name what is wrong.
    pub fn new(
        entries: impl IntoIterator<IntoIter = I>,
        timing: Timing,
        base: &str,
    ) -> Result<Replay<I>, String> {
        timing.validate()?;
        Ok(Replay {
            entries: entries.into_iter(),
            timing,
            base: parse_base(base)?,
            first_ms: None,
            latest_ms: i64::MIN,
            next_index: 0,
            reordered: 0,
        })
    }

    /// Entries so far that were older than one before them (scheduled at the latest time seen).
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    fn replayed(&mut self, entry: Entry) -> Replayed {
        let index = self.next_index;
        self.next_index += 1;
        let at_s = match self.timing {
            Timing::Rate { per_s } => index as f64 / per_s,
            Timing::Trace { speedup } => {
                let first_ms = *self.first_ms.get_or_insert(entry.time_ms);
                if entry.time_ms < self.latest_ms {
                    self.reordered += 1;
                } else {
                    self.latest_ms = entry.time_ms;
                }
                // Saturating: a log spanning more than i64 milliseconds is not a log.
                let offset_ms = self.latest_ms.saturating_sub(first_ms).max(0);
                offset_ms as f64 / 1000.0 / speedup
            }
        };
        let url = if entry.target.starts_with('/') {
            format!("{}{}", self.base, entry.target)
        } else {
            entry.target
        };
        Replayed {
            at: Duration::try_from_secs_f64(at_s).unwrap_or(Duration::MAX),
            index,
            method: entry.method,
            url,
            user: entry.user.unwrap_or(entry.host),
            expected_bytes: entry.bytes,
        }
    }
}

impl<I, E> Iterator for Replay<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    type Item = Result<Replayed, E>;

    fn next(&mut self) -> Option<Result<Replayed, E>> {
        Some(match self.entries.next()? {
            Ok(entry) => Ok(self.replayed(entry)),
            Err(e) => Err(e),
        })
    }
}

/// `http://HOST[:PORT]` (or `https://`) without a trailing `/`.
fn parse_base(base: &str) -> Result<String, String> {
    let bad = || format!("base: must be an origin like http://HOST:PORT, not {base:?}");
    if base.len() > BASE_BYTES_MAX {
        return Err(format!("base: longer than {BASE_BYTES_MAX} bytes"));
    }
    let trimmed = base.strip_suffix('/').unwrap_or(base);
    let authority = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(bad)?;
    if authority.is_empty()
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::Path;

    use super::*;
    use crate::trace::clf;

    const BASE: &str = "http://127.0.0.1:8080";

    fn fixture() -> Vec<Entry> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/access-10.log");
        clf::open(&path).unwrap().map(Result::unwrap).collect()
    }

    fn replay(entries: &[Entry], timing: Timing) -> (Vec<Replayed>, u64) {
        let mut replay = Replay::new(
            entries.iter().cloned().map(Ok::<_, Infallible>),
            timing,
            BASE,
        )
        .unwrap();
        let out = replay.by_ref().map(Result::unwrap).collect();
        (out, replay.reordered())
    }

    #[test]
    fn replay_at_a_rate_keeps_the_logs_requests_and_order() {
        let entries = fixture();
        let (replayed, _) = replay(&entries, Timing::Rate { per_s: 4.0 });
        assert_eq!(replayed.len(), entries.len());
        let urls: Vec<&str> = replayed.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:8080/index.html",
                "http://127.0.0.1:8080/images/logo.gif",
                "http://127.0.0.1:8080/photos/bay.jpg",
                "http://www.example.org/",
                "http://127.0.0.1:8080/late.gif",
                "http://127.0.0.1:8080/index.html",
                "http://127.0.0.1:8080/cgi-bin/form",
            ]
        );
        for (i, r) in replayed.iter().enumerate() {
            assert_eq!(r.index, i as u64);
            assert_eq!(r.at, Duration::from_millis(250 * i as u64));
            assert_eq!(r.expected_bytes, entries[i].bytes);
            assert_eq!(r.method, entries[i].method);
        }
        assert_eq!(replayed[1].user, "alice");
        assert_eq!(replayed[0].user, "192.168.1.20");
        assert_eq!(replayed[6].method, "POST");
    }

    #[test]
    fn replay_of_the_trace_divides_its_gaps_by_the_speedup() {
        let entries: Vec<Entry> = (0..100_i64)
            .map(|i| Entry {
                host: format!("10.0.0.{}", i % 7),
                user: None,
                // Irregular gaps: 0 to 12.3 s.
                time_ms: 1_000_000 + i * i * 1230 / 10,
                method: "GET".into(),
                target: format!("/obj/{i}.gif"),
                status: 200,
                bytes: Some(i as u64),
                user_agent: None,
            })
            .collect();
        for speedup in [1.0, 2.5, 60.0] {
            let (replayed, reordered) = replay(&entries, Timing::Trace { speedup });
            assert_eq!(reordered, 0);
            assert_eq!(replayed[0].at, Duration::ZERO);
            for pair in replayed.windows(2).zip(entries.windows(2)) {
                let ([a, b], [x, y]) = pair else {
                    unreachable!()
                };
                let replayed_gap = (b.at - a.at).as_secs_f64();
                let logged_gap = (y.time_ms - x.time_ms) as f64 / 1000.0;
                assert!(
                    (replayed_gap - logged_gap / speedup).abs() < 1e-6,
                    "{replayed_gap} vs {logged_gap} / {speedup}"
                );
            }
        }
    }

    #[test]
    fn replay_never_goes_back_in_time_and_counts_the_stragglers() {
        let entries = fixture();
        let (replayed, reordered) = replay(&entries, Timing::Trace { speedup: 1.0 });
        let at_s: Vec<f64> = replayed.iter().map(|r| r.at.as_secs_f64()).collect();
        // 09:00:00, :01, :01, :03, :02 (logged late: held at :03), :06, :09.
        assert_eq!(at_s, [0.0, 1.0, 1.0, 3.0, 3.0, 6.0, 9.0]);
        assert_eq!(reordered, 1);
        assert_eq!(replayed[4].user, "bob");
    }

    #[test]
    fn replay_passes_errors_through_and_checks_its_settings() {
        let items: Vec<Result<Entry, &str>> = vec![Ok(fixture().remove(0)), Err("disk on fire")];
        let out: Vec<Result<Replayed, &str>> =
            Replay::new(items, Timing::Rate { per_s: 1.0 }, BASE)
                .unwrap()
                .collect();
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err("disk on fire"));

        let none = Vec::<Result<Entry, Infallible>>::new();
        let make = |timing, base: &str| Replay::new(none.clone(), timing, base).err();
        let fine = Timing::Rate { per_s: 1.0 };
        assert_eq!(make(fine, "http://h:1/"), None);
        assert_eq!(make(fine, "https://h"), None);
        for base in [
            "h:80",
            "http://",
            "http://h/x",
            "ftp://h",
            "http://a b",
            "http://u@h",
        ] {
            assert!(make(fine, base).unwrap().contains("base"), "{base}");
        }
        for (timing, key) in [
            (Timing::Trace { speedup: 0.0 }, "timing.speedup"),
            (Timing::Trace { speedup: f64::NAN }, "timing.speedup"),
            (Timing::Trace { speedup: 1e9 }, "timing.speedup"),
            (Timing::Rate { per_s: 0.0 }, "timing.per_s"),
            (
                Timing::Rate {
                    per_s: f64::INFINITY,
                },
                "timing.per_s",
            ),
        ] {
            assert!(make(timing, BASE).unwrap().contains(key), "{timing:?}");
        }
    }
}
