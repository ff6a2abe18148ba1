//! Reports of clusterbench runs: reads `results.json` (schema version 1) and renders it as one
//! self-contained HTML page — tables, inline SVG charts, no scripts, no external files; and reads
//! a sweep's `sweep.json` with the results of its runs and renders the page that compares them.
//! It also compares repetitions of a baseline with repetitions of a candidate, figure by figure,
//! against noise thresholds ([`compare`]), for a CI gate, the terminal, tools and a page; and
//! finds where metrics moved for good in a history of commits' results ([`mod@history`]).
//!
//! This crate renders data. It never runs a cluster or a load, never reads the clock, and does no
//! I/O beyond what its caller hands it: the caller reads the files and writes the page.

pub mod calibrate;
mod charts;
pub mod compare;
mod error;
mod format;
pub mod gate;
pub mod history;
mod history_charts;
mod page;
pub mod schema;
pub mod stats;
mod sweep;
mod sweep_charts;

pub use compare::{
    benchmark_json, compare, compare_runs, comparison_json, comparison_table, render_comparison,
    Comparison, MetricComparison, Run, Verdict,
};
pub use error::ReportError;
pub use gate::{Gate, MetricGate};
pub use history::{history, history_json, history_table, render_history, Commit, History};
pub use schema::SCHEMA_VERSION;
pub use sweep::{SWEEP_RUNS_MAX, SWEEP_SCHEMA_VERSION};

/// Renders one run's results (the parsed results.json) as one self-contained HTML page.
pub fn render_run(results: &serde_json::Value) -> Result<String, ReportError> {
    let run = schema::Results::from_json(results)?;
    page::render(&[run])
}

/// Renders several runs' results as one page (each run a section, in order, after an overview
/// table), for `clusterbench report A/results.json B/results.json`.
pub fn render_runs(runs: &[serde_json::Value]) -> Result<String, ReportError> {
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    let parsed = runs
        .iter()
        .enumerate()
        .map(|(i, value)| {
            schema::Results::from_json(value).map_err(|e| {
                if runs.len() == 1 {
                    e
                } else {
                    ReportError::InRun {
                        run: i + 1,
                        runs: runs.len(),
                        source: Box::new(e),
                    }
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    page::render(&parsed)
}

/// Renders a sweep as one self-contained HTML page: `sweep` is the parsed sweep.json, `runs` the
/// parsed results.json of each of its runs, in the order of the sweep's `runs`.
///
/// The page has a header (name, swept keys and values, repeat count, overall verdict), one table
/// row per configuration aggregated over its repetitions, a chart per swept key that has one
/// (scaling with `cluster.nodes`, replication overhead with `cluster.replication`, skew with
/// `workload.skew`; else throughput per configuration), and relative links `<dir>/report.html`
/// to each run's own report.
pub fn render_sweep(
    sweep: &serde_json::Value,
    runs: &[serde_json::Value],
) -> Result<String, ReportError> {
    sweep::render(sweep, runs)
}
