//! A process's fault layer: the faults an experiment injects through the admin API
//! (`POST /faults`, `DELETE /faults`), and the switch the transport, the store and the web
//! service's processes consult.
//!
//! Faults act on this process only: `block_peers` drops traffic to and from those peers (blocking
//! peers on every node of a group is how a partition is made), `delay_ms` holds every outgoing
//! peer message that long, `loss` drops that fraction of outgoing peer messages, `disk_slowdown`
//! multiplies the time the disk takes, `cpu_slowdown` the time a modelled or real CPU takes (a slow
//! worker), `clock_skew_ms` shifts the clock this node stamps updates with, `upstream_delay_ms`
//! holds every request to an upstream server (the web origin) that long, and `beacon_loss` drops
//! that fraction of the load announcements (beacons and reports) this process sends or receives.
//! This module keeps state; it never sends or sleeps itself.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest injected link delay.
pub const DELAY_MS_MAX: u64 = 60_000;
/// Largest disk slowdown factor.
pub const DISK_SLOWDOWN_MAX: f64 = 1_000.0;
/// Largest clock skew, either way.
pub const CLOCK_SKEW_MS_MAX: i64 = 24 * 3_600_000;
/// Most peers one node can block.
pub const BLOCKED_PEERS_MAX: usize = 1_024;
/// Largest CPU slowdown factor.
pub const CPU_SLOWDOWN_MAX: f64 = 1_000.0;

/// The active faults of one node. The default is no fault at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub block_peers: BTreeSet<u32>,
    pub delay_ms: u64,
    pub loss: f64,
    pub disk_slowdown: f64,
    pub cpu_slowdown: f64,
    pub clock_skew_ms: i64,
    pub upstream_delay_ms: u64,
    pub beacon_loss: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            block_peers: BTreeSet::new(),
            delay_ms: 0,
            loss: 0.0,
            disk_slowdown: 1.0,
            cpu_slowdown: 1.0,
            clock_skew_ms: 0,
            upstream_delay_ms: 0,
            beacon_loss: 0.0,
        }
    }
}

/// A `POST /faults` body: any subset of the fault fields; the ones given replace the current
/// values, the others stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    pub block_peers: Option<BTreeSet<u32>>,
    pub delay_ms: Option<u64>,
    pub loss: Option<f64>,
    pub disk_slowdown: Option<f64>,
    pub cpu_slowdown: Option<f64>,
    pub clock_skew_ms: Option<i64>,
    pub upstream_delay_ms: Option<u64>,
    pub beacon_loss: Option<f64>,
}

impl Faults {
    pub fn is_clear(&self) -> bool {
        *self == Faults::default()
    }

    /// Applies a patch, or says which field is out of range (and changes nothing).
    pub fn patched(&self, patch: &FaultsPatch) -> Result<Faults, String> {
        let mut next = self.clone();
        if let Some(peers) = &patch.block_peers {
            if peers.len() > BLOCKED_PEERS_MAX {
                return Err(format!("block_peers: at most {BLOCKED_PEERS_MAX} peers"));
            }
            next.block_peers = peers.clone();
        }
        if let Some(d) = patch.delay_ms {
            if d > DELAY_MS_MAX {
                return Err(format!("delay_ms: at most {DELAY_MS_MAX}, got {d}"));
            }
            next.delay_ms = d;
        }
        if let Some(l) = patch.loss {
            if !(0.0..=1.0).contains(&l) {
                return Err(format!("loss: must be between 0.0 and 1.0, got {l}"));
            }
            next.loss = l;
        }
        if let Some(f) = patch.disk_slowdown {
            if !(1.0..=DISK_SLOWDOWN_MAX).contains(&f) {
                return Err(format!(
                    "disk_slowdown: must be between 1.0 and {DISK_SLOWDOWN_MAX}, got {f}"
                ));
            }
            next.disk_slowdown = f;
        }
        if let Some(f) = patch.cpu_slowdown {
            if !(1.0..=CPU_SLOWDOWN_MAX).contains(&f) {
                return Err(format!(
                    "cpu_slowdown: must be between 1.0 and {CPU_SLOWDOWN_MAX}, got {f}"
                ));
            }
            next.cpu_slowdown = f;
        }
        if let Some(d) = patch.upstream_delay_ms {
            if d > DELAY_MS_MAX {
                return Err(format!(
                    "upstream_delay_ms: at most {DELAY_MS_MAX}, got {d}"
                ));
            }
            next.upstream_delay_ms = d;
        }
        if let Some(l) = patch.beacon_loss {
            if !(0.0..=1.0).contains(&l) {
                return Err(format!("beacon_loss: must be between 0.0 and 1.0, got {l}"));
            }
            next.beacon_loss = l;
        }
        if let Some(s) = patch.clock_skew_ms {
            if s.abs() > CLOCK_SKEW_MS_MAX {
                return Err(format!(
                    "clock_skew_ms: at most {CLOCK_SKEW_MS_MAX} either way, got {s}"
                ));
            }
            next.clock_skew_ms = s;
        }
        Ok(next)
    }
}

/// The node's current faults, read on every peer message.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    state: RwLock<Faults>,
}

impl FaultSwitch {
    pub fn get(&self) -> Faults {
        self.state.read().unwrap().clone()
    }

    pub fn set(&self, faults: Faults) {
        *self.state.write().unwrap() = faults;
    }

    /// Whether traffic with `peer` is cut.
    pub fn blocks(&self, peer: u32) -> bool {
        self.state.read().unwrap().block_peers.contains(&peer)
    }

    /// Whether traffic with any peer is cut.
    pub fn blocks_any(&self) -> bool {
        !self.state.read().unwrap().block_peers.is_empty()
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.state.read().unwrap().delay_ms)
    }

    /// Whether to drop the next outgoing message (`draw` is uniform in [0, 1)).
    pub fn loses(&self, draw: f64) -> bool {
        draw < self.state.read().unwrap().loss
    }

    pub fn disk_slowdown(&self) -> f64 {
        self.state.read().unwrap().disk_slowdown
    }

    pub fn clock_skew_ms(&self) -> i64 {
        self.state.read().unwrap().clock_skew_ms
    }

    pub fn cpu_slowdown(&self) -> f64 {
        self.state.read().unwrap().cpu_slowdown
    }

    pub fn upstream_delay(&self) -> Duration {
        Duration::from_millis(self.state.read().unwrap().upstream_delay_ms)
    }

    /// Whether to drop the next beacon or load report (`draw` is uniform in [0, 1)).
    pub fn loses_beacon(&self, draw: f64) -> bool {
        draw < self.state.read().unwrap().beacon_loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_merge_and_validate() {
        let f = Faults::default();
        let patch: FaultsPatch =
            serde_json::from_str(r#"{"block_peers": [2, 3], "loss": 0.5}"#).unwrap();
        let g = f.patched(&patch).unwrap();
        assert_eq!(g.block_peers, [2, 3].into_iter().collect());
        assert_eq!(g.loss, 0.5);
        assert_eq!(g.delay_ms, 0);
        let bad: FaultsPatch = serde_json::from_str(r#"{"loss": 1.5}"#).unwrap();
        assert!(g.patched(&bad).unwrap_err().contains("loss"));
        let err = serde_json::from_str::<FaultsPatch>(r#"{"lose": 0.1}"#).unwrap_err();
        assert!(err.to_string().contains("lose"));
        assert!(Faults::default().is_clear());
        assert!(!g.is_clear());
    }
}
