//! `clusterbench sim membership`: the membership simulation's soak run, from the command line.
//!
//! Runs seeds in chunks so that progress shows, prints every failure with its seed (replay it
//! with `--start SEED --seeds 1`), and ends with the convergence figures.

use std::time::Instant;

use anyhow::bail;
use cluster::core::membership::sim::{soak, SimConfig};

use crate::cli::SimMembershipArgs;

/// Seeds run between progress lines.
const CHUNK_SEEDS: u64 = 500;

pub fn membership(args: SimMembershipArgs) -> anyhow::Result<()> {
    let mut config = SimConfig {
        nodes: args.nodes,
        ..SimConfig::default()
    };
    if let Some(p) = args.drop_probability {
        config.drop_probability = p;
    }
    if let Err(e) = config.validate() {
        bail!("invalid simulation settings: {e}");
    }
    let started = Instant::now();
    let mut total = cluster::core::membership::sim::Soak::default();
    let end = args.start.saturating_add(args.seeds);
    let mut next = args.start;
    while next < end {
        let count = CHUNK_SEEDS.min(end - next);
        let part = soak(next, count, &config);
        for failure in &part.failures {
            println!("FAILED {failure}");
        }
        total.reports.extend(part.reports);
        total.failures.extend(part.failures);
        next += count;
        eprintln!(
            "{} of {} seeds run, {} failed, {:.0} s",
            next - args.start,
            args.seeds,
            total.failures.len(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("membership simulation ({} nodes): {total}", args.nodes);
    if !total.failures.is_empty() {
        bail!(
            "{} seed(s) failed; replay one with --start SEED --seeds 1",
            total.failures.len()
        );
    }
    Ok(())
}
