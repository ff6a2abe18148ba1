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
    let fe = find(&cluster, "front_end 1", Duration::from_secs(30)).expect("a front end");
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
    let default = cluster::web::transform::Profile::default();
    assert_eq!(
        (distilled.width(), distilled.height()),
        cluster::web::transform::expected_dimensions((w, h), &default),
        "the default profile's scale of {w}x{h}"
    );
    // And a standard tool reads it, with those dimensions.
    if require_tool("file") {
        let path = dir.path().join("distilled.jpg");
        std::fs::write(&path, &body).unwrap();
        let out = Command::new("file").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (dw, dh) = cluster::web::transform::expected_dimensions((w, h), &default);
        assert!(
            text.contains("JPEG image data") && text.contains(&format!("{dw}x{dh}")),
            "{text}"
        );
    }
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
    // An aggregated page: an aggregation worker fetches both and composes one page.
    let aggregate = format!(
        "http://{origin}/cb-aggregate?u=http%3A%2F%2F{}{}&u=http%3A%2F%2F{}{}",
        origin.replace(':', "%3A"),
        gif.replace('/', "%2F"),
        origin.replace(':', "%3A"),
        html.replace('/', "%2F")
    );
    let (code, head, body) = proxy_get(proxy, &aggregate, "");
    assert_eq!(code, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert_eq!(header(&head, "x-cb"), Some("aggregated"), "{head}");
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains(&gif) && page.contains(&html), "{page}");
    // An origin-form request with Host works as well.
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {small} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
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

    // A profile change takes effect within a beacon period or two (the front end caches a
    // profile for profile_ttl_ms, 1 s by default): alice's default profile is cached first.
    let user = "X-Clusterbench-User: alice\r\n";
    let (code, _, _) = proxy_get(proxy, &format!("http://{origin}{jpeg}"), user);
    assert_eq!(code, 200);
    let db = find(&cluster, "profiles", Duration::from_secs(30)).unwrap();
    let (code, body) = http(
        "PUT",
        addr(&db, "admin"),
        "/profiles/alice",
        Some(&token(&cluster)),
        r#"{"scale": 0.25, "quality": 30}"#,
    );
    assert_eq!(code, 200, "{body}");
    let changed = Instant::now();
    loop {
        let (_, _, body) = proxy_get(proxy, &format!("http://{origin}{jpeg}"), user);
        let img = image::load_from_memory(&body).unwrap();
        let quarter = cluster::web::transform::Profile {
            scale: 0.25,
            quality: 30,
            ..Default::default()
        };
        if (img.width(), img.height())
            == cluster::web::transform::expected_dimensions((w, h), &quarter)
        {
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
        &find(&cluster, "front_end 2", Duration::from_secs(30)).unwrap(),
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
    let worker = find(&cluster, "worker jpeg 1", Duration::from_secs(30)).unwrap();
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
        let killed = Instant::now();
        kill9(pid.as_u64().unwrap());
        current = loop {
            if let Some(p) = find(&cluster, "worker jpeg 1", Duration::from_secs(10)) {
                if p["pid"] != pid {
                    break p;
                }
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "worker jpeg 1 not restarted after kill -9 {pid}"
            );
        };
    }
    assert_ne!(
        current["node"].as_u64(),
        Some(node),
        "worker jpeg 1 should have failed over: {current}"
    );
    eprintln!("worker jpeg 1 failed over to node {}", current["node"]);

    // kill -9 the manager: a front end starts another; beacons resume.
    let manager = find(&cluster, "manager", Duration::from_secs(30)).unwrap();
    let killed = Instant::now();
    kill9(manager["pid"].as_u64().unwrap());
    let fe1 = find(&cluster, "front_end 1", Duration::from_secs(30)).unwrap();
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
    let cache = find(&cluster, "cache 0", Duration::from_secs(30)).unwrap();
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
    let fe = find(&cluster, "front_end 1", Duration::from_secs(30)).unwrap();
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

#[test]
fn an_acknowledged_profile_survives_kill_9_of_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), &[]);
    let token = token(&cluster);
    let db = find(&cluster, "profiles", Duration::from_secs(30)).unwrap();
    for i in 0..20 {
        let (code, body) = http(
            "PUT",
            addr(&db, "admin"),
            &format!("/profiles/user{i}"),
            Some(&token),
            &format!(r#"{{"quality": {}, "scale": 0.3}}"#, 10 + i),
        );
        assert_eq!(code, 200, "{body}");
    }
    // Right after the last answer: kill -9, and the manager starts it again.
    kill9(db["pid"].as_u64().unwrap());
    let back = loop {
        if let Some(p) = find(&cluster, "profiles", Duration::from_secs(30)) {
            if p["pid"] != db["pid"] {
                break p;
            }
        }
    };
    for i in 0..20 {
        let (code, body) = http(
            "GET",
            addr(&back, "admin"),
            &format!("/profiles/user{i}"),
            Some(&token),
            "",
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["stored"], true, "{v}");
        assert_eq!(v["profile"]["quality"], 10 + i, "{v}");
    }
    // Bad profiles are refused by name.
    let (code, body) = http(
        "PUT",
        addr(&back, "admin"),
        "/profiles/bob",
        Some(&token),
        r#"{"qualty": 5}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("qualty"), "{body}");
    let (code, body) = http(
        "PUT",
        addr(&back, "admin"),
        "/profiles/bob",
        Some(&token),
        r#"{"scale": 7}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("scale"), "{body}");
}

#[test]
fn a_burst_recruits_an_overflow_node_and_releases_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.toml");
    // One jpeg worker per dedicated node, each slow (50 ms per KB: a 10 KB JPEG is half a
    // second), spawning when the average queue passes 2, quick to calm down.
    std::fs::write(
        &template,
        "[workers]\nper_node_max = 3\nclasses = { jpeg = 1, gif = 1, html = 1 }\n\
         cpu = { model = \"modelled\", ms_per_kb = 50 }\n\
         [manager]\nspawn_queue_threshold = 2\nspawn_holdoff_s = 1\nretire_idle_s = 3\n\
         [front_end]\nworker_timeout_ms = 30000\n",
    )
    .unwrap();
    let cluster = up(
        dir.path().join("c").as_path(),
        &[
            "--overflow-nodes",
            "1",
            "--web-config",
            template.to_str().unwrap(),
        ],
    );
    let token = token(&cluster);
    let proxy = addr(
        &find(&cluster, "front_end 1", Duration::from_secs(30)).unwrap(),
        "http",
    );
    let objects = manifest(&cluster);
    let origin = origin(&cluster);
    let jpegs: Vec<String> = objects
        .iter()
        .filter(|(_, k, b)| k == "jpeg" && *b > 4000)
        .map(|(p, _, _)| p.clone())
        .collect();
    assert!(jpegs.len() >= 8, "{} jpegs", jpegs.len());
    let manager_status = || {
        let m = find(&cluster, "manager", Duration::from_secs(30)).unwrap();
        common::status(addr(&m, "admin"), &token).unwrap()
    };
    // The burst: 12 clients, each a different user (so no distilled copy is shared), for as
    // long as it takes the manager to recruit the overflow node.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|c| {
            let (stop, jpegs, origin) = (stop.clone(), jpegs.clone(), origin.clone());
            std::thread::spawn(move || {
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let user = format!("X-Clusterbench-User: burst{c}-{i}\r\n");
                    let _ = proxy_get(
                        proxy,
                        &format!("http://{origin}{}", jpegs[i % jpegs.len()]),
                        &user,
                    );
                    i += 12;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let recruited = loop {
        let s = manager_status();
        if s["overflow_in_use"].as_u64().unwrap_or(0) >= 1 {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no overflow node recruited: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "an overflow worker was recruited {:.1} s into the burst",
        started.elapsed().as_secs_f64()
    );
    assert!(
        recruited["timeline"].to_string().contains("\"overflow\""),
        "{recruited}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let calm = Instant::now();
    loop {
        let s = manager_status();
        if s["overflow_in_use"].as_u64() == Some(0) {
            assert!(s["timeline"].to_string().contains("\"release\""), "{s}");
            break;
        }
        assert!(
            calm.elapsed() < Duration::from_secs(60),
            "the overflow node was not released: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "and released {:.1} s after the burst",
        calm.elapsed().as_secs_f64()
    );
}

/// A misbehaving origin on a free port: `/never` accepts and never answers, `/huge` announces a
/// gigabyte and sends it, `/corrupt.jpg` is 5 KB of noise labelled image/jpeg.
fn bad_origin() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if request.contains(" /never") {
                    std::thread::sleep(Duration::from_secs(120));
                } else if request.contains(" /huge") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n\r\n",
                    );
                    let chunk = vec![0u8; 64 * 1024];
                    for _ in 0..(1 << 14) {
                        if stream.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                } else {
                    let noise: Vec<u8> = (0..5000u32)
                        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                        .collect();
                    let mut body = vec![0xFF, 0xD8, 0xFF, 0xE0];
                    body.extend(noise);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
            });
        }
    });
    addr
}

#[test]
fn origins_that_hang_or_flood_and_corrupt_images_degrade_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bad_origin();
    let template = dir.path().join("template.toml");
    std::fs::write(
        &template,
        "[front_end]\norigin_timeout_ms = 2000\nbody_bytes_max = 1048576\n",
    )
    .unwrap();
    let cluster = up(
        dir.path().join("c").as_path(),
        &[
            "--origin",
            &bad.to_string(),
            "--web-config",
            template.to_str().unwrap(),
        ],
    );
    let fe = find(&cluster, "front_end 1", Duration::from_secs(30)).unwrap();
    let proxy = addr(&fe, "http");
    let worker = find(&cluster, "worker jpeg 1", Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    let (code, _, body) = proxy_get(proxy, &format!("http://{bad}/never"), "");
    assert_eq!(code, 504, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(10), "it hung");
    let (code, _, body) = proxy_get(proxy, &format!("http://{bad}/huge"), "");
    assert_eq!(code, 502, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("larger than"));
    // A corrupt image: the worker says so, the original is served, nothing restarts.
    let (code, head, body) = proxy_get(proxy, &format!("http://{bad}/corrupt.jpg"), "");
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-cb"), Some("undistillable"), "{head}");
    assert_eq!(body.len(), 5004);
    std::thread::sleep(Duration::from_millis(500));
    let now = find(&cluster, "worker jpeg 1", Duration::from_secs(30)).unwrap();
    assert_eq!(now["pid"], worker["pid"], "the worker restarted");
    let again = find(&cluster, "front_end 1", Duration::from_secs(30)).unwrap();
    assert_eq!(again["pid"], fe["pid"], "the front end restarted");
}
