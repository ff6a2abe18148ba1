//! `clusterbench origin` end to end: the built binary, its READY line, and objects fetched with
//! curl that match the manifest's checksums; with Python's PIL, when installed, the images are
//! decoded by a decoder that is not ours.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{require_tool, BIN, WAIT};
use serde_json::Value;

/// A running `clusterbench origin`, stopped with SIGTERM when dropped.
struct Origin {
    child: Child,
    ready: Value,
}

impl Origin {
    fn start(extra: &[&str]) -> Origin {
        let mut child = Command::new(BIN)
            .arg("origin")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning clusterbench origin");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("READY ") {
                    let _ = tx.send(json.to_string());
                }
            }
        });
        let Ok(json) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("clusterbench origin printed no READY line within {WAIT:?}");
        };
        Origin {
            child,
            ready: serde_json::from_str(&json).expect("READY is followed by JSON"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ready["http"].as_str().unwrap())
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("clusterbench origin did not stop within {WAIT:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `curl` to a file; returns the Content-Type it reported.
fn curl(url: &str, to: &Path) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .args(["--write-out", "%{content_type}", "--output"])
        .arg(to)
        .arg(url)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A CRC-32 (IEEE), bit by bit: the test's own, not the server's.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn curl_fetches_what_the_manifest_promises() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut origin = Origin::start(&["--seed", "3", "--objects", "200"]);
    assert_eq!(origin.ready["objects"], 200);
    assert_eq!(origin.ready["seed"], 3);
    curl(&origin.url("/health"), &dir.path().join("health"));
    assert_eq!(std::fs::read(dir.path().join("health")).unwrap(), b"ok");

    let manifest_file = dir.path().join("manifest.json");
    assert_eq!(
        curl(&origin.url("/manifest.json"), &manifest_file),
        "application/json"
    );
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 3);
    assert_eq!(manifest["truncated"], false);
    let entries = manifest["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 200);

    let mut images = Vec::new();
    for (content_type, mime, extension) in [
        ("gif", "image/gif", "gif"),
        ("jpeg", "image/jpeg", "jpg"),
        ("html", "text/html; charset=utf-8", "html"),
    ] {
        let entry = entries
            .iter()
            .find(|e| e["content_type"] == content_type && e["bytes"].as_u64().unwrap() > 2048)
            .unwrap_or_else(|| panic!("no {content_type} over 2 KB in the manifest"));
        let path = entry["path"].as_str().unwrap();
        assert!(path.ends_with(extension), "{path}");
        let file = dir.path().join(format!("object.{extension}"));
        assert_eq!(curl(&origin.url(path), &file), mime, "{path}");
        let body = std::fs::read(&file).unwrap();
        assert_eq!(
            body.len() as u64,
            entry["bytes"].as_u64().unwrap(),
            "{path}"
        );
        assert_eq!(
            u64::from(crc32(&body)),
            entry["crc32"].as_u64().unwrap(),
            "{path}"
        );
        if content_type == "html" {
            let page = String::from_utf8(body).unwrap();
            assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<img src=\"/obj/"));
        } else {
            images.push(file);
        }
    }

    // A proxy's absolute-form request, and a 404.
    let out = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .args(["--request-target", "http://example.test/obj/1000000.gif"])
        .arg(origin.url("/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // Decoded by PIL too, when it is installed (optional: quietly skipped otherwise).
    let pil = Command::new("python3")
        .args(["-c", "import PIL"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if pil {
        for image in &images {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import sys; from PIL import Image; im = Image.open(sys.argv[1]); im.load(); print(im.format, im.size[0], im.size[1])",
                ])
                .arg(image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "PIL could not decode {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.starts_with("GIF ") || said.starts_with("JPEG "),
                "{said}"
            );
        }
    }

    let status = origin.stop();
    assert!(status.success(), "origin exited with {status}");
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let out = Command::new(BIN)
        .args(["origin", "--objects", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("objects"), "{stderr}");
    assert!(out.stdout.is_empty(), "no READY line");
}

#[test]
fn origin_serves_a_traces_urls_with_their_logged_types_and_sizes() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A small synthetic trace, plus hand-written lines of paths outside /obj/.
    let trace = dir.path().join("trace.log");
    let out = Command::new(BIN)
        .args(["trace", "synth", "--out"])
        .arg(&trace)
        .args(["--duration-s", "20", "--mean-per-s", "5", "--objects", "30"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = std::fs::read_to_string(&trace).unwrap();
    text.push_str(
        "10.9.9.9 - - [01/Nov/1996:01:00:00 -0800] \"GET /images/logo.gif HTTP/1.0\" 200 2000\n\
         10.9.9.9 - - [01/Nov/1996:01:00:01 -0800] \"GET /images/logo.gif HTTP/1.0\" 200 4321\n\
         10.9.9.9 - - [01/Nov/1996:01:00:02 -0800] \"GET http://www.example.org/news/ HTTP/1.0\" 200 7000\n\
         10.9.9.9 - - [01/Nov/1996:01:00:03 -0800] \"GET /photos/bay.jpg?size=big HTTP/1.0\" 200 15000\n\
         not a log line\n",
    );
    std::fs::write(&trace, &text).unwrap();
    // What the trace logged per path: the largest size (the synthesizer logs one per path).
    let mut logged: std::collections::HashMap<String, usize> = Default::default();
    for line in text.lines().filter(|l| l.contains("\" 200 ")) {
        let target = line.split('"').nth(1).unwrap().split(' ').nth(1).unwrap();
        let path = target
            .trim_start_matches("http://www.example.org")
            .split('?')
            .next()
            .unwrap();
        let bytes: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        let e = logged.entry(path.to_string()).or_default();
        *e = (*e).max(bytes);
    }

    let origin = Origin::start(&["--trace", trace.to_str().unwrap(), "--seed", "4"]);
    assert_eq!(
        origin.ready["objects"].as_u64().unwrap() as usize,
        logged.len()
    );

    // The manifest lists exactly the trace's paths, with their logged sizes.
    let manifest_file = dir.path().join("manifest.json");
    curl(&origin.url("/manifest.json"), &manifest_file);
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    let entries = manifest["entries"].as_array().unwrap();
    assert_eq!(entries.len(), logged.len());
    assert_eq!(manifest["truncated"], false);
    for entry in entries {
        let path = entry["path"].as_str().unwrap();
        assert_eq!(
            entry["bytes"].as_u64().unwrap() as usize,
            logged[path],
            "{path}"
        );
    }

    // Fetched with curl: the logged size, the type's header and magic bytes, the manifest's CRC.
    let mut checked = std::collections::HashSet::new();
    for entry in entries {
        let path = entry["path"].as_str().unwrap();
        let content_type = entry["content_type"].as_str().unwrap();
        let hand_written = !path.starts_with("/obj/");
        if !hand_written && !checked.insert(content_type.to_string()) {
            continue; // one synthesized object per type, and every hand-written one
        }
        let file = dir.path().join(format!("object-{}", checked.len()));
        let mime = curl(&origin.url(path), &file);
        let body = std::fs::read(&file).unwrap();
        assert_eq!(body.len(), logged[path], "{path}");
        assert_eq!(
            u64::from(crc32(&body)),
            entry["crc32"].as_u64().unwrap(),
            "{path}"
        );
        match content_type {
            "gif" => {
                assert_eq!(mime, "image/gif", "{path}");
                assert!(body.starts_with(b"GIF8"), "{path}");
            }
            "jpeg" => {
                assert_eq!(mime, "image/jpeg", "{path}");
                assert!(body.starts_with(&[0xff, 0xd8]), "{path}");
            }
            "html" => {
                assert!(mime.starts_with("text/html"), "{path}");
                let page = String::from_utf8(body).unwrap();
                assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
            }
            _ => assert_eq!(mime, "application/octet-stream", "{path}"),
        }
    }
    assert!(logged.contains_key("/images/logo.gif") && logged["/images/logo.gif"] == 4321);
    assert!(logged.contains_key("/news/"));
    assert!(checked.contains("gif"), "{checked:?}");

    // Paths not in the trace are not found, the corpus's included.
    let out = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .arg(origin.url("/obj/999999.gif"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // A trace that is not there: exit 2, naming it.
    let out = Command::new(BIN)
        .args(["origin", "--trace"])
        .arg(dir.path().join("missing.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.log"));
}
