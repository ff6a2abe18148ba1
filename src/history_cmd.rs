//! `clusterbench history DIR... [--gate FILE] [--html FILE] [--json FILE]`: where each metric's
//! level moved for good over a series of commits' results (one argument per commit, in order;
//! each a results.json or a directory of repetitions, gathered as `compare` gathers a side).
//! Prints one line per change point and a summary. Exit codes: 0 whenever the input was read
//! (a history informs; the gate is `compare`), 2 bad input.
//!
//! It reads and writes files and prints, and never judges a figure itself: finding the change
//! points is `reports::history`'s.

use anyhow::Context as _;

use crate::cli::HistoryArgs;
use crate::compare_cmd::{read_gate, side, write};

/// Runs the history; returns the process exit code.
pub fn run(args: HistoryArgs) -> i32 {
    match history(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn history(args: &HistoryArgs) -> anyhow::Result<()> {
    // Before reading anything: a history that long is refused whatever it holds.
    anyhow::ensure!(
        args.commits.len() <= reports::history::HISTORY_COMMITS_MAX,
        "{} commits given: a history has at most {}; give the most recent ones",
        args.commits.len(),
        reports::history::HISTORY_COMMITS_MAX
    );
    let gate = read_gate(args.gate.as_deref())?;
    let commits = args
        .commits
        .iter()
        .map(|path| {
            Ok(reports::Commit {
                label: path.display().to_string(),
                runs: side(path)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let history = reports::history(&commits, &gate).map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", reports::history_table(&history));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&reports::history_json(&history))
            .context("encoding the history as JSON")?;
        write(path, &json)?;
    }
    if let Some(path) = &args.html {
        let html = reports::render_history(&history).map_err(|e| anyhow::anyhow!("{e}"))?;
        write(path, &html)?;
    }
    Ok(())
}
