//! Draining a node for a rolling restart.
//!
//! On SIGTERM (or [`crate::RunningServer::stop`]) a node:
//! 1. answers readiness with 503 and refuses new WebSocket upgrades (503, `Retry-After`), so
//!    the load balancer sends new clients elsewhere, while it keeps serving HTTP (publishes
//!    in flight and new ones are still acknowledged);
//! 2. tells each connected client to reconnect: close 1001, whose reason says "reconnect and
//!    resume", spread evenly over the drain window (`--drain-secs`), so that the clients of
//!    a restarted node arrive at the others over that window instead of in the same second
//!    (the browser client adds its own jitter on top);
//! 3. then stops accepting, lets every HTTP request in flight finish (the listener's graceful
//!    shutdown: an accepted publish is answered), and exits.
//!
//! A client that resumes from its last offset on another node loses nothing: the store holds
//! every acknowledged offset.

use crate::Shared;
use app::protocol::close_code;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Steps 1 and 2: marks the node draining and closes its sockets over `window`; returns once
/// every session has ended or the window (plus the time a close frame may take) has passed.
pub async fn drain(state: &Shared, window: Duration) {
    state.draining.store(true, Ordering::Release);
    let conns = state.hub.open_connections();
    let n = conns.len();
    if n == 0 {
        return;
    }
    tracing::info!(
        connections = n,
        window_ms = window.as_millis() as u64,
        "draining: telling clients to reconnect"
    );
    let start = Instant::now();
    for (i, conn) in conns.iter().enumerate() {
        // Evenly spaced: the first at once, the last just before the window ends.
        let at = start + window.mul_f64(i as f64 / n as f64);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        conn.close(close_code::GOING_AWAY);
    }
    // Sessions end as their close frames leave (each bounded by the close timeout).
    let deadline = Instant::now() + crate::session::CLOSE_TIMEOUT * 2;
    while state.hub.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
