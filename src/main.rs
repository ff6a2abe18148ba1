//! The `clusterbench` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = clusterbench::cli::Cli::parse();
    match clusterbench::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2, as for a bad command line: the job could not be done at all. (Exit 1 is kept
            // for "done, and it failed", such as mail lost in a run.)
            std::process::ExitCode::from(2)
        }
    }
}
