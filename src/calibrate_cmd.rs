//! `clusterbench calibrate EXPERIMENT.toml --runs N`: measures the regression gate on this
//! machine. Runs the experiment N times (a sweep of repetitions, each with its own seed), or
//! takes runs made before (`--from`), and prints what `reports::calibrate` finds: each metric's
//! noise, the share of A/A comparisons the gate would have called regressed, and the runs a side
//! and thresholds that a false-alarm rate and a detectable change need; `--write-gate` writes
//! that gate for `compare --gate`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use loadgen::experiment::{set_value, Experiment};

use crate::cli::CalibrateArgs;
use crate::compare_cmd::side;
use crate::run::load_table;

/// Most runs one calibration makes.
pub const RUNS_MAX: u32 = 100;

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let base_gate = match &args.gate {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            reports::Gate::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => reports::Gate::default(),
    };
    let goal = reports::calibrate::Goal {
        repetitions: args.repetitions.or(base_gate.repetitions).unwrap_or(3),
        false_alarm: args.false_alarm,
        detect: args.detect,
    };
    let files = match &args.experiment {
        Some(experiment) => run_repeatedly(experiment, &args)?,
        None => {
            let mut runs = Vec::new();
            for dir in &args.from {
                runs.extend(side(dir)?);
            }
            runs
        }
    };
    let runs = files
        .iter()
        .enumerate()
        .map(|(i, value)| {
            reports::Run::from_json(value).map_err(|e| anyhow::anyhow!("run {}: {e}", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let calibration =
        reports::calibrate::calibrate(&runs, &base_gate, &goal).map_err(|e| anyhow::anyhow!(e))?;
    print!("\n{}", reports::calibrate::calibration_table(&calibration));
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&calibration)?)?;
    }
    if let Some(path) = &args.write_gate {
        let header = format!(
            "# Written by `clusterbench calibrate` from {} run(s): {:.0} % false alarms at most, \
             {} run(s) a side.\n# Per-metric thresholds are the changes noise alone reached on \
             the machine calibrated; metrics\n# without enough samples to judge are left out.\n",
            calibration.runs,
            calibration.false_alarm_goal * 100.0,
            calibration.repetitions
        );
        write(path, &format!("{header}{}", calibration.gate.to_toml()))?;
        println!("gate written to {}", path.display());
    }
    Ok(())
}

/// Runs the experiment `args.runs` times as a sweep of repetitions; returns their results.
fn run_repeatedly(
    experiment: &Path,
    args: &CalibrateArgs,
) -> anyhow::Result<Vec<serde_json::Value>> {
    anyhow::ensure!(
        (2..=RUNS_MAX).contains(&args.runs),
        "--runs must be 2 to {RUNS_MAX}"
    );
    let mut table = load_table(experiment, &args.set)?;
    if let Some(sweep) = table.remove("sweep") {
        let varies = sweep
            .as_table()
            .is_some_and(|t| t.keys().any(|k| k != "repeat"));
        if varies {
            bail!(
                "{}: calibrate measures one configuration; remove [sweep] or pin its keys",
                experiment.display()
            );
        }
    }
    let base = Experiment::from_table(table.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", experiment.display()))?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(format!(
            "{}-calibrate-{}",
            base.name,
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let mut sweep = toml::Table::new();
    set_value(
        &mut sweep,
        "repeat",
        toml::Value::Integer(i64::from(args.runs)),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    crate::run::raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "calibrating {}: {} runs into {}",
        base.name,
        args.runs,
        out.display()
    );
    let outcome = runtime.block_on(crate::run::sweep::run(table, &sweep, experiment, &out))?;
    if outcome != crate::run::results::Outcome::Pass {
        eprintln!(
            "warning: not every run passed (see above); their figures are calibrated all the same"
        );
    }
    side(&out)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::local_cluster::write_atomically(path, text.as_bytes())
}
