//! Trace replay through the built binary (`clusterbench run` with `[target] http`) against a
//! small web server of this test's own that logs every request: the requests the server sees
//! are the log's, in its order (constant-rate mode); at the log's own timing every request's
//! intended second is its logged second divided by the speed-up (read from results.json's
//! series, so the verdict does not hang on how busy the machine is); bad log lines are skipped,
//! not fatal; a server's errors are counted by kind.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::BIN;
use serde_json::Value;

/// A keep-alive HTTP/1.1 server answering `ok` (or 503 for paths with `fail` in them), which
/// records every request's path in order.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let log = log.clone();
            std::thread::spawn(move || connection(stream, &log));
        }
    });
    (addr, seen)
}

fn connection(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        // The rest of the head.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let reply: &[u8] = if path.contains("fail") {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nfail"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        log.lock().unwrap().push(path);
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

fn run(dir: &Path, experiment: &str) -> Value {
    let file = dir.join("exp.toml");
    std::fs::write(&file, experiment).unwrap();
    let out = dir.join("out");
    let status = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(
        status.code().is_some(),
        "clusterbench run was killed: {status}"
    );
    results
}

fn clf(host: &str, second: u32, path: &str) -> String {
    format!(
        "{host} - - [01/Nov/1996:09:{:02}:{:02} -0800] \"GET {path} HTTP/1.0\" 200 2\n",
        second / 60,
        second % 60
    )
}

#[test]
fn a_trace_replays_in_its_order_at_a_constant_rate_and_bad_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = serve();
    let mut log = String::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        let path = match i % 4 {
            0 => format!("/page{i}.html"),
            1 => format!("/img/{i}.gif"),
            2 => format!("/photo/{i}.jpg"),
            _ => format!("/data/{i}.bin"),
        };
        log.push_str(&clf(&format!("10.0.0.{}", i % 7), i / 10, &path));
        expected.push(path);
        if i == 30 {
            log.push_str("this is not a log line\n");
            log.push_str("10.0.0.1 - - [bad date] \"GET /x HTTP/1.0\" 200 2\n");
        }
    }
    std::fs::write(dir.path().join("access.log"), &log).unwrap();
    let results = run(
        dir.path(),
        &format!(
            r#"
name = "replay-rate"
[target]
http = ["{addr}"]
[loadgen.http]
connections_per_target = 1
[workload]
duration_s = 4
warmup_s = 0
rate = {{ per_s = 20 }}
[workload.trace]
file = "{}"
timing = "rate"
"#,
            dir.path().join("access.log").display()
        ),
    );
    let seen: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p != "/manifest.json")
        .cloned()
        .collect();
    // 20 a second for 4 seconds: the first 80 of the log's 60 requests, i.e. all of them, in
    // the log's order.
    assert_eq!(
        seen, expected,
        "the server saw the log's requests in its order"
    );
    assert_eq!(results["web"]["trace"]["sent"], 60);
    let ops = &results["operations"]["ops"];
    for (op, n) in [("html", 15), ("gif", 15), ("jpeg", 15), ("other", 15)] {
        assert_eq!(ops[op]["count"], n, "{op}: {}", ops[op]);
    }
    assert_eq!(results["verdict"]["pass"], true, "{}", results["verdict"]);
}

#[test]
fn the_logs_own_timing_is_kept_scaled_and_server_errors_are_counted_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = serve();
    // Per logged second: how many requests.
    let per_second = [3u32, 0, 5, 1, 0, 0, 4, 2];
    let mut log = String::new();
    let mut n = 0;
    for (second, count) in per_second.iter().enumerate() {
        for _ in 0..*count {
            let path = if n == 4 {
                "/fail.html".to_string()
            } else {
                format!("/p{n}.html")
            };
            log.push_str(&clf("10.0.0.9", 100 + second as u32, &path));
            n += 1;
        }
    }
    let gz = dir.path().join("access.log.gz");
    {
        // gzip input, as rotated logs are kept.
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(&gz).unwrap())
            .spawn();
        match &mut child {
            Ok(c) => {
                c.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
                c.wait().unwrap();
            }
            Err(_) => std::fs::write(&gz, &log).unwrap(),
        }
    }
    let mut check = Vec::new();
    std::fs::File::open(&gz)
        .unwrap()
        .read_to_end(&mut check)
        .unwrap();
    let results = run(
        dir.path(),
        &format!(
            r#"
name = "replay-timing"
[target]
http = ["{addr}"]
[workload]
duration_s = 6
warmup_s = 0
[workload.trace]
file = "{}"
timing = "trace"
speedup = 2.0
"#,
            gz.display()
        ),
    );
    // Intended starts: logged second / 2, so logged seconds 2k and 2k+1 share run second k.
    let mut expected = [0u64; 4];
    for (second, count) in per_second.iter().enumerate() {
        expected[second / 2] += u64::from(*count);
    }
    let series = results["operations"]["series"].as_array().unwrap();
    let mut got = [0u64; 4];
    for p in series {
        let t = p["t_s"].as_u64().unwrap() as usize;
        let html = &p["per_op"]["html"];
        got[t] += html["count"].as_u64().unwrap_or(0) + html["errors"].as_u64().unwrap_or(0);
    }
    assert_eq!(got, expected, "requests per second of intended start");
    let html = &results["operations"]["ops"]["html"];
    assert_eq!(html["errors_by_kind"]["http 503"], 1, "{html}");
    assert_eq!(html["count"], 14, "15 logged, one of them answered 503");
}
