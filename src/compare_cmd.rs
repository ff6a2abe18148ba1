//! `clusterbench compare BASELINE CANDIDATE [--gate FILE]`: the CI gate. Each side is a
//! results.json or a directory holding several (repetitions, e.g. a sweep's `r0`, `r1`); every
//! metric gets a change, a confidence interval and a verdict. Exit codes: 0 nothing regressed
//! beyond the gate, 1 something did, 2 bad input.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::CompareArgs;
use crate::report_cmd::read_results;

/// results.json files gathered from one directory at most.
pub const SIDE_FILES_MAX: usize = 1_000;
/// How deep a directory is searched for results.json.
const SEARCH_DEPTH_MAX: usize = 4;

/// Runs the comparison; returns the process exit code.
pub fn run(args: CompareArgs) -> i32 {
    match compare(&args) {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// Whether anything regressed.
fn compare(args: &CompareArgs) -> anyhow::Result<bool> {
    let gate = read_gate(args.gate.as_deref())?;
    let baseline = side(&args.baseline)?;
    let candidate = side(&args.candidate)?;
    let comparison =
        reports::compare(&baseline, &candidate, &gate).map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", reports::comparison_table(&comparison));
    if let Some(path) = &args.json {
        write(
            path,
            &serde_json::to_string_pretty(&reports::comparison_json(&comparison))?,
        )?;
    }
    if let Some(path) = &args.benchmark_json {
        write(
            path,
            &serde_json::to_string_pretty(&reports::benchmark_json(&comparison))?,
        )?;
    }
    if let Some(path) = &args.html {
        let html = reports::render_comparison(&comparison).map_err(|e| anyhow::anyhow!("{e}"))?;
        write(path, &html)?;
    }
    println!(
        "verdict: {} ({} baseline run(s), {} candidate run(s))",
        if comparison.regressed {
            "REGRESSED"
        } else {
            "no regression"
        },
        baseline.len(),
        candidate.len()
    );
    Ok(comparison.regressed)
}

/// The gate file's thresholds (`--gate FILE`), or the defaults without one.
pub(crate) fn read_gate(path: Option<&Path>) -> anyhow::Result<reports::Gate> {
    let Some(path) = path else {
        return Ok(reports::Gate::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    reports::Gate::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub(crate) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::local_cluster::write_atomically(path, text.as_bytes())
}

/// The results of one side: the file itself, or every results.json under the directory.
pub(crate) fn side(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![read_results(path)?]);
    }
    let mut files = Vec::new();
    find(path, 0, &mut files)?;
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds no results.json",
        path.display()
    );
    files.iter().map(|f| read_results(f)).collect()
}

fn find(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && depth < SEARCH_DEPTH_MAX {
            find(&path, depth + 1, out)?;
        } else if path.file_name().is_some_and(|n| n == "results.json") {
            anyhow::ensure!(
                out.len() < SIDE_FILES_MAX,
                "{} holds more than {SIDE_FILES_MAX} results files",
                dir.display()
            );
            out.push(path);
        }
    }
    Ok(())
}
