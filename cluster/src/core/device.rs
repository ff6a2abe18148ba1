//! A modelled device: something that does `units_per_s` units of work a second, one batch at a
//! time, plus a fixed latency per batch. The mail service's modelled disk is one (units: syncs);
//! the web service's modelled CPU another (units: kilobytes of input). One machine cannot show
//! that N disk- or CPU-bound nodes scale when they share its two cores and one disk; giving each
//! node its own modelled device can. Pure arithmetic: callers wait out the time themselves.

use std::time::Duration;

/// The longest one batch is held, whatever the model says: a misconfigured model must not
/// stall a node for hours.
pub const BATCH_TIME_MAX: Duration = Duration::from_secs(60);

/// A device serving `units_per_s`, with `latency_ms` added per batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceModel {
    pub units_per_s: f64,
    pub latency_ms: f64,
}

impl DeviceModel {
    /// The time one batch of `units` takes, stretched by `slowdown` (an injected fault, ≥ 1).
    pub fn batch_time(&self, units: f64, slowdown: f64) -> Duration {
        let seconds = units.max(0.0) / self.units_per_s + self.latency_ms.max(0.0) / 1000.0;
        let seconds = seconds * slowdown.max(1.0);
        if seconds.is_finite() {
            Duration::from_secs_f64(seconds).min(BATCH_TIME_MAX)
        } else {
            BATCH_TIME_MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_costs_its_units_and_the_latency() {
        let disk = DeviceModel {
            units_per_s: 100.0,
            latency_ms: 5.0,
        };
        assert_eq!(disk.batch_time(10.0, 1.0), Duration::from_millis(105));
        assert_eq!(disk.batch_time(10.0, 2.0), Duration::from_millis(210));
        let broken = DeviceModel {
            units_per_s: 0.0,
            latency_ms: 0.0,
        };
        assert_eq!(broken.batch_time(1.0, 1.0), BATCH_TIME_MAX);
    }
}
