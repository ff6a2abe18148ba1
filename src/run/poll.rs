//! Watching the cluster during a run: every node's `/status` polled ten times a second; each
//! change of a node's view (or its going silent) is logged with its time. Recovery figures are
//! computed from that log and the per-second throughput series.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::admin;
use super::faults::FaultWindow;

/// How often every node is asked for its status.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// View changes kept at most (a flapping cluster must not grow the log without bound).
pub const VIEW_CHANGES_MAX: usize = 100_000;

/// A node's view as polled; `None` when the node did not answer.
pub type Seen = Option<(u64, u32, Vec<u32>)>;

#[derive(Debug, Clone, Serialize)]
pub struct ViewChange {
    /// Seconds from the start of the load (negative: before it).
    pub t_s: f64,
    pub node: u32,
    /// `None`: the node stopped answering.
    pub epoch: Option<u64>,
    pub leader: Option<u32>,
    pub members: Vec<u32>,
}

#[derive(Default)]
pub struct PollLog {
    pub changes: Vec<ViewChange>,
    last: BTreeMap<u32, Seen>,
    /// Latest replication backlog per answering node.
    pub backlog: BTreeMap<u32, u64>,
}

/// Polls until `stop`; `admins` is re-read every round (restarted nodes move).
pub async fn poll(
    admins: impl Fn() -> Vec<(u32, SocketAddr)> + Send + 'static,
    token: String,
    start: Instant,
    log: Arc<Mutex<PollLog>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let nodes = admins();
        let mut seen = Vec::with_capacity(nodes.len());
        for (id, addr) in nodes {
            seen.push((id, admin::status(addr, &token).await));
        }
        let t_s = start.elapsed().as_secs_f64();
        {
            let mut log = log.lock().unwrap();
            for (id, status) in seen {
                let view: Seen = status.as_ref().map(|s| {
                    let v = &s["view"];
                    (
                        v["epoch"].as_u64().unwrap_or(0),
                        v["leader"].as_u64().unwrap_or(0) as u32,
                        v["members"]
                            .as_array()
                            .map(|m| {
                                m.iter()
                                    .filter_map(|x| x.as_u64())
                                    .map(|x| x as u32)
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                });
                if let Some(s) = &status {
                    if let Some(b) = s["replication"]["backlog"].as_u64() {
                        log.backlog.insert(id, b);
                    }
                } else {
                    log.backlog.remove(&id);
                }
                if log.last.get(&id) != Some(&view) {
                    if log.changes.len() < VIEW_CHANGES_MAX {
                        log.changes.push(ViewChange {
                            t_s,
                            node: id,
                            epoch: view.as_ref().map(|v| v.0),
                            leader: view.as_ref().map(|v| v.1),
                            members: view.as_ref().map(|v| v.2.clone()).unwrap_or_default(),
                        });
                    }
                    log.last.insert(id, view);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Recovery figures for one fault, in seconds from its start (or its undo).
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub fault: usize,
    pub action: loadgen::experiment::FaultAction,
    pub node: Option<u32>,
    pub start_s: f64,
    /// First view change seen on any node after the fault.
    pub detection_s: Option<f64>,
    /// All answering nodes on one view again (a new one).
    pub convergence_s: Option<f64>,
    /// SMTP throughput back within 10% of the 10 s before the fault (for 3 s running).
    pub throughput_recovered_s: Option<f64>,
    /// After the undo: every node back in one view with all of them.
    pub reintegration_s: Option<f64>,
}

/// Per-node views over time, replayed from the log.
fn views_at(changes: &[ViewChange], until: f64) -> BTreeMap<u32, Option<(u64, Vec<u32>)>> {
    let mut views = BTreeMap::new();
    for c in changes.iter().filter(|c| c.t_s <= until) {
        views.insert(c.node, c.epoch.map(|e| (e, c.members.clone())));
    }
    views
}

/// Whether every answering node holds the same view; that view's (epoch, members).
fn agreed(views: &BTreeMap<u32, Option<(u64, Vec<u32>)>>) -> Option<(u64, Vec<u32>)> {
    let answering: BTreeSet<_> = views.values().flatten().cloned().collect();
    (answering.len() == 1).then(|| answering.into_iter().next().unwrap())
}

/// Computes recovery figures for each fault window. `smtp_per_s[t]` is the count of SMTP
/// operations intended in second `t`; `all_nodes` every configured node.
pub fn recovery(
    windows: &[FaultWindow],
    changes: &[ViewChange],
    smtp_per_s: &[u64],
    all_nodes: &[u32],
) -> Vec<Recovery> {
    windows
        .iter()
        .map(|w| {
            let before = agreed(&views_at(changes, w.start_s)).map(|v| v.0);
            let after: Vec<&ViewChange> = changes.iter().filter(|c| c.t_s >= w.start_s).collect();
            let detection_s = after
                .iter()
                .find(|c| c.epoch != before)
                .map(|c| c.t_s - w.start_s);
            let convergence_s = after.iter().find_map(|c| {
                let views = views_at(changes, c.t_s);
                match agreed(&views) {
                    Some((epoch, _)) if Some(epoch) != before => Some(c.t_s - w.start_s),
                    _ => None,
                }
            });
            let reintegration_s = w.end_s.and_then(|end| {
                changes.iter().filter(|c| c.t_s >= end).find_map(|c| {
                    let views = views_at(changes, c.t_s);
                    let everyone =
                        views.len() == all_nodes.len() && views.values().all(|v| v.is_some());
                    match agreed(&views) {
                        Some((_, members)) if everyone && members == all_nodes => Some(c.t_s - end),
                        _ => None,
                    }
                })
            });
            Recovery {
                fault: w.index,
                action: w.action,
                node: w.node,
                start_s: w.start_s,
                detection_s,
                convergence_s,
                throughput_recovered_s: throughput_back(smtp_per_s, w.start_s),
                reintegration_s,
            }
        })
        .collect()
}

/// First second after `start_s` from which SMTP throughput stays within 10% of the 10 s before
/// the fault for 3 seconds; seconds from the fault.
fn throughput_back(per_s: &[u64], start_s: f64) -> Option<f64> {
    let start = start_s.floor() as usize;
    let from = start.saturating_sub(10);
    if start <= from || start > per_s.len() {
        return None;
    }
    let baseline = per_s[from..start].iter().sum::<u64>() as f64 / (start - from) as f64;
    if baseline <= 0.0 {
        return None;
    }
    let ok = |t: usize| per_s.get(t).is_some_and(|&c| c as f64 >= 0.9 * baseline);
    (start..per_s.len().saturating_sub(2))
        .find(|&t| ok(t) && ok(t + 1) && ok(t + 2))
        .map(|t| (t as f64 - start_s).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(t_s: f64, node: u32, epoch: Option<u64>, members: &[u32]) -> ViewChange {
        ViewChange {
            t_s,
            node,
            epoch,
            leader: members.first().copied(),
            members: members.to_vec(),
        }
    }

    #[test]
    fn recovery_from_a_killed_follower() {
        let changes = vec![
            change(0.0, 1, Some(3), &[1, 2, 3]),
            change(0.0, 2, Some(3), &[1, 2, 3]),
            change(0.0, 3, Some(3), &[1, 2, 3]),
            change(30.1, 2, None, &[]),
            change(30.5, 1, Some(4), &[1, 3]),
            change(30.6, 3, Some(4), &[1, 3]),
            change(41.0, 2, Some(5), &[1, 2, 3]),
            change(41.1, 1, Some(5), &[1, 2, 3]),
            change(41.1, 3, Some(5), &[1, 2, 3]),
        ];
        let window = FaultWindow {
            index: 0,
            action: loadgen::experiment::FaultAction::Kill,
            node: Some(2),
            groups: None,
            process: None,
            start_s: 30.0,
            end_s: Some(40.0),
            error: None,
        };
        let mut per_s = vec![100u64; 60];
        per_s[30] = 20;
        per_s[31] = 50;
        let r = &recovery(&[window], &changes, &per_s, &[1, 2, 3])[0];
        assert!((r.detection_s.unwrap() - 0.1).abs() < 1e-9);
        assert!((r.convergence_s.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(r.throughput_recovered_s, Some(2.0));
        assert!((r.reintegration_s.unwrap() - 1.1).abs() < 1e-9);
    }
}
