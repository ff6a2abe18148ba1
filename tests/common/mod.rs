//! Shared by the end-to-end tests: starts `clusterbench cluster up` as a user would, reads
//! `cluster.json`, and stops the cluster (SIGTERM, as Ctrl-C would) when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_clusterbench");

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub child: Child,
    pub dir: PathBuf,
    pub info: Value,
    pub stdout: String,
}

impl Cluster {
    /// `clusterbench cluster up --dir DIR <extra>`; returns once the cluster says it is up.
    pub fn up(dir: &Path, extra: &[&str]) -> Cluster {
        let mut command = Command::new(BIN);
        command
            .args(["cluster", "up", "--dir"])
            .arg(dir)
            .args(extra);
        Cluster::start(command, dir)
    }

    /// Runs `command` (one that ends up running `cluster up --dir DIR`); returns once the
    /// cluster says it is up.
    pub fn start(mut command: Command, dir: &Path) -> Cluster {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning clusterbench cluster up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
                if line.contains("Press Ctrl-C to stop") {
                    let _ = tx.send(text.clone());
                }
            }
        });
        let stdout = match rx.recv_timeout(WAIT) {
            Ok(text) => text,
            Err(_) => {
                let _ = child.kill();
                panic!("cluster up did not come up within {WAIT:?}");
            }
        };
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap())
                .unwrap();
        Cluster {
            child,
            dir: dir.to_path_buf(),
            info,
            stdout,
        }
    }

    pub fn node(&self, i: usize) -> &Value {
        &self.info["nodes"][i]
    }

    pub fn addr(&self, proto: &str) -> SocketAddr {
        self.node(0)[proto].as_str().unwrap().parse().unwrap()
    }

    pub fn password(&self) -> String {
        self.info["users"]["password"].as_str().unwrap().to_string()
    }

    pub fn token(&self) -> String {
        self.info["admin_token"].as_str().unwrap().to_string()
    }

    pub fn node_pid(&self, i: usize) -> i32 {
        self.node(i)["pid"].as_i64().unwrap() as i32
    }

    /// Stops the cluster the way Ctrl-C would and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("cluster up did not stop within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_inner();
        }
    }
}

/// Waits until process `pid` is gone.
pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + WAIT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie still has a /proc entry; its state is Z.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if stat.split_whitespace().nth(2) == Some("Z") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal line-oriented client for protocol conversations in tests.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    /// Sends a command line and returns the first reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }

    /// Reads lines until one starts with `prefix`; returns all of them.
    pub fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            assert!(
                !line.is_empty(),
                "connection closed while waiting for {prefix:?}; got {lines:?}"
            );
            let done = line.starts_with(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Reads a multi-line SMTP reply (continuation lines have a '-' after the code).
    pub fn smtp_reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let line = self.line();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub fn read_to_end(&mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

/// Whether an external tool is on PATH. When it is missing the test is skipped with a message
/// naming it, unless CLUSTERBENCH_REQUIRE_TOOLS=1 (set by .ci/run), where it fails instead.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CLUSTERBENCH_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{tool} is required (CLUSTERBENCH_REQUIRE_TOOLS=1) but not installed");
        }
        eprintln!("SKIPPED: {tool} is not installed (install it to run this test)");
    }
    found
}

/// Retrieves every message of `user` over POP3 (without deleting), in order.
pub fn pop3_fetch_all(addr: SocketAddr, user: &str, password: &str) -> Vec<Vec<u8>> {
    let mut c = Client::connect(addr);
    assert!(c.line().starts_with("+OK"));
    assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {password}"));
    assert!(r.starts_with("+OK"), "{r}");
    let stat = c.cmd("STAT");
    let n: usize = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut out = Vec::new();
    for i in 1..=n {
        let r = c.cmd(&format!("RETR {i}"));
        assert!(r.starts_with("+OK"), "{r}");
        let mut body = Vec::new();
        loop {
            let line = c.line();
            if line == ".\r\n" {
                break;
            }
            let line = line.strip_prefix('.').unwrap_or(&line);
            body.extend_from_slice(line.as_bytes());
        }
        out.push(body);
    }
    c.cmd("QUIT");
    out
}

/// One HTTP/1.1 request with an optional bearer token and JSON body; returns (status, body).
pub fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// `GET /status` of a node, parsed; `None` if the node does not answer.
pub fn status(admin: SocketAddr, token: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// (epoch, leader, members) of a `/status` body.
pub fn view_of(status: &Value) -> (u64, u64, std::collections::BTreeSet<u32>) {
    let v = &status["view"];
    (
        v["epoch"].as_u64().unwrap(),
        v["leader"].as_u64().unwrap(),
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap() as u32)
            .collect(),
    )
}

/// Polls until every node of `group` (id, admin address) reports the same view with exactly
/// `members` and `leader`; returns that view's epoch and how long it took.
pub fn converge(
    token: &str,
    group: &[(u32, SocketAddr)],
    members: &[u32],
    leader: u32,
) -> (u64, Duration) {
    let want: std::collections::BTreeSet<u32> = members.iter().copied().collect();
    let start = Instant::now();
    loop {
        let last = group
            .iter()
            .map(|(id, admin)| (*id, status(*admin, token).map(|s| view_of(&s))))
            .collect::<Vec<_>>();
        let views: std::collections::BTreeSet<_> = last.iter().map(|(_, v)| v.clone()).collect();
        if views.len() == 1 {
            if let Some(Some((epoch, l, m))) = views.into_iter().next() {
                if m == want && l == leader as u64 {
                    return (epoch, start.elapsed());
                }
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "no agreement on {want:?} led by {leader}; last views (id, (epoch, leader, members)): {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL, and wait until the process is gone.
pub fn kill9(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_gone(pid);
}

/// Opens `page` in headless Chromium (which must be installed: check with [`require_tool`]):
/// takes a screenshot, which must not be empty, asserts that the page logged nothing to its
/// console, and returns the DOM the browser built.
pub fn open_in_chromium(page: &std::path::Path) -> String {
    let dir = page.parent().unwrap();
    let shot = dir.join("page.png");
    let profile = tempfile::tempdir().unwrap();
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap()
    };
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = chromium(&[&shot_arg, "--window-size=1280,2400"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "the screenshot is (nearly) empty: {size} bytes"
    );
    // The page's own console: any error it logged would show as a CONSOLE line.
    assert!(
        !log.contains("CONSOLE("),
        "the page logged to the console: {log}"
    );
    let out = chromium(&["--dump-dom"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `experiment` to `dir/experiment.toml` and runs `clusterbench run` on it with results in
/// `dir/out` (plus `extra` arguments); returns the output and results.json, if written.
pub fn run_experiment(
    dir: &Path,
    experiment: &str,
    extra: &[&str],
) -> (std::process::Output, Option<Value>) {
    let file = dir.join("experiment.toml");
    std::fs::write(&file, experiment).unwrap();
    let out_dir = dir.join("out");
    let output = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out_dir)
        .args(extra)
        .output()
        .unwrap();
    let results = std::fs::read_to_string(out_dir.join("results.json"))
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    (output, results)
}

/// A command's stdout and stderr, for an assertion message.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
