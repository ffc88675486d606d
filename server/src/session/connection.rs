//! The socket as a session sees it: inbound frames, and the one outbound path.
//!
//! Every byte a session sends (welcome, replies, replay pages, live notifications, pings, the
//! close frame) goes through [`Connection`], which gives it two guarantees:
//!
//! - **A close request wins.** Each write first checks the connection's close request and, if
//!   the write cannot complete at once, races it against the request. A client that stopped
//!   reading therefore cannot keep a session from acting on the heartbeat, the slow-consumer
//!   rule or shutdown; the close frame then gets [`CLOSE_TIMEOUT`] to leave.
//! - **Writes have a deadline.** A write that makes no progress for the configured write
//!   timeout fails (the listener's socket wrapper enforces it, see `listener::Io`), which ends
//!   the session and frees its slot.
//!
//! The write is polled once before the close request is: a write that completes at once (the
//! common case, with room in the socket buffer) costs no waiter registration.

use super::Stop;
use crate::hub::Conn;
use app::protocol::{close_code, ServerFrame};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// How long a close frame may take to leave before the socket is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a session runs over: axum's `WebSocket` in production, channels in unit tests.
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

pub struct Connection<S> {
    socket: S,
    conn: Arc<Conn>,
    /// Frames and payload bytes fed since the last flush, for the write metrics.
    fed_frames: u32,
    fed_bytes: u32,
}

impl<S: Socket> Connection<S> {
    pub fn new(socket: S, conn: Arc<Conn>) -> Self {
        Self {
            socket,
            conn,
            fed_frames: 0,
            fed_bytes: 0,
        }
    }

    /// The next inbound message; `None` when the peer is gone.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        self.socket.next().await
    }

    /// Hands `msg` to the socket's write buffer (it leaves on `flush`, or earlier when the
    /// buffer is full).
    pub fn feed(&mut self, msg: Message) -> impl Future<Output = Result<(), Stop>> + '_ {
        self.count(&msg);
        guarded(&self.conn, self.socket.feed(msg))
    }

    /// Sends what was fed, and counts it (frames per flush, bytes out).
    pub fn flush(&mut self) -> impl Future<Output = Result<(), Stop>> + '_ {
        self.counted();
        guarded(&self.conn, self.socket.flush())
    }

    /// Adds a frame to the batch being fed (kept out of the futures: every idle connection
    /// carries their state).
    fn count(&mut self, msg: &Message) {
        let len = match msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(_) => 0,
        };
        self.fed_frames += 1;
        self.fed_bytes = self.fed_bytes.saturating_add(len as u32);
    }

    /// Records the batch a flush sends: handed to the socket (a write that then fails ends
    /// the connection).
    fn counted(&mut self) {
        if self.fed_frames > 0 {
            let m = crate::metrics::hot();
            m.write_batch.record(self.fed_frames);
            m.sent_bytes.increment(u64::from(self.fed_bytes));
            self.fed_frames = 0;
            self.fed_bytes = 0;
        }
    }

    /// Encodes, feeds and flushes one frame.
    pub async fn send(&mut self, frame: &ServerFrame) -> Result<(), Stop> {
        self.feed(encode(frame)).await?;
        self.flush().await
    }

    /// Sends the close frame for `code` (reason from the protocol's table), giving up after
    /// [`CLOSE_TIMEOUT`]: a client that does not read cannot delay the end of its session.
    pub async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(close_code::reason(code)),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(Message::Close(Some(frame))))
            .await;
    }
}

/// Serializes a frame the session composes itself (notifications come pre-encoded).
pub fn encode(frame: &ServerFrame) -> Message {
    // Plain structs of strings and integers always serialize.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(frame).unwrap_or_default(),
    ))
}

/// Runs a socket operation unless (or until) the connection is asked to close.
async fn guarded<F>(conn: &Conn, op: F) -> Result<(), Stop>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    if let Some(code) = conn.close_code() {
        return Err(Stop::Close(code));
    }
    let mut op = std::pin::pin!(op);
    if let Poll::Ready(r) = futures::poll!(op.as_mut()) {
        return r.map_err(write_error);
    }
    // The socket is full. Boxed: the race against a close request happens only for a blocked
    // write, and its waiter need not take room in every connection's task.
    Box::pin(async move {
        tokio::select! {
            biased;
            _ = conn.closed() => Err(Stop::Close(conn.close_code().unwrap_or(close_code::GOING_AWAY))),
            r = op => r.map_err(write_error),
        }
    })
    .await
}

/// A failed write: the peer is gone, or the write deadline passed. Nothing more can be sent.
fn write_error(e: axum::Error) -> Stop {
    tracing::debug!(error = %e, "write failed");
    Stop::Gone
}
