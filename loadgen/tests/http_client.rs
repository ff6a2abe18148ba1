//! The web driver's HTTP/1.1 client against a scripted server on a real loopback socket: every
//! way RFC 9112 lets a response body end, interim responses, keep-alive reuse and its limits,
//! and what a broken, oversized or silent server gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use loadgen::drivers::ConnectionTracker;
use loadgen::web::client::{Client, HttpClient, HttpConnection, HttpError, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with one request: the bytes to answer, and whether to close after.
type Script = dyn Fn(usize, &str) -> (Vec<u8>, bool) + Send + Sync;

/// A server answering each request head it reads with `script(request number, head)`; the
/// heads it received, in order.
async fn server(script: Arc<Script>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                    buf.drain(..end + 4);
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(head.clone());
                        seen.len() - 1
                    };
                    let (answer, close) = script(n, &head);
                    if s.write_all(&answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

fn client(config: HttpClient) -> (Client, Arc<ConnectionTracker>) {
    let tracker = Arc::new(ConnectionTracker::default());
    (Client::new(config, Route::Direct, tracker.clone()), tracker)
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Cb: distilled\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn content_length_bodies_reuse_one_connection_and_send_a_proper_request() {
    let (addr, heads) = server(Arc::new(|n, _| (ok(&format!("body {n}")), false))).await;
    let (c, tracker) = client(HttpClient::default());
    for n in 0..3 {
        let r = c
            .get(&format!("http://{addr}/a/b.gif?x=1"), "alice", n)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], format!("body {n}").as_bytes());
        assert_eq!(r.header("x-cb"), Some("distilled"));
        assert_eq!(r.header("X-CB"), Some("distilled"));
        assert_eq!(r.header("absent"), None);
    }
    assert_eq!(tracker.stats().opened, 1);
    let head = heads.lock().unwrap()[0].clone();
    assert_eq!(
        head,
        format!("GET /a/b.gif?x=1 HTTP/1.1\r\nHost: {addr}\r\nx-clusterbench-user: alice\r\n\r\n")
    );
}

#[tokio::test]
async fn a_proxy_gets_the_absolute_form() {
    let (proxy, heads) = server(Arc::new(|_, _| (ok("x"), false))).await;
    let tracker = Arc::new(ConnectionTracker::default());
    let c = Client::new(
        HttpClient {
            user_header: String::new(),
            ..HttpClient::default()
        },
        Route::Proxy(vec![proxy]),
        tracker,
    );
    c.get("http://origin.example:8080/p.html", "bob", 0)
        .await
        .unwrap();
    assert_eq!(
        heads.lock().unwrap()[0],
        "GET http://origin.example:8080/p.html HTTP/1.1\r\nHost: origin.example:8080\r\n\r\n"
    );
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_are_decoded() {
    let (addr, _) = server(Arc::new(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
            false,
        )
    }))
    .await;
    let (c, tracker) = client(HttpClient::default());
    for i in 0..2 {
        let r = c.get(&format!("http://{addr}/c"), "", i).await.unwrap();
        assert_eq!(&r.body[..], b"hello world");
    }
    assert_eq!(
        tracker.stats().opened,
        1,
        "chunked responses keep the connection"
    );
}

#[tokio::test]
async fn a_body_to_the_close_and_http_1_0_responses_end_the_connection() {
    let (addr, _) = server(Arc::new(|n, _| {
        if n % 2 == 0 {
            (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true)
        } else {
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                false,
            )
        }
    }))
    .await;
    let (c, tracker) = client(HttpClient::default());
    let r = c.get(&format!("http://{addr}/"), "", 0).await.unwrap();
    assert_eq!(&r.body[..], b"until the end");
    let r = c.get(&format!("http://{addr}/"), "", 1).await.unwrap();
    assert_eq!(&r.body[..], b"ok");
    c.get(&format!("http://{addr}/"), "", 2).await.unwrap();
    assert_eq!(tracker.stats().opened, 3, "neither could be reused");
}

#[tokio::test]
async fn interim_responses_are_skipped_and_204_has_no_body() {
    let (addr, _) = server(Arc::new(|n, _| {
        if n == 0 {
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz".to_vec(),
                false,
            )
        } else {
            (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false)
        }
    }))
    .await;
    let (c, tracker) = client(HttpClient::default());
    let r = c.get(&format!("http://{addr}/"), "", 0).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"z"[..]));
    let r = c.get(&format!("http://{addr}/"), "", 1).await.unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(tracker.stats().opened, 1);
}

#[tokio::test]
async fn a_kept_connection_the_server_closed_is_retried_once_on_a_new_one() {
    // Every connection answers one request and closes without saying so.
    let (addr, heads) = server(Arc::new(|n, _| (ok(&n.to_string()), true))).await;
    let (c, tracker) = client(HttpClient::default());
    for i in 0..3 {
        c.get(&format!("http://{addr}/"), "", i).await.unwrap();
    }
    assert_eq!(tracker.stats().opened, 3);
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn per_request_connections_ask_the_server_to_close() {
    let (addr, heads) = server(Arc::new(|_, _| (ok("x"), false))).await;
    let (c, tracker) = client(HttpClient {
        connection: HttpConnection::PerRequest,
        ..HttpClient::default()
    });
    for i in 0..2 {
        c.get(&format!("http://{addr}/"), "", i).await.unwrap();
    }
    assert_eq!(tracker.stats().opened, 2);
    assert!(heads.lock().unwrap()[0].contains("\r\nConnection: close\r\n"));
}

#[tokio::test]
async fn broken_oversized_and_silent_servers_are_errors_of_their_kind() {
    let (addr, _) = server(Arc::new(|_, head| {
        let answer: Vec<u8> = if head.starts_with("GET /garbage") {
            b"HTTP/9 OK sure\r\n\r\n".to_vec()
        } else if head.starts_with("GET /bigchunks") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n".to_vec()
        } else if head.starts_with("GET /big") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec()
        } else if head.starts_with("GET /two-lengths") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec()
        } else if head.starts_with("GET /endless-head") {
            format!("HTTP/1.1 200 OK\r\nX-Long: {}", "v".repeat(70_000)).into_bytes()
        } else if head.starts_with("GET /many-fields") {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..500 {
                h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            h.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            h
        } else if head.starts_with("GET /short") {
            return (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
                true,
            );
        } else {
            // Silence.
            Vec::new()
        };
        (answer, false)
    }))
    .await;
    let (c, _) = client(HttpClient {
        body_bytes_max: 100,
        timeout_ms: 500,
        connection: HttpConnection::PerRequest,
        ..HttpClient::default()
    });
    let get = |path: &'static str| {
        let c = &c;
        async move { c.get(&format!("http://{addr}{path}"), "", 0).await }
    };
    assert_eq!(get("/garbage").await.unwrap_err().kind(), "io");
    assert_eq!(get("/big").await.unwrap_err(), HttpError::TooLarge(100));
    assert_eq!(
        get("/bigchunks").await.unwrap_err(),
        HttpError::TooLarge(100)
    );
    assert_eq!(get("/two-lengths").await.unwrap_err().kind(), "io");
    let e = get("/endless-head").await.unwrap_err();
    assert!(e.to_string().contains("head over 65536 bytes"), "{e}");
    let e = get("/many-fields").await.unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
    assert_eq!(get("/short").await.unwrap_err().kind(), "io");
    assert_eq!(get("/silent").await.unwrap_err(), HttpError::Timeout);
    // A URL that would break the request line never reaches the server.
    assert_eq!(
        c.get(&format!("http://{addr}/a b"), "", 0)
            .await
            .unwrap_err()
            .kind(),
        "bad url"
    );
}
