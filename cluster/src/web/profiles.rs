//! The profile database: each user's customization (JPEG quality, scale, which transforms are on,
//! the toolbar) in an embedded ACID database (redb) in one process — the one piece of hard state
//! in SNS. A `PUT` is answered only after its transaction is committed and synced, so `kill -9`
//! of the process after the answer loses nothing. Front ends read profiles (and cache them for
//! `front_end.profile_ttl_ms`).
//!
//! Routes, on the admin API (bearer token): `GET /profiles/USER` (the stored profile, or the
//! default with `"stored": false`), `PUT /profiles/USER` with a profile as JSON (every field
//! optional, unknown fields refused, values checked).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::process::{Bound, Process, ProcessArgs};
use super::proto::Endpoints;
use super::transform::Profile;
use crate::core::admin::bad_request;

const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// Longest user name.
pub const USER_BYTES_MAX: usize = 256;
/// Largest profile body.
pub const PROFILE_BYTES_MAX: usize = 4096;

/// Whether `user` is a user name: 1 to [`USER_BYTES_MAX`] of `a-z 0-9 . _ - @`.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= USER_BYTES_MAX
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b))
}

/// The profile file of a web cluster.
pub fn database_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("profiles.redb")
}

/// Starts the profile database process; returns where it listens.
pub async fn start(
    args: ProcessArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Endpoints> {
    use anyhow::Context as _;
    let process = Process::new(&args, shutdown);
    std::fs::create_dir_all(&args.config.data_dir)
        .with_context(|| format!("creating {}", args.config.data_dir.display()))?;
    let path = database_path(&args.config.data_dir);
    let db = tokio::task::spawn_blocking(move || {
        let db = Database::create(&path).with_context(|| format!("opening {}", path.display()))?;
        // The table exists from the start, so reads never meet a missing table.
        let txn = db.begin_write()?;
        txn.open_table(PROFILES)?;
        txn.commit()?;
        anyhow::Ok(db)
    })
    .await??;
    let db = Arc::new(db);
    let bound = Bound::new(args.host, None, None).await?;
    let (admin, endpoints) = (bound.admin, bound.endpoints);
    let routes = Router::new()
        .route("/status", get(status))
        .route("/profiles/{user}", get(get_profile).put(put_profile))
        .with_state((process.clone(), db));
    process.serve_admin(admin, routes, Arc::new(|| "# EOF\n".to_string()));
    Ok(endpoints)
}

type AppState = (Arc<Process>, Arc<Database>);

async fn status(State((process, db)): State<AppState>) -> Response {
    let count = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(PROFILES).map_err(|e| e.to_string())?;
        redb::ReadableTableMetadata::len(&table).map_err(|e| e.to_string())
    })
    .await;
    Json(serde_json::json!({
        "common": process.common_status(),
        "profiles": count.ok().and_then(Result::ok),
    }))
    .into_response()
}

async fn get_profile(State((_, db)): State<AppState>, Path(user): Path<String>) -> Response {
    let user = user.to_ascii_lowercase();
    if !valid_user(&user) {
        return bad_request(format!("{user:?} is not a user name"));
    }
    let key = user.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(PROFILES).map_err(|e| e.to_string())?;
        let value = table.get(key.as_str()).map_err(|e| e.to_string())?;
        Ok(value.map(|v| v.value().to_vec()))
    })
    .await;
    match stored {
        Ok(Ok(Some(bytes))) => match serde_json::from_slice::<Profile>(&bytes) {
            Ok(profile) => Json(serde_json::json!({
                "user": user, "stored": true, "profile": profile
            }))
            .into_response(),
            Err(e) => server_error(format!("the stored profile of {user} is unreadable: {e}")),
        },
        Ok(Ok(None)) => Json(serde_json::json!({
            "user": user, "stored": false, "profile": Profile::default()
        }))
        .into_response(),
        Ok(Err(e)) => server_error(e),
        Err(e) => server_error(e.to_string()),
    }
}

async fn put_profile(
    State((_, db)): State<AppState>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let user = user.to_ascii_lowercase();
    if !valid_user(&user) {
        return bad_request(format!("{user:?} is not a user name"));
    }
    if body.len() > PROFILE_BYTES_MAX {
        return bad_request(format!("a profile is at most {PROFILE_BYTES_MAX} bytes"));
    }
    let profile: Profile = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid profile: {e}")),
    };
    if let Err(e) = profile.validate() {
        return bad_request(e);
    }
    let bytes = serde_json::to_vec(&profile).unwrap_or_default();
    let key = user.clone();
    // Committed (and synced: redb's default durability) before the answer.
    let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(PROFILES).map_err(|e| e.to_string())?;
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    })
    .await;
    match written {
        Ok(Ok(())) => Json(serde_json::json!({ "user": user, "profile": profile })).into_response(),
        Ok(Err(e)) => server_error(e),
        Err(e) => server_error(e.to_string()),
    }
}

fn server_error(error: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        assert!(valid_user("user7"));
        assert!(valid_user("a.b-c_d@example.test"));
        assert!(!valid_user(""));
        assert!(!valid_user("User"));
        assert!(!valid_user("a/b"));
        assert!(!valid_user(&"a".repeat(USER_BYTES_MAX + 1)));
    }
}
