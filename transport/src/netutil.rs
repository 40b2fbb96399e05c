//! The accept loop shared by shoal's TCP servers (Raft RPC, join): a connection cap taken
//! before any TLS work, a pause instead of a spin on accept errors, and every connection task
//! owned by the loop, so dropping the loop's task closes them all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Pause after a failed accept (ECONNABORTED, file descriptors exhausted) before retrying.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Counters the loop reports to.
pub trait AcceptCounters: Send + Sync + 'static {
    fn accepted(&self);
    fn over_capacity(&self);
}

/// Accepts connections forever, serving at most `max_connections` at once; connections past
/// the cap are closed at once and counted. `what` names the server in logs.
pub async fn serve_capped<C, F, Fut>(listener: TcpListener, max_connections: usize, what: &'static str, counters: Arc<C>, serve: F)
where
    C: AcceptCounters,
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.over_capacity();
            tracing::debug!(%peer_addr, server = what, "connection refused: connection cap reached");
            drop(tcp);
            continue;
        };
        counters.accepted();
        let connection = serve(tcp, peer_addr);
        connections.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}
