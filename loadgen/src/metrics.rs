//! Recording what the load did: latency histograms per operation kind, errors by kind, a
//! per-second time series, live figures for a progress line, and a [`Summary`] for results.json.
//!
//! Latency is measured from each operation's *intended* start (see [`Recorder::record`]), so a
//! target that stalls shows the stall as latency instead of silently receiving less load
//! (coordinated omission). Everything is kept as HdrHistograms, never averages, so recorders of
//! several engines or agents merge exactly ([`Recorder::merge`]), and a summary's histograms can be
//! decoded and merged later ([`decode_histogram`]).
//!
//! Memory is bounded for hours-long runs: the totals are three fixed-size histograms; the series
//! keeps one small histogram per second and kind for the last [`INTERVAL_SEAL_AFTER_S`] seconds and
//! packs older seconds into their compact V2 encoding (a few hundred bytes each), and stops at
//! [`INTERVALS_MAX`] seconds. This module does no I/O and never reads a clock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{
    DeserializeError, Deserializer, Serializer as _, V2DeflateSerializer, V2Serializer,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::OpKind;

/// Longest latency told apart: one hour. Anything longer is recorded as one hour.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Seconds of the per-second series (one day). Operations whose intended start is later still
/// count in the totals and the live figures, but not in the series; [`Summary::series_dropped`]
/// says how many there were.
pub const INTERVALS_MAX: usize = 86_400;
/// Significant figures of the total histograms: 0.1% resolution.
pub const TOTAL_SIGFIG: u8 = 3;
/// Significant figures of the per-second histograms: 1% resolution is plenty for a chart, and
/// keeps a second of the series small.
pub const INTERVAL_SIGFIG: u8 = 2;
/// Seconds behind the newest intended start after which a second of the series is packed. An
/// operation that completes later than this still lands in its second (which is unpacked and
/// repacked for it), just more slowly.
pub const INTERVAL_SEAL_AFTER_S: u64 = 300;
/// Distinct error kinds kept per operation kind; further kinds count as [`ERROR_KIND_OTHER`], so
/// an error message with an id in it cannot grow the map without bound.
pub const ERROR_KINDS_MAX: usize = 32;
/// Longest error kind kept; longer ones are cut (at a character boundary).
pub const ERROR_KIND_BYTES_MAX: usize = 64;
/// The error kind counting kinds beyond [`ERROR_KINDS_MAX`].
pub const ERROR_KIND_OTHER: &str = "other";
/// Completed seconds the live figures cover.
pub const LIVE_WINDOW_S: u64 = 5;

/// Collects the outcome of every operation of one run (or of one engine or agent of it).
#[derive(Debug, Clone)]
pub struct Recorder {
    warmup: Duration,
    totals: [OpTotals; OpKind::COUNT],
    /// Indexed by the second of the intended start.
    intervals: Vec<[IntervalOp; OpKind::COUNT]>,
    /// Every second below this one is packed (or empty).
    sealed_below: usize,
    /// The latest second of an intended start recorded in the series.
    newest_interval: Option<usize>,
    series_dropped: u64,
    live: Live,
    /// The lowest second of the series changed since the last [`Recorder::take_delta_state`]:
    /// taking a delta looks at the seconds from here on only, not at the whole run.
    dirty_from: Option<usize>,
}

impl Recorder {
    /// A recorder whose totals leave out operations intended to start before `warmup`.
    pub fn new(warmup: Duration) -> Recorder {
        Recorder {
            warmup,
            totals: std::array::from_fn(|_| OpTotals::new()),
            intervals: Vec::new(),
            sealed_below: 0,
            newest_interval: None,
            series_dropped: 0,
            live: Live::new(),
            dirty_from: None,
        }
    }

    /// The warmup this recorder excludes from its totals.
    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    /// Records one finished operation. `intended` = offset of the intended start from run start;
    /// `latency` = from intended start to completion (so queueing and stalls show as latency —
    /// coordinated omission corrected). `error` is the kind of failure (a short, stable label such
    /// as `"timeout"` or `"smtp 451"`), `None` on success; failed operations count as errors only,
    /// not in the latency histograms.
    pub fn record(
        &mut self,
        kind: OpKind,
        intended: Duration,
        latency: Duration,
        error: Option<&str>,
    ) {
        let latency_us = latency_us(latency);
        if intended >= self.warmup {
            self.totals[index(kind)].record(latency_us, error);
        }
        self.live
            .record(intended + latency, latency_us, error.is_some());

        let second = intended.as_secs();
        let Some(second) = usize::try_from(second)
            .ok()
            .filter(|second| *second < INTERVALS_MAX)
        else {
            self.series_dropped += 1;
            return;
        };
        self.grow_series_to(second);
        self.mark_dirty(second);
        let slot = &mut self.intervals[second][index(kind)];
        match error {
            Some(_) => slot.errors += 1,
            None => slot.latency.record(latency_us),
        }
        if second < self.sealed_below {
            // A late operation reopened a packed second: pack it again.
            slot.latency.seal();
        }
        self.seal_old_seconds();
    }

    /// Adds everything `other` recorded, exactly: merging the recorders of several engines or
    /// agents gives what one recorder of all their operations would. Both should have the same
    /// warmup (each has already left its own warmup out of its totals).
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.totals.iter_mut().zip(&other.totals) {
            mine.merge(theirs);
        }
        if !other.intervals.is_empty() {
            self.grow_series_to(other.intervals.len() - 1);
        }
        if let Some(first) = other
            .intervals
            .iter()
            .position(|kinds| kinds.iter().any(|k| k.errors > 0 || !k.latency.is_empty()))
        {
            self.mark_dirty(first);
        }
        for (second, theirs) in other.intervals.iter().enumerate() {
            for (mine, theirs) in self.intervals[second].iter_mut().zip(theirs) {
                mine.errors += theirs.errors;
                if let Some(histogram) = theirs.latency.histogram() {
                    mine.latency.add(&histogram);
                    if second < self.sealed_below {
                        mine.latency.seal();
                    }
                }
            }
        }
        self.series_dropped += other.series_dropped;
        self.live.merge(&other.live);
        self.seal_old_seconds();
    }

    /// The results of the run so far. `elapsed` is the run's length from its start (warmup
    /// included); throughput is over `elapsed` minus the warmup.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let measured_s = elapsed.saturating_sub(self.warmup).as_secs_f64();
        let ops = OpKind::ALL
            .iter()
            .zip(&self.totals)
            .filter(|(_, totals)| totals.seen)
            .map(|(kind, totals)| (*kind, totals.summary(measured_s)))
            .collect();
        let series = self
            .intervals
            .iter()
            .enumerate()
            .map(|(second, per_kind)| SecondPoint {
                t_s: second as u64,
                per_op: OpKind::ALL
                    .iter()
                    .zip(per_kind)
                    .filter_map(|(kind, slot)| slot.point().map(|point| (*kind, point)))
                    .collect(),
            })
            .collect();
        Summary {
            warmup_s: self.warmup.as_secs_f64(),
            measured_s,
            ops,
            series,
            series_dropped: self.series_dropped,
        }
    }

    /// Figures for a progress line, over the [`LIVE_WINDOW_S`] seconds of completions before the
    /// newest completion's second.
    pub fn live(&self) -> LiveFigures {
        let now = Duration::from_secs(self.live.newest_s.unwrap_or(0));
        self.live_at(now)
    }

    /// Like [`Recorder::live`], over the [`LIVE_WINDOW_S`] whole seconds before `now` (from run
    /// start): with the engine's clock, a target that stopped completing anything shows as zero
    /// operations per second rather than as its last good second.
    pub fn live_at(&self, now: Duration) -> LiveFigures {
        self.live.figures(now.as_secs())
    }

    /// Moves out everything recorded since the last call (totals and series; the live window
    /// stays) in its wire form: an agent streams these, and merging them
    /// ([`Recorder::merge_state`]) gives exactly what one recorder of all the operations would.
    /// Costs the seconds changed since the last call, not the whole run.
    pub fn take_delta_state(&mut self) -> RecorderState {
        let totals = self
            .totals
            .iter_mut()
            .map(|t| {
                let state = TotalsState {
                    seen: t.seen,
                    attempted: t.attempted,
                    errors: t.errors,
                    errors_by_kind: std::mem::take(&mut t.errors_by_kind),
                    histogram: encode_histogram(&t.latency_us),
                };
                // Whether a kind was ever seen stays, so a kind seen only early still shows.
                t.attempted = 0;
                t.errors = 0;
                t.latency_us.reset();
                state
            })
            .collect();
        let mut intervals = Vec::new();
        if let Some(from) = self.dirty_from.take() {
            for (second, kinds) in self.intervals.iter_mut().enumerate().skip(from) {
                for (kind, op) in kinds.iter_mut().enumerate() {
                    let histogram = op.latency.histogram().map(|h| encode_histogram(&h));
                    if op.errors > 0 || histogram.is_some() {
                        intervals.push(IntervalState {
                            second: second as u32,
                            kind: kind as u8,
                            errors: op.errors,
                            histogram,
                        });
                    }
                    *op = IntervalOp::default();
                }
            }
        }
        RecorderState {
            warmup_s: self.warmup.as_secs_f64(),
            totals,
            intervals,
            series_dropped: std::mem::take(&mut self.series_dropped),
        }
    }

    /// Adds a [`RecorderState`] (from [`Recorder::to_state`] or
    /// [`Recorder::take_delta_state`]) exactly, touching only the seconds it holds. A malformed
    /// state is an error that says what is wrong, and adds nothing.
    pub fn merge_state(&mut self, state: &RecorderState) -> Result<(), String> {
        self.merge_states(std::slice::from_ref(state))
    }

    /// [`Recorder::merge_state`] for several states, all or none: if any is malformed, nothing
    /// is added.
    pub fn merge_states(&mut self, states: &[RecorderState]) -> Result<(), String> {
        let decoded = states
            .iter()
            .map(Decoded::of)
            .collect::<Result<Vec<_>, _>>()?;
        for (state, d) in states.iter().zip(decoded) {
            self.apply(state, d);
        }
        Ok(())
    }

    fn apply(&mut self, state: &RecorderState, decoded: Decoded) {
        for ((mine, theirs), h) in self
            .totals
            .iter_mut()
            .zip(&state.totals)
            .zip(&decoded.totals)
        {
            mine.seen |= theirs.seen;
            mine.attempted += theirs.attempted;
            mine.errors += theirs.errors;
            for (kind, n) in &theirs.errors_by_kind {
                mine.count_error(kind, *n);
            }
            for v in h.iter_recorded() {
                mine.latency_us.saturating_record_n(
                    v.value_iterated_to().min(LATENCY_US_MAX),
                    v.count_at_value(),
                );
            }
        }
        for (second, kind, errors, h) in decoded.intervals {
            self.grow_series_to(second);
            self.mark_dirty(second);
            let slot = &mut self.intervals[second][kind];
            slot.errors += errors;
            if let Some(h) = h {
                slot.latency.add(&h);
                if second < self.sealed_below {
                    slot.latency.seal();
                }
            }
        }
        self.series_dropped += state.series_dropped;
        self.seal_old_seconds();
    }

    fn mark_dirty(&mut self, second: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(second, |d| d.min(second)));
    }

    /// Everything but the live window, in a form that crosses the network (histograms in
    /// their V2 encoding): [`Recorder::from_state`] rebuilds it exactly.
    pub fn to_state(&self) -> RecorderState {
        RecorderState {
            warmup_s: self.warmup.as_secs_f64(),
            totals: self
                .totals
                .iter()
                .map(|t| TotalsState {
                    seen: t.seen,
                    attempted: t.attempted,
                    errors: t.errors,
                    errors_by_kind: t.errors_by_kind.clone(),
                    histogram: encode_histogram(&t.latency_us),
                })
                .collect(),
            intervals: self
                .intervals
                .iter()
                .enumerate()
                .flat_map(|(second, kinds)| {
                    kinds.iter().enumerate().filter_map(move |(kind, op)| {
                        let histogram = op.latency.histogram();
                        (op.errors > 0 || histogram.is_some()).then(|| IntervalState {
                            second: second as u32,
                            kind: kind as u8,
                            errors: op.errors,
                            histogram: histogram.map(|h| encode_histogram(&h)),
                        })
                    })
                })
                .collect(),
            series_dropped: self.series_dropped,
        }
    }

    /// Rebuilds a recorder from [`Recorder::to_state`]; an error says what is malformed.
    pub fn from_state(state: &RecorderState) -> Result<Recorder, String> {
        if !(state.warmup_s >= 0.0 && state.warmup_s <= crate::workload::DURATION_S_MAX) {
            return Err(format!("warmup_s {} out of range", state.warmup_s));
        }
        let mut r = Recorder::new(Duration::from_secs_f64(state.warmup_s));
        r.merge_state(state)?;
        Ok(r)
    }

    fn grow_series_to(&mut self, second: usize) {
        if self.intervals.len() <= second {
            self.intervals.resize_with(second + 1, Default::default);
        }
        self.newest_interval = self.newest_interval.max(Some(second));
    }

    fn seal_old_seconds(&mut self) {
        let Some(newest) = self.newest_interval else {
            return;
        };
        let limit = newest
            .saturating_sub(INTERVAL_SEAL_AFTER_S as usize)
            .min(self.intervals.len());
        while self.sealed_below < limit {
            for slot in &mut self.intervals[self.sealed_below] {
                slot.latency.seal();
            }
            self.sealed_below += 1;
        }
    }
}

/// A [`RecorderState`]'s histograms decoded and its seconds checked: what merging needs.
struct Decoded {
    totals: Vec<Histogram<u64>>,
    /// (second, kind, errors, latency histogram)
    intervals: Vec<(usize, usize, u64, Option<Histogram<u64>>)>,
}

impl Decoded {
    fn of(state: &RecorderState) -> Result<Decoded, String> {
        if state.totals.len() != OpKind::COUNT {
            return Err(format!(
                "{} totals, not {}",
                state.totals.len(),
                OpKind::COUNT
            ));
        }
        let totals = state
            .totals
            .iter()
            .map(|t| decode_histogram(&t.histogram).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut intervals = Vec::with_capacity(state.intervals.len());
        for i in &state.intervals {
            let second = i.second as usize;
            if second >= INTERVALS_MAX || i.kind as usize >= OpKind::COUNT {
                return Err(format!("interval {second}/{} out of range", i.kind));
            }
            let h = match &i.histogram {
                Some(encoded) => Some(decode_histogram(encoded).map_err(|e| e.to_string())?),
                None => None,
            };
            intervals.push((second, i.kind as usize, i.errors, h));
        }
        Ok(Decoded { totals, intervals })
    }
}

/// A [`Recorder`] without its live window, for the wire (see [`Recorder::to_state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecorderState {
    pub warmup_s: f64,
    /// SMTP, POP3, IMAP.
    pub totals: Vec<TotalsState>,
    /// The seconds of the series that hold anything.
    pub intervals: Vec<IntervalState>,
    pub series_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotalsState {
    pub seen: bool,
    pub attempted: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Base64 of HdrHistogram V2 + DEFLATE.
    pub histogram: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalState {
    pub second: u32,
    /// 0 SMTP, 1 POP3, 2 IMAP.
    pub kind: u8,
    pub errors: u64,
    pub histogram: Option<String>,
}

/// Results of a run, as written to results.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The warmup left out of the totals.
    pub warmup_s: f64,
    /// The time the totals' throughput is over: elapsed minus warmup.
    pub measured_s: f64,
    /// Totals per operation kind that occurred at all (warmup included).
    pub ops: BTreeMap<OpKind, OpSummary>,
    /// One point per second of intended start, from 0 to the last with any operation (warmup
    /// included); kinds without operations in a second are left out of its point.
    pub series: Vec<SecondPoint>,
    /// Operations intended to start after [`INTERVALS_MAX`] seconds, in the totals but not in
    /// the series.
    pub series_dropped: u64,
}

/// Totals of one operation kind after the warmup. Latencies are of successful operations, from
/// their intended start; with no successes they are all 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Operations that finished, successfully or not.
    pub attempted: u64,
    /// Successful operations.
    pub count: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Successful operations per second of the measured time.
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The latency histogram (µs), HdrHistogram V2 + DEFLATE, base64: decode with
    /// [`decode_histogram`] to merge runs or agents exactly.
    pub histogram: String,
}

/// One second of the series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondPoint {
    /// The second of the intended start, from run start.
    pub t_s: u64,
    pub per_op: BTreeMap<OpKind, PointFigures>,
}

/// One kind's figures in one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointFigures {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Figures for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFigures {
    /// Successful completions per second over the window.
    pub ops_per_s: f64,
    /// Failed completions per second over the window.
    pub errors_per_s: f64,
    /// Every error so far, warmup included.
    pub errors_total: u64,
    /// p99 latency of the successes in the window; `None` when there were none.
    pub p99_ms: Option<f64>,
}

/// A histogram in a summary could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum HistogramDecodeError {
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram is not a valid HdrHistogram V2 encoding: {0}")]
    Hdr(#[from] DeserializeError),
}

/// Decodes [`OpSummary::histogram`] (base64 of HdrHistogram V2, with or without DEFLATE).
pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, HistogramDecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim())?;
    Ok(Deserializer::new().deserialize(&mut bytes.as_slice())?)
}

/// Encodes a histogram as [`OpSummary::histogram`] does: V2 + DEFLATE, base64.
pub fn encode_histogram(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail; the serializer's only other error is a histogram too
    // large to encode, which one bounded by LATENCY_US_MAX is not.
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .expect("an in-memory histogram encodes");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn index(kind: OpKind) -> usize {
    match kind {
        OpKind::Smtp => 0,
        OpKind::Pop3 => 1,
        OpKind::Imap => 2,
        OpKind::Html => 3,
        OpKind::Gif => 4,
        OpKind::Jpeg => 5,
        OpKind::Other => 6,
    }
}

/// Whole microseconds, saturating at [`LATENCY_US_MAX`].
fn latency_us(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .min(LATENCY_US_MAX)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A growable histogram for the series and the live window: small while latencies are small.
fn small_histogram() -> Histogram<u64> {
    Histogram::new(INTERVAL_SIGFIG).expect("INTERVAL_SIGFIG is a valid precision")
}

/// Records into a growable histogram. Not `saturating_record`, which clamps to the current size
/// instead of growing.
fn record_growing(h: &mut Histogram<u64>, latency_us: u64) {
    // Growable, and latency_us is at most LATENCY_US_MAX: recording cannot fail; should it ever,
    // the value is clamped rather than lost.
    if h.record(latency_us).is_err() {
        h.saturating_record(latency_us);
    }
}

#[derive(Debug, Clone)]
struct OpTotals {
    /// Whether anything of this kind was recorded, warmup included.
    seen: bool,
    attempted: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

impl OpTotals {
    fn new() -> OpTotals {
        OpTotals {
            seen: false,
            attempted: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, TOTAL_SIGFIG)
                .expect("LATENCY_US_MAX and TOTAL_SIGFIG are valid bounds"),
        }
    }

    fn record(&mut self, latency_us: u64, error: Option<&str>) {
        self.seen = true;
        self.attempted += 1;
        match error {
            Some(error_kind) => {
                self.errors += 1;
                self.count_error(error_kind, 1);
            }
            None => self.latency_us.saturating_record(latency_us),
        }
    }

    fn count_error(&mut self, error_kind: &str, n: u64) {
        let mut cut = error_kind.len().min(ERROR_KIND_BYTES_MAX);
        while !error_kind.is_char_boundary(cut) {
            cut -= 1;
        }
        let error_kind = &error_kind[..cut];
        let key = if self.errors_by_kind.contains_key(error_kind)
            || self.errors_by_kind.len() < ERROR_KINDS_MAX - 1
        {
            error_kind
        } else {
            ERROR_KIND_OTHER
        };
        *self.errors_by_kind.entry(key.to_string()).or_insert(0) += n;
    }

    fn merge(&mut self, other: &OpTotals) {
        self.seen |= other.seen;
        self.attempted += other.attempted;
        self.errors += other.errors;
        for (error_kind, n) in &other.errors_by_kind {
            self.count_error(error_kind, *n);
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("total histograms share their bounds");
    }

    fn summary(&self, measured_s: f64) -> OpSummary {
        let h = &self.latency_us;
        let count = h.len();
        let at = |quantile: f64| {
            if count == 0 {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        OpSummary {
            attempted: self.attempted,
            count,
            errors: self.errors,
            errors_by_kind: self.errors_by_kind.clone(),
            throughput_per_s: if measured_s > 0.0 {
                count as f64 / measured_s
            } else {
                0.0
            },
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: if count == 0 { 0.0 } else { ms(h.max()) },
            mean_ms: h.mean() / 1000.0,
            histogram: encode_histogram(h),
        }
    }
}

/// One kind in one second of the series.
#[derive(Debug, Clone, Default)]
struct IntervalOp {
    errors: u64,
    latency: IntervalLatency,
}

impl IntervalOp {
    fn point(&self) -> Option<PointFigures> {
        let figures = self.latency.figures();
        (figures.count > 0 || self.errors > 0).then(|| PointFigures {
            count: figures.count,
            errors: self.errors,
            p50_ms: ms(figures.p50_us),
            p99_ms: ms(figures.p99_us),
            max_ms: ms(figures.max_us),
        })
    }
}

/// A second's latency histogram: absent, live, or packed once the second is old.
#[derive(Debug, Clone, Default)]
enum IntervalLatency {
    #[default]
    Empty,
    Open(Box<Histogram<u64>>),
    Sealed(Box<Sealed>),
}

/// A packed second: its V2 encoding, and the figures the series needs so a summary does not
/// decode every second.
#[derive(Debug, Clone)]
struct Sealed {
    encoded: Box<[u8]>,
    figures: LatencyFigures,
}

#[derive(Debug, Clone, Copy, Default)]
struct LatencyFigures {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl LatencyFigures {
    fn of(h: &Histogram<u64>) -> LatencyFigures {
        if h.is_empty() {
            return LatencyFigures::default();
        }
        LatencyFigures {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

impl IntervalLatency {
    fn record(&mut self, latency_us: u64) {
        let mut h = self.take_open();
        record_growing(&mut h, latency_us);
        *self = IntervalLatency::Open(h);
    }

    fn add(&mut self, other: &Histogram<u64>) {
        let mut h = self.take_open();
        h.add(other)
            .expect("a growable histogram takes any other histogram");
        *self = IntervalLatency::Open(h);
    }

    /// The histogram to record into: the live one, a fresh one, or the packed one unpacked.
    fn take_open(&mut self) -> Box<Histogram<u64>> {
        match std::mem::take(self) {
            IntervalLatency::Empty => Box::new(small_histogram()),
            IntervalLatency::Open(h) => h,
            IntervalLatency::Sealed(sealed) => {
                let mut h = Box::new(sealed.decode());
                h.auto(true);
                h
            }
        }
    }

    fn seal(&mut self) {
        if let IntervalLatency::Open(h) = self {
            let mut encoded = Vec::new();
            // Writing into a Vec cannot fail; should encoding ever fail, the second simply
            // stays unpacked.
            if V2Serializer::new()
                .serialize(h.as_ref(), &mut encoded)
                .is_ok()
            {
                *self = IntervalLatency::Sealed(Box::new(Sealed {
                    encoded: encoded.into_boxed_slice(),
                    figures: LatencyFigures::of(h),
                }));
            }
        }
    }

    fn histogram(&self) -> Option<Cow<'_, Histogram<u64>>> {
        match self {
            IntervalLatency::Empty => None,
            IntervalLatency::Open(h) => Some(Cow::Borrowed(h.as_ref())),
            IntervalLatency::Sealed(sealed) => Some(Cow::Owned(sealed.decode())),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, IntervalLatency::Empty)
    }

    fn figures(&self) -> LatencyFigures {
        match self {
            IntervalLatency::Empty => LatencyFigures::default(),
            IntervalLatency::Open(h) => LatencyFigures::of(h),
            IntervalLatency::Sealed(sealed) => sealed.figures,
        }
    }
}

impl Sealed {
    fn decode(&self) -> Histogram<u64> {
        Deserializer::new()
            .deserialize(&mut &self.encoded[..])
            .expect("a packed second decodes: this module encoded it")
    }
}

/// Completions of the last few seconds, by completion time, in a ring of one slot per second.
#[derive(Debug, Clone)]
struct Live {
    slots: Vec<LiveSlot>,
    newest_s: Option<u64>,
    errors_total: u64,
}

#[derive(Debug, Clone)]
struct LiveSlot {
    /// The second this slot holds; a slot whose second has left the window is stale.
    second: u64,
    succeeded: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl LiveSlot {
    fn clear(&mut self, second: u64) {
        self.second = second;
        self.succeeded = 0;
        self.errors = 0;
        self.latency_us.reset();
    }
}

/// Slots of the ring: the window, plus the second being filled.
const LIVE_SLOTS: u64 = LIVE_WINDOW_S + 1;

impl Live {
    fn new() -> Live {
        Live {
            slots: (0..LIVE_SLOTS)
                .map(|_| LiveSlot {
                    // Every slot starts stale: no second maps to a slot index other than its own.
                    second: u64::MAX,
                    succeeded: 0,
                    errors: 0,
                    latency_us: small_histogram(),
                })
                .collect(),
            newest_s: None,
            errors_total: 0,
        }
    }

    /// The slot for `second`, cleared if it held an older second; `None` if `second` is too old
    /// for the window.
    fn slot(&mut self, second: u64) -> Option<&mut LiveSlot> {
        let newest = self.newest_s.map_or(second, |newest| newest.max(second));
        if second + LIVE_SLOTS <= newest {
            return None;
        }
        self.newest_s = Some(newest);
        let slot = &mut self.slots[(second % LIVE_SLOTS) as usize];
        if slot.second != second {
            slot.clear(second);
        }
        Some(slot)
    }

    fn record(&mut self, completed: Duration, latency_us: u64, failed: bool) {
        if failed {
            self.errors_total += 1;
        }
        if let Some(slot) = self.slot(completed.as_secs()) {
            if failed {
                slot.errors += 1;
            } else {
                record_growing(&mut slot.latency_us, latency_us);
                slot.succeeded += 1;
            }
        }
    }

    fn merge(&mut self, other: &Live) {
        self.errors_total += other.errors_total;
        for theirs in &other.slots {
            if other.newest_s.is_some_and(|newest| theirs.second <= newest) {
                if let Some(mine) = self.slot(theirs.second) {
                    mine.succeeded += theirs.succeeded;
                    mine.errors += theirs.errors;
                    mine.latency_us
                        .add(&theirs.latency_us)
                        .expect("a growable histogram takes any other histogram");
                }
            }
        }
    }

    fn figures(&self, now_s: u64) -> LiveFigures {
        let window = now_s.saturating_sub(LIVE_WINDOW_S)..now_s;
        let window_s = (window.end - window.start) as f64;
        let mut succeeded = 0;
        let mut errors = 0;
        let mut latency_us = small_histogram();
        for slot in self
            .slots
            .iter()
            .filter(|slot| window.contains(&slot.second))
        {
            succeeded += slot.succeeded;
            errors += slot.errors;
            latency_us
                .add(&slot.latency_us)
                .expect("a growable histogram takes any other histogram");
        }
        let per_s = |n: u64| {
            if window_s > 0.0 {
                n as f64 / window_s
            } else {
                0.0
            }
        };
        LiveFigures {
            ops_per_s: per_s(succeeded),
            errors_per_s: per_s(errors),
            errors_total: self.errors_total,
            p99_ms: (!latency_us.is_empty()).then(|| ms(latency_us.value_at_quantile(0.99))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn assert_close(actual: f64, expected: f64) {
        // Total histograms keep 3 significant figures.
        assert!(
            (actual - expected).abs() <= expected * 0.001 + 1e-9,
            "{actual} is not {expected} within 0.1%"
        );
    }

    #[test]
    fn metrics_percentiles_of_known_data() {
        let mut recorder = Recorder::new(Duration::ZERO);
        for latency_ms in 1..=1000 {
            recorder.record(OpKind::Smtp, ms_d(latency_ms), ms_d(latency_ms), None);
        }
        let summary = recorder.summary(Duration::from_secs(10));
        let smtp = &summary.ops[&OpKind::Smtp];
        assert_eq!(smtp.count, 1000);
        assert_eq!(smtp.attempted, 1000);
        assert_eq!(smtp.errors, 0);
        assert_close(smtp.p50_ms, 500.0);
        assert_close(smtp.p90_ms, 900.0);
        assert_close(smtp.p99_ms, 990.0);
        assert_close(smtp.p999_ms, 999.0);
        assert_close(smtp.max_ms, 1000.0);
        assert_close(smtp.mean_ms, 500.5);
        assert_close(smtp.throughput_per_s, 100.0);
        assert!(!summary.ops.contains_key(&OpKind::Imap));
        // The series: second 0 holds latencies 1..=999 ms, second 1 the 1000 ms one.
        assert_eq!(summary.series.len(), 2);
        let first = &summary.series[0].per_op[&OpKind::Smtp];
        assert_eq!(first.count, 999);
        assert!((first.p50_ms - 500.0).abs() <= 5.0, "{}", first.p50_ms);
    }

    #[test]
    fn metrics_latency_saturates_at_the_maximum() {
        let mut recorder = Recorder::new(Duration::ZERO);
        recorder.record(
            OpKind::Pop3,
            Duration::ZERO,
            Duration::from_secs(10 * 3600),
            None,
        );
        let pop3 = &recorder.summary(Duration::from_secs(1)).ops[&OpKind::Pop3];
        assert_close(pop3.max_ms, LATENCY_US_MAX as f64 / 1000.0);
    }

    #[test]
    fn metrics_warmup_is_excluded_from_totals_but_kept_in_the_series() {
        let mut recorder = Recorder::new(Duration::from_secs(5));
        for second in 0..10 {
            recorder.record(OpKind::Imap, Duration::from_secs(second), ms_d(20), None);
            recorder.record(
                OpKind::Imap,
                Duration::from_secs(second),
                ms_d(20),
                Some("timeout"),
            );
        }
        let summary = recorder.summary(Duration::from_secs(10));
        let imap = &summary.ops[&OpKind::Imap];
        assert_eq!((imap.count, imap.errors, imap.attempted), (5, 5, 10));
        assert_close(imap.throughput_per_s, 1.0);
        assert_eq!(summary.measured_s, 5.0);
        assert_eq!(summary.series.len(), 10);
        for (second, point) in summary.series.iter().enumerate() {
            assert_eq!(point.t_s, second as u64);
            let figures = &point.per_op[&OpKind::Imap];
            assert_eq!((figures.count, figures.errors), (1, 1));
        }
    }

    #[test]
    fn metrics_errors_are_counted_by_kind_and_bounded() {
        let mut recorder = Recorder::new(Duration::ZERO);
        for (n, error_kind) in [(3, "timeout"), (2, "smtp 451"), (1, "refused")] {
            for _ in 0..n {
                recorder.record(OpKind::Smtp, Duration::ZERO, ms_d(1), Some(error_kind));
            }
        }
        recorder.record(OpKind::Pop3, Duration::ZERO, ms_d(1), Some("timeout"));
        let summary = recorder.summary(Duration::from_secs(1));
        let smtp = &summary.ops[&OpKind::Smtp];
        assert_eq!(smtp.errors, 6);
        assert_eq!(smtp.count, 0);
        assert_eq!(smtp.p99_ms, 0.0);
        assert_eq!(
            smtp.errors_by_kind,
            BTreeMap::from([
                ("refused".to_string(), 1),
                ("smtp 451".to_string(), 2),
                ("timeout".to_string(), 3),
            ])
        );
        assert_eq!(summary.ops[&OpKind::Pop3].errors_by_kind["timeout"], 1);

        let mut many = Recorder::new(Duration::ZERO);
        for n in 0..100 {
            many.record(
                OpKind::Smtp,
                Duration::ZERO,
                ms_d(1),
                Some(&format!("kind {n}")),
            );
        }
        let long = "x".repeat(1000);
        many.record(OpKind::Imap, Duration::ZERO, ms_d(1), Some(&long));
        let summary = many.summary(Duration::from_secs(1));
        let by_kind = &summary.ops[&OpKind::Smtp].errors_by_kind;
        assert_eq!(by_kind.len(), ERROR_KINDS_MAX);
        assert_eq!(by_kind.values().sum::<u64>(), 100);
        assert_eq!(
            by_kind[ERROR_KIND_OTHER],
            100 - (ERROR_KINDS_MAX as u64 - 1)
        );
        let imap_kinds = &summary.ops[&OpKind::Imap].errors_by_kind;
        assert_eq!(
            imap_kinds.keys().next().unwrap().len(),
            ERROR_KIND_BYTES_MAX
        );
    }

    /// A deterministic spread of latencies without a random generator.
    fn latency_of(n: u64) -> Duration {
        Duration::from_micros(200 + (n * 7919) % 50_000 + (n % 97) * (n % 89) * 13)
    }

    #[test]
    fn metrics_merge_equals_recording_everything_into_one() {
        let mut all = Recorder::new(Duration::from_secs(2));
        let mut a = Recorder::new(Duration::from_secs(2));
        let mut b = Recorder::new(Duration::from_secs(2));
        // Long enough that older seconds get packed, on both sides and in the merge.
        for n in 0..40_000u64 {
            let kind = OpKind::ALL[(n % 3) as usize];
            let intended = Duration::from_millis(n * 20);
            let error = (n % 101 == 0).then_some(if n % 2 == 0 { "timeout" } else { "reset" });
            all.record(kind, intended, latency_of(n), error);
            let half = if n % 5 < 2 { &mut a } else { &mut b };
            half.record(kind, intended, latency_of(n), error);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        let elapsed = Duration::from_secs(800);
        assert_eq!(merged.summary(elapsed), all.summary(elapsed));
        assert_eq!(merged.live(), all.live());
        assert!(
            all.sealed_below > 0,
            "the test should exercise packed seconds"
        );
    }

    #[test]
    fn metrics_streamed_deltas_over_the_wire_merge_exactly() {
        // Two agents, each streaming a delta every simulated second through the wire form; the
        // coordinator's merge equals one recorder of every operation.
        let warmup = Duration::from_secs(2);
        let mut all = Recorder::new(warmup);
        let mut coordinator = Recorder::new(warmup);
        let mut agents = [Recorder::new(warmup), Recorder::new(warmup)];
        let mut deltas = 0;
        for n in 0..40_000u64 {
            let kind = OpKind::ALL[(n % 3) as usize];
            let intended = Duration::from_millis(n * 20);
            let error = (n % 101 == 0).then_some("timeout");
            all.record(kind, intended, latency_of(n), error);
            agents[(n % 2) as usize].record(kind, intended, latency_of(n), error);
            if n % 50 == 49 || n == 39_999 {
                for agent in &mut agents {
                    let state = agent.take_delta_state();
                    let wire = serde_json::to_string(&state).unwrap();
                    let back: RecorderState = serde_json::from_str(&wire).unwrap();
                    coordinator.merge_state(&back).unwrap();
                    deltas += 1;
                }
            }
        }
        assert!(deltas > 1000);
        // A delta holds (and costs) the seconds changed since the last one, not the whole run.
        let mut agent = Recorder::new(warmup);
        for second in 0..2000u64 {
            agent.record(
                OpKind::Smtp,
                Duration::from_secs(second),
                latency_of(second),
                None,
            );
        }
        assert_eq!(agent.take_delta_state().intervals.len(), 2000);
        agent.record(OpKind::Smtp, Duration::from_secs(2000), latency_of(1), None);
        let late = agent.take_delta_state();
        assert_eq!(late.intervals.len(), 1);
        assert_eq!(late.intervals[0].second, 2000);
        assert!(agent.take_delta_state().intervals.is_empty());
        let elapsed = Duration::from_secs(800);
        assert_eq!(coordinator.summary(elapsed), all.summary(elapsed));
        let mut bad = all.to_state();
        bad.totals.pop();
        assert!(Recorder::from_state(&bad).is_err());
        bad = all.to_state();
        bad.totals[0].histogram = "not base64!".into();
        assert!(Recorder::from_state(&bad).is_err());
    }

    #[test]
    fn metrics_late_completions_land_in_packed_seconds() {
        let mut recorder = Recorder::new(Duration::ZERO);
        recorder.record(OpKind::Smtp, Duration::from_secs(1), ms_d(5), None);
        recorder.record(OpKind::Smtp, Duration::from_secs(1000), ms_d(5), None);
        assert!(recorder.sealed_below > 1);
        recorder.record(OpKind::Smtp, Duration::from_secs(1), ms_d(50), None);
        recorder.record(OpKind::Pop3, Duration::from_secs(3), ms_d(7), None);
        let summary = recorder.summary(Duration::from_secs(1000));
        let second_1 = &summary.series[1].per_op[&OpKind::Smtp];
        assert_eq!(second_1.count, 2);
        assert!((second_1.max_ms - 50.0).abs() < 0.5);
        assert_eq!(summary.series[3].per_op[&OpKind::Pop3].count, 1);
        assert!(matches!(
            recorder.intervals[3][index(OpKind::Pop3)].latency,
            IntervalLatency::Sealed(_)
        ));
    }

    #[test]
    fn metrics_histogram_round_trips() {
        let mut recorder = Recorder::new(Duration::ZERO);
        for n in 0..10_000 {
            recorder.record(OpKind::Pop3, Duration::ZERO, latency_of(n), None);
        }
        let summary = recorder.summary(Duration::from_secs(1));
        let decoded = decode_histogram(&summary.ops[&OpKind::Pop3].histogram).unwrap();
        assert_eq!(decoded, recorder.totals[index(OpKind::Pop3)].latency_us);
        assert_eq!(decoded.len(), 10_000);

        // And through results.json.
        let json = serde_json::to_string(&summary).unwrap();
        assert!(json.contains("\"pop3\""));
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary);

        assert!(matches!(
            decode_histogram("not base64!"),
            Err(HistogramDecodeError::Base64(_))
        ));
        assert!(matches!(
            decode_histogram("AAAA"),
            Err(HistogramDecodeError::Hdr(_))
        ));
    }

    #[test]
    fn metrics_intervals_beyond_the_cap_are_dropped_from_the_series_only() {
        let mut recorder = Recorder::new(Duration::ZERO);
        let last = Duration::from_secs(INTERVALS_MAX as u64 - 1);
        let beyond = Duration::from_secs(INTERVALS_MAX as u64);
        recorder.record(OpKind::Smtp, last, ms_d(3), None);
        recorder.record(OpKind::Smtp, beyond, ms_d(3), None);
        recorder.record(OpKind::Smtp, beyond * 2, ms_d(3), Some("timeout"));
        let summary = recorder.summary(beyond * 2);
        assert_eq!(summary.series.len(), INTERVALS_MAX);
        assert_eq!(summary.series_dropped, 2);
        assert_eq!(summary.ops[&OpKind::Smtp].count, 2);
        assert_eq!(summary.ops[&OpKind::Smtp].errors, 1);
    }

    #[test]
    fn metrics_live_figures_cover_the_last_seconds() {
        let mut recorder = Recorder::new(Duration::from_secs(100));
        // 100 ops per second completing over seconds 0..20, one error per second.
        for second in 0..20u64 {
            for n in 0..100u64 {
                let intended = Duration::from_secs(second) + Duration::from_millis(n * 10);
                recorder.record(OpKind::Smtp, intended, ms_d(1 + n % 10), None);
            }
            recorder.record(
                OpKind::Smtp,
                Duration::from_secs(second),
                ms_d(1),
                Some("x"),
            );
        }
        let live = recorder.live();
        assert!((live.ops_per_s - 100.0).abs() < 2.0, "{live:?}");
        assert_eq!(live.errors_per_s, 1.0);
        assert_eq!(live.errors_total, 20);
        let p99 = live.p99_ms.unwrap();
        assert!((p99 - 10.0).abs() < 0.2, "{p99}");
        // A stall: nothing completed in the last five seconds.
        let stalled = recorder.live_at(Duration::from_secs(30));
        assert_eq!(stalled.ops_per_s, 0.0);
        assert_eq!(stalled.p99_ms, None);
        assert_eq!(Recorder::new(Duration::ZERO).live().ops_per_s, 0.0);
    }
}
