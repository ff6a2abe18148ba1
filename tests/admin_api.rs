//! The admin API as an operator uses it: bearer token required, `/status` JSON, `/metrics` text.

mod common;

use common::{http, Client, Cluster};

#[test]
fn status_and_metrics_need_the_token_and_report_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let admin = cluster.addr("admin");
    let token = cluster.token();

    assert_eq!(http("GET", admin, "/status", None, "").0, 401);
    assert_eq!(http("GET", admin, "/status", Some("wrong"), "").0, 401);
    assert_eq!(http("GET", admin, "/metrics", None, "").0, 401);

    // Deliver one message so the figures move.
    let mut c = Client::connect(cluster.addr("smtp"));
    c.line();
    c.send(b"EHLO t\r\n");
    c.smtp_reply();
    for cmd in [
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<user1@example.test>",
        "DATA",
    ] {
        c.cmd(cmd);
    }
    assert!(c.cmd("Subject: x\r\n\r\ny\r\n.").starts_with("250"));
    c.cmd("QUIT");

    let (code, body) = http("GET", admin, "/status", Some(&token), "");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["id"], 1);
    assert_eq!(status["view"]["leader"], 1);
    assert_eq!(status["view"]["members"], serde_json::json!([1]));
    assert!(status["view"]["epoch"].as_u64().unwrap() >= 1);
    assert_eq!(status["load"]["messages"], 1);
    assert_eq!(status["disk"]["model"], "real");
    assert_eq!(status["endpoints"]["smtp"], cluster.node(0)["smtp"]);

    let (code, metrics) = http("GET", admin, "/metrics", Some(&token), "");
    assert_eq!(code, 200);
    for needle in [
        "clusterbench_messages_stored_total 1",
        "clusterbench_fsyncs_total",
        "clusterbench_connections_total{protocol=\"smtp\"}",
        "clusterbench_commands_total{protocol=\"smtp\"}",
        "clusterbench_message_bytes_stored_total",
        "clusterbench_command_errors_total",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
}

#[test]
fn status_says_which_disk_model_a_node_uses() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[disk]\nmodel = \"modelled\"\nsyncs_per_s = 250\nlatency_ms = 2\n",
    )
    .unwrap();
    let cluster = Cluster::up(
        &dir.path().join("c"),
        &["--node-config", config.to_str().unwrap()],
    );
    let (code, body) = http(
        "GET",
        cluster.addr("admin"),
        "/status",
        Some(&cluster.token()),
        "",
    );
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["disk"]["model"], "modelled");
    assert_eq!(status["disk"]["syncs_per_s"], 250.0);
    assert_eq!(status["disk"]["latency_ms"], 2.0);
}
