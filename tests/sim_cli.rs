//! The simulations through their command-line door. Membership: 1,000 seeded runs of drops, delays,
//! partitions and crashes, all converging. Mail: seeds of the whole cluster pass and replay. Bad
//! settings are refused with a clear error.

mod common;

use std::process::Command;

use common::BIN;

#[test]
fn a_thousand_membership_seeds_converge() {
    let out = Command::new(BIN)
        .args(["sim", "membership", "--seeds", "1000", "--start", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1000 seeds, 0 failed"), "{stdout}");
    println!("{}", stdout.trim());
}

#[test]
fn bad_simulation_settings_are_refused() {
    let out = Command::new(BIN)
        .args([
            "sim",
            "membership",
            "--seeds",
            "1",
            "--drop-probability",
            "1.5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop_probability"));
}

/// The mail simulation through the binary: seeds run on every core and pass, one seed replays
/// with the same figures, and bad settings name themselves.
#[test]
fn mail_simulation_seeds_pass_and_one_replays() {
    let out = Command::new(BIN)
        .args([
            "sim", "mail", "--seeds", "40", "--start", "7", "--jobs", "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("40 seeds passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");
    // Compaction runs in the simulated stores (forty seeds compact hundreds of segments).
    let compactions: u64 = stdout
        .split(" compactions (")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no compaction count: {stdout}"));
    assert!(compactions > 0, "{stdout}");
    println!("{}", stdout.trim());

    let replay = |seed: &str| {
        let out = Command::new(BIN)
            .args(["sim", "mail", "--seed", seed])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // Everything but the wall-clock time.
        text.split(" events in ").next().unwrap().to_string()
            + text.split(" simulated ms;").nth(1).unwrap_or("")
    };
    assert_eq!(replay("11"), replay("11"));

    let out = Command::new(BIN)
        .args(["sim", "mail", "--seeds", "1", "--replication", "9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replication"));
    let out = Command::new(BIN)
        .args(["sim", "mail", "--seeds", "1", "--segment-bytes", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("segment_bytes"));
}
