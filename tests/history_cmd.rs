//! `clusterbench history` over synthetic commits (copies of the quickstart run with seeded
//! noise): a step in smtp's throughput and p99 is found where it starts, a flat history shows no
//! change point, bad input exits 2 naming it; and the CI example that runs it is valid YAML.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/reports/tests/fixtures/quickstart.json"
);
const COMMITS: usize = 10;
/// The commit where the step starts.
const STEP_AT: usize = 6;

/// SplitMix64: seeded test noise without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Writes `c00`..`c09` under `dir`, each a copy of the quickstart run with every operation's
/// throughput, p50 and p99 off by up to 1 %; from commit [`STEP_AT`] on, with `step`, smtp's
/// throughput is 0.8 times and its p99 1.25 times what it was.
fn write_commits(dir: &Path, seed: u64, step: bool) -> Vec<String> {
    let base: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let mut rng = SplitMix64(seed);
    (0..COMMITS)
        .map(|i| {
            let mut run = base.clone();
            for (_, op) in run["operations"]["ops"].as_object_mut().unwrap().iter_mut() {
                for key in ["throughput_per_s", "p50_ms", "p99_ms"] {
                    let v = op[key].as_f64().unwrap();
                    op[key] = (v * (1.0 + 0.01 * rng.symmetric())).into();
                }
            }
            if step && i >= STEP_AT {
                let smtp = &mut run["operations"]["ops"]["smtp"];
                for (key, factor) in [("throughput_per_s", 0.8), ("p99_ms", 1.25)] {
                    smtp[key] = (smtp[key].as_f64().unwrap() * factor).into();
                }
            }
            let name = format!("c{i:02}");
            std::fs::create_dir(dir.join(&name)).unwrap();
            std::fs::write(
                dir.join(&name).join("results.json"),
                serde_json::to_string(&run).unwrap(),
            )
            .unwrap();
            name
        })
        .collect()
}

/// `clusterbench history ARGS` run in `dir`, so that the commits are named as given.
fn history(dir: &Path, args: &[String]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("history")
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_step_is_found_at_the_commit_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = write_commits(dir.path(), 7, true);
    args.extend(["--json", "history.json", "--html", "history.html"].map(String::from));
    let out = history(dir.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for metric in ["smtp throughput_per_s", "smtp p99_ms"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no line for {metric}: {all}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[2], STEP_AT.to_string(), "{line}");
        assert_eq!(cells[3], "c06", "{line}");
        assert!(line.ends_with("regressed"), "{line}");
    }
    assert!(
        stdout.contains("2 change points (2 regressed, 0 improved)"),
        "{all}"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("history.json")).unwrap())
            .unwrap();
    assert_eq!(json["commits"].as_array().unwrap().len(), COMMITS);
    let metric = |name: &str| -> &Value {
        json["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == name)
            .unwrap_or_else(|| panic!("no {name} in the JSON"))
    };
    let throughput = metric("smtp throughput_per_s");
    assert_eq!(throughput["series"].as_array().unwrap().len(), COMMITS);
    let change = &throughput["change_points"][0];
    assert_eq!(change["index"], STEP_AT);
    assert_eq!(change["label"], "c06");
    assert_eq!(change["verdict"], "regressed");
    let relative = change["change"].as_f64().unwrap();
    assert!((relative + 0.2).abs() < 0.02, "{relative}");
    assert_eq!(metric("smtp p99_ms")["change_points"][0]["index"], STEP_AT);
    assert_eq!(json["change_points"], 2);

    let html = std::fs::read_to_string(dir.path().join("history.html")).unwrap();
    assert!(html.contains("<svg"), "no chart in the page");
    assert!(!html.contains("<script"), "the page has a script");
    assert!(html.contains("c06"));
}

#[test]
fn a_flat_history_has_no_change_point() {
    let dir = tempfile::tempdir().unwrap();
    let args = write_commits(dir.path(), 11, false);
    let out = history(dir.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("history: no change point in 12 metrics over 10 commits"),
        "{all}"
    );
}

#[test]
fn bad_input_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = write_commits(dir.path(), 3, false);
    args.insert(4, "missing-commit".into());
    let out = history(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("missing-commit"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = history(dir.path(), &["c00".into(), "empty".into()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty holds no results.json"),
        "{}",
        text(&out)
    );

    std::fs::write(dir.path().join("c01/results.json"), "{}").unwrap();
    let out = history(dir.path(), &["c00".into(), "c01".into()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("c01 (commit 2 of 2), run 1 of 1"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_ci_example_keeps_a_history_beside_the_gate() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/github-actions-example.yml");
    let workflow: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    let steps = workflow["jobs"]["perf"]["steps"]
        .as_sequence()
        .expect("the perf job has steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter().any(|r| r.contains("ci/perf-gate.sh")),
        "{runs:?}"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("clusterbench history") && r.contains("--html")),
        "{runs:?}"
    );
    let uploads: Vec<String> = steps
        .iter()
        .filter(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact"))
        })
        .map(|s| format!("{:?}", s["with"]["name"]))
        .collect();
    assert!(
        uploads.iter().any(|n| n.contains("perf-history")),
        "{uploads:?}"
    );
}
