//! Compares the quickstart run with itself and with altered copies of it, and checks what a CI
//! gate and a reader of the comparison rely on.

use reports::{Gate, Verdict};
use serde_json::Value;

fn quickstart() -> Value {
    let path = format!(
        "{}/tests/fixtures/quickstart.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The quickstart run with every figure of smtp's that `scale` names multiplied.
fn scaled(scale: &[(&str, f64)]) -> Value {
    let mut run = quickstart();
    for (key, factor) in scale {
        let figure = &mut run["operations"]["ops"]["smtp"][*key];
        *figure = (figure.as_f64().unwrap() * factor).into();
    }
    run
}

fn verdict_of(c: &reports::Comparison, metric: &str) -> Verdict {
    c.metrics
        .iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no metric {metric}"))
        .verdict
}

#[test]
fn a_run_against_itself_is_unchanged() {
    let run = quickstart();
    let c = reports::compare(
        std::slice::from_ref(&run),
        std::slice::from_ref(&run),
        &Gate::default(),
    )
    .expect("compares");
    assert!(!c.regressed);
    let names: Vec<&str> = c.metrics.iter().map(|m| m.metric.as_str()).collect();
    for expected in [
        "smtp throughput_per_s",
        "smtp p50_ms",
        "smtp p99_ms",
        "pop3 p99_ms",
        "imap throughput_per_s",
        "error_rate",
        "recovery 0 convergence_s",
        "recovery 0 throughput_recovered_s",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for m in &c.metrics {
        assert_eq!(m.verdict, Verdict::Unchanged, "{}", m.metric);
        assert_eq!(
            (m.change, m.ci_low, m.ci_high),
            (0.0, 0.0, 0.0),
            "{}",
            m.metric
        );
        assert_eq!(m.p_value, None);
    }
    let error_rate = c.metrics.iter().find(|m| m.metric == "error_rate").unwrap();
    assert!((error_rate.baseline - 7.0 / 5372.0).abs() < 1e-12);
}

#[test]
fn halved_throughput_and_doubled_p99_regress() {
    let candidate = scaled(&[("throughput_per_s", 0.5), ("p99_ms", 2.0)]);
    let c = reports::compare(&[quickstart()], &[candidate], &Gate::default()).expect("compares");
    assert!(c.regressed);
    assert_eq!(verdict_of(&c, "smtp throughput_per_s"), Verdict::Regressed);
    assert_eq!(verdict_of(&c, "smtp p99_ms"), Verdict::Regressed);
    assert_eq!(verdict_of(&c, "smtp p50_ms"), Verdict::Unchanged);
    assert_eq!(verdict_of(&c, "pop3 p99_ms"), Verdict::Unchanged);
    let p99 = c
        .metrics
        .iter()
        .find(|m| m.metric == "smtp p99_ms")
        .unwrap();
    assert!((p99.change - 1.0).abs() < 1e-9);
    assert_eq!((p99.ci_low, p99.ci_high), (p99.change, p99.change));

    // The other way round it is an improvement, not a regression.
    let c = reports::compare(
        &[scaled(&[("throughput_per_s", 0.5), ("p99_ms", 2.0)])],
        &[quickstart()],
        &Gate::default(),
    )
    .expect("compares");
    assert!(!c.regressed);
    assert_eq!(verdict_of(&c, "smtp throughput_per_s"), Verdict::Improved);
    assert_eq!(verdict_of(&c, "smtp p99_ms"), Verdict::Improved);
}

#[test]
fn repetitions_within_two_percent_are_unchanged() {
    let baseline = [
        scaled(&[("throughput_per_s", 1.01), ("p99_ms", 0.99)]),
        scaled(&[("throughput_per_s", 0.99), ("p99_ms", 1.01)]),
    ];
    let candidate = [
        scaled(&[("throughput_per_s", 0.985), ("p99_ms", 1.02)]),
        scaled(&[("throughput_per_s", 0.98), ("p99_ms", 1.015)]),
    ];
    let c = reports::compare(&baseline, &candidate, &Gate::default()).expect("compares");
    assert!(!c.regressed, "{}", reports::comparison_table(&c));
    for m in &c.metrics {
        assert_eq!(m.verdict, Verdict::Unchanged, "{}", m.metric);
        assert!(
            m.ci_low <= m.change && m.change <= m.ci_high,
            "{}",
            m.metric
        );
    }
    // The same inputs give the same intervals: the resampling is seeded.
    let again = reports::compare(&baseline, &candidate, &Gate::default()).unwrap();
    assert_eq!(
        reports::comparison_json(&c),
        reports::comparison_json(&again)
    );
}

#[test]
fn a_large_drop_over_noisy_repetitions_regresses_with_a_p_value() {
    let factors = [0.97, 0.99, 1.0, 1.01, 1.03, 0.98, 1.02, 1.0];
    let baseline: Vec<Value> = factors
        .iter()
        .map(|f| scaled(&[("throughput_per_s", *f)]))
        .collect();
    let candidate: Vec<Value> = factors
        .iter()
        .map(|f| scaled(&[("throughput_per_s", f * 0.8)]))
        .collect();
    let c = reports::compare(&baseline, &candidate, &Gate::default()).expect("compares");
    let m = c
        .metrics
        .iter()
        .find(|m| m.metric == "smtp throughput_per_s")
        .unwrap();
    assert_eq!(m.verdict, Verdict::Regressed);
    assert!(m.ci_high < 0.0 && m.ci_low <= m.change, "{m:?}");
    assert!(m.p_value.expect("8 runs a side") < 0.01, "{m:?}");
}

#[test]
fn gate_reads_defaults_and_names_an_unknown_key() {
    let gate = Gate::from_toml("latency_rise_max = 0.2\n").expect("reads");
    assert_eq!(gate.latency_rise_max, 0.2);
    assert_eq!(gate.throughput_drop_max, 0.05);
    assert_eq!(gate.confidence, 0.95);
    assert_eq!(Gate::from_toml("").unwrap(), Gate::default());

    let err = Gate::from_toml("latency_rise_max = 0.2\nthroughput_drop = 0.1\n").unwrap_err();
    assert!(err.contains("throughput_drop"), "{err}");
    let err = Gate::from_toml("confidence = 95\n").unwrap_err();
    assert!(err.contains("confidence"), "{err}");
}

#[test]
fn empty_sides_and_bad_runs_are_named() {
    let err = reports::compare(&[], &[quickstart()], &Gate::default()).unwrap_err();
    assert!(err.to_string().contains("baseline"), "{err}");
    let mut broken = quickstart();
    broken["operations"]["ops"]["smtp"]["p99_ms"] = "fast".into();
    let err = reports::compare(&[quickstart()], &[quickstart(), broken], &Gate::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("candidate run 2 of 2: "), "{err}");
    assert!(err.contains("p99_ms"), "{err}");
}

#[test]
fn benchmark_json_lists_the_candidate_means() {
    let candidate = scaled(&[("throughput_per_s", 0.5)]);
    let c = reports::compare(&[quickstart()], &[candidate], &Gate::default()).unwrap();
    let entries = reports::benchmark_json(&c);
    let entries = entries.as_array().expect("an array");
    assert_eq!(entries.len(), c.metrics.len());
    for entry in entries {
        let object = entry.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["name", "unit", "value"]);
        assert!(entry["value"].is_number(), "{entry}");
    }
    let throughput = entries
        .iter()
        .find(|e| e["name"] == "smtp throughput_per_s")
        .unwrap();
    assert_eq!(throughput["unit"], "ops/s");
    assert!((throughput["value"].as_f64().unwrap() - 88.42711737637936 * 0.5).abs() < 1e-9);
}

#[test]
fn table_json_and_page_show_the_verdicts() {
    let candidate = scaled(&[("p99_ms", 2.0)]);
    let c = reports::compare(&[quickstart()], &[candidate], &Gate::default()).unwrap();

    let table = reports::comparison_table(&c);
    let line = table
        .lines()
        .find(|l| l.starts_with("smtp p99_ms"))
        .unwrap();
    assert!(
        line.contains("+100.0 %") && line.ends_with("regressed"),
        "{line}"
    );
    assert!(table.contains("REGRESSED"), "{table}");

    let json = reports::comparison_json(&c);
    assert_eq!(json["regressed"], true);
    assert_eq!(json["metrics"][2]["metric"], "smtp p99_ms");
    assert_eq!(json["metrics"][2]["verdict"], "regressed");

    let html = reports::render_comparison(&c).expect("renders");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"));
    assert!(html.contains("smtp p99_ms") && html.contains("REGRESSED"));
}
