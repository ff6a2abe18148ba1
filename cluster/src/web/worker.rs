//! A worker (a TACC distiller): a stateless process serving one queue of jobs of its class, one
//! at a time, like one CPU. A job is an object and a profile; the answer is the distilled object
//! (JPEG scaled and recompressed, GIF turned into JPEG, HTML munged), "pass it through" (too small,
//! the transform off, or nothing gained), or why not. The aggregation worker fetches several
//! objects from an origin and composes one page.
//!
//! The modelled CPU (`workers.cpu = { model = "modelled", ms_per_kb }`) does the real transform
//! and then holds the job until the model's time for its input has passed since the job started,
//! so that N workers on two real cores behave like N machines. A transform that fails (a corrupt
//! image) answers 422 and the worker goes on; one that panics is caught the same way: the worker
//! never goes down with its input. The queue is bounded (`workers.queue_max`): over it, 503.
//!
//! Routes on the `http` endpoint: `POST /distill` (body: the object; `Content-Type`: its type;
//! `X-Cb-Profile`: the profile as JSON), `POST /aggregate` (body: `{"urls": [...]}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use super::config::CpuModel;
use super::corpus::ContentType;
use super::http::{self, Body, ServerLimits};
use super::process::{Bound, Process, ProcessArgs};
use super::proto::{Endpoints, WorkerClass};
use super::transform::{self, Distilled, Limits, Profile};

/// The header carrying the profile of a job.
pub const PROFILE_HEADER: &str = "x-cb-profile";
/// Most URLs one aggregation job fetches.
pub const AGGREGATE_URLS_MAX: usize = 16;

/// What a job asks.
enum Work {
    Distill {
        content_type: ContentType,
        profile: Profile,
        body: Bytes,
    },
    Aggregate {
        urls: Vec<String>,
    },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Response<Body>>,
}

struct Worker {
    process: Arc<Process>,
    class: WorkerClass,
    queued: AtomicU64,
    completed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    jobs: mpsc::Sender<Job>,
}

/// Starts a worker of `class`; returns where it listens.
pub async fn start(
    args: ProcessArgs,
    class: WorkerClass,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Endpoints> {
    let process = Process::new(&args, shutdown.clone());
    let bound = Bound::new(args.host, Some("jobs"), Some("beacons")).await?;
    let (admin, endpoints) = (bound.admin, bound.endpoints);
    let jobs_l = bound.http.expect("bound");
    let beacons = bound.beacons.expect("bound");
    let queue_max = args.config.workers.queue_max as usize;
    let (tx, rx) = mpsc::channel(queue_max);
    let worker = Arc::new(Worker {
        process: process.clone(),
        class,
        queued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        jobs: tx,
    });
    tokio::spawn(serve_jobs(worker.clone(), rx));
    let handler_worker = worker.clone();
    tokio::spawn(http::serve(
        jobs_l,
        ServerLimits {
            connections_max: 4096,
            header_bytes_max: 16 * 1024,
        },
        move |request, _peer| {
            let worker = handler_worker.clone();
            async move { accept(worker, request).await }
        },
        shutdown.clone(),
    ));
    process.listen_beacons(beacons.clone());
    let reporter = worker.clone();
    process.report_loop(beacons, move || {
        let mut r = reporter.process.report(endpoints);
        r.queue = reporter.queued.load(Ordering::Relaxed) as u32;
        r.completed = reporter.completed.load(Ordering::Relaxed);
        r.refused = reporter.refused.load(Ordering::Relaxed);
        r
    });
    let metrics_worker = worker.clone();
    let routes = Router::new()
        .route("/status", get(status))
        .with_state(worker.clone());
    process.serve_admin(
        admin,
        routes,
        Arc::new(move || {
            let w = &metrics_worker;
            format!(
                "# TYPE clusterbench_worker_jobs counter\nclusterbench_worker_jobs_total {}\n\
                 # TYPE clusterbench_worker_refused counter\nclusterbench_worker_refused_total {}\n\
                 # TYPE clusterbench_worker_queue gauge\nclusterbench_worker_queue {}\n# EOF\n",
                w.completed.load(Ordering::Relaxed),
                w.refused.load(Ordering::Relaxed),
                w.queued.load(Ordering::Relaxed)
            )
        }),
    );
    Ok(endpoints)
}

/// Takes a job off the wire and queues it, or refuses it.
async fn accept(worker: Arc<Worker>, request: Request<hyper::body::Incoming>) -> Response<Body> {
    if request.method() != Method::POST {
        return http::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /distill or /aggregate",
        );
    }
    let config = &worker.process.config;
    let path = request.uri().path().to_string();
    let work = match (path.as_str(), worker.class) {
        ("/distill", WorkerClass::Jpeg | WorkerClass::Gif | WorkerClass::Html) => {
            let content_type = request
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(ContentType::from_mime)
                .unwrap_or(ContentType::Other);
            let profile = match request
                .headers()
                .get(PROFILE_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some(json) => match serde_json::from_str::<Profile>(json) {
                    Ok(p) => p,
                    Err(e) => {
                        return http::error(StatusCode::BAD_REQUEST, format!("bad profile: {e}"))
                    }
                },
                None => Profile::default(),
            };
            let body =
                match http::read_body(request.into_body(), config.workers.input_bytes_max).await {
                    Ok(b) => b,
                    Err(e) => return http::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                };
            Work::Distill {
                content_type,
                profile,
                body,
            }
        }
        ("/aggregate", WorkerClass::Aggregate) => {
            let body = match http::read_body(request.into_body(), 64 * 1024).await {
                Ok(b) => b,
                Err(e) => return http::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ask {
                urls: Vec<String>,
            }
            match serde_json::from_slice::<Ask>(&body) {
                Ok(a) if !a.urls.is_empty() && a.urls.len() <= AGGREGATE_URLS_MAX => {
                    Work::Aggregate { urls: a.urls }
                }
                Ok(_) => {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        format!("give 1 to {AGGREGATE_URLS_MAX} urls"),
                    )
                }
                Err(e) => return http::error(StatusCode::BAD_REQUEST, format!("bad job: {e}")),
            }
        }
        _ => {
            return http::error(
                StatusCode::NOT_FOUND,
                format!("a {} worker does not serve {path}", worker.class.name()),
            )
        }
    };
    let (reply, answer) = oneshot::channel();
    // Count it before it is queued, so a report never shows fewer than are waiting.
    worker.queued.fetch_add(1, Ordering::Relaxed);
    if worker.jobs.try_send(Job { work, reply }).is_err() {
        worker.queued.fetch_sub(1, Ordering::Relaxed);
        worker.refused.fetch_add(1, Ordering::Relaxed);
        return http::error(StatusCode::SERVICE_UNAVAILABLE, "queue full");
    }
    answer
        .await
        .unwrap_or_else(|_| http::error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))
}

/// Serves the queue, one job at a time.
async fn serve_jobs(worker: Arc<Worker>, mut jobs: mpsc::Receiver<Job>) {
    let mut shutdown = worker.process.shutdown.clone();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = http::stopped(&mut shutdown) => return,
        };
        let Some(job) = job else { return };
        let started = Instant::now();
        let (response, input_bytes) = run(&worker, job.work).await;
        pace(&worker, started, input_bytes).await;
        worker.completed.fetch_add(1, Ordering::Relaxed);
        worker.queued.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(response);
    }
}

/// Holds the job until the CPU model's time for `input_bytes` has passed since `started` (an
/// injected CPU slowdown stretches real and modelled time alike).
async fn pace(worker: &Worker, started: Instant, input_bytes: usize) {
    let slowdown = worker.process.faults.cpu_slowdown();
    let spent = started.elapsed();
    let target = match worker.process.config.workers.cpu {
        CpuModel::Real => spent.mul_f64(slowdown),
        CpuModel::Modelled {
            ms_per_kb,
            latency_ms,
        } => crate::core::device::DeviceModel {
            units_per_s: 1000.0 / ms_per_kb,
            latency_ms,
        }
        .batch_time(input_bytes as f64 / 1024.0, slowdown),
    };
    if let Some(rest) = target.checked_sub(spent) {
        tokio::time::sleep(rest).await;
    }
}

/// Does one job's work; returns the answer and the input's size (what the CPU model charges).
async fn run(worker: &Worker, work: Work) -> (Response<Body>, usize) {
    match work {
        Work::Distill {
            content_type,
            profile,
            body,
        } => {
            let size = body.len();
            let config = &worker.process.config.workers;
            let limits = Limits {
                input_bytes_max: config.input_bytes_max,
                pixels_max: config.pixels_max,
            };
            // On a blocking thread: a transform is CPU work, and a panic in a decoder is caught
            // at the join instead of taking the worker down.
            let done = tokio::task::spawn_blocking(move || {
                transform::distill(content_type, &body, &profile, &limits)
            })
            .await;
            let response = match done {
                Ok(Ok(Distilled::Transformed {
                    bytes,
                    content_type,
                })) => {
                    let mut r = http::response(StatusCode::OK, content_type.mime(), bytes);
                    r.headers_mut().insert(
                        "x-cb-distilled",
                        hyper::header::HeaderValue::from_static("1"),
                    );
                    r
                }
                Ok(Ok(Distilled::PassThrough)) => {
                    http::response(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
                }
                Ok(Err(e)) => {
                    worker.failed.fetch_add(1, Ordering::Relaxed);
                    http::error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                }
                Err(e) => {
                    worker.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("a transform panicked: {e}");
                    http::error(StatusCode::INTERNAL_SERVER_ERROR, "the transform failed")
                }
            };
            (response, size)
        }
        Work::Aggregate { urls } => aggregate(worker, urls).await,
    }
}

/// Fetches each URL from an allowed origin and composes one page listing them.
async fn aggregate(worker: &Worker, urls: Vec<String>) -> (Response<Body>, usize) {
    let config = &worker.process.config;
    let mut page = String::from(
        "<!DOCTYPE html><html><head><title>aggregated by clusterbench</title></head><body>\n",
    );
    let mut total = 0usize;
    for url in &urls {
        let Ok(uri) = url.parse::<hyper::Uri>() else {
            return (
                http::error(StatusCode::BAD_REQUEST, format!("{url:?} is not a URL")),
                total,
            );
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if uri.scheme_str() != Some("http") || !config.origin_allowed(&authority) {
            return (
                http::error(
                    StatusCode::FORBIDDEN,
                    format!("{url} is not on an allowed origin"),
                ),
                total,
            );
        }
        let request = match Request::get(uri).body(Body::default()) {
            Ok(r) => r,
            Err(e) => return (http::error(StatusCode::BAD_REQUEST, e.to_string()), total),
        };
        let fetched = worker
            .process
            .client
            .call(
                request,
                Duration::from_millis(config.front_end.origin_timeout_ms),
                config.front_end.body_bytes_max,
            )
            .await;
        match fetched {
            Ok(f) if f.status.is_success() => {
                total += f.body.len();
                let kind = f
                    .headers
                    .get(hyper::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let escaped = html_escape(url);
                if kind.starts_with("image/") {
                    page.push_str(&format!(
                        "<div class=\"cb-part\"><img src=\"{escaped}\"></div>\n"
                    ));
                } else {
                    page.push_str(&format!(
                        "<div class=\"cb-part\"><a href=\"{escaped}\">{escaped}</a> ({} bytes)</div>\n",
                        f.body.len()
                    ));
                }
            }
            Ok(f) => {
                return (
                    http::error(StatusCode::BAD_GATEWAY, format!("{url}: {}", f.status)),
                    total,
                )
            }
            Err(e) => {
                return (
                    http::error(StatusCode::BAD_GATEWAY, format!("{url}: {e}")),
                    total,
                )
            }
        }
    }
    page.push_str("</body></html>\n");
    (
        http::response(StatusCode::OK, "text/html; charset=utf-8", page),
        total,
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status(State(worker): State<Arc<Worker>>) -> Json<serde_json::Value> {
    let cpu = worker.process.config.workers.cpu;
    Json(serde_json::json!({
        "common": worker.process.common_status(),
        "class": worker.class,
        "queue": worker.queued.load(Ordering::Relaxed),
        "completed": worker.completed.load(Ordering::Relaxed),
        "refused": worker.refused.load(Ordering::Relaxed),
        "failed": worker.failed.load(Ordering::Relaxed),
        "cpu": cpu.name(),
        "cpu_model": cpu,
    }))
}
