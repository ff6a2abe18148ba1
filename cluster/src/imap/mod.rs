//! placeholder: the IMAP front end is being written
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use crate::node::Context;
pub async fn serve(_stream: TcpStream, _peer: SocketAddr, _ctx: Arc<Context>) -> std::io::Result<()> { Ok(()) }
