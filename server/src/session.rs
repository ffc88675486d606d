//! One WebSocket connection: its subscriptions, its resume logic and its writer.
//!
//! A session is a single task (no reader/writer split, no per-connection timer) that waits on
//! three things: a close request from the hub, an inbound frame, and its outbound queue. When
//! the queue wakes it, it takes everything queued, feeds it all to the socket and flushes once,
//! so a burst leaves in one write instead of one syscall per frame.
//!
//! # Resume without gaps or duplicates
//! On `subscribe` the session first registers with the hub (from then on every broadcast lands
//! in its queue), and only then reads the store. The store puts a notification on the feed
//! only after it is readable, so every offset is either in that read or in the queue, and
//! possibly in both. Each subscription remembers the last offset it delivered and drops queued
//! notifications at or below it. The replay is written before the queue is drained, so the
//! client sees offsets strictly increasing by one (or an explicit `gap`/`reset`).

use crate::hub::{Conn, Outbound, Registration};
use crate::store::ReadQuery;
use crate::AppState;
use app::protocol::{close_code, validate_topic, ClientFrame, ErrorCode, Position, ServerFrame};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most queued frames written per flush; bounds the time between inbound polls.
const WRITE_BATCH: usize = 256;
/// Notifications read from the store per replay page.
const REPLAY_PAGE: usize = 256;
/// How long a close frame may take to leave before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

struct Subscription {
    slot: u32,
    topic: Arc<str>,
    /// The epoch `delivered` belongs to (a position is an epoch and an offset together).
    epoch: String,
    /// Last offset written to the client; queued notifications at or below it are dropped.
    delivered: u64,
}

/// A token bucket for inbound frames: `rate` per second, bursts of `2 * rate`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    last: Instant,
    /// Frames refused in a row; many in a row closes the connection.
    refused: u32,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            tokens: rate * 2.0,
            rate,
            last: Instant::now(),
            refused: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + add).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

enum Stop {
    /// The socket failed or the client went away: nothing more can be sent.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

pub struct Session {
    state: AppState,
    reg: Registration,
    subs: Vec<Subscription>,
    next_slot: u32,
    frames_seen: u64,
    limit: RateLimit,
}

impl Session {
    pub fn new(state: AppState, reg: Registration) -> Self {
        let limit = RateLimit::new(state.config.frames_per_sec);
        Self {
            state,
            reg,
            subs: Vec::new(),
            next_slot: 0,
            frames_seen: 0,
            limit,
        }
    }

    fn conn(&self) -> &Arc<Conn> {
        &self.reg.conn
    }

    /// Runs the connection to its end and unregisters it.
    pub async fn run(mut self, mut ws: WebSocket, mut rx: mpsc::Receiver<Outbound>) {
        let conn_id = self.conn().id;
        tracing::debug!(conn_id, "connected");
        let welcome = ServerFrame::Welcome {
            conn_id,
            max_frame_bytes: self.state.config.max_frame_bytes,
            heartbeat_ms: self.state.config.heartbeat_ms,
        };
        let mut stop = match send(&mut ws, &welcome).await {
            Ok(()) => self.serve(&mut ws, &mut rx).await,
            Err(stop) => stop,
        };
        if let Some(code) = self.conn().close_code() {
            stop = Stop::Close(code, reason(code));
        }
        if let Stop::Close(code, why) = stop {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(why),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
        }
        for sub in self.subs.drain(..) {
            self.state.hub.unsubscribe(&sub.topic, conn_id, sub.slot);
        }
        tracing::debug!(conn_id, "disconnected");
    }

    async fn serve(&mut self, ws: &mut WebSocket, rx: &mut mpsc::Receiver<Outbound>) -> Stop {
        let conn = self.conn().clone();
        // Grown by recv_many on first use: idle connections never pay for it.
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = conn.closed() => return Stop::Gone,
                inbound = ws.recv() => {
                    let msg = match inbound {
                        None => return Stop::Gone,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return inbound_error(e),
                    };
                    self.state.hub.touch(&conn);
                    // Boxed: handling a frame (subscribe, replay, publish) needs a large future,
                    // and every idle connection would otherwise carry its space in its task.
                    if let Err(stop) = Box::pin(self.on_message(ws, msg)).await {
                        return stop;
                    }
                }
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return Stop::Gone;
                    }
                    tokio::select! {
                        biased;
                        _ = conn.closed() => return Stop::Gone,
                        r = self.write_batch(ws, &mut batch) => if let Err(stop) = r { return stop },
                    }
                }
            }
        }
    }

    /// Feeds every queued frame the client still needs, then flushes once.
    async fn write_batch(
        &mut self,
        ws: &mut WebSocket,
        batch: &mut Vec<Outbound>,
    ) -> Result<(), Stop> {
        let mut fed = false;
        for item in batch.drain(..) {
            let msg = match item {
                Outbound::Ping => Message::Ping(Default::default()),
                Outbound::Notification { slot, stored } => {
                    let offset = stored.notification.offset;
                    let Some(sub) = self.subs.iter_mut().find(|s| s.slot == slot) else {
                        continue;
                    };
                    if offset <= sub.delivered {
                        continue;
                    }
                    sub.delivered = offset;
                    Message::Text(stored.frame.clone())
                }
            };
            ws.feed(msg).await.map_err(|_| Stop::Gone)?;
            fed = true;
        }
        if fed {
            ws.flush().await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    async fn on_message(&mut self, ws: &mut WebSocket, msg: Message) -> Result<(), Stop> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return self
                    .error(
                        ws,
                        ErrorCode::BadFrame,
                        "binary frames are not supported; send JSON text",
                        None,
                    )
                    .await
            }
            Message::Close(_) => return Err(Stop::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        self.frames_seen += 1;
        if !self.limit.allow() {
            if self.limit.refused > self.state.config.frames_per_sec.max(1) * 4 {
                return Err(Stop::Close(close_code::RATE_LIMITED, "too many frames"));
            }
            let msg = format!(
                "more than {} frames per second",
                self.state.config.frames_per_sec
            );
            return self.error(ws, ErrorCode::RateLimited, &msg, None).await;
        }
        let max = self.state.config.max_frame_bytes;
        if text.len() > max {
            let msg = format!("frame is {} bytes; the limit is {max}", text.len());
            return self.error(ws, ErrorCode::TooLarge, &msg, None).await;
        }
        let frame: ClientFrame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                let (code, msg) = classify_parse_error(text.as_str(), &e);
                return self.error(ws, code, &msg, None).await;
            }
        };
        match frame {
            ClientFrame::Auth { .. } if self.frames_seen == 1 => {
                // Authentication arrives with the auth issue; until then every connection is
                // anonymous, and a token is accepted (never logged) so clients can send it now.
                Ok(())
            }
            ClientFrame::Auth { .. } => {
                self.error(
                    ws,
                    ErrorCode::BadFrame,
                    "auth must be the first frame",
                    None,
                )
                .await
            }
            ClientFrame::Subscribe { topic, since, id } => {
                self.subscribe(ws, topic, since, id).await
            }
            ClientFrame::Unsubscribe { topic, id } => {
                let Some(i) = self.subs.iter().position(|s| *s.topic == *topic) else {
                    return self
                        .error(
                            ws,
                            ErrorCode::NotSubscribed,
                            "not subscribed to that topic",
                            id,
                        )
                        .await;
                };
                let sub = self.subs.swap_remove(i);
                self.state
                    .hub
                    .unsubscribe(&sub.topic, self.conn().id, sub.slot);
                send(ws, &ServerFrame::Unsubscribed { topic, id }).await
            }
            ClientFrame::Publish { topic, message, id } => {
                if let Err(e) = validate_topic(&topic)
                    .and_then(|()| message.validate(self.state.config.max_body_bytes))
                {
                    return self.error(ws, e.code, &e.message, id).await;
                }
                match self.state.store.append(&topic, message, None).await {
                    Ok(a) => match id {
                        Some(id) => {
                            send(
                                ws,
                                &ServerFrame::Ack {
                                    id,
                                    position: a.stored.notification.position(),
                                },
                            )
                            .await
                        }
                        None => Ok(()),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, topic, "publish from socket failed");
                        self.error(
                            ws,
                            ErrorCode::Internal,
                            "the notification could not be stored",
                            id,
                        )
                        .await
                    }
                }
            }
            ClientFrame::Ping { id } => send(ws, &ServerFrame::Pong { id }).await,
        }
    }

    async fn subscribe(
        &mut self,
        ws: &mut WebSocket,
        topic: String,
        since: Option<Position>,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        if let Err(e) = validate_topic(&topic) {
            return self.error(ws, e.code, &e.message, id).await;
        }
        if let Some(sub) = self.subs.iter().find(|s| *s.topic == *topic) {
            // Already live: report where it stands instead of replaying twice.
            let position = Position {
                epoch: sub.epoch.clone(),
                offset: sub.delivered,
            };
            return send(
                ws,
                &ServerFrame::Subscribed {
                    topic,
                    position,
                    id,
                },
            )
            .await;
        }
        if self.subs.len() >= self.state.config.max_subscriptions {
            let msg = format!(
                "at most {} subscriptions per connection",
                self.state.config.max_subscriptions
            );
            return self
                .error(ws, ErrorCode::TooManySubscriptions, &msg, id)
                .await;
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        // Register first, read second: see the module docs.
        self.state.hub.subscribe(&topic, self.conn(), slot);
        let topic: Arc<str> = Arc::from(topic);
        self.subs.push(Subscription {
            slot,
            topic: topic.clone(),
            epoch: String::new(),
            delivered: 0,
        });
        let pos = match self.state.store.position(&topic).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, %topic, "position lookup failed");
                self.drop_sub(slot);
                return self
                    .error(ws, ErrorCode::Internal, "store unavailable", id)
                    .await;
            }
        };
        if let Some(sub) = self.subs.iter_mut().find(|s| s.slot == slot) {
            sub.epoch.clone_from(&pos.epoch);
        }
        let subscribed = ServerFrame::Subscribed {
            topic: topic.to_string(),
            position: Position {
                epoch: pos.epoch.clone(),
                offset: pos.last,
            },
            id,
        };
        let Some(since) = since else {
            self.set_delivered(slot, pos.last);
            return send(ws, &subscribed).await;
        };
        send(ws, &subscribed).await?;
        let mut after = since.offset;
        if since.epoch != pos.epoch || since.offset > pos.last {
            // A different history (or one that lost data it had acknowledged to this client):
            // its offsets mean nothing here. Start over from what is retained.
            let reset = ServerFrame::Reset {
                topic: topic.to_string(),
                epoch: pos.epoch.clone(),
                first_available: pos.first,
            };
            send(ws, &reset).await?;
            after = pos.first.saturating_sub(1);
        }
        self.replay(ws, slot, &topic, after).await
    }

    /// Writes every retained notification after `after`, announcing a `gap` where retention
    /// already dropped what the client asked for.
    async fn replay(
        &mut self,
        ws: &mut WebSocket,
        slot: u32,
        topic: &Arc<str>,
        mut after: u64,
    ) -> Result<(), Stop> {
        loop {
            let (pos, page) = match self
                .state
                .store
                .read(topic, ReadQuery::after(after, REPLAY_PAGE))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, %topic, "replay read failed");
                    self.drop_sub(slot);
                    return self
                        .error(
                            ws,
                            ErrorCode::Internal,
                            "history unavailable; subscribe again",
                            None,
                        )
                        .await;
                }
            };
            let first_available = page.first().map_or(pos.first, |s| s.notification.offset);
            if first_available > after + 1 && pos.last > after {
                let gap = ServerFrame::Gap {
                    topic: topic.to_string(),
                    epoch: pos.epoch.clone(),
                    requested: after,
                    first_available,
                };
                send_no_flush(ws, &gap).await?;
                after = first_available - 1;
            }
            let full = page.len() == REPLAY_PAGE;
            for stored in page {
                after = stored.notification.offset;
                ws.feed(Message::Text(stored.frame.clone()))
                    .await
                    .map_err(|_| Stop::Gone)?;
            }
            ws.flush().await.map_err(|_| Stop::Gone)?;
            self.set_delivered(slot, after);
            if !full {
                return Ok(());
            }
        }
    }

    fn set_delivered(&mut self, slot: u32, offset: u64) {
        if let Some(s) = self.subs.iter_mut().find(|s| s.slot == slot) {
            s.delivered = s.delivered.max(offset);
        }
    }

    fn drop_sub(&mut self, slot: u32) {
        if let Some(i) = self.subs.iter().position(|s| s.slot == slot) {
            let sub = self.subs.swap_remove(i);
            self.state.hub.unsubscribe(&sub.topic, self.conn().id, slot);
        }
    }

    async fn error(
        &mut self,
        ws: &mut WebSocket,
        code: ErrorCode,
        message: &str,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        tracing::debug!(conn_id = self.conn().id, %code, "error frame");
        send(
            ws,
            &ServerFrame::Error {
                code,
                message: message.to_owned(),
                id,
            },
        )
        .await
    }
}

fn encode(frame: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(frame).unwrap_or_default(),
    ))
}

async fn send(ws: &mut WebSocket, frame: &ServerFrame) -> Result<(), Stop> {
    ws.send(encode(frame)).await.map_err(|_| Stop::Gone)
}

async fn send_no_flush(ws: &mut WebSocket, frame: &ServerFrame) -> Result<(), Stop> {
    ws.feed(encode(frame)).await.map_err(|_| Stop::Gone)
}

/// A read error: an over-limit message cannot be skipped (the stream is mid-frame), so it
/// closes with 1009; anything else means the peer is gone.
fn inbound_error(e: axum::Error) -> Stop {
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Capacity")
    {
        Stop::Close(close_code::TOO_BIG, "message exceeds the hard size limit")
    } else {
        Stop::Gone
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        close_code::GOING_AWAY => "server shutting down; reconnect and resume",
        close_code::SLOW_CONSUMER => "slow consumer: reconnect and resume from your last offset",
        close_code::HEARTBEAT_TIMEOUT => "no heartbeat answer",
        close_code::RATE_LIMITED => "too many frames",
        _ => "",
    }
}

/// Tells a frame with an unknown `type` apart from one that is not valid at all.
fn classify_parse_error(text: &str, err: &serde_json::Error) -> (ErrorCode, String) {
    const KNOWN: &[&str] = &["auth", "subscribe", "unsubscribe", "publish", "ping"];
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
            Some(t) if !KNOWN.contains(&t) => {
                (ErrorCode::UnknownType, format!("unknown frame type {t:?}"))
            }
            None => (
                ErrorCode::BadFrame,
                "frame needs a string \"type\"".to_owned(),
            ),
            Some(_) => (ErrorCode::BadFrame, format!("invalid frame: {err}")),
        },
        Err(_) => (ErrorCode::BadFrame, format!("not valid JSON: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_classified() {
        let e = serde_json::from_str::<ClientFrame>("{").unwrap_err();
        assert_eq!(classify_parse_error("{", &e).0, ErrorCode::BadFrame);
        let t = r#"{"type":"dance"}"#;
        let e = serde_json::from_str::<ClientFrame>(t).unwrap_err();
        assert_eq!(classify_parse_error(t, &e).0, ErrorCode::UnknownType);
        let t = r#"{"type":"subscribe"}"#;
        let e = serde_json::from_str::<ClientFrame>(t).unwrap_err();
        assert_eq!(classify_parse_error(t, &e).0, ErrorCode::BadFrame);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refuses() {
        let mut rl = RateLimit::new(5);
        let allowed = (0..20).filter(|_| rl.allow()).count();
        assert_eq!(allowed, 10);
        assert!(rl.refused > 0);
    }
}
