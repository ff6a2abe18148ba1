//! The admin API's core, the same in every process of every service: bearer-token protection,
//! `GET /metrics` (Prometheus text) and `GET`/`POST`/`DELETE /faults`. A service adds its own
//! routes (`/status` and the rest) with [`router`] and serves the result with [`serve`].
//!
//! Every request must carry `Authorization: Bearer <admin_token>`; anything else gets 401, and an
//! empty token refuses everything. The API only reads and sets process state; it never blocks a
//! client's session.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::core::faults::{FaultSwitch, Faults, FaultsPatch};

/// What the core routes need of a process.
#[derive(Clone)]
pub struct AdminCore {
    /// The bearer token requests must present.
    pub token: String,
    pub faults: Arc<FaultSwitch>,
    /// Called with the faults in force after every change, so the service can apply what its
    /// parts read themselves (a store's disk slowdown, say).
    pub on_faults: Arc<dyn Fn(&Faults) + Send + Sync>,
    /// The process's metrics in Prometheus text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// `service`'s routes (its state already applied) with `/metrics` and `/faults` added, and every
/// route behind the bearer token.
pub fn router(core: AdminCore, service: Router) -> Router {
    let token = Arc::new(core.token.clone());
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .with_state(core);
    service
        .merge(routes)
        .layer(middleware::from_fn_with_state(token, require_token))
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("admin API stopped: {e}");
    }
}

/// A 400 with `{"error": ...}`.
pub fn bad_request(error: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error.into() })),
    )
        .into_response()
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
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

async fn metrics(State(core): State<AdminCore>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (core.metrics)(),
    )
}

async fn get_faults(State(core): State<AdminCore>) -> Json<Faults> {
    Json(core.faults.get())
}

async fn set_faults(State(core): State<AdminCore>, body: axum::body::Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid faults body: {e}")),
    };
    match core.faults.get().patched(&patch) {
        Ok(next) => {
            apply(&core, next.clone());
            Json(next).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn clear_faults(State(core): State<AdminCore>) -> Json<Faults> {
    apply(&core, Faults::default());
    Json(Faults::default())
}

fn apply(core: &AdminCore, faults: Faults) {
    tracing::info!(?faults, "faults changed");
    (core.on_faults)(&faults);
    core.faults.set(faults);
}
