//! The node's admin API: HTTP/JSON, bearer-token protected, bound to loopback unless configured
//! otherwise.
//!
//! - `GET /status`: id, membership view, endpoints, load figures, disk model.
//! - `GET /metrics`: Prometheus text format.
//!
//! Every request must carry `Authorization: Bearer <admin_token>`; anything else gets 401. The API
//! only reads node state; it never blocks a mail session.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::DiskConfig;
use crate::metrics::Metrics;
use crate::node::{Context, Endpoints};
use crate::store::StoreStats;

#[derive(Clone)]
struct AppState {
    ctx: Arc<Context>,
    endpoints: Endpoints,
}

/// The body of `GET /status`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub id: u32,
    pub view: View,
    pub endpoints: Endpoints,
    pub domain: String,
    pub uptime_s: f64,
    pub load: Load,
    pub disk: Disk,
}

/// The membership view this node is in. A single node is its own leader in epoch 1.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct View {
    pub epoch: u64,
    pub leader: u32,
    pub members: Vec<u32>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Load {
    pub connections_open: i64,
    /// Changes waiting for the mail log (the node's pending disk I/O).
    pub pending_io: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Disk {
    /// `real`: every change is written and fsynced before it is acknowledged; `modelled`: written,
    /// then held for the modelled device's time (see `DiskConfig`).
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub syncs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latency_ms: Option<f64>,
    pub segments: u64,
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, endpoints: Endpoints) {
    let mut shutdown = ctx.shutdown.clone();
    let state = AppState { ctx, endpoints };
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("admin API stopped: {e}");
    }
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = &state.ctx.config.admin_token;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if !token.is_empty() && p.as_bytes() == token.as_bytes() => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "missing or wrong bearer token"})),
        )
            .into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let ctx = &state.ctx;
    let stats: StoreStats = ctx.store.stats();
    let connections_open = ["smtp", "pop3", "imap"]
        .into_iter()
        .map(|p| {
            ctx.metrics
                .connections_open
                .get_or_create(&Metrics::protocol(p))
                .get()
        })
        .sum();
    Json(Status {
        id: ctx.config.id,
        view: View {
            epoch: 1,
            leader: ctx.config.id,
            members: vec![ctx.config.id],
        },
        endpoints: state.endpoints,
        domain: ctx.config.domain.clone(),
        uptime_s: ctx.started.elapsed().as_secs_f64(),
        load: Load {
            connections_open,
            pending_io: stats.pending_ops,
            mailboxes: stats.mailboxes,
            messages: stats.messages,
            bytes: stats.bytes,
        },
        disk: {
            let (syncs_per_s, latency_ms) = match ctx.config.disk {
                DiskConfig::Real => (None, None),
                DiskConfig::Modelled {
                    syncs_per_s,
                    latency_ms,
                } => (Some(syncs_per_s), Some(latency_ms)),
            };
            Disk {
                model: ctx.config.disk.name().into(),
                syncs_per_s,
                latency_ms,
                segments: stats.segments,
            }
        },
    })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.ctx.metrics.encode(),
    )
}
