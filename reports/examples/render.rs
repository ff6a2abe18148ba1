//! Renders results files into one HTML page, to look at a report without the CLI:
//! `cargo run -p reports --example render -- OUT.html RESULTS.json...`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, inputs @ ..] = args.as_slice() else {
        eprintln!("usage: render OUT.html RESULTS.json...");
        return ExitCode::from(2);
    };
    let mut runs = Vec::new();
    for path in inputs {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(value) => runs.push(value),
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let html = match reports::render_runs(&runs) {
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
