//! How well a trace matches TranSend's (Fox et al., SOSP 1997): its content mix and mean sizes by
//! type, its popularity skew, and its burstiness as peak-to-mean ratios at three time scales.
//!
//! A [`Fit`] is fed a trace's requests one at a time (time, target, bytes), as a synthesizer
//! writes them or a [`clf::Reader`](super::clf::Reader) reads them back, and turned into a
//! [`FitReport`] at the end. Types come from the target's extension ([`Kind::of_target`]).
//! Popularity is counted per object for targets of the form `/obj/{index}.{ext}` (what
//! [`synth`](super::synth) writes) with `index` below the object count given; α is the negative
//! slope of log count against log rank over the most requested objects.
//!
//! Burstiness is measured as TranSend's paper did: the peak bucket over the mean bucket, for
//! 2-minute buckets over 24 hours, 30-second buckets over 3 hours and 1-second buckets over 3
//! minutes ([`TIME_SCALES`]). A trace longer than a window has several; the ratio reported is
//! their median (a typical window), and a trace shorter than one window is measured over what
//! it has, flagged as partial. Windows start at the first request's second; a window without a
//! request has no ratio.
//!
//! Memory is a counter per object, a few counters per type, and one number per window of each
//! time scale: never the trace. This module does no I/O and reads no clock.

use std::fmt::{self, Write as _};

/// What an object is, told by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Gif,
    Html,
    Jpeg,
    Other,
}

impl Kind {
    /// In the order of [`MIX`].
    pub const ALL: [Kind; 4] = [Kind::Gif, Kind::Html, Kind::Jpeg, Kind::Other];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gif => "gif",
            Kind::Html => "html",
            Kind::Jpeg => "jpeg",
            Kind::Other => "other",
        }
    }

    /// The extension of a synthesized object's path (the bundled origin corpus's).
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Gif => "gif",
            Kind::Html => "html",
            Kind::Jpeg => "jpg",
            Kind::Other => "bin",
        }
    }

    /// The kind a request target names by its path's extension (query and fragment ignored,
    /// case-insensitive; `/` and `.htm` are HTML, `.jpeg` and `.jpe` JPEG); anything else is
    /// `Other`.
    pub fn of_target(target: &str) -> Kind {
        match crate::OpKind::of_url(target) {
            crate::OpKind::Gif => Kind::Gif,
            crate::OpKind::Html => Kind::Html,
            crate::OpKind::Jpeg => Kind::Jpeg,
            _ => Kind::Other,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// TranSend's content mix: the share of requests of each kind.
pub const MIX: [(Kind, f64); 4] = [
    (Kind::Gif, 0.50),
    (Kind::Html, 0.22),
    (Kind::Jpeg, 0.18),
    (Kind::Other, 0.10),
];
/// Mean response sizes of HTML, GIF and JPEG in TranSend's traces; "other" is the bundled origin
/// corpus's (~8 KB), the paper gives none.
pub const MEAN_BYTES: [(Kind, f64); 4] = [
    (Kind::Gif, 3_428.0),
    (Kind::Html, 5_131.0),
    (Kind::Jpeg, 12_070.0),
    (Kind::Other, 8_192.0),
];

/// One of TranSend's burstiness figures: the peak/mean ratio of `bucket_s` buckets over a
/// `window_s` window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale {
    pub bucket_s: u64,
    pub window_s: u64,
    /// TranSend's figure.
    pub transend: f64,
}

/// TranSend's peak/mean ratios: 2-minute buckets over 24 h (mean 5.8 req/s, peak 12.6), 30 s
/// buckets over 3 h, 1 s buckets over 3 minutes.
pub const TIME_SCALES: [TimeScale; 3] = [
    TimeScale {
        bucket_s: 120,
        window_s: 86_400,
        transend: 2.17,
    },
    TimeScale {
        bucket_s: 30,
        window_s: 10_800,
        transend: 1.84,
    },
    TimeScale {
        bucket_s: 1,
        window_s: 180,
        transend: 2.47,
    },
];

/// A response this small or smaller counts as "under 1 KB".
pub const SMALL_BYTES_MAX: u64 = 1023;
/// α is fitted over the most requested objects with at least this many requests each (fewer
/// make the log counts too noisy).
pub const ALPHA_FIT_COUNT_MIN: u32 = 50;
/// α is fitted over at most this many ranks.
pub const ALPHA_FIT_RANKS_MAX: usize = 2_000;
/// No α below this many ranks to fit.
pub const ALPHA_FIT_RANKS_MIN: usize = 10;
/// Most objects counted for popularity (a counter each).
pub const OBJECTS_MAX: u32 = 10_000_000;
/// The path prefix of objects counted for popularity.
pub const OBJECT_PREFIX: &str = "/obj/";

/// The peak/mean ratio of one time scale, streamed a second at a time.
#[derive(Debug, Clone)]
pub struct PeakMean {
    scale: TimeScale,
    /// Requests in the current bucket, and its seconds so far.
    bucket: u64,
    bucket_seconds: u64,
    /// Complete buckets of the current window, their total and their peak.
    buckets: u64,
    total: u64,
    peak: u64,
    /// The ratio of each complete window that had requests.
    ratios: Vec<f64>,
}

impl PeakMean {
    pub fn new(scale: TimeScale) -> PeakMean {
        assert!(
            scale.bucket_s > 0 && scale.window_s >= 2 * scale.bucket_s,
            "a window holds two buckets or more"
        );
        PeakMean {
            scale,
            bucket: 0,
            bucket_seconds: 0,
            buckets: 0,
            total: 0,
            peak: 0,
            ratios: Vec::new(),
        }
    }

    fn buckets_per_window(&self) -> u64 {
        self.scale.window_s / self.scale.bucket_s
    }

    /// The next second, with `count` requests.
    pub fn second(&mut self, count: u64) {
        self.bucket += count;
        self.bucket_seconds += 1;
        if self.bucket_seconds < self.scale.bucket_s {
            return;
        }
        self.total += self.bucket;
        self.peak = self.peak.max(self.bucket);
        self.buckets += 1;
        self.bucket = 0;
        self.bucket_seconds = 0;
        if self.buckets == self.buckets_per_window() {
            if self.total > 0 {
                self.ratios
                    .push(self.peak as f64 * self.buckets as f64 / self.total as f64);
            }
            self.buckets = 0;
            self.total = 0;
            self.peak = 0;
        }
    }

    /// The next `n` seconds, without requests: O(window), however long the gap.
    pub fn empty_seconds(&mut self, mut n: u64) {
        while n > 0 && (self.buckets > 0 || self.bucket_seconds > 0) {
            self.second(0);
            n -= 1;
        }
        // Whole windows without a request have no ratio.
        n %= self.scale.window_s;
        for _ in 0..n {
            self.second(0);
        }
    }

    /// The median ratio of the complete windows, or, if there is none, the ratio of the partial
    /// window (with two complete buckets or more).
    pub fn result(&self) -> PeakMeanResult {
        if !self.ratios.is_empty() {
            return PeakMeanResult {
                scale: self.scale,
                ratio: Some(median(&self.ratios)),
                windows: self.ratios.len(),
                partial_s: None,
            };
        }
        let ratio = (self.buckets >= 2 && self.total > 0)
            .then(|| self.peak as f64 * self.buckets as f64 / self.total as f64);
        PeakMeanResult {
            scale: self.scale,
            ratio,
            windows: 0,
            partial_s: Some(self.buckets * self.scale.bucket_s),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A peak/mean ratio as measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakMeanResult {
    pub scale: TimeScale,
    /// `None`: not even two buckets' worth of trace.
    pub ratio: Option<f64>,
    /// Complete windows with requests (the ratio is their median).
    pub windows: usize,
    /// No complete window: the ratio is of this many seconds of trace.
    pub partial_s: Option<u64>,
}

/// The fit of a trace, fed one request at a time.
#[derive(Debug, Clone)]
pub struct Fit {
    requests: u64,
    first_s: Option<i64>,
    /// The second being counted, and its requests.
    second_s: i64,
    second_count: u64,
    /// Requests older than one before them (counted in the latest second seen).
    reordered: u64,
    count: [u64; 4],
    bytes: [u64; 4],
    /// Requests without a byte count, by kind (left out of the mean).
    no_bytes: [u64; 4],
    small: u64,
    per_object: Vec<u32>,
    scales: Vec<PeakMean>,
}

impl Fit {
    /// A fit counting popularity over objects `0..objects` (at most [`OBJECTS_MAX`]).
    pub fn new(objects: u32) -> Fit {
        Fit {
            requests: 0,
            first_s: None,
            second_s: 0,
            second_count: 0,
            reordered: 0,
            count: [0; 4],
            bytes: [0; 4],
            no_bytes: [0; 4],
            small: 0,
            per_object: vec![0; objects.min(OBJECTS_MAX) as usize],
            scales: TIME_SCALES.iter().map(|s| PeakMean::new(*s)).collect(),
        }
    }

    /// One request at Unix second `time_s` for `target`, with its body's size if known.
    pub fn record(&mut self, time_s: i64, target: &str, bytes: Option<u64>) {
        self.record_kind(time_s, Kind::of_target(target), object_index(target), bytes);
    }

    /// [`record`](Self::record) for a caller that knows the kind and object already.
    pub fn record_kind(
        &mut self,
        time_s: i64,
        kind: Kind,
        object: Option<u32>,
        bytes: Option<u64>,
    ) {
        self.requests += 1;
        match self.first_s {
            None => {
                self.first_s = Some(time_s);
                self.second_s = time_s;
            }
            Some(_) if time_s < self.second_s => self.reordered += 1,
            Some(_) if time_s > self.second_s => {
                for scale in &mut self.scales {
                    scale.second(self.second_count);
                    scale.empty_seconds((time_s - self.second_s - 1) as u64);
                }
                self.second_s = time_s;
                self.second_count = 0;
            }
            Some(_) => {}
        }
        self.second_count += 1;
        let slot = kind.slot();
        self.count[slot] += 1;
        match bytes {
            Some(b) => {
                self.bytes[slot] = self.bytes[slot].saturating_add(b);
                if b <= SMALL_BYTES_MAX {
                    self.small += 1;
                }
            }
            None => self.no_bytes[slot] += 1,
        }
        if let Some(counter) = object.and_then(|i| self.per_object.get_mut(i as usize)) {
            *counter = counter.saturating_add(1);
        }
    }

    /// The figures of everything recorded.
    pub fn report(&self) -> FitReport {
        let mut scales = self.scales.clone();
        if self.first_s.is_some() {
            for scale in &mut scales {
                scale.second(self.second_count);
            }
        }
        let by_kind = Kind::ALL.map(|kind| {
            let slot = kind.slot();
            let sized = self.count[slot] - self.no_bytes[slot];
            KindFit {
                kind,
                requests: self.count[slot],
                mean_bytes: (sized > 0).then(|| self.bytes[slot] as f64 / sized as f64),
            }
        });
        let sized: u64 = self.requests - self.no_bytes.iter().sum::<u64>();
        FitReport {
            requests: self.requests,
            first_s: self.first_s,
            last_s: self.first_s.map(|_| self.second_s),
            reordered: self.reordered,
            by_kind,
            small_share: (sized > 0).then(|| self.small as f64 / sized as f64),
            alpha: fit_alpha(&self.per_object),
            peak_mean: [0, 1, 2].map(|i| scales[i].result()),
        }
    }
}

/// The index of an `/obj/{index}.{ext}` target (a path or an absolute URL's path).
pub fn object_index(target: &str) -> Option<u32> {
    let path = match target.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => target,
    };
    let rest = path.strip_prefix(OBJECT_PREFIX)?;
    let digits = rest.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// α from the rank-frequency slope: ordinary least squares of ln(count) on ln(rank) at
/// log-spaced ranks (so each decade weighs the same), over the top ranks with at least
/// [`ALPHA_FIT_COUNT_MIN`] requests, at most [`ALPHA_FIT_RANKS_MAX`] and at most half the
/// objects requested (the very tail of a sorted sample is distorted by its noise; counting only
/// requested objects lets a caller size `per_object` generously).
pub fn fit_alpha(per_object: &[u32]) -> Option<AlphaFit> {
    let mut counts: Vec<u32> = per_object.iter().copied().filter(|c| *c > 0).collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let ranks = counts
        .iter()
        .take_while(|c| **c >= ALPHA_FIT_COUNT_MIN)
        .count()
        .min(ALPHA_FIT_RANKS_MAX)
        .min(counts.len() / 2);
    if ranks < ALPHA_FIT_RANKS_MIN {
        return None;
    }
    let mut points = Vec::new();
    let mut rank = 1usize;
    while rank <= ranks {
        points.push(((rank as f64).ln(), f64::from(counts[rank - 1]).ln()));
        rank = (rank + 1).max((rank as f64 * 1.1).round() as usize);
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    Some(AlphaFit {
        alpha: -sxy / sxx,
        ranks,
    })
}

/// α as fitted, over ranks `1..=ranks`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaFit {
    pub alpha: f64,
    pub ranks: usize,
}

/// One kind's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindFit {
    pub kind: Kind,
    pub requests: u64,
    /// Over the requests with a byte count.
    pub mean_bytes: Option<f64>,
}

/// A trace's figures next to TranSend's.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    pub requests: u64,
    /// The first and last request's Unix second.
    pub first_s: Option<i64>,
    pub last_s: Option<i64>,
    pub reordered: u64,
    /// In the order of [`Kind::ALL`].
    pub by_kind: [KindFit; 4],
    /// Requests of at most [`SMALL_BYTES_MAX`] bytes, of those with a byte count.
    pub small_share: Option<f64>,
    pub alpha: Option<AlphaFit>,
    /// In the order of [`TIME_SCALES`].
    pub peak_mean: [PeakMeanResult; 3],
}

impl FitReport {
    /// The share of requests of `kind`.
    pub fn share(&self, kind: Kind) -> f64 {
        self.by_kind[kind.slot()].requests as f64 / self.requests.max(1) as f64
    }

    /// The mean size of `kind`'s requests with a byte count.
    pub fn mean_bytes(&self, kind: Kind) -> Option<f64> {
        self.by_kind[kind.slot()].mean_bytes
    }
}

impl fmt::Display for FitReport {
    /// A table a person reads, each figure next to TranSend's (in parentheses).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "requests: {}", self.requests)?;
        if let (Some(first), Some(last)) = (self.first_s, self.last_s) {
            let span = last - first + 1;
            write!(
                f,
                " over {} ({} to {})",
                duration(span),
                super::clf::format_time(first),
                super::clf::format_time(last)
            )?;
        }
        writeln!(f)?;
        if self.reordered > 0 {
            writeln!(f, "out of order: {} requests", self.reordered)?;
        }
        writeln!(
            f,
            "type    requests  share (TranSend)  mean bytes (TranSend)"
        )?;
        for ((fit, (_, target_share)), (_, target_bytes)) in
            self.by_kind.iter().zip(MIX).zip(MEAN_BYTES)
        {
            let mean = fit
                .mean_bytes
                .map_or_else(|| "-".to_string(), |m| thousands(m.round() as u64));
            writeln!(
                f,
                "{:<6} {:>9}  {:>5.1} % ({:.0} %)  {:>9} ({})",
                fit.kind.name(),
                fit.requests,
                100.0 * self.share(fit.kind),
                100.0 * target_share,
                mean,
                thousands(target_bytes as u64),
            )?;
        }
        if let Some(small) = self.small_share {
            writeln!(f, "under 1 KB: {:.1} % of requests", 100.0 * small)?;
        }
        match self.alpha {
            Some(a) => writeln!(
                f,
                "popularity: alpha {:.2}, from the rank-frequency slope of the top {} objects",
                a.alpha, a.ranks
            )?,
            None => writeln!(
                f,
                "popularity: too few requests per object to fit alpha (need {ALPHA_FIT_RANKS_MIN} objects with {ALPHA_FIT_COUNT_MIN} or more)"
            )?,
        }
        for result in &self.peak_mean {
            let scale = result.scale;
            let mut line = format!("peak/mean, {} buckets: ", duration(scale.bucket_s as i64));
            match result.ratio {
                Some(r) => write!(line, "{r:.2}")?,
                None => line.push('-'),
            }
            write!(line, " (TranSend {:.2}), ", scale.transend)?;
            match result.partial_s {
                None => write!(
                    line,
                    "median of {} windows of {}",
                    result.windows,
                    duration(scale.window_s as i64)
                )?,
                Some(s) => write!(
                    line,
                    "{} of trace, shorter than a {} window",
                    duration(s as i64),
                    duration(scale.window_s as i64)
                )?,
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// `1 s`, `30 s`, `2 min`, `3 h`, `24 h`, `1.5 h`: the largest unit that fits.
fn duration(s: i64) -> String {
    let (value, unit) = if s >= 3600 {
        (s as f64 / 3600.0, "h")
    } else if s >= 60 {
        (s as f64 / 60.0, "min")
    } else {
        (s as f64, "s")
    };
    if (value - value.round()).abs() < 0.05 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// `12,070`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_tells_kinds_by_extension() {
        for (target, kind) in [
            ("/obj/1.gif", Kind::Gif),
            ("/a/B.GIF?x=1", Kind::Gif),
            ("/", Kind::Html),
            ("/dir/", Kind::Html),
            ("/index.htm#top", Kind::Html),
            ("http://www.cnn.com/", Kind::Html),
            ("http://www.cnn.com", Kind::Html),
            ("http://x.org/p.jpeg", Kind::Jpeg),
            ("/obj/7.jpg", Kind::Jpeg),
            ("/obj/7.bin", Kind::Other),
            ("/cgi-bin/form", Kind::Other),
            ("/v1.2/data", Kind::Other),
        ] {
            assert_eq!(Kind::of_target(target), kind, "{target}");
        }
        assert_eq!(object_index("/obj/17.gif"), Some(17));
        assert_eq!(object_index("http://h:1/obj/17.gif"), Some(17));
        assert_eq!(object_index("/obj/x.gif"), None);
        assert_eq!(object_index("/obj/.gif"), None);
        assert_eq!(object_index("/other/1.gif"), None);
    }

    #[test]
    fn peak_mean_of_known_series() {
        let scale = TimeScale {
            bucket_s: 2,
            window_s: 8,
            transend: 0.0,
        };
        let mut pm = PeakMean::new(scale);
        // Window 1: buckets 2, 2, 2, 10 → peak 10 / mean 4 = 2.5.
        for c in [1, 1, 1, 1, 1, 1, 4, 6] {
            pm.second(c);
        }
        // Window 2: empty (no ratio). Window 3: buckets 4, 4, 4, 4 → 1.
        pm.empty_seconds(8);
        for _ in 0..8 {
            pm.second(2);
        }
        let result = pm.result();
        assert_eq!(result.windows, 2);
        assert_eq!(result.ratio, Some((2.5 + 1.0) / 2.0));
        // A long gap costs no more than a window.
        pm.empty_seconds(u64::MAX / 2);
        assert_eq!(pm.result().windows, 2);

        // Partial: three seconds = one complete bucket, no ratio; five = two buckets.
        let mut pm = PeakMean::new(scale);
        for c in [3, 0, 1] {
            pm.second(c);
        }
        assert_eq!(pm.result().ratio, None);
        pm.second(0);
        assert_eq!(pm.result().ratio, Some(1.5));
        assert_eq!(pm.result().partial_s, Some(4));
    }

    #[test]
    fn fit_counts_a_small_trace() {
        let mut fit = Fit::new(10);
        fit.record(100, "/obj/1.gif", Some(500));
        fit.record(100, "/obj/1.gif", Some(500));
        fit.record(101, "/obj/2.jpg", Some(3000));
        fit.record(99, "/page.html", None);
        fit.record(160, "/obj/3.bin", Some(8000));
        let report = fit.report();
        assert_eq!(report.requests, 5);
        assert_eq!((report.first_s, report.last_s), (Some(100), Some(160)));
        assert_eq!(report.reordered, 1);
        assert_eq!(report.share(Kind::Gif), 0.4);
        assert_eq!(report.mean_bytes(Kind::Gif), Some(500.0));
        assert_eq!(report.mean_bytes(Kind::Html), None);
        assert_eq!(report.small_share, Some(0.5));
        assert_eq!(report.alpha, None);
        // 61 s: one 1 s window of 3 min, partial; its peak second had 2 requests (100, and 101
        // with the late one counted in it, the latest second seen), mean 5/61.
        let one_s = report.peak_mean[2];
        assert_eq!(one_s.partial_s, Some(61));
        assert!((one_s.ratio.unwrap() - 2.0 * 61.0 / 5.0).abs() < 1e-9);
        let text = report.to_string();
        assert!(text.contains("requests: 5 over 1 min"), "{text}");
        assert!(
            text.contains("gif            2   40.0 % (50 %)        500 (3,428)"),
            "{text}"
        );
        assert!(text.contains("out of order: 1"), "{text}");
        assert_eq!(thousands(12_070), "12,070");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn alpha_fit_recovers_exact_power_laws() {
        for alpha in [0.5, 0.75, 1.0, 1.5] {
            let counts: Vec<u32> = (1..=5000)
                .map(|r| (1e6 * (r as f64).powf(-alpha)).round() as u32)
                .collect();
            let fit = fit_alpha(&counts).unwrap();
            assert!((fit.alpha - alpha).abs() < 0.01, "{alpha}: {fit:?}");
        }
        assert_eq!(fit_alpha(&[100; 8]), None);
    }
}
