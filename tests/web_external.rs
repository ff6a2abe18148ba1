//! Web experiments against real web servers and proxies installed from Debian (by `.ci/run`):
//! the bundled origin behind nginx as a reverse proxy (`[target] http`, origin-form requests)
//! and behind squid as a forward proxy (`[target] proxy`, absolute-form requests, as a browser
//! configured with a proxy sends them). The trace is the origin's own objects; every response
//! must come back byte-identical to the origin's manifest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, BIN, WAIT};
use serde_json::Value;

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first, so a server stops its own children; SIGKILL if it will not go.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn origin() -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(["origin", "--listen", "127.0.0.1:0", "--objects", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(line.trim().strip_prefix("READY ").unwrap()).unwrap();
    (Running(child), ready["http"].as_str().unwrap().to_string())
}

/// `GET path` from `addr` with HTTP/1.0; the body.
fn get(addr: &str, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    all[at + 4..].to_vec()
}

/// A CLF trace of the origin's objects, Zipf-ish (object i every i-th time or so).
fn trace(dir: &Path, origin: &str) -> std::path::PathBuf {
    let manifest: Value = serde_json::from_slice(&get(origin, "/manifest.json")).unwrap();
    let entries = manifest["entries"].as_array().unwrap();
    let mut log = String::new();
    for i in 0..400usize {
        let e = &entries[(i * 7919) % entries.len() / (1 + i % 3)];
        log.push_str(&format!(
            "10.0.0.{} - - [01/Nov/1996:09:00:{:02} -0800] \"GET {} HTTP/1.0\" 200 {}\n",
            i % 20,
            i / 10 % 60,
            e["path"].as_str().unwrap(),
            e["bytes"]
        ));
    }
    let path = dir.join("access.log");
    std::fs::write(&path, log).unwrap();
    path
}

/// Starts a server on a port found free (`start` writes its configuration and spawns it) and
/// waits until it listens. A port is only free until someone takes it: if the server exits
/// before listening (a parallel test took the port in between), it is tried on another.
fn start_server(mut start: impl FnMut(u16) -> Child) -> (Running, String) {
    for _ in 0..5 {
        let port = free_port();
        let mut server = Running(start(port));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = server.0.try_wait() {
                break;
            }
            if TcpStream::connect(&addr).is_ok() {
                return (server, addr);
            }
            assert!(Instant::now() < deadline, "{addr} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("the server exited before listening, five times over (see its errors above)");
}

fn run(dir: &Path, target: &str, trace: &Path) -> Value {
    let file = dir.join("exp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "external-web"
{target}
[workload]
duration_s = 5
warmup_s = 0
rate = {{ per_s = 80 }}
[workload.trace]
file = "{}"
timing = "rate"
"#,
            trace.display()
        ),
    )
    .unwrap();
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
    assert_eq!(status.code(), Some(0), "{}", results["verdict"]);
    results
}

fn assert_all_verified(results: &Value) {
    let web = &results["web"];
    let sent = web["trace"]["sent"].as_u64().unwrap();
    assert!(sent >= 390, "{sent} sent");
    assert_eq!(web["outcomes"]["ok"].as_u64(), Some(sent), "{web}");
    assert_eq!(web["outcomes"]["verified"].as_u64(), Some(sent), "{web}");
    assert_eq!(web["check_failures"], 0);
    assert!(web["trace"]["manifest_objects"].as_u64().unwrap() >= 200);
}

#[test]
fn nginx_as_a_reverse_proxy_serves_the_trace_byte_for_byte() {
    if !require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_origin, origin) = origin();
    let prefix = dir.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    let (_nginx, addr) = start_server(|port| {
        std::fs::write(
            &conf,
            format!(
                r#"
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  upstream origin {{ server {origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
                p = prefix.display()
            ),
        )
        .unwrap();
        Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            // One process: nothing is left behind whatever happens to the test.
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx")
    });
    let trace = trace(dir.path(), &origin);
    let results = run(
        dir.path(),
        &format!("[target]\nhttp = [\"{addr}\"]"),
        &trace,
    );
    assert_all_verified(&results);
    assert_eq!(results["web"]["target"], "http");
}

#[test]
fn squid_as_a_forward_proxy_serves_the_trace_byte_for_byte() {
    if !require_tool("squid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_origin, origin) = origin();
    let conf = dir.path().join("squid.conf");
    let d = dir.path().display();
    // Squid drops root privileges to its own user, who must be able to write the logs.
    let _ = Command::new("chmod").arg("777").arg(dir.path()).status();
    let (_squid, addr) = start_server(|port| {
        std::fs::write(
            &conf,
            format!(
                r#"
http_port 127.0.0.1:{port}
http_access allow all
cache_mem 16 MB
maximum_object_size_in_memory 1 MB
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log none
cache_store_log none
coredump_dir {d}
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
"#
            ),
        )
        .unwrap();
        Command::new("squid")
            .args(["-N", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting squid")
    });
    let trace = trace(dir.path(), &origin);
    let results = run(
        dir.path(),
        &format!("[target]\nproxy = [\"{addr}\"]\norigin = \"http://{origin}\""),
        &trace,
    );
    assert_all_verified(&results);
    assert_eq!(results["web"]["target"], "proxy");
}
