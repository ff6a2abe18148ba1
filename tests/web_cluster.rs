//! The web cluster through the doors a user has: `clusterbench cluster up --service web`, real
//! HTTP clients configured with the front end as their proxy (curl, Python's urllib, wget), the
//! admin API, and real processes killed with real signals.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, require_tool, Cluster};
use serde_json::Value;

/// The cluster's processes as its node daemons list them now.
fn processes(cluster: &Cluster) -> Vec<Value> {
    let token = token(cluster);
    let mut all = Vec::new();
    for n in cluster.info["nodes"].as_array().unwrap() {
        let addr: SocketAddr = n["addr"].as_str().unwrap().parse().unwrap();
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = write!(
                s,
                "GET /processes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if let Ok(Value::Array(list)) = serde_json::from_str(body) {
                    all.extend(list);
                }
            }
        }
    }
    all
}

fn token(cluster: &Cluster) -> String {
    cluster.info["admin_token"].as_str().unwrap().to_string()
}

/// A process's entry, waiting until one runs (up to `wait`).
fn find(cluster: &Cluster, key: &str, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(p) = processes(cluster).into_iter().find(|p| p["key"] == key) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr(p: &Value, endpoint: &str) -> SocketAddr {
    p["endpoints"][endpoint].as_str().unwrap().parse().unwrap()
}

fn origin(cluster: &Cluster) -> String {
    cluster.info["origins"][0].as_str().unwrap().to_string()
}

/// One GET through the proxy at `proxy` for `url`; returns (status, headers, body).
fn proxy_get(proxy: SocketAddr, url: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {url} HTTP/1.1\r\nHost: {}\r\n{extra}Connection: close\r\n\r\n",
        url.trim_start_matches("http://").split('/').next().unwrap()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), raw[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Objects of the origin's manifest: (path, content_type, bytes).
fn manifest(cluster: &Cluster) -> Vec<(String, String, u64)> {
    let origin: SocketAddr = origin(cluster).parse().unwrap();
    let (code, body) = http("GET", origin, "/manifest.json", None, "");
    assert_eq!(code, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["content_type"].as_str().unwrap().to_string(),
                e["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The first object of `kind` whose size is in `range`.
fn object(objects: &[(String, String, u64)], kind: &str, range: std::ops::Range<u64>) -> String {
    objects
        .iter()
        .find(|(_, k, b)| k == kind && range.contains(b))
        .unwrap_or_else(|| panic!("no {kind} object of {range:?} bytes"))
        .0
        .clone()
}

fn up(dir: &Path, extra: &[&str]) -> Cluster {
    let mut args = vec!["--service", "web", "--objects", "400"];
    args.extend_from_slice(extra);
    Cluster::up(dir, &args)
}

fn kill9(pid: u64) {
    // SAFETY: kill(2) on a process of this test's cluster.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn real_clients_fetch_through_the_proxy_and_get_distilled_objects() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), &[]);
    let fe = find(&cluster, "front_end 1", Duration::from_secs(5)).expect("a front end");
    let proxy = addr(&fe, "http");
    let objects = manifest(&cluster);
    let origin = origin(&cluster);
    let jpeg = object(&objects, "jpeg", 4_000..200_000);
    let gif = object(&objects, "gif", 2_000..200_000);
    let html = object(&objects, "html", 1_100..200_000);
    let small = objects
        .iter()
        .find(|(_, _, b)| *b < 1024)
        .expect("an object under 1 KB")
        .0
        .clone();
    let direct = |path: &str| -> Vec<u8> {
        let (_, _, body) = proxy_get(
            origin.parse().unwrap(),
            &format!("http://{origin}{path}"),
            "",
        );
        body
    };

    // A JPEG: distilled — still a JPEG, smaller, half the original's dimensions.
    let (code, head, body) = proxy_get(proxy, &format!("http://{origin}{jpeg}"), "");
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "x-cb"), Some("distilled"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("image/jpeg"));
    let original = direct(&jpeg);
    assert!(
        body.len() < original.len(),
        "{} >= {}",
        body.len(),
        original.len()
    );
    let (w, h) = image::load_from_memory(&original)
        .unwrap()
        .to_rgb8()
        .dimensions();
    let distilled = image::load_from_memory(&body).expect("the distilled JPEG decodes");
    assert_eq!(
        (distilled.width(), distilled.height()),
        ((w / 2).max(1), (h / 2).max(1)),
        "scale 0.5 of {w}x{h}"
    );
    // A GIF becomes a JPEG.
    let (code, head, body) = proxy_get(proxy, &format!("http://{origin}{gif}"), "");
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("image/jpeg"), "{head}");
    image::load_from_memory(&body).expect("the distilled GIF decodes");
    // Small objects pass through byte for byte.
    let (code, head, body) = proxy_get(proxy, &format!("http://{origin}{small}"), "");
    assert_eq!(code, 200, "{head}");
    assert_eq!(body, direct(&small));
    assert_eq!(header(&head, "x-cb"), Some("pass-through"), "{head}");
    // HTML carries the munger's marks.
    let (code, _, body) = proxy_get(proxy, &format!("http://{origin}{html}"), "");
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("clusterbench-toolbar"), "{text}");
    // The same JPEG again: from the cache.
    let (_, head, _) = proxy_get(proxy, &format!("http://{origin}{jpeg}"), "");
    assert_eq!(header(&head, "x-cache"), Some("hit"), "{head}");
    // Not an open proxy.
    let (code, _, body) = proxy_get(proxy, "http://127.0.0.1:9/anything", "");
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));

    // Real clients configured with the proxy.
    if require_tool("curl") {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{content_type} %{size_download}",
            ])
            .arg("-x")
            .arg(format!("http://{proxy}"))
            .arg(format!("http://{origin}{gif}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("200 image/jpeg"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if require_tool("python3") {
        let script = format!(
            "import urllib.request\n\
             opener = urllib.request.build_opener(urllib.request.ProxyHandler({{'http': 'http://{proxy}'}}))\n\
             r = opener.open('http://{origin}{small}')\n\
             data = r.read()\n\
             print(r.status, len(data))\n"
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            format!("200 {}", direct(&small).len()),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if require_tool("wget") {
        let file = dir.path().join("wget.out");
        let out = Command::new("wget")
            .args(["-q", "-O"])
            .arg(&file)
            .arg(format!("http://{origin}{html}"))
            .env("http_proxy", format!("http://{proxy}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("clusterbench-toolbar"));
    }

    // A profile change takes effect within a beacon period or two.
    let db = find(&cluster, "profiles", Duration::from_secs(5)).unwrap();
    let (code, body) = http(
        "PUT",
        addr(&db, "admin"),
        "/profiles/alice",
        Some(&token(&cluster)),
        r#"{"scale": 0.25, "quality": 30}"#,
    );
    assert_eq!(code, 200, "{body}");
    let changed = Instant::now();
    let user = "X-Clusterbench-User: alice\r\n";
    loop {
        let (_, _, body) = proxy_get(proxy, &format!("http://{origin}{jpeg}"), user);
        let img = image::load_from_memory(&body).unwrap();
        if img.width() == ((f64::from(w) * 0.25).round() as u32).max(1) {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the new profile was not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "a profile change took effect after {:.2} s",
        changed.elapsed().as_secs_f64()
    );
}

#[test]
fn killed_processes_are_restarted_and_requests_keep_succeeding() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(
        dir.path(),
        &[
            "--nodes",
            "2",
            "--front-ends",
            "2",
            "--caches",
            "2",
            "--workers",
            "jpeg=2,gif=1,html=1",
        ],
    );
    let token = token(&cluster);
    let objects = manifest(&cluster);
    let origin = origin(&cluster);
    let jpeg = object(&objects, "jpeg", 4_000..200_000);
    let url = format!("http://{origin}{jpeg}");
    let fe2 = addr(
        &find(&cluster, "front_end 2", Duration::from_secs(5)).unwrap(),
        "http",
    );
    // Requests to the surviving front end throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, failures, url) = (stop.clone(), failures.clone(), url.clone());
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, head, _) = proxy_get(fe2, &url, "");
                if code >= 500 {
                    failures.lock().unwrap().push(head);
                }
                served += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            served
        })
    };

    // kill -9 a worker: restarted in place, serving again.
    let worker = find(&cluster, "worker jpeg 1", Duration::from_secs(5)).unwrap();
    let node = worker["node"].as_u64().unwrap();
    let killed = Instant::now();
    kill9(worker["pid"].as_u64().unwrap());
    let back = loop {
        if let Some(p) = find(&cluster, "worker jpeg 1", Duration::from_secs(10)) {
            if p["pid"] != worker["pid"] {
                break p;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "worker jpeg 1 not restarted"
        );
    };
    eprintln!(
        "worker jpeg 1 restarted in place (node {node} -> {}) in {:.2} s",
        back["node"],
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(back["node"].as_u64(), Some(node), "restarted in place");

    // Past its restart budget (3 in 60 s by default), its group fails over to the other node.
    let mut current = back;
    for _ in 0..3 {
        let pid = current["pid"].clone();
        kill9(pid.as_u64().unwrap());
        current = loop {
            if let Some(p) = find(&cluster, "worker jpeg 1", Duration::from_secs(10)) {
                if p["pid"] != pid {
                    break p;
                }
            }
        };
    }
    assert_ne!(
        current["node"].as_u64(),
        Some(node),
        "worker jpeg 1 should have failed over: {current}"
    );
    eprintln!("worker jpeg 1 failed over to node {}", current["node"]);

    // kill -9 the manager: a front end starts another; beacons resume.
    let manager = find(&cluster, "manager", Duration::from_secs(5)).unwrap();
    let killed = Instant::now();
    kill9(manager["pid"].as_u64().unwrap());
    let fe1 = find(&cluster, "front_end 1", Duration::from_secs(5)).unwrap();
    loop {
        let replaced = find(&cluster, "manager", Duration::from_millis(10))
            .is_some_and(|m| m["pid"] != manager["pid"]);
        let fresh = common::status(addr(&fe1, "admin"), &token)
            .and_then(|s| s["common"]["beacon_age_ms"].as_u64())
            .is_some_and(|age| age < 600);
        if replaced && fresh {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the manager did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "manager restarted by a front end, beacons back, in {:.2} s",
        killed.elapsed().as_secs_f64()
    );

    // kill -9 a front end: the manager restarts it.
    let killed = Instant::now();
    kill9(fe1["pid"].as_u64().unwrap());
    loop {
        if find(&cluster, "front_end 1", Duration::from_millis(10))
            .is_some_and(|p| p["pid"] != fe1["pid"])
        {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "front_end 1 not restarted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "front_end 1 restarted in {:.2} s",
        killed.elapsed().as_secs_f64()
    );

    // kill -9 a cache partition: keys rehash, and hits resume.
    let cache = find(&cluster, "cache 0", Duration::from_secs(5)).unwrap();
    kill9(cache["pid"].as_u64().unwrap());
    let killed = Instant::now();
    loop {
        let (_, head, _) = proxy_get(fe2, &url, "");
        if header(&head, "x-cache") == Some("hit") && killed.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no cache hits after a partition died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "cache hits resumed {:.2} s after a partition was killed",
        killed.elapsed().as_secs_f64()
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = load.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    eprintln!("{served} requests to front_end 2 during the faults, none failed");
}

#[test]
fn bad_requests_get_proper_answers_and_nothing_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), &[]);
    let fe = find(&cluster, "front_end 1", Duration::from_secs(5)).unwrap();
    let proxy = addr(&fe, "http");
    let origin = origin(&cluster);
    // Garbage.
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // A 1 MiB header line.
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = "a".repeat(1 << 20);
    let _ = write!(
        s,
        "GET http://{origin}/health HTTP/1.1\r\nX-Big: {big}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(100)]
    );
    // Methods and CONNECT.
    let (code, _) = http("POST", proxy, &format!("http://{origin}/x"), None, "{}");
    assert_eq!(code, 405);
    // An unknown object: the origin's 404 passes through.
    let (code, _, _) = proxy_get(proxy, &format!("http://{origin}/obj/nope.gif"), "");
    assert_eq!(code, 404);
    // And the front end still serves.
    let (code, _, _) = proxy_get(proxy, &format!("http://{origin}/health"), "");
    assert_eq!(code, 200);
    assert!(find(&cluster, "front_end 1", Duration::from_secs(1))
        .is_some_and(|p| p["pid"] == fe["pid"]));
}
