use super::*;

/// Seeds the sweep runs (the CI gate): `MAIL_SIM_SEEDS` overrides.
const SWEEP_SEEDS: u64 = 1_000;

fn knob(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs seeds `start..start + count` on two threads; returns the soak.
fn sweep(start: u64, count: u64, config: &MailSimConfig, bugs: SimBugs) -> MailSoak {
    let half = count / 2;
    let run = move |from: u64, n: u64, config: MailSimConfig| {
        let mut soak = MailSoak::default();
        for seed in from..from + n {
            match run_seed_with(seed, &config, bugs) {
                Ok(r) => soak.reports.push(r),
                Err(f) => soak.failures.push(f),
            }
        }
        soak
    };
    let c = config.clone();
    let other = std::thread::spawn(move || run(start + half, count - half, c));
    let mut soak = run(start, half, config.clone());
    let rest = other.join().expect("sweep thread");
    soak.reports.extend(rest.reports);
    soak.failures.extend(rest.failures);
    soak.failures.sort_by_key(|f| f.seed);
    soak
}

#[test]
fn mail_sim_seed_sweep() {
    let start = knob("MAIL_SIM_START").unwrap_or(0);
    let seeds = knob("MAIL_SIM_SEEDS").unwrap_or(SWEEP_SEEDS);
    let started = std::time::Instant::now();
    let mut config = MailSimConfig::default();
    if let Some(d) = std::env::var("MAIL_SIM_DUP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.duplicate_probability = d;
    }
    let soak = sweep(start, seeds, &config, SimBugs::default());
    println!("{soak} in {:?}", started.elapsed());
    for failure in soak.failures.iter().take(3) {
        println!("{failure}");
    }
    assert!(
        soak.failures.is_empty(),
        "failing seeds: {:?}",
        soak.failures.iter().map(|f| f.seed).collect::<Vec<_>>()
    );
}

/// Replays one seed and prints its failure: `MAIL_SIM_SEED=7 cargo test -p cluster --lib
/// mail_sim_replay -- --ignored --nocapture` (`MAIL_SIM_FULL_TRACE=1` prints every event).
#[test]
#[ignore = "by hand"]
fn mail_sim_replay() {
    let seed = knob("MAIL_SIM_SEED").unwrap_or(0);
    match run_seed(seed, &MailSimConfig::default()) {
        Ok(r) => println!("{r:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// Runs seeds from 0 until one fails, at most `limit`; returns the failure.
fn first_failure(config: &MailSimConfig, bugs: SimBugs, limit: u64) -> Option<MailSimFailure> {
    (0..limit).find_map(|seed| run_seed_with(seed, config, bugs).err())
}

fn assert_caught(name: &str, bugs: SimBugs) {
    assert_caught_with(name, &MailSimConfig::default(), bugs)
}

fn assert_caught_with(name: &str, config: &MailSimConfig, bugs: SimBugs) {
    let failure = first_failure(config, bugs, 1_000)
        .unwrap_or_else(|| panic!("the `{name}` bug survived 1,000 seeds"));
    println!(
        "`{name}` caught by seed {}: {}",
        failure.seed, failure.reason
    );
    // The failure replays exactly from its seed.
    let again =
        run_seed_with(failure.seed, config, bugs).expect_err("the failing seed fails again");
    assert_eq!(again.reason, failure.reason);
    assert_eq!(again.trace, failure.trace);
}

#[test]
fn mail_sim_catches_acknowledging_before_the_fsync() {
    assert_caught(
        "ack_before_durable",
        SimBugs {
            ack_before_durable: true,
            ..SimBugs::default()
        },
    );
}

#[test]
fn mail_sim_catches_compaction_deleting_before_its_copy_is_durable() {
    assert_caught(
        "compaction_deletes_before_the_copy_is_durable",
        SimBugs {
            compaction_deletes_before_the_copy_is_durable: true,
            ..SimBugs::default()
        },
    );
}

#[test]
fn mail_sim_catches_compaction_forgetting_tombstones() {
    assert_caught(
        "compaction_forgets_tombstones",
        SimBugs {
            compaction_forgets_tombstones: true,
            ..SimBugs::default()
        },
    );
}

#[test]
fn mail_sim_catches_retiring_a_tombstone_a_replica_still_needs() {
    // With two copies a holder owes one other replica, so its tombstone can only ripen early
    // with three.
    let config = MailSimConfig {
        nodes: 5,
        replication: 3,
        ..MailSimConfig::default()
    };
    let mut bugs = SimBugs::default();
    bugs.machine.ripen_while_owed = true;
    assert_caught_with("ripen_while_owed", &config, bugs);
}

#[test]
fn mail_sim_catches_settling_a_state_that_changed_on_the_way() {
    let mut bugs = SimBugs::default();
    bugs.machine.settle_stale_state = true;
    assert_caught("settle_stale_state", bugs);
}

#[test]
fn mail_sim_catches_retrying_an_unanswered_delivery() {
    let mut bugs = SimBugs::default();
    bugs.machine.retry_unanswered_delivery = true;
    assert_caught("retry_unanswered_delivery", bugs);
}

#[test]
fn mail_sim_same_seed_replays_exactly() {
    let config = MailSimConfig::default();
    let a = run_seed(42, &config).unwrap_or_else(|f| panic!("{f}"));
    let b = run_seed(42, &config).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a.events, b.events);
    assert_eq!(a.simulated_ms, b.simulated_ms);
    assert_eq!(a.deliveries_acked, b.deliveries_acked);
    assert_eq!(a.messages_sent, b.messages_sent);
    assert!(a.deliveries_acked > 0 && a.expunges_acked > 0 && a.reads_checked > 0);
}

/// Seeds that found real bugs while the simulator was built (each fixed; see the README's
/// "What the simulator found"), with the settings they failed under. Every change to what the
/// simulator draws from its random source (compaction, full and slow disks and password changes
/// came later) moves a seed's run, so these no longer replay the runs that found the bugs; they
/// stay as extra seeds. Bugs 10 and 11 are pinned by unit tests that do not depend on the
/// simulator (`machine::tests`, `store::tests`).
#[test]
fn mail_sim_regression_seeds() {
    let base = MailSimConfig::default();
    let r3 = MailSimConfig {
        nodes: 5,
        replication: 3,
        ..MailSimConfig::default()
    };
    let r1 = MailSimConfig {
        nodes: 3,
        replication: 1,
        ..MailSimConfig::default()
    };
    let cases: [(u64, &MailSimConfig); 16] = [
        (0, &base),
        (2, &base),
        (420, &base),
        (7, &base),
        (43, &base),
        (68, &base),
        (165, &base),
        (1171, &base),
        (1409, &base),
        (1815, &base),
        (2063, &base),
        (5101, &base),
        (17, &r3),
        (2910, &r3),
        (2955, &r3),
        (756, &r1),
    ];
    for (seed, config) in cases {
        if let Err(f) = run_seed(seed, config) {
            panic!("{f}");
        }
    }
}
