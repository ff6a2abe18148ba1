//! placeholder
use std::sync::Arc;
use tokio::net::TcpListener;
use crate::node::{Context, Endpoints};
pub async fn serve(_l: TcpListener, _ctx: Arc<Context>, _e: Endpoints) {}
