//! Timing configuration of the Wombat membership state machine, and its validation.
//!
//! Every timer the protocol runs is a field here, in milliseconds (the unit is the suffix). The
//! defaults make a cluster of a handful of nodes agree on a new view about half a second to one
//! second after a node fails. This module must never read a clock or hold any state: it only
//! describes and checks the numbers the state machine is given.

use serde::{Deserialize, Serialize};

/// Most nodes a cluster may configure. Every view and every beacon carries at most this many ids,
/// so a message is never larger than about 4 KiB of ids plus framing.
pub const NODES_MAX: usize = 1024;

/// Timers of the membership protocol. All times are milliseconds of the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often a node pings its predecessor.
    pub ping_interval_ms: u64,
    /// A predecessor that has not answered a ping for this long is reported as failed (or, if it
    /// was the leader, replaced by its successor).
    pub failure_timeout_ms: u64,
    /// How often a settled leader broadcasts its view.
    pub beacon_interval_ms: u64,
    /// How often a leader broadcasts while its view is changing ("go faster if things are
    /// changing"), so that drops during a change are repaired quickly.
    pub beacon_fast_interval_ms: u64,
    /// How long after a view change the leader keeps the fast beacon rate.
    pub beacon_fast_duration_ms: u64,
    /// How long after its leader's last beacon a minion still trusts that leader and ignores
    /// beacons from worse-ranked leaders (false-leader suppression). Must cover more than one
    /// beacon interval, so one lost beacon does not make a minion follow a usurper.
    pub leader_lease_ms: u64,
    /// Takeover timer of the best-ranked node: a non-leader that has adopted no beacon for
    /// `takeover_base_ms + rank_index * takeover_step_ms` broadcasts as leader.
    pub takeover_base_ms: u64,
    /// Added to the takeover timer per rank position, so the best surviving node fires first.
    pub takeover_step_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ping_interval_ms: 100,
            failure_timeout_ms: 400,
            beacon_interval_ms: 250,
            beacon_fast_interval_ms: 60,
            beacon_fast_duration_ms: 1_000,
            leader_lease_ms: 550,
            takeover_base_ms: 750,
            takeover_step_ms: 150,
        }
    }
}

/// A configuration value that cannot work, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership config: `{field}` {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl Config {
    /// Checks every field and the relations between them that the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("ping_interval_ms", self.ping_interval_ms),
            ("failure_timeout_ms", self.failure_timeout_ms),
            ("beacon_interval_ms", self.beacon_interval_ms),
            ("beacon_fast_interval_ms", self.beacon_fast_interval_ms),
            ("leader_lease_ms", self.leader_lease_ms),
            ("takeover_base_ms", self.takeover_base_ms),
            ("takeover_step_ms", self.takeover_step_ms),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(error(field, "must be greater than 0".to_string()));
            }
            // An hour is far beyond any sensible membership timer; the cap keeps every deadline
            // sum (`now + base + rank * step`) far from overflowing a u64.
            if value > HOUR_MS {
                return Err(error(
                    field,
                    format!("must be at most {HOUR_MS} (one hour)"),
                ));
            }
        }
        if self.beacon_fast_duration_ms > HOUR_MS {
            return Err(error(
                "beacon_fast_duration_ms",
                format!("must be at most {HOUR_MS} (one hour)"),
            ));
        }
        if self.failure_timeout_ms <= self.ping_interval_ms {
            return Err(error(
                "failure_timeout_ms",
                format!(
                    "({}) must be greater than ping_interval_ms ({}), or one late ack reports a live node as failed",
                    self.failure_timeout_ms, self.ping_interval_ms
                ),
            ));
        }
        if self.beacon_fast_interval_ms > self.beacon_interval_ms {
            return Err(error(
                "beacon_fast_interval_ms",
                format!(
                    "({}) must not exceed beacon_interval_ms ({})",
                    self.beacon_fast_interval_ms, self.beacon_interval_ms
                ),
            ));
        }
        if self.leader_lease_ms <= self.beacon_interval_ms {
            return Err(error(
                "leader_lease_ms",
                format!(
                    "({}) must be greater than beacon_interval_ms ({}), or minions distrust a live leader between beacons",
                    self.leader_lease_ms, self.beacon_interval_ms
                ),
            ));
        }
        if self.takeover_base_ms < self.leader_lease_ms {
            return Err(error(
                "takeover_base_ms",
                format!(
                    "({}) must be at least leader_lease_ms ({}), so minions accept a new leader by the time the first takeover timer fires",
                    self.takeover_base_ms, self.leader_lease_ms
                ),
            ));
        }
        Ok(())
    }

    /// Length of the takeover timer of the node at `rank_index` (0 for the best-ranked id).
    pub fn takeover_ms(&self, rank_index: usize) -> u64 {
        // rank_index < NODES_MAX and step <= HOUR_MS, so this cannot overflow.
        self.takeover_base_ms + rank_index as u64 * self.takeover_step_ms
    }
}

const HOUR_MS: u64 = 3_600_000;

fn error(field: &'static str, reason: String) -> ConfigError {
    ConfigError { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_config_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn membership_config_errors_name_the_field() {
        let config = Config {
            ping_interval_ms: 0,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "ping_interval_ms");

        let config = Config {
            failure_timeout_ms: 100,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "failure_timeout_ms");
        assert!(err.to_string().contains("failure_timeout_ms"), "{err}");

        let config = Config {
            leader_lease_ms: 200,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "leader_lease_ms");

        let config = Config {
            takeover_base_ms: 300,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "takeover_base_ms");
    }
}
