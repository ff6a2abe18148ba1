//! The origin over a real socket, with a small hand-written HTTP/1.1 client (so that requests
//! can be as malformed as a test needs).

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::*;
use crate::web::corpus::ContentType;

const WAIT: Duration = Duration::from_secs(20);

struct Origin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), OriginError>>,
}

impl Origin {
    async fn start(config: OriginConfig) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(listener, config, shutdown));
        Origin { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the origin stops")
            .unwrap()
            .unwrap();
    }
}

fn small() -> OriginConfig {
    OriginConfig {
        seed: 7,
        objects: 300,
        ..OriginConfig::default()
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One connection, kept alive across requests.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// Sends `raw` as is and reads one response (with no body if `head`).
    async fn exchange(&mut self, raw: &[u8], head: bool) -> Reply {
        self.stream.get_mut().write_all(raw).await.unwrap();
        tokio::time::timeout(WAIT, self.read_reply(head))
            .await
            .expect("a response in time")
            .expect("a response")
    }

    async fn read_reply(&mut self, head: bool) -> Option<Reply> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if !head && status != 304 {
            let length: usize = reply.header("content-length")?.parse().ok()?;
            reply.body = vec![0; length];
            self.stream.read_exact(&mut reply.body).await.ok()?;
        }
        Some(reply)
    }

    async fn get(&mut self, target: &str) -> Reply {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: origin.test\r\n\r\n");
        self.exchange(raw.as_bytes(), false).await
    }

    /// Whether the server has closed the connection (reads EOF or an error within `WAIT`).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test]
async fn objects_are_the_corpus_bodies_with_their_headers() {
    let origin = Origin::start(small()).await;
    let corpus = Corpus::new(7, 300).unwrap();
    let mut client = Client::connect(origin.addr).await;
    let mut seen = std::collections::HashSet::new();
    // One keep-alive connection for all of them.
    for index in 0..40 {
        let info = corpus.info(index).unwrap();
        let reply = client.get(&info.path).await;
        assert_eq!(reply.status, 200, "{}", info.path);
        let body = corpus.body(index).unwrap();
        assert_eq!(reply.body, body, "{}", info.path);
        assert_eq!(reply.header("content-type"), Some(info.content_type.mime()));
        assert_eq!(
            reply.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(
            reply.header("etag"),
            Some(format!("\"{:08x}\"", crc32fast::hash(&body)).as_str())
        );
        assert_eq!(reply.header("cache-control"), Some("max-age=3600"));
        seen.insert(info.content_type);
    }
    assert_eq!(seen.len(), 4, "all four types among the first 40 objects");
    origin.stop().await;
}

#[tokio::test]
async fn head_and_conditional_requests() {
    let origin = Origin::start(small()).await;
    let corpus = Corpus::new(7, 300).unwrap();
    let info = corpus.info(3).unwrap();
    let body = corpus.body(3).unwrap();
    let mut client = Client::connect(origin.addr).await;
    let raw = format!("HEAD {} HTTP/1.1\r\nHost: o\r\n\r\n", info.path);
    let reply = client.exchange(raw.as_bytes(), true).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    let etag = reply.header("etag").unwrap().to_string();
    // The connection is still in step: no body followed the HEAD response.
    let reply = client.get("/health").await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"ok"[..]));
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: o\r\nIf-None-Match: \"x\", {etag}\r\n\r\n",
        info.path
    );
    let reply = client.exchange(raw.as_bytes(), false).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("etag"), Some(etag.as_str()));
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: o\r\nIf-None-Match: \"00000000\"\r\n\r\n",
        info.path
    );
    assert_eq!(client.exchange(raw.as_bytes(), false).await.body, body);
    origin.stop().await;
}

#[tokio::test]
async fn the_manifest_matches_the_corpus() {
    let origin = Origin::start(small()).await;
    let corpus = Corpus::new(7, 300).unwrap();
    let mut client = Client::connect(origin.addr).await;
    let reply = client.get("/manifest.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let manifest: Manifest = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((manifest.seed, manifest.objects), (7, 300));
    assert!(!manifest.truncated);
    assert_eq!(manifest.entries_max, MANIFEST_ENTRIES_MAX);
    assert_eq!(manifest.entries, corpus.manifest().collect::<Vec<_>>());
    // Twice: the same bytes (built once).
    assert_eq!(client.get("/manifest.json").await.body, reply.body);
    // The JSON's field names, as other clients read them.
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let first = &json["entries"][0];
    for key in ["path", "content_type", "bytes", "crc32"] {
        assert!(!first[key].is_null(), "{key} in {first}");
    }
    origin.stop().await;
}

#[tokio::test]
async fn absolute_form_targets_are_served() {
    let origin = Origin::start(small()).await;
    let corpus = Corpus::new(7, 300).unwrap();
    let info = corpus.info(5).unwrap();
    let mut client = Client::connect(origin.addr).await;
    let reply = client
        .get(&format!("http://origin.test:80{}?from=proxy", info.path))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, corpus.body(5).unwrap());
    origin.stop().await;
}

#[tokio::test]
async fn wrong_paths_and_methods_get_4xx() {
    let origin = Origin::start(small()).await;
    let corpus = Corpus::new(7, 300).unwrap();
    let gif = (0..300)
        .find(|&i| corpus.info(i).unwrap().content_type == ContentType::Gif)
        .unwrap();
    let mut client = Client::connect(origin.addr).await;
    for target in [
        "/",
        "/obj/",
        "/obj/300.gif",
        &format!("/obj/{gif}.jpg"),
        &format!("/obj/0{gif}.gif"),
        "/manifest.json/",
        "/obj/%31.gif",
    ] {
        assert_eq!(client.get(target).await.status, 404, "{target}");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"] {
        let raw = format!("{method} /health HTTP/1.1\r\nHost: o\r\nContent-Length: 0\r\n\r\n");
        let reply = client.exchange(raw.as_bytes(), false).await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
    // Garbage instead of a request: 400, and the connection is closed.
    let mut garbage = Client::connect(origin.addr).await;
    let reply = garbage
        .exchange(b"\x00\x01\x02 nonsense\r\n\r\n", false)
        .await;
    assert_eq!(reply.status, 400);
    assert!(garbage.closed().await);
    // The first connection still works.
    assert_eq!(client.get("/health").await.status, 200);
    origin.stop().await;
}

#[tokio::test]
async fn a_huge_header_gets_431_and_others_are_still_served() {
    let origin = Origin::start(small()).await;
    let big = Client::connect(origin.addr).await;
    let mut raw = b"GET /health HTTP/1.1\r\nHost: o\r\nX-Big: ".to_vec();
    raw.resize(raw.len() + 1024 * 1024, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    // The server answers after its limit and closes while we are still sending: writing may
    // fail; the answer is read all the same.
    let (mut read, mut write) = big.stream.into_inner().into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&raw).await;
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, read.read_to_end(&mut response)).await;
    writer.abort();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 431") || response.starts_with("HTTP/1.1 400"),
        "{response:?}"
    );
    let mut client = Client::connect(origin.addr).await;
    assert_eq!(client.get("/health").await.status, 200);
    origin.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let origin = Origin::start(OriginConfig {
        header_read_timeout_ms: 300,
        ..small()
    })
    .await;
    let mut slow = Client::connect(origin.addr).await;
    slow.stream
        .get_mut()
        .write_all(b"GET /health HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    assert!(slow.closed().await);
    assert!(start.elapsed() >= Duration::from_millis(250));
    let mut client = Client::connect(origin.addr).await;
    assert_eq!(client.get("/health").await.status, 200);
    origin.stop().await;
}

#[tokio::test]
async fn over_the_connection_limit_clients_get_503() {
    let origin = Origin::start(OriginConfig {
        connections_max: 1,
        ..small()
    })
    .await;
    let mut first = Client::connect(origin.addr).await;
    assert_eq!(first.get("/health").await.status, 200);
    let mut second = Client::connect(origin.addr).await;
    let reply = second.get("/health").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(second.closed().await);
    // The first connection is still served; once it goes, a new one is.
    assert_eq!(first.get("/health").await.status, 200);
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut next = Client::connect(origin.addr).await;
        if next.get("/health").await.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    origin.stop().await;
}

#[tokio::test]
async fn the_miss_penalty_delays_objects_only() {
    let origin = Origin::start(OriginConfig {
        delay_ms: 3000,
        ..small()
    })
    .await;
    let mut client = Client::connect(origin.addr).await;
    // A penalty long enough that even a busy machine answers /health well within it.
    let start = std::time::Instant::now();
    assert_eq!(client.get("/health").await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(3000));
    let path = Corpus::new(7, 300).unwrap().info(0).unwrap().path;
    let start = std::time::Instant::now();
    assert_eq!(client.get(&path).await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(3000));
    origin.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_response_under_way() {
    let origin = Origin::start(OriginConfig {
        delay_ms: 500,
        ..small()
    })
    .await;
    let path = Corpus::new(7, 300).unwrap().info(0).unwrap().path;
    let mut client = Client::connect(origin.addr).await;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: o\r\n\r\n");
    client
        .stream
        .get_mut()
        .write_all(raw.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = origin.addr;
    let stopping = tokio::spawn(origin.stop());
    let reply = tokio::time::timeout(WAIT, client.read_reply(false))
        .await
        .unwrap()
        .expect("the response under way is finished");
    assert_eq!(reply.status, 200);
    stopping.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    for (config, field) in [
        (
            OriginConfig {
                objects: 0,
                ..OriginConfig::default()
            },
            "objects",
        ),
        (
            OriginConfig {
                connections_max: 0,
                ..OriginConfig::default()
            },
            "connections_max",
        ),
        (
            OriginConfig {
                header_bytes_max: 100,
                ..OriginConfig::default()
            },
            "header_bytes_max",
        ),
        (
            OriginConfig {
                header_read_timeout_ms: 0,
                ..OriginConfig::default()
            },
            "header_read_timeout_ms",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let error = serve(listener, config, shutdown).await.unwrap_err();
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
}
