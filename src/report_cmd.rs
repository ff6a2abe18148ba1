//! `clusterbench report RESULTS.json...`: renders saved results as one self-contained HTML page.
//! It only reads the files it is given and writes the page; it never reruns anything.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::ReportArgs;

/// Largest results file read (a day-long run's series stays well below this).
pub const RESULTS_BYTES_MAX: u64 = 512 * 1024 * 1024;

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::with_capacity(args.results.len());
    for path in &args.results {
        runs.push(read_results(path)?);
    }
    let html = if runs.len() == 1 {
        reports::render_run(&runs[0])
    } else {
        reports::render_runs(&runs)
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.results));
    crate::local_cluster::write_atomically(&out, html.as_bytes())?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Reads and parses one results.json, naming the file in every error.
pub fn read_results(path: &Path) -> anyhow::Result<serde_json::Value> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= RESULTS_BYTES_MAX,
        "{} is {size} bytes, more than the {RESULTS_BYTES_MAX} a results file may have",
        path.display()
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a results file (invalid JSON)", path.display()))
}

/// `report.html` beside a single results file; in the current directory for several.
fn default_out(results: &[PathBuf]) -> PathBuf {
    match results {
        [one] => one.with_file_name("report.html"),
        _ => PathBuf::from("report.html"),
    }
}
