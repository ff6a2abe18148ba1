//! Renders a sweep's page, to look at it without the CLI:
//! `cargo run -p reports --example render_sweep -- OUT.html SWEEP_DIR` (the directory holding
//! sweep.json, with each run's results.json under the `dir` that sweep.json names).

use std::path::Path;
use std::process::ExitCode;

fn read(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn render(dir: &Path) -> Result<String, String> {
    let sweep = read(&dir.join("sweep.json"))?;
    let runs = sweep["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|run| {
                    let run_dir = run["dir"].as_str().unwrap_or_default();
                    read(&dir.join(run_dir).join("results.json"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    reports::render_sweep(&sweep, &runs).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, dir] = args.as_slice() else {
        eprintln!("usage: render_sweep OUT.html SWEEP_DIR");
        return ExitCode::from(2);
    };
    let html = match render(Path::new(dir)) {
        Ok(html) => html,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(out, html) {
        eprintln!("{out}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
