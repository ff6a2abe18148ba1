//! The mail node's admin API: the core routes (`/metrics`, `/faults`, the bearer token; see
//! `core::admin`) and the mail routes:
//!
//! - `GET /status`: id, membership view, buckets managed, endpoints, load figures, disk model,
//!   active faults.
//! - `PUT /users/{user}` with `{"password": "..."}` creates a user or changes its password (a
//!   replicated profile); `GET /users/{user}` says whether the user exists and how.
//! - `GET /mailboxes/{user}`: this node's own fragment of a mailbox.
//!
//! It only reads node state; it never blocks a mail session.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::core::admin::{bad_request, AdminCore};
use crate::core::faults::Faults;
use crate::mail::config::DiskConfig;
use crate::mail::metrics::Metrics;
use crate::mail::node::{Context, Endpoints};
use crate::mail::store::StoreStats;

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
    /// User-map buckets this node manages in the current view.
    pub buckets_managed: u32,
    pub buckets: u32,
    pub faults: Faults,
    pub replication: Replication,
    pub placement: String,
    pub spread: u32,
    pub endpoints: Endpoints,
    pub domain: String,
    pub uptime_s: f64,
    pub load: Load,
    pub disk: Disk,
}

/// The membership view this node is in.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct View {
    pub epoch: u64,
    pub leader: u32,
    pub members: Vec<u32>,
    /// Views this node has installed since it started.
    pub changes: u64,
    /// Unix milliseconds when the current view was installed.
    pub installed_at_ms: i64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Replication {
    pub factor: u32,
    /// Replica pushes this node has logged and not yet had acknowledged.
    pub backlog: u64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Load {
    pub connections_open: i64,
    /// Changes waiting for the mail log (the node's pending disk I/O).
    pub pending_io: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Bytes clients have the node buffering (SMTP DATA, IMAP literals), its cap, and the
    /// messages and literals refused for want of room so far.
    #[serde(default)]
    pub buffered_bytes: u64,
    #[serde(default)]
    pub buffered_bytes_max: u64,
    #[serde(default)]
    pub buffer_refusals: u64,
    /// Expunge tombstones kept (retired once every replica has the expunge).
    #[serde(default)]
    pub tombstones: u64,
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
    let shutdown = ctx.shutdown.clone();
    let core = AdminCore {
        token: ctx.config.admin_token.clone(),
        faults: ctx.faults.clone(),
        on_faults: {
            let ctx = ctx.clone();
            Arc::new(move |f: &Faults| ctx.store.set_disk_slowdown(f.disk_slowdown))
        },
        metrics: {
            let ctx = ctx.clone();
            Arc::new(move || ctx.metrics.encode())
        },
    };
    let state = AppState { ctx, endpoints };
    let mail = Router::new()
        .route("/status", get(status))
        .route("/mailboxes/{user}", get(mailbox))
        .route("/users/{user}", get(get_user).put(put_user))
        .with_state(state);
    crate::core::admin::serve(listener, crate::core::admin::router(core, mail), shutdown).await;
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
    let info = ctx.view.borrow().clone();
    Json(Status {
        id: ctx.config.id,
        view: View {
            epoch: info.view.epoch,
            leader: info.view.leader,
            members: info.view.members.iter().copied().collect(),
            changes: info.changes,
            installed_at_ms: info.installed_at_ms,
        },
        buckets_managed: info.derived.buckets_of(ctx.config.id).len() as u32,
        buckets: ctx.config.cluster.buckets,
        faults: ctx.faults.get(),
        replication: Replication {
            factor: ctx.config.cluster.replication,
            backlog: ctx.store.push_backlog(),
        },
        placement: ctx.config.cluster.placement.name().to_string(),
        spread: ctx.config.cluster.spread,
        endpoints: state.endpoints,
        domain: ctx.config.domain.clone(),
        uptime_s: ctx.started.elapsed().as_secs_f64(),
        load: Load {
            connections_open,
            pending_io: stats.pending_ops,
            mailboxes: stats.mailboxes,
            messages: stats.messages,
            bytes: stats.bytes,
            buffered_bytes: ctx.buffers.used() as u64,
            buffered_bytes_max: ctx.buffers.max() as u64,
            buffer_refusals: ctx.buffers.refused(),
            tombstones: stats.tombstones,
        },
        disk: {
            let (syncs_per_s, latency_ms) = match ctx.config.disk {
                DiskConfig::Real => (None, None),
                DiskConfig::Modelled {
                    syncs_per_s,
                    latency_ms,
                    ..
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

/// This node's own fragment of one user's mailbox (not the merged mailbox clients see).
async fn mailbox(
    State(state): State<AppState>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Json<serde_json::Value> {
    let user = user.to_ascii_lowercase();
    let snapshot = state.ctx.store.snapshot(&user);
    let uids: Vec<u32> = snapshot.messages.iter().map(|m| m.uid).collect();
    let flags: serde_json::Map<String, serde_json::Value> = snapshot
        .messages
        .iter()
        .map(|m| {
            (
                m.uid.to_string(),
                m.flags.names().collect::<Vec<_>>().into(),
            )
        })
        .collect();
    Json(serde_json::json!({
        "user": user,
        "messages": uids.len(),
        "uids": uids,
        "flags": flags,
        "expunged": state.ctx.store.expunged(&user).len(),
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    password: String,
}

/// Creates a user or changes its password; the profile is replicated to every node.
async fn put_user(
    State(state): State<AppState>,
    axum::extract::Path(user): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let user = user.to_ascii_lowercase();
    if !crate::mail::directory::valid_user_name(&user) {
        return bad_request(format!(
            "user: {user:?} is not a user name (1 to {} of a-z 0-9 . _ -)",
            crate::mail::directory::USER_BYTES_MAX
        ));
    }
    let profile: ProfileBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid user body: {e}")),
    };
    let password = profile.password;
    if password.is_empty()
        || password.len() > crate::mail::store::PASSWORD_BYTES_MAX
        || password.contains(['\r', '\n', '\0'])
    {
        return bad_request(format!(
            "password: must be 1 to {} bytes without CR, LF or NUL",
            crate::mail::store::PASSWORD_BYTES_MAX
        ));
    }
    match state.ctx.mail.set_profile(&user, &password).await {
        Ok(targets) => {
            Json(serde_json::json!({ "user": user, "replicating_to": targets })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn get_user(
    State(state): State<AppState>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Json<serde_json::Value> {
    let user = user.to_ascii_lowercase();
    Json(serde_json::json!({
        "user": user,
        "exists": state.ctx.directory.exists(&user),
    }))
}
