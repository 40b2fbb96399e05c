//! The accept loop of the node's port: every connection is admitted (or closed at once)
//! before any TLS work, a failed accept pauses instead of spinning, and every connection
//! task is owned by the loop, so dropping the loop's task closes them all.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Pause after a failed accept (ECONNABORTED, file descriptors exhausted) before retrying.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections forever. `admit` decides at once whether a connection gets a place
/// (it counts and logs a refusal itself); an admitted connection is served with its place,
/// which it holds until it gives it back or ends. `what` names the server in logs.
pub async fn serve_admitted<A, P, F, Fut>(listener: TcpListener, what: &'static str, admit: A, serve: F)
where
    A: Fn(SocketAddr) -> Option<P>,
    F: Fn(TcpStream, SocketAddr, P) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as large as the live ones.
        while connections.try_join_next().is_some() {}
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, server = what, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(place) = admit(peer_addr) else {
            drop(tcp);
            continue;
        };
        connections.spawn(serve(tcp, peer_addr, place));
    }
}
