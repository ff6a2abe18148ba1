//! Renders real and hand-written results files and checks what a reader relies on.

use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of an HTML page with tags dropped and runs of whitespace (the thin spaces between
/// thousands included) folded to one space, to assert on what a reader sees rather than on
/// markup. Entities are left as they are.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn quickstart_run_shows_every_part() {
    let html = reports::render_run(&fixture("quickstart.json")).expect("renders");
    // Left for a person (or a screenshot) to look at; nothing reads it back.
    std::fs::write(std::env::temp_dir().join("report-preview.html"), &html).expect("write preview");
    let text = visible_text(&html);

    assert!(html.contains("<title>quickstart — clusterbench report</title>"));
    assert!(
        text.contains("bundled cluster, 3 nodes, replication 2, dynamic placement, modelled disk")
    );
    assert!(text.contains("PASS"));
    // Charts: throughput and one latency chart per operation, with the fault labelled.
    assert_eq!(
        html.matches("<svg").count(),
        4,
        "throughput + smtp/pop3/imap latency"
    );
    let first_chart = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert!(
        first_chart.contains("kill node 2"),
        "fault label in the chart"
    );
    assert!(
        first_chart.contains("view change"),
        "view changes in the legend"
    );
    // Operations table.
    assert!(text.contains("smtp 4 868 7 protocol 5, rejected 2 88.4 66.0 97.6 148 273 328"));
    // Recovery row: start, undo, detection, convergence, throughput back, reintegration.
    assert!(
        text.contains("1 kill node 2 30.0 s 40.0 s 0.07 s 0.47 s 0.00 s 0.61 s"),
        "{text}"
    );
    // Correctness numbers.
    assert!(text.contains("acknowledged 5 343"));
    assert!(text.contains("retrieved 5 343"));
    assert!(text.contains("lost 0"));
    assert!(text.contains("unacknowledged found 2"));
    // Configuration and environment.
    assert!(text.contains("&quot;syncs_per_s&quot;: 200"));
    assert!(text.contains("commit e1c37db"));
    // Self-contained: no scripts, no external resources.
    assert!(!html.to_lowercase().contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("src=\"http"));
}

#[test]
fn external_target_without_faults_or_correctness_renders() {
    let html = reports::render_run(&fixture("external-minimal.json")).expect("renders");
    let text = visible_text(&html);
    assert!(
        text.contains("external target (SMTP 127.0.0.1:2525)"),
        "{text}"
    );
    assert!(text.contains("No faults were injected."));
    assert!(text.contains("The correctness check did not run"));
    assert!(text.contains("connect 4"));
    assert_eq!(html.matches("<svg").count(), 2, "throughput + smtp latency");
    let first_chart = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert!(
        !first_chart.contains("fault"),
        "no fault legend without faults"
    );
    assert!(
        !first_chart.contains("view change"),
        "no view-change legend without any"
    );
    // The target's password does not travel with the report.
    assert!(!html.contains("s3cret-password"));
    assert!(!html.to_lowercase().contains("<script"));
}

#[test]
fn bare_minimum_renders() {
    let results = json!({
        "schema_version": 1,
        "name": "bare",
        "target": { "kind": "external" },
        "operations": { "ops": {} }
    });
    let html = reports::render_run(&results).expect("renders");
    let text = visible_text(&html);
    assert!(text.contains("No operations were recorded."));
    assert!(text.contains("This run recorded no per-second series."));
    assert!(!html.contains("<svg"));
}

#[test]
fn several_runs_make_one_page_in_order() {
    let html =
        reports::render_runs(&[fixture("quickstart.json"), fixture("external-minimal.json")])
            .expect("renders");
    let first = html.find("id=\"run-1\"").expect("first run");
    let second = html.find("id=\"run-2\"").expect("second run");
    assert!(first < second);
    assert!(html[first..second].contains("quickstart"));
    assert!(html[second..].contains("smtp-sink"));
    assert!(visible_text(&html).contains("Runs on this page"));
    assert!(matches!(
        reports::render_runs(&[]),
        Err(reports::ReportError::NoRuns)
    ));
}

#[test]
fn another_schema_version_is_refused_by_name() {
    let mut results = fixture("quickstart.json");
    results["schema_version"] = json!(2);
    let err = reports::render_run(&results).unwrap_err();
    assert_eq!(
        err.to_string(),
        "results.json: schema_version 2 is not supported (this clusterbench reads 1)"
    );

    let err = reports::render_runs(&[fixture("quickstart.json"), results]).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("run 2 of 2: results.json: schema_version 2"));

    let err = reports::render_run(&json!({ "name": "x" })).unwrap_err();
    assert!(
        err.to_string().contains("schema_version is missing"),
        "{err}"
    );
}

#[test]
fn a_wrong_key_is_named_with_its_path() {
    let mut results = fixture("quickstart.json");
    results["operations"]["ops"]["smtp"]["count"] = json!("many");
    let err = reports::render_run(&results).unwrap_err().to_string();
    assert!(
        err.starts_with("results.json: operations.ops.smtp.count: "),
        "{err}"
    );

    let mut results = fixture("quickstart.json");
    results.as_object_mut().unwrap().remove("target");
    let err = reports::render_run(&results).unwrap_err().to_string();
    assert!(err.contains("target"), "{err}");
}

#[test]
fn text_from_the_file_is_escaped() {
    let mut results = fixture("quickstart.json");
    results["name"] = json!("<script>alert(1)</script>");
    results["faults"][0]["action"] = json!("<script>x</script>");
    results["verdict"]["reasons"] = json!(["<b>lost</b>"]);
    let html = reports::render_run(&results).expect("renders");
    assert!(!html.contains("<script"));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<b>lost</b>"));
}

#[test]
fn a_failed_run_says_why_and_open_faults_last_to_the_end() {
    let mut results = fixture("quickstart.json");
    results["verdict"] = json!({ "pass": false, "reasons": ["3 acknowledged message(s) lost"] });
    results["correctness"]["lost"] = json!(3);
    results["correctness"]["retrieved"] = json!(5340);
    results["correctness"]["lost_examples"] = json!(["msg-17", "msg-99", "msg-1234"]);
    results["faults"].as_array_mut().unwrap().push(json!({
        "index": 1, "action": "partition", "node": null, "groups": [[1, 2], [3]],
        "start_s": 45.0, "end_s": null, "error": "node 3: admin API refused"
    }));
    let html = reports::render_run(&results).expect("renders");
    let text = visible_text(&html);
    assert!(
        text.contains("FAIL 3 acknowledged message(s) lost"),
        "{text}"
    );
    assert!(text.contains("lost 3"));
    assert!(text.contains("msg-1234"));
    assert!(
        text.contains("2 partition 1,2 | 3 node 3: admin API refused 45.0 s end of run – – – –"),
        "{text}"
    );
    let first_chart = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert!(first_chart.contains("partition 1,2 | 3"));
}
