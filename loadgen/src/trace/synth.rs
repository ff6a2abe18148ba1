//! A seeded, deterministic, streaming synthesizer of TranSend-like web traces.
//!
//! [`Synth`] is an iterator of [`Request`]s in time order, one second at a time: it never holds
//! the trace, only a byte per object (its kind), the burst states and the current second's
//! count. [`ClfWriter`] turns a request into a Common Log Format line
//! (`10.0.3.17 - u1234 [01/Nov/1996:09:00:00 -0800] "GET /obj/17.gif HTTP/1.0" 200 2210`).
//!
//! The model ([`SynthConfig`], every field with a default):
//!
//! - Objects `/obj/{N}.{ext}` for `N` in `0..objects`; object `N` is the `N+1`-th most popular
//!   (Zipf, exponent `alpha`). Kinds are dealt to objects in popularity order so that each kind's
//!   share of requests follows `mix` (TranSend's by default); an object's kind, extension and
//!   size never change, so a URL always has one type and one size. Sizes are log-normal
//!   (`size_sigma`) around each kind's mean (`mean_bytes`, TranSend's by default), drawn from
//!   `(seed, N)`, clamped to what a real body of that type needs at least ([`BYTES_MIN`]) and
//!   [`OBJECT_BYTES_MAX`], then scaled per kind so the request-weighted mean is the one asked.
//! - Arrivals: a Poisson count per second of rate `mean_per_s × diurnal × bursts`, the diurnal
//!   factor `1 + diurnal_amplitude · cos(2π (hour − diurnal_peak_hour) / 24)` in the start's
//!   zone, the burst factor the product of independent on/off layers ([`Burst`]: while on, the
//!   rate is multiplied by `factor`; bursts last `mean_s` on average and are on `share` of the
//!   time), everything normalized so the long-run mean rate is `mean_per_s`. The default layers
//!   are tuned so the [`fit`](super::fit) of a day at TranSend's mean rate comes near TranSend's
//!   peak/mean ratios (2.2 at 2 min, 1.8 at 30 s, 2.5 at 1 s).
//! - Clients `10.A.B.C` (client `c` is the address `10.0.0.0 + c + 1`), chosen uniformly;
//!   `authuser_share` of them log an authuser `u{c}`.
//!
//! All randomness comes from SplitMix64 streams seeded by `seed`: the same configuration gives
//! the same trace on every run.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};
use rand::RngCore;
use rand_distr::{Distribution, Poisson, Zipf};
use serde::{Deserialize, Serialize};

use super::clf::{self, Entry};
use super::fit::{Kind, MEAN_BYTES, MIX};

/// Most objects.
pub const OBJECTS_MAX: u32 = 1_000_000;
/// Most clients (a /8 of addresses).
pub const CLIENTS_MAX: u32 = 16_000_000;
/// Longest trace: a year.
pub const DURATION_S_MAX: u64 = 366 * 86_400;
/// Highest mean rate.
pub const MEAN_PER_S_MAX: f64 = 100_000.0;
/// Largest object (the origin corpus's largest).
pub const OBJECT_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Smallest object of each kind, in the order of [`Kind::ALL`]: what a real body of the type
/// needs (the origin corpus's minimums: a GIF with its palette, a page's skeleton, a JPEG's
/// headers and tables).
pub const BYTES_MIN: [u64; 4] = [256, 512, 800, 64];
/// Most burst layers.
pub const BURSTS_MAX: usize = 8;
/// Largest Zipf exponent.
pub const ALPHA_MAX: f64 = 3.0;
/// Largest size sigma.
pub const SIZE_SIGMA_MAX: f64 = 3.0;

/// Rounds of the per-kind size scaling (each brings the clamped mean closer to the one asked).
const SIZE_CALIBRATION_ROUNDS: usize = 4;

const STREAM_ARRIVALS: u64 = 0x6172_7269_7661_6c73;
const STREAM_BURSTS: u64 = 0x6275_7273_7473;
const STREAM_PICKS: u64 = 0x0070_6963_6b73;
const STREAM_SIZE: u64 = 0x7369_7a65;
const STREAM_AUTHUSER: u64 = 0x6175_7468;

/// One value per kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerKind {
    pub gif: f64,
    pub html: f64,
    pub jpeg: f64,
    pub other: f64,
}

impl PerKind {
    fn from_table(table: [(Kind, f64); 4]) -> PerKind {
        let get = |k: Kind| table.iter().find(|(t, _)| *t == k).map_or(0.0, |(_, v)| *v);
        PerKind {
            gif: get(Kind::Gif),
            html: get(Kind::Html),
            jpeg: get(Kind::Jpeg),
            other: get(Kind::Other),
        }
    }

    /// The value of `kind`.
    pub fn get(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Gif => self.gif,
            Kind::Html => self.html,
            Kind::Jpeg => self.jpeg,
            Kind::Other => self.other,
        }
    }

    /// In the order of [`Kind::ALL`].
    pub fn to_array(self) -> [f64; 4] {
        Kind::ALL.map(|k| self.get(k))
    }
}

/// One layer of bursts: an on/off process, on `share` of the time in bursts of `mean_s` seconds
/// on average (geometric), multiplying the rate by `factor` while on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub mean_s: f64,
    pub share: f64,
    pub factor: f64,
}

/// What to synthesize. Every field has a default; a TOML file may set any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub seed: u64,
    /// Distinct objects (URLs).
    pub objects: u32,
    /// Zipf exponent of object popularity.
    pub alpha: f64,
    /// Share of requests per kind (sums to 1).
    pub mix: PerKind,
    /// Mean response size per kind, request-weighted.
    pub mean_bytes: PerKind,
    /// Sigma of the log-normal sizes (of the size's natural log).
    pub size_sigma: f64,
    /// Distinct client hosts.
    pub clients: u32,
    /// Share of clients that log an authuser.
    pub authuser_share: f64,
    /// Length of the trace.
    pub duration_s: u64,
    /// Mean request rate over the whole trace.
    pub mean_per_s: f64,
    /// Relative amplitude of the daily sinusoid (0: none; below 1).
    pub diurnal_amplitude: f64,
    /// Local hour of the daily peak.
    pub diurnal_peak_hour: f64,
    /// Burst layers (at most [`BURSTS_MAX`]).
    pub bursts: Vec<Burst>,
    /// When the trace starts, RFC 3339; its offset is the logged zone.
    pub start: String,
}

impl Default for SynthConfig {
    fn default() -> SynthConfig {
        SynthConfig {
            seed: 1,
            objects: 10_000,
            alpha: 0.75,
            mix: PerKind::from_table(MIX),
            mean_bytes: PerKind::from_table(MEAN_BYTES),
            size_sigma: 1.0,
            clients: 1000,
            authuser_share: 0.1,
            duration_s: 86_400,
            mean_per_s: 5.8,
            diurnal_amplitude: 0.5,
            diurnal_peak_hour: 15.0,
            bursts: default_bursts(),
            start: "1996-11-01T00:00:00-08:00".to_string(),
        }
    }
}

/// The default burst layers: minutes-long surges, tens of seconds, and a few seconds.
pub fn default_bursts() -> Vec<Burst> {
    vec![
        Burst {
            mean_s: 600.0,
            share: 0.05,
            factor: 1.5,
        },
        Burst {
            mean_s: 60.0,
            share: 0.03,
            factor: 1.7,
        },
        Burst {
            mean_s: 3.0,
            share: 0.02,
            factor: 1.8,
        },
    ]
}

impl SynthConfig {
    /// Reads a TOML configuration (unknown keys refused) and checks it.
    pub fn from_toml(text: &str) -> Result<SynthConfig, String> {
        let config: SynthConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.objects == 0 || self.objects > OBJECTS_MAX {
            return Err(format!(
                "objects: must be 1 to {OBJECTS_MAX}, not {}",
                self.objects
            ));
        }
        if !(0.0..=ALPHA_MAX).contains(&self.alpha) {
            return Err(format!(
                "alpha: must be between 0 and {ALPHA_MAX}, not {}",
                self.alpha
            ));
        }
        let mut sum = 0.0;
        for kind in Kind::ALL {
            let share = self.mix.get(kind);
            if !(0.0..=1.0).contains(&share) {
                return Err(format!(
                    "mix.{}: must be between 0 and 1, not {share}",
                    kind.name()
                ));
            }
            sum += share;
        }
        if (sum - 1.0).abs() > 1e-6 {
            return Err(format!("mix: shares must sum to 1, not {sum}"));
        }
        for (kind, min) in Kind::ALL.into_iter().zip(BYTES_MIN) {
            let mean = self.mean_bytes.get(kind);
            if !(mean >= min as f64 && mean <= OBJECT_BYTES_MAX as f64) {
                return Err(format!(
                    "mean_bytes.{}: must be between {min} and {OBJECT_BYTES_MAX}, not {mean}",
                    kind.name()
                ));
            }
        }
        if !(0.0..=SIZE_SIGMA_MAX).contains(&self.size_sigma) {
            return Err(format!(
                "size_sigma: must be between 0 and {SIZE_SIGMA_MAX}, not {}",
                self.size_sigma
            ));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!(
                "clients: must be 1 to {CLIENTS_MAX}, not {}",
                self.clients
            ));
        }
        if !(0.0..=1.0).contains(&self.authuser_share) {
            return Err(format!(
                "authuser_share: must be between 0 and 1, not {}",
                self.authuser_share
            ));
        }
        if self.duration_s == 0 || self.duration_s > DURATION_S_MAX {
            return Err(format!(
                "duration_s: must be 1 to {DURATION_S_MAX}, not {}",
                self.duration_s
            ));
        }
        if !(self.mean_per_s > 0.0 && self.mean_per_s <= MEAN_PER_S_MAX) {
            return Err(format!(
                "mean_per_s: must be > 0 and <= {MEAN_PER_S_MAX}, not {}",
                self.mean_per_s
            ));
        }
        if !(0.0..1.0).contains(&self.diurnal_amplitude) {
            return Err(format!(
                "diurnal_amplitude: must be at least 0 and below 1, not {}",
                self.diurnal_amplitude
            ));
        }
        if !(0.0..24.0).contains(&self.diurnal_peak_hour) {
            return Err(format!(
                "diurnal_peak_hour: must be at least 0 and below 24, not {}",
                self.diurnal_peak_hour
            ));
        }
        if self.bursts.len() > BURSTS_MAX {
            return Err(format!(
                "bursts: at most {BURSTS_MAX} layers, not {}",
                self.bursts.len()
            ));
        }
        for (i, b) in self.bursts.iter().enumerate() {
            if !(b.mean_s >= 1.0 && b.mean_s <= 86_400.0) {
                return Err(format!(
                    "bursts[{i}].mean_s: must be between 1 and 86400, not {}",
                    b.mean_s
                ));
            }
            if !(0.0..=0.5).contains(&b.share) {
                return Err(format!(
                    "bursts[{i}].share: must be between 0 and 0.5, not {}",
                    b.share
                ));
            }
            if !(1.0..=100.0).contains(&b.factor) {
                return Err(format!(
                    "bursts[{i}].factor: must be between 1 and 100, not {}",
                    b.factor
                ));
            }
        }
        self.start_time()?;
        Ok(())
    }

    /// `start` as a Unix second and the zone's offset east of UTC, in seconds.
    pub fn start_time(&self) -> Result<(i64, i32), String> {
        let start = DateTime::<FixedOffset>::parse_from_rfc3339(&self.start).map_err(|e| {
            format!(
                "start: must be an RFC 3339 time like 1996-11-01T00:00:00-08:00, not {:?} ({e})",
                self.start
            )
        })?;
        let offset_s = start.offset().local_minus_utc();
        if offset_s % 60 != 0 {
            return Err(format!(
                "start: the zone must be whole minutes, not {offset_s} s"
            ));
        }
        Ok((start.timestamp(), offset_s))
    }
}

/// One synthesized request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Unix second.
    pub time_s: i64,
    /// The object: `/obj/{object}.{kind.extension()}`.
    pub object: u32,
    pub kind: Kind,
    /// The object's size (always the same for the same object).
    pub bytes: u64,
    /// The client: [`client_host`] gives its address.
    pub client: u32,
}

impl Request {
    /// `/obj/{object}.{ext}`.
    pub fn path(&self) -> String {
        object_path(self.object, self.kind)
    }
}

/// `/obj/{index}.{ext}`.
pub fn object_path(index: u32, kind: Kind) -> String {
    format!("{}{index}.{}", super::fit::OBJECT_PREFIX, kind.extension())
}

/// Client `c`'s address: `10.0.0.0 + c + 1`.
pub fn client_host(client: u32) -> String {
    let a = client + 1;
    format!("10.{}.{}.{}", (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff)
}

/// SplitMix64 (also a [`RngCore`], for `rand_distr`'s samplers), fixed here so a seed's trace
/// does not depend on `rand`'s choice of generator.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn keyed(seed: u64, key: u64, domain: u64) -> SplitMix {
        let mut s = SplitMix(seed);
        let a = s.next_u64();
        let mut s = SplitMix(a ^ key.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let b = s.next_u64();
        SplitMix(b ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The objects of a configuration: each one's kind (dealt by popularity) and the per-kind size
/// scale. One byte per object.
#[derive(Debug, Clone)]
pub struct Objects {
    seed: u64,
    sigma: f64,
    kinds: Vec<Kind>,
    /// Per kind: the log-normal's median before clamping, after calibration.
    median: [f64; 4],
}

impl Objects {
    /// Deals kinds to `config.objects` objects in popularity order (each to the kind furthest
    /// below its share of the requests so far), then scales each kind's sizes so that its
    /// request-weighted mean is the one asked. O(objects).
    pub fn new(config: &SynthConfig) -> Objects {
        let n = config.objects as usize;
        let mix = config.mix.to_array();
        let weights: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-config.alpha)).collect();
        let mut assigned = [0.0_f64; 4];
        let mut cumulative = 0.0;
        let mut kinds = Vec::with_capacity(n);
        for w in &weights {
            cumulative += w;
            let slot = (0..4)
                .max_by(|a, b| {
                    let da = mix[*a] * cumulative - assigned[*a];
                    let db = mix[*b] * cumulative - assigned[*b];
                    da.total_cmp(&db).then(b.cmp(a))
                })
                .unwrap_or(0);
            assigned[slot] += w;
            kinds.push(Kind::ALL[slot]);
        }
        let sigma = config.size_sigma;
        let target = config.mean_bytes.to_array();
        let mut objects = Objects {
            seed: config.seed,
            sigma,
            kinds,
            median: target.map(|m| m / (sigma * sigma / 2.0).exp()),
        };
        for _ in 0..SIZE_CALIBRATION_ROUNDS {
            let mut total = [0.0_f64; 4];
            let mut weight = [0.0_f64; 4];
            for (i, w) in weights.iter().enumerate() {
                let kind = objects.kinds[i];
                let slot = kind as usize;
                total[slot] += w * objects.bytes(i as u32, kind) as f64;
                weight[slot] += w;
            }
            for slot in 0..4 {
                if weight[slot] > 0.0 && total[slot] > 0.0 {
                    let mean = total[slot] / weight[slot];
                    objects.median[slot] *= target[slot] / mean;
                }
            }
        }
        objects
    }

    pub fn len(&self) -> u32 {
        self.kinds.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Object `index`'s kind and size.
    pub fn get(&self, index: u32) -> Option<(Kind, u64)> {
        let kind = *self.kinds.get(index as usize)?;
        Some((kind, self.bytes(index, kind)))
    }

    fn bytes(&self, index: u32, kind: Kind) -> u64 {
        let z = SplitMix::keyed(self.seed, u64::from(index), STREAM_SIZE).normal();
        let size = self.median[kind as usize] * (self.sigma * z).exp();
        (size.round().max(0.0) as u64).clamp(BYTES_MIN[kind as usize], OBJECT_BYTES_MAX)
    }
}

/// The state of one burst layer.
#[derive(Debug, Clone)]
struct Layer {
    burst: Burst,
    on: bool,
}

/// The synthesized trace, streamed in time order. See the module's documentation.
#[derive(Debug, Clone)]
pub struct Synth {
    config: SynthConfig,
    objects: Objects,
    zipf: Zipf<f64>,
    /// Separate streams for the burst layers, the per-second counts and the picks of objects
    /// and clients, so that changing one setting does not reshuffle the rest.
    bursts_rng: SplitMix,
    counts_rng: SplitMix,
    picks_rng: SplitMix,
    start_s: i64,
    offset_s: i32,
    /// The next second to draw, from the start.
    next_second: u64,
    current_s: i64,
    left_in_second: u64,
    layers: Vec<Layer>,
    /// Long-run mean of the burst factor (divided out).
    burst_mean: f64,
    /// Clients with an authuser are decided per client; this caches nothing (O(1) each).
    authuser_share: f64,
}

impl Synth {
    /// A synthesizer for `config` (checked; the error names the key).
    pub fn new(config: SynthConfig) -> Result<Synth, String> {
        config.validate()?;
        let (start_s, offset_s) = config.start_time()?;
        let objects = Objects::new(&config);
        let zipf = Zipf::new(f64::from(config.objects), config.alpha)
            .map_err(|e| format!("alpha: {e}"))?;
        let mut bursts_rng = SplitMix::keyed(config.seed, 0, STREAM_BURSTS);
        let layers = config
            .bursts
            .iter()
            .map(|b| Layer {
                burst: *b,
                on: bursts_rng.unit() < b.share,
            })
            .collect();
        let burst_mean = config
            .bursts
            .iter()
            .map(|b| 1.0 + b.share * (b.factor - 1.0))
            .product();
        Ok(Synth {
            authuser_share: config.authuser_share,
            objects,
            zipf,
            bursts_rng,
            counts_rng: SplitMix::keyed(config.seed, 0, STREAM_ARRIVALS),
            picks_rng: SplitMix::keyed(config.seed, 0, STREAM_PICKS),
            start_s,
            offset_s,
            next_second: 0,
            current_s: start_s,
            left_in_second: 0,
            layers,
            burst_mean,
            config,
        })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// The objects (kind and size of each).
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The logged zone, seconds east of UTC.
    pub fn offset_s(&self) -> i32 {
        self.offset_s
    }

    /// Client `c`'s authuser, if it logs one (fixed per seed and client).
    pub fn authuser(&self, client: u32) -> Option<String> {
        let pick = SplitMix::keyed(self.config.seed, u64::from(client), STREAM_AUTHUSER).unit();
        (pick < self.authuser_share).then(|| format!("u{client}"))
    }

    /// The request's CLF entry (what [`clf`] would read back from its line).
    pub fn entry(&self, request: &Request) -> Entry {
        Entry {
            host: client_host(request.client),
            user: self.authuser(request.client),
            time_ms: request.time_s * 1000,
            method: "GET".to_string(),
            target: request.path(),
            status: 200,
            bytes: Some(request.bytes),
            user_agent: None,
        }
    }

    /// The trace as CLF entries (what [`clf`] reads back from its lines), ready for
    /// [`Replay`](super::replay::Replay).
    pub fn entries(mut self) -> impl Iterator<Item = Result<Entry, std::convert::Infallible>> {
        std::iter::from_fn(move || {
            let request = self.next()?;
            Some(Ok(self.entry(&request)))
        })
    }

    /// The trace as CLF lines, each with its `\n`.
    pub fn lines(mut self) -> impl Iterator<Item = String> {
        let mut writer = ClfWriter::new(self.offset_s);
        std::iter::from_fn(move || {
            let request = self.next()?;
            let mut line = String::new();
            writer.line(&self, &request, &mut line);
            Some(line)
        })
    }

    /// The rate of the second `second` from the start (before bursts' normalization).
    fn diurnal(&self, second: u64) -> f64 {
        let local_s = self.start_s + second as i64 + i64::from(self.offset_s);
        let hour = local_s.rem_euclid(86_400) as f64 / 3600.0;
        let phase = std::f64::consts::TAU * (hour - self.config.diurnal_peak_hour) / 24.0;
        1.0 + self.config.diurnal_amplitude * phase.cos()
    }

    /// Draws the next second's request count; `false` at the end of the trace.
    fn next_second(&mut self) -> bool {
        if self.next_second >= self.config.duration_s {
            return false;
        }
        let second = self.next_second;
        self.next_second += 1;
        self.current_s = self.start_s + second as i64;
        let mut factor = 1.0 / self.burst_mean;
        for layer in &mut self.layers {
            if layer.on {
                factor *= layer.burst.factor;
            }
        }
        let lambda = self.config.mean_per_s * self.diurnal(second) * factor;
        self.left_in_second = match Poisson::new(lambda) {
            Ok(poisson) => {
                let n: f64 = poisson.sample(&mut self.counts_rng);
                n as u64
            }
            Err(_) => 0,
        };
        for layer in &mut self.layers {
            let b = layer.burst;
            let flip = if layer.on {
                1.0 / b.mean_s
            } else if b.share > 0.0 {
                b.share / ((1.0 - b.share) * b.mean_s)
            } else {
                0.0
            };
            if self.bursts_rng.unit() < flip {
                layer.on = !layer.on;
            }
        }
        true
    }
}

impl Iterator for Synth {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        while self.left_in_second == 0 {
            if !self.next_second() {
                return None;
            }
        }
        self.left_in_second -= 1;
        let rank: f64 = self.zipf.sample(&mut self.picks_rng);
        let object = ((rank as u64).max(1) - 1).min(u64::from(self.objects.len() - 1)) as u32;
        let (kind, bytes) = self.objects.get(object).unwrap_or((Kind::Other, 0));
        let client = self.picks_rng.below(u64::from(self.config.clients)) as u32;
        Some(Request {
            time_s: self.current_s,
            object,
            kind,
            bytes,
            client,
        })
    }
}

/// Writes requests as Common Log Format lines, in the synthesizer's zone (the date of a second
/// formatted once).
#[derive(Debug, Clone)]
pub struct ClfWriter {
    offset_s: i32,
    cached_s: Option<i64>,
    cached: String,
}

impl ClfWriter {
    pub fn new(offset_s: i32) -> ClfWriter {
        ClfWriter {
            offset_s,
            cached_s: None,
            cached: String::new(),
        }
    }

    /// Appends `request`'s line, with its `\n`, to `out`.
    pub fn line(&mut self, synth: &Synth, request: &Request, out: &mut String) {
        if self.cached_s != Some(request.time_s) {
            self.cached = clf::format_time_in(request.time_s, self.offset_s);
            self.cached_s = Some(request.time_s);
        }
        let user = synth.authuser(request.client);
        let _ = writeln!(
            out,
            "{} - {} [{}] \"GET {} HTTP/1.0\" 200 {}",
            client_host(request.client),
            user.as_deref().unwrap_or("-"),
            self.cached,
            request.path(),
            request.bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fit::Fit;

    fn small(seed: u64) -> SynthConfig {
        SynthConfig {
            seed,
            objects: 500,
            duration_s: 600,
            mean_per_s: 50.0,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn synth_is_deterministic_and_streams_in_time_order() {
        let a: Vec<Request> = Synth::new(small(7)).unwrap().collect();
        let b: Vec<Request> = Synth::new(small(7)).unwrap().collect();
        let c: Vec<Request> = Synth::new(small(8)).unwrap().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0].time_s <= w[1].time_s));
        let (start, _) = small(7).start_time().unwrap();
        assert!(a[0].time_s >= start && a.last().unwrap().time_s < start + 600);
        // About 600 s x 50/s x 0.58 (midnight, 9 hours from the diurnal peak at 15:00).
        assert!((12_000..25_000).contains(&a.len()), "{}", a.len());
    }

    #[test]
    fn synth_objects_keep_one_kind_and_size() {
        let synth = Synth::new(small(3)).unwrap();
        let objects = synth.objects().clone();
        let mut seen = std::collections::HashMap::new();
        for r in synth.take(20_000) {
            assert_eq!(objects.get(r.object), Some((r.kind, r.bytes)));
            let first = *seen.entry(r.object).or_insert((r.kind, r.bytes));
            assert_eq!(first, (r.kind, r.bytes));
            assert!(r.bytes >= BYTES_MIN[r.kind as usize]);
        }
        // The same seed and index: the same size, whatever else the configuration says.
        let other = Objects::new(&SynthConfig {
            duration_s: 5,
            ..small(3)
        });
        for i in 0..500 {
            assert_eq!(other.get(i), objects.get(i));
        }
    }

    #[test]
    fn synth_lines_read_back_as_clf() {
        let mut synth = Synth::new(small(5)).unwrap();
        let mut writer = ClfWriter::new(synth.offset_s());
        let requests: Vec<Request> = synth.by_ref().take(2000).collect();
        let mut text = String::new();
        for r in &requests {
            writer.line(&synth, r, &mut text);
        }
        assert!(
            text.contains("[01/Nov/1996:00:00:00 -0800]"),
            "{}",
            &text[..200]
        );
        let mut reader = clf::Reader::new(text.as_bytes());
        let entries: Vec<Entry> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(reader.stats().skipped_total(), 0, "{}", reader.stats());
        assert_eq!(entries.len(), requests.len());
        for (entry, r) in entries.iter().zip(&requests) {
            assert_eq!(*entry, synth.entry(r));
        }
        assert!(entries.iter().any(|e| e.user.is_some()));
        assert!(entries.iter().any(|e| e.user.is_none()));
    }

    #[test]
    fn synth_feeds_a_replay_and_its_lines_match_its_entries() {
        use crate::trace::replay::{Replay, Timing};
        let synth = Synth::new(small(11)).unwrap();
        let (start, _) = small(11).start_time().unwrap();
        let requests: Vec<Request> = synth.clone().take(500).collect();
        let replayed: Vec<_> = Replay::new(
            synth.clone().entries().take(500),
            Timing::Trace { speedup: 10.0 },
            "http://127.0.0.1:9",
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
        assert_eq!(replayed.len(), 500);
        for (r, q) in replayed.iter().zip(&requests) {
            assert_eq!(r.url, format!("http://127.0.0.1:9{}", q.path()));
            assert_eq!(r.expected_bytes, Some(q.bytes));
            let offset_s = (q.time_s - requests[0].time_s) as f64 / 10.0;
            assert!((r.at.as_secs_f64() - offset_s).abs() < 1e-9);
        }
        assert!(requests[0].time_s >= start);
        let lines: Vec<String> = synth.lines().take(500).collect();
        for (line, q) in lines.iter().zip(&requests) {
            let entry = clf::parse_line(line.trim_end()).unwrap();
            assert_eq!(entry.target, q.path());
            assert_eq!(entry.bytes, Some(q.bytes));
        }
    }

    #[test]
    fn synth_follows_the_mix_sizes_and_popularity_asked() {
        let config = SynthConfig {
            objects: 1000,
            duration_s: 3600,
            mean_per_s: 60.0,
            ..SynthConfig::default()
        };
        let mut fit = Fit::new(config.objects);
        for r in Synth::new(config.clone()).unwrap() {
            fit.record_kind(r.time_s, r.kind, Some(r.object), Some(r.bytes));
        }
        let report = fit.report();
        for kind in Kind::ALL {
            let asked = config.mix.get(kind);
            assert!(
                (report.share(kind) - asked).abs() < 0.02,
                "{kind:?}\n{report}"
            );
            let mean = report.mean_bytes(kind).unwrap();
            let asked = config.mean_bytes.get(kind);
            assert!((mean / asked - 1.0).abs() < 0.1, "{kind:?}\n{report}");
        }
        let alpha = report.alpha.unwrap().alpha;
        assert!((alpha - config.alpha).abs() < 0.1, "{report}");
    }

    /// `cargo test -p loadgen --release synth_day -- --ignored --nocapture`: the fit of a
    /// default day, for tuning the defaults.
    #[test]
    #[ignore]
    fn synth_day() {
        let mut config = SynthConfig::default();
        if let Ok(tune) = std::env::var("SYNTH_TUNE") {
            let v: Vec<f64> = tune.split(',').map(|x| x.parse().unwrap()).collect();
            config.diurnal_amplitude = v[0];
            config.bursts = v[1..]
                .chunks(3)
                .map(|c| Burst {
                    mean_s: c[0],
                    share: c[1],
                    factor: c[2],
                })
                .collect();
        }
        for seed in 1..=8 {
            let mut fit = Fit::new(config.objects);
            for r in Synth::new(SynthConfig {
                seed,
                ..config.clone()
            })
            .unwrap()
            {
                fit.record_kind(r.time_s, r.kind, Some(r.object), Some(r.bytes));
            }
            println!("seed {seed}\n{}", fit.report());
        }
    }

    #[test]
    fn synth_config_errors_name_the_key() {
        let bad = |text: &str, key: &str| {
            let e = SynthConfig::from_toml(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        };
        bad("objects = 0", "objects");
        bad("alpha = -1.0", "alpha");
        bad(
            "mix = { gif = 0.5, html = 0.5, jpeg = 0.5, other = 0.0 }",
            "mix",
        );
        bad("mix = { gif = 1.0, html = 0.0, jpeg = 0.0 }", "other");
        bad(
            "mean_bytes = { gif = 10.0, html = 5131.0, jpeg = 12070.0, other = 8192.0 }",
            "mean_bytes.gif",
        );
        bad("size_sigma = 9.0", "size_sigma");
        bad("clients = 0", "clients");
        bad("authuser_share = 2.0", "authuser_share");
        bad("duration_s = 0", "duration_s");
        bad("mean_per_s = 0.0", "mean_per_s");
        bad("mean_per_s = nan", "mean_per_s");
        bad("diurnal_amplitude = 1.0", "diurnal_amplitude");
        bad("diurnal_peak_hour = 24.0", "diurnal_peak_hour");
        bad(
            "bursts = [{ mean_s = 0.5, share = 0.1, factor = 2.0 }]",
            "bursts[0].mean_s",
        );
        bad(
            "bursts = [{ mean_s = 5.0, share = 0.9, factor = 2.0 }]",
            "bursts[0].share",
        );
        bad(
            "bursts = [{ mean_s = 5.0, share = 0.1, factor = 0.5 }]",
            "bursts[0].factor",
        );
        bad("start = \"yesterday\"", "start");
        bad("colour = 3", "colour");
        let ok = SynthConfig::from_toml("seed = 9\nobjects = 20\n").unwrap();
        assert_eq!((ok.seed, ok.objects, ok.alpha), (9, 20, 0.75));
        // The defaults are valid and round-trip through TOML.
        let text = toml::to_string(&SynthConfig::default()).unwrap();
        assert_eq!(
            SynthConfig::from_toml(&text).unwrap(),
            SynthConfig::default()
        );
    }
}
