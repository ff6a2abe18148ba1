//! Renders hand-built sweeps (a sweep.json and the results.json of each run, derived from the
//! quickstart run) and checks what a reader of the sweep page relies on.

use serde_json::{json, Value};

fn read(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture sweep: its sweep.json and each run's results, in the order sweep.json lists them.
fn sweep_fixture(name: &str) -> (Value, Vec<Value>) {
    let dir = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let sweep = read(&format!("{dir}/sweep.json"));
    let runs = sweep["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| {
            read(&format!(
                "{dir}/{}/results.json",
                run["dir"].as_str().unwrap()
            ))
        })
        .collect();
    (sweep, runs)
}

/// The text of an HTML page with tags dropped and whitespace folded (as in render.rs).
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

/// The `<section>` whose heading is `heading`, or an empty string.
fn section<'a>(html: &'a str, heading: &str) -> &'a str {
    let Some(start) = html.find(&format!("<h2>{heading}</h2>")) else {
        return "";
    };
    let end = html[start..]
        .find("</section>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

#[test]
fn scaling_sweep_shows_scaling_efficiency_replication_and_links() {
    let (sweep, runs) = sweep_fixture("sweep-scaling");
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    // Left for a person (or a screenshot) to look at; nothing reads it back.
    std::fs::write(std::env::temp_dir().join("sweep-preview.html"), &html).expect("write preview");
    let text = visible_text(&html);

    assert!(html.contains("<title>scaling — clusterbench sweep report</title>"));
    assert!(
        text.contains("8 configurations × 1 repetition · 8 runs"),
        "{text}"
    );
    assert!(text.contains("cluster.nodes 1, 2, 4, 8"), "{text}");
    assert!(text.contains("cluster.replication 1, 2"), "{text}");
    assert!(text.contains("PASS all 8 runs passed"), "{text}");

    // One row per configuration, in order: params, throughput, spread, p50, p99, errors, lost,
    // passed, links. 88.4 SMTP/s at one node and R=1, as in the quickstart run.
    assert!(
        text.contains("1 1 88.4 – 68.0 152 7 0 1/1 r0"),
        "first configuration row: {text}"
    );
    assert!(text.contains("8 2 342.1"), "{text}");

    // Scaling: the chart with the ideal line and the efficiency table.
    let scaling = section(&html, "Scaling with node count");
    assert_eq!(scaling.matches("<svg").count(), 1);
    assert!(scaling.contains("ideal linear"), "ideal line in the legend");
    assert!(scaling.contains("replication=1") && scaling.contains("replication=2"));
    let scaling_text = visible_text(scaling);
    assert!(scaling_text.contains("Per-node efficiency"));
    assert!(
        scaling_text.contains("1 node 2 nodes 4 nodes 8 nodes replication=1 100 % 96 % 90 % 78 %"),
        "{scaling_text}"
    );
    assert!(scaling_text.contains("replication=2 100 % 96 % 90 % 78 %"));

    // Replication varies too: throughput and p99 per R, one line per node count.
    let replication = section(&html, "Replication overhead");
    assert_eq!(replication.matches("<svg").count(), 2);
    assert!(visible_text(replication).contains("nodes=8 100 % 62 %"));
    // Skew does not vary, and the key charts make the generic one unnecessary.
    assert!(section(&html, "Skew").is_empty());
    assert!(section(&html, "Throughput per configuration").is_empty());

    // Links to each run's own report, relative.
    for run in sweep["runs"].as_array().unwrap() {
        let href = format!("href=\"{}/report.html\"", run["dir"].as_str().unwrap());
        assert_eq!(
            html.matches(&href).count(),
            2,
            "{href} in table and run list"
        );
    }
    // Self-contained: no scripts, no external resources.
    assert!(!html.to_lowercase().contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
}

#[test]
fn skew_sweep_shows_a_line_per_placement_with_repetitions() {
    let (sweep, runs) = sweep_fixture("sweep-skew");
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    std::fs::write(std::env::temp_dir().join("sweep-skew-preview.html"), &html)
        .expect("write preview");
    let text = visible_text(&html);

    assert!(
        text.contains("6 configurations × 2 repetitions · 12 runs"),
        "{text}"
    );
    assert!(text.contains("workload.skew 0, 0.5, 1.0"), "{text}");
    assert!(text.contains("cluster.placement dynamic, static"), "{text}");
    // Mean and min–max over the two repetitions, and the pass count.
    assert!(text.contains("0 dynamic 88.6 87.1–90.2"), "{text}");
    assert!(text.contains("2/2"));

    let skew = section(&html, "Skew");
    assert_eq!(skew.matches("<svg").count(), 1);
    assert!(skew.contains("placement=dynamic") && skew.contains("placement=static"));
    assert!(section(&html, "Scaling with node count").is_empty());
    assert!(section(&html, "Replication overhead").is_empty());
    assert!(html.contains("href=\"skew=1.0,placement=static/r1/report.html\""));
    assert!(!html.to_lowercase().contains("<script"));
}

#[test]
fn a_sweep_without_a_key_chart_gets_the_generic_one_and_failures_show() {
    let (mut sweep, mut runs) = sweep_fixture("sweep-skew");
    // Call the swept key something without a chart of its own.
    for run in sweep["runs"].as_array_mut().unwrap() {
        let params = run["params"].as_object_mut().unwrap();
        let skew = params.remove("workload.skew").unwrap();
        params.insert(
            "workload.users".into(),
            json!(skew.as_f64().unwrap() * 1000.0),
        );
    }
    sweep["keys"] = json!(["workload.users", "cluster.placement"]);
    runs[3]["verdict"] = json!({ "pass": false, "reasons": ["1 acknowledged message(s) lost"] });
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    std::fs::write(
        std::env::temp_dir().join("sweep-generic-preview.html"),
        &html,
    )
    .expect("write preview");
    let text = visible_text(&html);

    let generic = section(&html, "Throughput per configuration");
    assert_eq!(generic.matches("<svg").count(), 1);
    assert!(
        generic.contains("users=500.0, placement=static"),
        "{generic}"
    );
    assert!(section(&html, "Skew").is_empty());
    assert!(
        text.contains("FAIL 11 of 12 runs passed; not passed: skew=0,placement=static/r1"),
        "{text}"
    );
    assert!(text.contains("1/2"));
}

#[test]
fn a_wrong_schema_version_or_kind_is_refused_by_name() {
    let (sweep, runs) = sweep_fixture("sweep-scaling");

    let mut wrong = sweep.clone();
    wrong["schema_version"] = json!(2);
    let err = reports::render_sweep(&wrong, &runs)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "sweep.json: schema_version 2 is not supported (this clusterbench reads 1)"
    );

    let mut wrong = sweep.clone();
    wrong["kind"] = json!("run");
    let err = reports::render_sweep(&wrong, &runs)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sweep.json: kind is \"run\", not \"sweep\""),
        "{err}"
    );

    let mut wrong = sweep.clone();
    wrong.as_object_mut().unwrap().remove("kind");
    let err = reports::render_sweep(&wrong, &runs)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("sweep.json: kind is missing"), "{err}");

    // A results file handed in as the sweep.
    let err = reports::render_sweep(&runs[0], &runs)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("sweep.json: kind is missing"), "{err}");

    let mut wrong = sweep.clone();
    wrong["runs"][2]["dir"] = json!(7);
    let err = reports::render_sweep(&wrong, &runs)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("sweep.json: runs[2].dir: "), "{err}");
}

#[test]
fn runs_must_match_the_sweep() {
    let (sweep, mut runs) = sweep_fixture("sweep-scaling");
    let err = reports::render_sweep(&sweep, &runs[..7])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sweep.json lists 8 run(s) but 7 results file(s) were given"),
        "{err}"
    );
    assert!(matches!(
        reports::render_sweep(&sweep, &[]),
        Err(reports::ReportError::SweepRunCount {
            listed: 8,
            given: 0
        })
    ));

    runs[4]["schema_version"] = json!(3);
    let err = reports::render_sweep(&sweep, &runs)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "sweep run 5 of 8 (nodes=4,replication=1/r0): results.json: schema_version 3 is not \
         supported (this clusterbench reads 1)"
    );
}

#[test]
fn text_and_dirs_from_the_files_are_escaped() {
    let (mut sweep, runs) = sweep_fixture("sweep-scaling");
    sweep["name"] = json!("<script>alert(1)</script>");
    sweep["runs"][0]["dir"] = json!("javascript:alert(1)//\"><script>");
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    assert!(!html.to_lowercase().contains("<script"));
    assert!(!html.contains("href=\"javascript:"));
    assert!(html.contains("href=\"javascript%3Aalert%281%29/%22%3E%3Cscript%3E/report.html\""));
}

/// A web run's results: the quickstart's, with requests of each content type instead of mail
/// (`rates` html, gif, jpeg per second) and a web section with the hit rate.
fn web_results(name: &str, rates: [f64; 3], p99_ms: [f64; 3], hit_rate: f64) -> Value {
    let mut r = read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quickstart.json"
    ));
    let smtp = r["operations"]["ops"]["smtp"].clone();
    let mut ops = serde_json::Map::new();
    for ((kind, rate), p99) in ["html", "gif", "jpeg"].iter().zip(rates).zip(p99_ms) {
        let mut o = smtp.clone();
        o["throughput_per_s"] = json!(rate);
        o["p99_ms"] = json!(p99);
        o["p50_ms"] = json!(p99 / 4.0);
        o["errors"] = json!(0);
        ops.insert(kind.to_string(), o);
    }
    r["name"] = json!(name);
    r["operations"]["ops"] = Value::Object(ops);
    r["correctness"] = Value::Null;
    r["web"] = json!({"target": "bundled", "hit_rate": hit_rate, "outcomes": {"ok": 100}});
    r
}

fn web_sweep(key: &str, values: &[u64]) -> Value {
    json!({
        "schema_version": 1,
        "kind": "sweep",
        "name": "web",
        "keys": [key],
        "repeat": 1,
        "runs": values.iter().map(|v| json!({
            "params": {key: v},
            "repetition": 0,
            "dir": format!("{}={v}/r0", key.rsplit('.').next().unwrap()),
            "pass": true,
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn a_web_sweep_charts_requests_against_workers_and_hit_rate_against_cache_size() {
    // Workers of one class: requests per second (all types summed) with the ideal line.
    let sweep = web_sweep("cluster.web.workers.classes.jpeg", &[1, 2, 4]);
    let runs = vec![
        web_results("w1", [5.0, 5.0, 2.5], [100.0, 120.0, 900.0], 0.1),
        web_results("w2", [10.0, 10.0, 5.0], [100.0, 120.0, 800.0], 0.1),
        web_results("w4", [19.0, 19.0, 12.0], [100.0, 130.0, 700.0], 0.1),
    ];
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    std::fs::write(std::env::temp_dir().join("sweep-web-preview.html"), &html)
        .expect("write preview");
    let text = visible_text(&html);
    assert!(text.contains("req/s mean"), "{text}");
    assert!(!text.contains("SMTP"), "{text}");
    // 5 + 5 + 2.5 requests a second, the slowest type's p99.
    assert!(text.contains("1 12.5 – 225 900"), "first row: {text}");
    let scaling = section(&html, "Scaling with jpeg worker count");
    assert_eq!(scaling.matches("<svg").count(), 1, "{text}");
    assert!(scaling.contains("ideal linear"));
    let scaling_text = visible_text(scaling);
    assert!(
        scaling_text
            .contains("1 jpeg worker 2 jpeg workers 4 jpeg workers requests 100 % 100 % 100 %"),
        "{scaling_text}"
    );
    assert!(section(&html, "Cache hit rate").is_empty());

    // The cache's size: the hit rate chart, in MB.
    let sweep = web_sweep("cluster.web.cache.bytes_max", &[1 << 20, 4 << 20, 16 << 20]);
    let runs = vec![
        web_results("c1", [10.0, 10.0, 5.0], [100.0, 100.0, 100.0], 0.154),
        web_results("c4", [10.0, 10.0, 5.0], [100.0, 100.0, 100.0], 0.273),
        web_results("c16", [10.0, 10.0, 5.0], [100.0, 100.0, 100.0], 0.339),
    ];
    let html = reports::render_sweep(&sweep, &runs).expect("renders");
    let cache = section(&html, "Cache hit rate");
    assert_eq!(cache.matches("<svg").count(), 1, "{html}");
    assert!(cache.contains("cache size, MB"), "{cache}");
    assert!(cache.contains("hit rate, %"), "{cache}");
    assert!(section(&html, "Throughput per configuration").is_empty());
}
