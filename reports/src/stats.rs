//! The statistics behind the regression gate, calibration and history: Student's t tests over
//! repetitions with a floor from each run's own sampling error, Holm's step-down correction over
//! the metrics of one comparison, distribution-free (order-statistic) bounds of a quantile,
//! batch means for a rate, and the E-divisive split of a series.
//!
//! Why these and not a bootstrap: with three repetitions a side, a percentile bootstrap of the
//! mean has only ten distinct resample means per side and its interval is far too narrow (it
//! called a rerun "regressed" on a shared CI runner); Student's t widens exactly as much as three
//! values warrant. A p99 from a few hundred samples is one of the few largest values, so each
//! run's quantile also carries the error of where that order statistic falls, which the spread of
//! three runs may by chance not show: the larger of the two is used. Ten metrics each tested at
//! 95 % raise a false alarm on *some* metric in four comparisons out of ten; Holm's correction
//! keeps the chance of any false alarm in one comparison at most 1 − confidence.
//!
//! Pure functions: no I/O, no clock, no randomness.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

/// Degrees of freedom beyond which Student's t is taken as the normal distribution.
const DF_NORMAL: f64 = 1e6;

/// P(T > t) for Student's t with `df` degrees of freedom (normal when `df` is infinite).
pub fn t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return 1.0;
    }
    if t == f64::INFINITY {
        return 0.0;
    }
    if t == f64::NEG_INFINITY {
        return 1.0;
    }
    if df.is_nan() || df <= 0.0 || df >= DF_NORMAL {
        return standard_normal().sf(t);
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(d) => d.sf(t),
        Err(_) => standard_normal().sf(t),
    }
}

/// The `p` quantile of Student's t with `df` degrees of freedom (normal when `df` is infinite).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    if df.is_nan() || df <= 0.0 || df >= DF_NORMAL {
        return standard_normal().inverse_cdf(p);
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(d) => d.inverse_cdf(p),
        Err(_) => standard_normal().inverse_cdf(p),
    }
}

/// The `p` quantile of the standard normal distribution.
pub fn z_quantile(p: f64) -> f64 {
    t_quantile(p, f64::INFINITY)
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// Arithmetic mean; 0 for no values.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Sample variance (n − 1 in the denominator); `None` below two values.
pub fn sample_variance(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some(ss / (values.len() - 1) as f64)
}

/// One side's estimate of a metric's mean: the variance of that mean and its degrees of freedom
/// (infinite when it comes from known sampling error alone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub var_of_mean: f64,
    pub df: f64,
    /// Whether the runs' own sampling error was larger than their spread (and so was used).
    pub floored: bool,
}

/// Estimates a side's mean from its runs' `values` and, where every run has one, their own
/// standard errors `within` (the sampling error of each run's figure). The variance of the mean
/// is the larger of the spread between runs and the runs' sampling error: three runs can agree
/// by chance far more closely than their p99s are known. `None` when neither is available (one
/// run and no sampling error).
pub fn estimate(values: &[f64], within: Option<&[f64]>) -> Option<Estimate> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let m = mean(values);
    let between = sample_variance(values).map(|v| v / n as f64);
    let floor = within
        .filter(|w| w.len() == n && w.iter().all(|s| s.is_finite() && *s >= 0.0))
        .map(|w| w.iter().map(|s| s * s).sum::<f64>() / (n * n) as f64);
    let df = if n >= 2 {
        (n - 1) as f64
    } else {
        f64::INFINITY
    };
    match (between, floor) {
        (Some(b), Some(f)) if f > b => Some(Estimate {
            mean: m,
            var_of_mean: f,
            df,
            floored: true,
        }),
        (Some(b), _) => Some(Estimate {
            mean: m,
            var_of_mean: b,
            df,
            floored: false,
        }),
        (None, Some(f)) => Some(Estimate {
            mean: m,
            var_of_mean: f,
            df: f64::INFINITY,
            floored: true,
        }),
        (None, None) => None,
    }
}

/// The difference of two means (candidate − baseline) with its standard error and
/// Welch–Satterthwaite degrees of freedom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub diff: f64,
    pub se: f64,
    pub df: f64,
}

/// Welch's comparison of two independent estimates.
pub fn welch(baseline: &Estimate, candidate: &Estimate) -> Difference {
    let var = baseline.var_of_mean + candidate.var_of_mean;
    let term = |e: &Estimate| {
        if e.df.is_finite() && e.df > 0.0 {
            e.var_of_mean * e.var_of_mean / e.df
        } else {
            0.0
        }
    };
    let denominator = term(baseline) + term(candidate);
    let df = if var > 0.0 && denominator > 0.0 {
        var * var / denominator
    } else {
        f64::INFINITY
    };
    Difference {
        diff: candidate.mean - baseline.mean,
        se: var.sqrt(),
        df,
    }
}

impl Difference {
    /// One-sided p-value of "the true difference is not above 0" against "it is above 0", in
    /// direction `sign` (+1: higher, −1: lower).
    pub fn p_one_sided(&self, sign: f64) -> f64 {
        let d = sign * self.diff;
        if self.se > 0.0 {
            t_sf(d / self.se, self.df)
        } else if d > 0.0 {
            0.0
        } else {
            1.0
        }
    }

    /// The two-sided `confidence` interval of the difference.
    pub fn interval(&self, confidence: f64) -> (f64, f64) {
        let half = t_quantile(0.5 + confidence / 2.0, self.df) * self.se;
        (self.diff - half, self.diff + half)
    }

    /// The smallest true difference (in direction `sign`) a one-sided test at level `alpha`
    /// detects with probability `power` at this standard error.
    pub fn detectable(&self, alpha: f64, power: f64) -> f64 {
        (t_quantile(1.0 - alpha, self.df) + t_quantile(power, self.df)) * self.se
    }
}

/// Holm's step-down adjusted p-values (same order as given): rejecting where the adjusted value
/// is at most α keeps the chance of any false rejection among them at most α.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![1.0; m];
    let mut running: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        let scaled = ((m - k) as f64 * p_values[i]).min(1.0);
        running = running.max(scaled);
        adjusted[i] = running;
    }
    adjusted
}

/// The fewest samples from which a distribution-free two-sided `confidence` interval of the `q`
/// quantile exists at all: below it, even the smallest and largest values do not bracket the
/// quantile often enough (p99 at 95 %: 299 samples).
pub fn quantile_samples_min(q: f64, confidence: f64) -> u64 {
    // Coverage of [min, max] is 1 − q^n − (1 − q)^n; find the least n reaching `confidence`.
    let coverage = |n: f64| 1.0 - q.powf(n) - (1.0 - q).powf(n);
    let mut n: u64 = 2;
    while coverage(n as f64) < confidence {
        n = n.saturating_mul(2);
        if n > 1 << 40 {
            return n;
        }
    }
    let (mut lo, mut hi) = (n / 2, n);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if coverage(mid as f64) >= confidence {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The 1-based ranks `(l, u)` of the order statistics that bracket the `q` quantile of `n`
/// samples with probability at least `confidence` (each tail at most (1 − confidence) / 2),
/// from the binomial distribution of how many samples fall below the quantile; `None` when `n`
/// is below [`quantile_samples_min`].
pub fn quantile_ranks(n: u64, q: f64, confidence: f64) -> Option<(u64, u64)> {
    if n == 0 || !(0.0..1.0).contains(&q) || n < quantile_samples_min(q, confidence) {
        return None;
    }
    let tail = (1.0 - confidence) / 2.0;
    let binomial = Binomial::new(q, n).ok()?;
    // P(X_(l) > ξ) = P(B ≤ l − 1): the largest l with that at most `tail` (at least 1).
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if binomial.cdf(mid - 1) <= tail {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let l = lo.max(1);
    // P(X_(u) < ξ) = P(B ≥ u) = 1 − P(B ≤ u − 1): the least u with that at most `tail`.
    let (mut lo, mut hi) = (1u64, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if 1.0 - binomial.cdf(mid - 1) <= tail {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some((l, lo.max(l)))
}

/// The standard error of a rate from its per-second counts, by batch means: the seconds are cut
/// into up to ten equal batches whose means vary as the run's rate does (neighbouring seconds of
/// a queue are correlated, batches much less). Relative to the mean rate; `None` below three
/// seconds or with no events.
pub fn batch_means_relative_se(per_second: &[f64]) -> Option<f64> {
    const BATCHES_MAX: usize = 10;
    let n = per_second.len();
    if n < 3 {
        return None;
    }
    let batches = n.min(BATCHES_MAX);
    let size = n / batches;
    let means: Vec<f64> = (0..batches)
        .map(|b| mean(&per_second[b * size..(b + 1) * size]))
        .collect();
    let m = mean(&means);
    if m <= 0.0 {
        return None;
    }
    let var = sample_variance(&means)?;
    Some((var / batches as f64).sqrt() / m)
}

/// The best place to cut a series in two by the energy distance between the parts (Matteson and
/// James's E-divisive statistic with exponent 1, as MongoDB's and Apache Otava's change-point
/// detection use): `(τ, q)` where the second part starts at index τ, both parts have at least
/// `min_size` values, and `q` is the statistic there. `None` when the series is too short.
///
/// The sums of distances within each part and between them are updated as the cut moves (each
/// step moves one value from the right part to the left), so a series of n values costs O(n²),
/// not O(n³).
pub fn e_divisive_split(series: &[f64], min_size: usize) -> Option<(usize, f64)> {
    let n = series.len();
    let min_size = min_size.max(1);
    if n < 2 * min_size {
        return None;
    }
    let distances = |k: usize, others: &[f64]| -> f64 {
        others.iter().map(|y| (series[k] - y).abs()).sum::<f64>()
    };
    let pairs = |part: &[f64]| -> f64 {
        let mut sum = 0.0;
        for i in 0..part.len() {
            for j in i + 1..part.len() {
                sum += (part[i] - part[j]).abs();
            }
        }
        sum
    };
    // Sums of |x_i − x_j| over the pairs within the left part, within the right part, and with
    // one value in each, for the cut at τ.
    let mut tau = min_size;
    let mut within_left = pairs(&series[..tau]);
    let mut within_right = pairs(&series[tau..]);
    let mut between: f64 = (0..tau).map(|i| distances(i, &series[tau..])).sum();
    let mean_of_pairs = |sum: f64, k: usize| -> f64 {
        if k < 2 {
            0.0
        } else {
            sum / (k * (k - 1) / 2) as f64
        }
    };
    let mut best: Option<(usize, f64)> = None;
    loop {
        let (a, b) = (tau, n - tau);
        let energy = between * 2.0 / (a as f64 * b as f64)
            - mean_of_pairs(within_left, a)
            - mean_of_pairs(within_right, b);
        let q = (a * b) as f64 / n as f64 * energy;
        if best.is_none_or(|(_, q_best)| q > q_best) {
            best = Some((tau, q));
        }
        if tau == n - min_size {
            return best;
        }
        // x_τ moves to the left part.
        let to_left = distances(tau, &series[..tau]);
        let to_right = distances(tau, &series[tau + 1..]);
        within_left += to_left;
        within_right = (within_right - to_right).max(0.0);
        between += to_right - to_left;
        tau += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t tables: t(0.975, 2) = 4.303, t(0.975, 10) = 2.228, z(0.975) = 1.960.
        assert!(close(t_quantile(0.975, 2.0), 4.303, 1e-3));
        assert!(close(t_quantile(0.975, 10.0), 2.228, 1e-3));
        assert!(close(z_quantile(0.975), 1.960, 1e-3));
        assert!(close(t_sf(4.303, 2.0), 0.025, 1e-4));
        assert!(close(t_sf(0.0, 5.0), 0.5, 1e-12));
        assert_eq!(t_sf(f64::INFINITY, 3.0), 0.0);
    }

    #[test]
    fn holm_adjusts_in_steps_and_stays_monotone() {
        // Sorted p: 0.01, 0.02, 0.04 → 3·0.01, max(0.03, 2·0.02), max(0.04, 1·0.04).
        let adjusted = holm(&[0.04, 0.01, 0.02]);
        assert!(close(adjusted[1], 0.03, 1e-12));
        assert!(close(adjusted[2], 0.04, 1e-12));
        assert!(close(adjusted[0], 0.04, 1e-12));
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn a_p99_needs_about_three_hundred_samples() {
        assert_eq!(quantile_samples_min(0.99, 0.95), 299);
        assert!(quantile_samples_min(0.5, 0.95) <= 6);
        assert_eq!(quantile_ranks(100, 0.99, 0.95), None);
        let (l, u) = quantile_ranks(10_000, 0.99, 0.95).unwrap();
        // About n·q ± 1.96·sqrt(n·q·(1−q)) = 9900 ± 19.5.
        assert!((9878..=9882).contains(&l), "{l}");
        assert!((9919..=9922).contains(&u), "{u}");
        let (l, u) = quantile_ranks(300, 0.99, 0.95).unwrap();
        assert!(l < u && u <= 300, "{l} {u}");
    }

    #[test]
    fn the_floor_applies_when_runs_agree_by_chance() {
        let e = estimate(&[1.0, 1.0, 1.0], Some(&[0.3, 0.3, 0.3])).unwrap();
        assert!(e.floored);
        assert!(close(e.var_of_mean, 0.09 / 3.0, 1e-12));
        assert_eq!(e.df, 2.0);
        let e = estimate(&[1.0, 2.0, 3.0], Some(&[0.01, 0.01, 0.01])).unwrap();
        assert!(!e.floored);
        assert!(close(e.var_of_mean, 1.0 / 3.0, 1e-12));
        assert!(estimate(&[1.0], None).is_none());
        let e = estimate(&[1.0], Some(&[0.2])).unwrap();
        assert_eq!(e.df, f64::INFINITY);
    }

    #[test]
    fn welch_widens_with_few_runs() {
        let b = estimate(&[100.0, 102.0, 98.0], None).unwrap();
        let c = estimate(&[90.0, 92.0, 88.0], None).unwrap();
        let d = welch(&b, &c);
        assert!(close(d.diff, -10.0, 1e-12));
        assert!(close(d.df, 4.0, 1e-9));
        assert!(d.p_one_sided(-1.0) < 0.01);
        assert!(d.p_one_sided(1.0) > 0.99);
        let (lo, hi) = d.interval(0.95);
        assert!(lo < -10.0 && hi > -10.0 && hi < 0.0, "{lo} {hi}");
    }

    #[test]
    fn batch_means_see_a_steady_and_a_wobbling_rate() {
        assert_eq!(batch_means_relative_se(&[100.0; 20]), Some(0.0));
        let wobble: Vec<f64> = (0..20)
            .map(|i| if i % 4 < 2 { 90.0 } else { 110.0 })
            .collect();
        assert!(batch_means_relative_se(&wobble).unwrap() > 0.01);
        assert_eq!(batch_means_relative_se(&[1.0, 2.0]), None);
    }

    #[test]
    fn e_divisive_finds_a_step() {
        let mut series = vec![100.0, 101.0, 99.0, 100.5, 99.5, 100.0];
        series.extend([80.0, 81.0, 79.0, 80.5]);
        let (tau, q) = e_divisive_split(&series, 2).unwrap();
        assert_eq!(tau, 6);
        assert!(q > 0.0);
        assert_eq!(e_divisive_split(&[1.0, 2.0, 3.0], 2), None);
    }

    /// The statistic computed from scratch at every cut, as Matteson and James define it.
    fn e_divisive_naive(series: &[f64], min_size: usize) -> Option<(usize, f64)> {
        let n = series.len();
        if n < 2 * min_size {
            return None;
        }
        let within = |part: &[f64]| -> f64 {
            let k = part.len();
            if k < 2 {
                return 0.0;
            }
            let mut sum = 0.0;
            for i in 0..k {
                for j in i + 1..k {
                    sum += (part[i] - part[j]).abs();
                }
            }
            sum / (k * (k - 1) / 2) as f64
        };
        let mut best: Option<(usize, f64)> = None;
        for tau in min_size..=n - min_size {
            let (left, right) = series.split_at(tau);
            let (a, b) = (left.len() as f64, right.len() as f64);
            let between: f64 = left
                .iter()
                .flat_map(|x| right.iter().map(move |y| (x - y).abs()))
                .sum::<f64>()
                * 2.0
                / (a * b);
            let q = a * b / (a + b) * (between - within(left) - within(right));
            if best.is_none_or(|(_, q_best)| q > q_best) {
                best = Some((tau, q));
            }
        }
        best
    }

    #[test]
    fn the_running_sums_give_the_statistic_from_scratch() {
        // A deterministic wobble with two level shifts, cut with several minimum sizes.
        let series: Vec<f64> = (0..40)
            .map(|i| {
                let level = match i {
                    0..=14 => 100.0,
                    15..=29 => 70.0,
                    _ => 90.0,
                };
                level + ((i * 37 % 11) as f64 - 5.0)
            })
            .collect();
        for min_size in [1, 2, 3, 7, 20] {
            let (tau, q) = e_divisive_split(&series, min_size).unwrap();
            let (tau_naive, q_naive) = e_divisive_naive(&series, min_size).unwrap();
            assert_eq!(tau, tau_naive, "min_size {min_size}");
            assert!(
                close(q, q_naive, 1e-9 * q_naive.abs().max(1.0)),
                "{q} {q_naive}"
            );
        }
        assert_eq!(e_divisive_split(&[5.0; 8], 3), Some((3, 0.0)));
    }
}
