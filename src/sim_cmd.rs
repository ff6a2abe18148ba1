//! `clusterbench sim membership` and `clusterbench sim mail`: the simulations' soak runs, from
//! the command line.
//!
//! Runs seeds in chunks so that progress shows, prints every failure with its seed, and ends
//! with the figures.

use std::time::Instant;

use anyhow::bail;
use cluster::core::membership::sim::{soak, SimConfig};

use crate::cli::{SimMailArgs, SimMembershipArgs};

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

/// Seeds of the mail simulation run between progress lines.
const MAIL_CHUNK_SEEDS: u64 = 1_000;

pub fn mail(args: SimMailArgs) -> anyhow::Result<()> {
    use cluster::mail::sim::{run_seed, MailSimConfig, MailSoak};
    let mut config = MailSimConfig {
        nodes: args.nodes,
        replication: args.replication,
        users: args.users,
        chaos_ms: args.chaos_ms,
        segment_bytes: args.segment_bytes,
        ..MailSimConfig::default()
    };
    if let Some(p) = args.drop_probability {
        config.drop_probability = p;
    }
    if let Some(p) = args.duplicate_probability {
        config.duplicate_probability = p;
    }
    if let Err(e) = config.validate() {
        bail!("invalid simulation settings: {e}");
    }
    if let Some(seed) = args.seed {
        let started = Instant::now();
        return match run_seed(seed, &config) {
            Ok(report) => {
                println!(
                    "seed {seed} passed: {} events in {:.3} s, {} simulated ms; {report:?}",
                    report.events,
                    started.elapsed().as_secs_f64(),
                    report.simulated_ms
                );
                Ok(())
            }
            Err(failure) => {
                println!("FAILED {failure}");
                bail!("seed {seed} failed")
            }
        };
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1) as u64;
    let started = Instant::now();
    let mut total = MailSoak::default();
    let end = args.start.saturating_add(args.seeds);
    let mut next = args.start;
    while next < end {
        let count = MAIL_CHUNK_SEEDS.min(end - next);
        // Seeds split among the threads; each seed's run depends on the seed alone.
        let per = count.div_ceil(jobs);
        let parts: Vec<MailSoak> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..jobs)
                .map(|j| {
                    let from = next + j * per;
                    let to = (from + per).min(next + count);
                    let config = &config;
                    scope.spawn(move || {
                        cluster::mail::sim::soak(from, to.saturating_sub(from), config)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a simulation thread panicked"))
                .collect()
        });
        for part in parts {
            for failure in &part.failures {
                println!("FAILED {failure}");
            }
            total.reports.extend(part.reports);
            total.failures.extend(part.failures);
        }
        next += count;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{} of {} seeds run, {} failed, {:.0} s, {:.0} events/s",
            next - args.start,
            args.seeds,
            total.failures.len(),
            secs,
            total.events() as f64 / secs.max(1e-9)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "mail simulation ({} nodes, replication {}): {total}; {:.1} s, {:.0} events/s on {jobs} thread(s)",
        config.nodes,
        config.replication,
        secs,
        total.events() as f64 / secs.max(1e-9)
    );
    if !total.failures.is_empty() {
        bail!(
            "{} seed(s) failed; replay one with --seed SEED",
            total.failures.len()
        );
    }
    Ok(())
}
