//! Sweeps: an experiment's `[sweep]` table runs every combination of the listed values, `repeat`
//! times each, one after another, each in its own directory (`OUT/key=value,.../rN/`, with its
//! own results.json and report.html). `OUT/sweep.json` lists the runs; `OUT/report.html` shows
//! them together (scaling, replication overhead, skew, ...).

use std::path::Path;

use anyhow::Context as _;
use loadgen::experiment::{plan_sweep, set_value, Experiment, SweepPlan};
use serde_json::json;

use super::results::Outcome;
use super::run_one;
use crate::capacity_cmd::{find, Search};

pub async fn run(
    table: toml::Table,
    sweep: &toml::Table,
    file: &Path,
    out: &Path,
) -> anyhow::Result<Outcome> {
    let SweepPlan {
        keys,
        repeat,
        runs,
        saturate,
    } = plan_sweep(sweep).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let name = table
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("experiment")
        .to_string();
    let seed = table.get("seed").and_then(|s| s.as_integer()).unwrap_or(1);
    // Every run's experiment is checked before the first one starts: a bad value in the last
    // combination should not waste the time of all the others. A combination that cannot be run
    // (replication 2 on 1 node) is skipped and listed; if none can, the sweep is an error.
    let mut experiments = Vec::with_capacity(runs.len());
    let mut skipped = Vec::new();
    for run in &runs {
        let mut t = table.clone();
        for (key, value) in &run.params {
            set_value(&mut t, key, value.clone())
                .map_err(|e| anyhow::anyhow!("{}: sweep.\"{key}\": {e}", file.display()))?;
        }
        // Repetitions differ in their seed, so they measure noise rather than replay one run.
        t.insert(
            "seed".into(),
            toml::Value::Integer(seed + i64::from(run.repetition)),
        );
        let label = label(&run.params);
        match Experiment::from_table(t.clone()) {
            Ok(experiment) => experiments.push((run.clone(), label, experiment, t)),
            Err(e) => {
                if run.repetition == 0 {
                    eprintln!("sweep: skipping {label}: {e}");
                    skipped.push(json!({ "run": label, "reason": e }));
                }
            }
        }
    }
    if experiments.is_empty() {
        anyhow::bail!(
            "{}: no combination of the sweep can run: {}",
            file.display(),
            skipped
                .first()
                .and_then(|s| s["reason"].as_str())
                .unwrap_or("")
        );
    }
    let total = experiments.len();
    eprintln!(
        "sweep {name}: {} configuration(s) x {repeat} = {total} run(s)",
        total / repeat as usize,
    );
    let mut entries = Vec::with_capacity(total);
    let mut results = Vec::with_capacity(total);
    let mut worst = Outcome::Pass;
    // Saturated sweeps: the capacity each configuration's first repetition found, where its
    // later repetitions start their search.
    let mut found_before: Option<(String, f64)> = None;
    for (i, (run, label, experiment, table)) in experiments.into_iter().enumerate() {
        let mut dir = format!("{label}/r{}", run.repetition);
        eprintln!("\nsweep run {} of {total}: {dir}", i + 1);
        let params: serde_json::Map<String, serde_json::Value> = run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
            .collect();
        let mut entry = json!({ "params": params, "repetition": run.repetition });
        let (json, outcome) = match &saturate {
            None => run_one(experiment, &out.join(&dir)).await?,
            Some(s) => {
                let warm = found_before
                    .as_ref()
                    .filter(|(l, _)| *l == label)
                    .map(|(_, c)| *c);
                let search = Search {
                    start_per_s: warm.unwrap_or(s.start_per_s),
                    step: if warm.is_some() { 1.25 } else { 2.0 },
                    precision: s.precision,
                    probes: s.probes,
                };
                let found = find(&table, file, &out.join(&dir), search).await?;
                entry["capacity_per_s"] = json!(found.capacity);
                entry["probes"] = found
                    .probes
                    .iter()
                    .map(|p| json!({ "rate_per_s": p.rate, "pass": p.pass, "dir": format!("{dir}/{}", p.dir) }))
                    .collect();
                if run.repetition == 0 {
                    found_before = found.capacity.map(|c| (label.clone(), c));
                }
                // The configuration's run is the probe at its capacity; if none passed, the
                // lowest rate tried (and the configuration fails).
                let shown = found
                    .best()
                    .or_else(|| found.probes.iter().min_by(|a, b| a.rate.total_cmp(&b.rate)));
                let Some(shown) = shown else {
                    anyhow::bail!("the capacity search of {dir} ran no probe");
                };
                eprintln!(
                    "{dir}: capacity {}",
                    found
                        .capacity
                        .map_or("not found (no probe met the SLO)".into(), |c| format!(
                            "{c:.1} operations/s"
                        ))
                );
                dir = format!("{dir}/{}", shown.dir);
                let outcome = if found.capacity.is_some() {
                    Outcome::Pass
                } else {
                    Outcome::of(&shown.results).max(Outcome::SloMissed)
                };
                (shown.results.clone(), outcome)
            }
        };
        worst = worst.max(outcome);
        entry["dir"] = json!(dir);
        entry["pass"] = json!(outcome == Outcome::Pass);
        entries.push(entry);
        results.push(json);
    }
    let sweep_json = json!({
        "schema_version": 1,
        "kind": "sweep",
        "name": name,
        "keys": keys,
        "repeat": repeat,
        "saturate": saturate.as_ref().map(|s| json!({ "start_per_s": s.start_per_s, "precision": s.precision, "probes": s.probes })),
        "runs": entries,
        "skipped": skipped,
    });
    let path = out.join("sweep.json");
    crate::local_cluster::write_atomically(
        &path,
        serde_json::to_string_pretty(&sweep_json)?.as_bytes(),
    )?;
    let report = out.join("report.html");
    match reports::render_sweep(&sweep_json, &results) {
        Ok(html) => crate::local_cluster::write_atomically(&report, html.as_bytes())?,
        Err(e) => eprintln!("the sweep report could not be rendered: {e}"),
    }
    print_table(&entries, &results);
    println!(
        "sweep verdict: {}  (sweep.json and report.html in {})",
        match worst {
            Outcome::Pass => "PASS",
            Outcome::SloMissed => "FAIL (an SLO missed)",
            Outcome::Failed => "FAIL",
        },
        out.display()
    );
    Ok(worst)
}

/// `key=value,key=value`, safe as a directory name (`run` for a sweep of repetitions only).
fn label(params: &[(String, toml::Value)]) -> String {
    if params.is_empty() {
        return "run".into();
    }
    params
        .iter()
        .map(|(k, v)| {
            let short = k.rsplit('.').next().unwrap_or(k);
            let value = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{short}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=,.-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn print_table(entries: &[serde_json::Value], results: &[serde_json::Value]) {
    let saturated = entries.iter().any(|e| e.get("capacity_per_s").is_some());
    // Web runs show requests a second and the cache hit rate where mail shows SMTP and loss.
    let web = results.iter().any(|r| r.get("web").is_some());
    println!();
    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "run",
        if saturated { "capacity/s" } else { "" },
        if web { "req/s" } else { "smtp/s" },
        "p99 ms",
        if web { "hit %" } else { "lost" },
        "pass"
    );
    for (entry, r) in entries.iter().zip(results) {
        let smtp = &r["operations"]["ops"]["smtp"];
        println!(
            "{:<48} {:>10} {:>10.1} {:>10.1} {:>6} {:>6}",
            entry["dir"].as_str().unwrap_or(""),
            entry["capacity_per_s"].as_f64().map_or(
                if saturated { "-".into() } else { String::new() },
                |c| format!("{c:.1}")
            ),
            main_rate(r, smtp),
            main_p99(r, smtp),
            if web {
                r["web"]["hit_rate"]
                    .as_f64()
                    .map_or("-".into(), |h| format!("{:.1}", h * 100.0))
            } else {
                r["correctness"]["lost"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string())
            },
            if entry["pass"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        );
    }
}

/// The throughput a sweep's table shows: SMTP's, or a web run's requests of every content type.
fn main_rate(r: &serde_json::Value, smtp: &serde_json::Value) -> f64 {
    if r.get("web").is_none() {
        return smtp["throughput_per_s"].as_f64().unwrap_or(0.0);
    }
    loadgen::OpKind::WEB
        .iter()
        .filter_map(|k| r["operations"]["ops"].get(k.name()))
        .map(|o| o["throughput_per_s"].as_f64().unwrap_or(0.0))
        .sum()
}

/// The p99 a sweep's table shows: SMTP's, or a web run's worst content type's.
fn main_p99(r: &serde_json::Value, smtp: &serde_json::Value) -> f64 {
    if r.get("web").is_none() {
        return smtp["p99_ms"].as_f64().unwrap_or(0.0);
    }
    loadgen::OpKind::WEB
        .iter()
        .filter_map(|k| r["operations"]["ops"].get(k.name()))
        .map(|o| o["p99_ms"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max)
}
