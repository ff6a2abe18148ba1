//! The membership simulation through its command-line door: 1,000 seeded runs of drops, delays,
//! partitions and crashes, all converging; bad settings are refused with a clear error.

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
