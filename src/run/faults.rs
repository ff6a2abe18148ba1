//! The fault schedule, carried out against the bundled cluster: real signals for kill, pause and
//! restart; the nodes' admin API for partitions, delays, loss, slow disks and clock skew. Every
//! fault window lands in the results with its times.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use loadgen::experiment::{FaultAction, FaultSpec};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::admin;
use crate::local_cluster::LocalCluster;

/// How long a killed node may take to disappear before it is restarted.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub index: usize,
    pub action: FaultAction,
    pub node: Option<u32>,
    pub groups: Option<Vec<Vec<u32>>>,
    /// Web: the process (`worker jpeg 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Seconds from the start of the load.
    pub start_s: f64,
    /// When it was undone, if it was.
    pub end_s: Option<f64>,
    /// What went wrong applying or undoing it, if anything.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Apply(usize),
    Undo(usize),
}

/// Carries out `faults` relative to `start`, until every step due by `until` is done; undos due
/// later are returned for the caller to run after the load ([`undo_rest`]).
pub async fn run_schedule(
    cluster: Arc<Mutex<LocalCluster>>,
    token: String,
    faults: Vec<FaultSpec>,
    start: Instant,
    until: Duration,
    windows: Arc<std::sync::Mutex<Vec<FaultWindow>>>,
) -> Vec<usize> {
    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        steps.push((Duration::from_secs_f64(f.at_s), Step::Apply(i)));
        if let Some(d) = f.duration_s {
            steps.push((Duration::from_secs_f64(f.at_s + d), Step::Undo(i)));
        }
    }
    steps.sort_by_key(|s| s.0);
    let mut later = Vec::new();
    for (at, step) in steps {
        if at > until {
            if let Step::Undo(i) = step {
                later.push(i);
            }
            continue;
        }
        tokio::time::sleep_until(start + at).await;
        let t = start.elapsed().as_secs_f64();
        match step {
            Step::Apply(i) => {
                let f = &faults[i];
                let result = apply(&cluster, &token, f).await;
                tracing::info!(fault = i, action = ?f.action, node = ?f.node, "fault applied");
                windows.lock().unwrap().push(FaultWindow {
                    index: i,
                    action: f.action,
                    node: f.node,
                    groups: f.groups.clone(),
                    process: None,
                    start_s: t,
                    end_s: None,
                    error: result.err().map(|e| format!("{e:#}")),
                });
            }
            Step::Undo(i) => undo_one(&cluster, &token, &faults[i], i, t, &windows).await,
        }
    }
    later
}

/// Undoes the faults whose undo fell after the load, so the check sees a healed cluster.
pub async fn undo_rest(
    cluster: &Arc<Mutex<LocalCluster>>,
    token: &str,
    faults: &[FaultSpec],
    pending: &[usize],
    start: Instant,
    windows: &Arc<std::sync::Mutex<Vec<FaultWindow>>>,
) {
    for &i in pending {
        let t = start.elapsed().as_secs_f64();
        undo_one(cluster, token, &faults[i], i, t, windows).await;
    }
}

async fn undo_one(
    cluster: &Arc<Mutex<LocalCluster>>,
    token: &str,
    f: &FaultSpec,
    i: usize,
    t: f64,
    windows: &Arc<std::sync::Mutex<Vec<FaultWindow>>>,
) {
    let result = undo(cluster, token, f).await;
    tracing::info!(fault = i, action = ?f.action, "fault undone");
    let mut w = windows.lock().unwrap();
    if let Some(window) = w.iter_mut().rev().find(|w| w.index == i) {
        window.end_s = Some(t);
        if let Err(e) = result {
            window.error = Some(format!("{e:#}"));
        }
    }
}

async fn admins(
    cluster: &Arc<Mutex<LocalCluster>>,
    node: Option<u32>,
) -> Vec<(u32, std::net::SocketAddr)> {
    let c = cluster.lock().await;
    c.file
        .nodes
        .iter()
        .filter(|n| node.is_none_or(|id| id == n.id))
        .map(|n| (n.id, n.admin))
        .collect()
}

async fn post_faults(
    cluster: &Arc<Mutex<LocalCluster>>,
    token: &str,
    node: Option<u32>,
    body: &str,
) -> anyhow::Result<()> {
    for (id, addr) in admins(cluster, node).await {
        match admin::request(addr, token, "POST", "/faults", body).await {
            Some((200, _)) => {}
            Some((code, v)) => anyhow::bail!("node {id} refused {body}: {code} {v}"),
            None => anyhow::bail!("node {id} did not answer its admin API"),
        }
    }
    Ok(())
}

async fn clear_faults(cluster: &Arc<Mutex<LocalCluster>>, token: &str) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (id, addr) in admins(cluster, None).await {
        if !matches!(
            admin::request(addr, token, "DELETE", "/faults", "").await,
            Some((200, _))
        ) {
            failed.push(id);
        }
    }
    // A node that is down has no faults to clear; it starts without any.
    if !failed.is_empty() {
        tracing::debug!(?failed, "nodes did not answer DELETE /faults");
    }
    Ok(())
}

async fn kill(cluster: &Arc<Mutex<LocalCluster>>, node: u32) -> anyhow::Result<()> {
    cluster.lock().await.signal(node, libc::SIGKILL)?;
    let deadline = Instant::now() + KILL_WAIT;
    while cluster.lock().await.running().contains(&node) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} did not die after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn apply(
    cluster: &Arc<Mutex<LocalCluster>>,
    token: &str,
    f: &FaultSpec,
) -> anyhow::Result<()> {
    match f.action {
        FaultAction::Kill => kill(cluster, f.node.context("kill needs a node")?).await,
        FaultAction::Pause => cluster
            .lock()
            .await
            .signal(f.node.context("pause needs a node")?, libc::SIGSTOP),
        FaultAction::Restart => {
            let node = f.node.context("restart needs a node")?;
            kill(cluster, node).await?;
            cluster.lock().await.restart(node).await
        }
        FaultAction::Partition => {
            let groups = f.groups.clone().context("partition needs groups")?;
            let all: Vec<u32> = groups.iter().flatten().copied().collect();
            for g in &groups {
                let others: Vec<u32> = all.iter().copied().filter(|n| !g.contains(n)).collect();
                let body = serde_json::json!({ "block_peers": others }).to_string();
                for &n in g {
                    post_faults(cluster, token, Some(n), &body).await?;
                }
            }
            Ok(())
        }
        FaultAction::Heal => clear_faults(cluster, token).await,
        FaultAction::Delay => {
            let body = serde_json::json!({ "delay_ms": f.delay_ms.unwrap_or(0) }).to_string();
            post_faults(cluster, token, f.node, &body).await
        }
        FaultAction::Loss => {
            let body = serde_json::json!({ "loss": f.loss.unwrap_or(0.0) }).to_string();
            post_faults(cluster, token, f.node, &body).await
        }
        FaultAction::SlowDisk => {
            let body = serde_json::json!({ "disk_slowdown": f.factor.unwrap_or(1.0) }).to_string();
            post_faults(cluster, token, f.node, &body).await
        }
        FaultAction::ClockSkew => {
            let body = serde_json::json!({ "clock_skew_ms": f.skew_ms.unwrap_or(0) }).to_string();
            post_faults(cluster, token, f.node, &body).await
        }
        FaultAction::BeaconLoss | FaultAction::SlowWorker | FaultAction::OriginDelay => {
            anyhow::bail!(
                "{:?} is a web fault; the mail cluster has no such thing",
                f.action
            )
        }
    }
}

async fn undo(
    cluster: &Arc<Mutex<LocalCluster>>,
    token: &str,
    f: &FaultSpec,
) -> anyhow::Result<()> {
    match f.action {
        FaultAction::Kill => {
            cluster
                .lock()
                .await
                .restart(f.node.context("kill needs a node")?)
                .await
        }
        FaultAction::Pause => cluster
            .lock()
            .await
            .signal(f.node.context("pause needs a node")?, libc::SIGCONT),
        FaultAction::Restart | FaultAction::Heal => Ok(()),
        FaultAction::Partition => clear_faults(cluster, token).await,
        FaultAction::Delay => post_faults(cluster, token, f.node, r#"{"delay_ms": 0}"#).await,
        FaultAction::Loss => post_faults(cluster, token, f.node, r#"{"loss": 0.0}"#).await,
        FaultAction::SlowDisk => {
            post_faults(cluster, token, f.node, r#"{"disk_slowdown": 1.0}"#).await
        }
        FaultAction::ClockSkew => {
            post_faults(cluster, token, f.node, r#"{"clock_skew_ms": 0}"#).await
        }
        FaultAction::BeaconLoss | FaultAction::SlowWorker | FaultAction::OriginDelay => Ok(()),
    }
}
