//! `clusterbench report` through its door: saved results rendered as one self-contained page, in
//! a real browser (headless Chromium) when one is installed.

mod common;

use std::process::Command;

use common::{open_in_chromium, require_tool, BIN};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/reports/tests/fixtures/quickstart.json"
);

fn report(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("report").args(args).output().unwrap()
}

#[test]
fn saved_results_render_to_one_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    std::fs::copy(FIXTURE, &results).unwrap();
    let out = report(&[results.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    assert!(!html.contains("<script"));
    for fetch in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !html.contains(fetch),
            "the page must not fetch anything ({fetch})"
        );
    }

    // Several runs on one page, written where asked.
    let page = dir.path().join("both.html");
    let out = report(&[
        results.to_str().unwrap(),
        FIXTURE,
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&page)
            .unwrap()
            .matches("<svg")
            .count()
            >= 8
    );
}

#[test]
fn bad_results_files_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = report(&[missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.json"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"schema_version": 2}"#).unwrap();
    let out = report(&[bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema_version 2"));
}

#[test]
fn the_report_renders_in_headless_chromium_without_console_errors() {
    if !require_tool("chromium") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    std::fs::copy(FIXTURE, &results).unwrap();
    assert!(report(&[results.to_str().unwrap()]).status.success());
    let dom = open_in_chromium(&dir.path().join("report.html"));
    assert!(
        dom.matches("<svg").count() >= 4,
        "charts missing from the rendered DOM"
    );
}
