//! One WebSocket connection: its subscriptions, its resume logic and its writer.
//!
//! A session is a single task (no reader/writer split, no per-connection timer, so an idle
//! connection costs a few KiB). It waits on three things: a close request from the hub, an
//! inbound frame, and its outbound queue. When the queue wakes it, it takes everything queued,
//! feeds it all to the socket and flushes once, so a burst leaves in one write instead of one
//! syscall per frame.
//!
//! The rooms:
//! - `connection`: the socket; every outbound byte goes through it (close-aware, deadlined).
//! - `dispatch`: inbound frames: limits, parsing, and the answer to each client frame.
//! - `auth`: the first frame's authentication, refreshes, expiry, and the permission check
//!   every subscribe and publish makes.
//! - `resume`: subscribe, catch-up from the store, and live delivery that is verified.
//!
//! # Delivery: live is a fast path that is checked, not trusted
//! Each subscription remembers the epoch and the last offset it delivered. A queued
//! notification is written only if it is exactly `delivered + 1` in that epoch; one at or below
//! `delivered` is a duplicate and dropped; one beyond it means a hole, and the subscription
//! goes back to catching up from the store, which fills the hole (or says `gap`/`reset`).
//!
//! # Catching up without being cut as a slow consumer
//! A subscription that resumes replays from the store page by page *before* it registers with
//! the hub, so a long replay on a busy topic does not fill the bounded queue with live frames
//! it would have to drop anyway. When a page comes back short (the replay reached the top),
//! the subscription registers and reads once more; registration first, read second, so every
//! offset is either in that read or queued after it. While catching up, queued frames for it
//! are dropped: anything queued is already readable, and the next read covers it. Between two
//! pages the session handles inbound frames and other subscriptions' queued frames, so
//! heartbeats and live topics keep flowing during a replay.

mod auth;
mod chat;
mod connection;
mod dispatch;
mod inbox;
mod resume;

pub use connection::{Socket, CLOSE_TIMEOUT};
#[cfg(test)]
pub(crate) use dispatch::classify_parse_error;

use crate::hub::{Outbound, Registration};
use crate::limits::FrameLimiter;
use crate::AppState;
use app::protocol::ServerFrame;
use axum::extract::ws::Message;
use connection::Connection;
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most queued frames written per flush; bounds the time between inbound polls.
const WRITE_BATCH: usize = 256;
/// Inbound frames handled between two replay pages before the replay continues.
const INBOUND_BETWEEN_PAGES: usize = 16;

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The socket failed, its write deadline passed, or the client went away: nothing more
    /// can be sent.
    Gone,
    /// Close with this code (its reason comes from the protocol's close-code table).
    Close(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Queued notifications are written as they arrive, verified against `delivered`.
    Live,
    /// Replaying from the store. `registered`: the hub already queues live notifications for
    /// it (they are dropped; the store reads cover them).
    CatchingUp { registered: bool },
}

struct Subscription {
    slot: u32,
    topic: Arc<str>,
    /// The epoch `delivered` belongs to (a position is an epoch and an offset together).
    epoch: String,
    /// Last offset written to the client.
    delivered: u64,
    phase: Phase,
    /// In a room with presence, this socket's membership (dropped with the subscription).
    member: Option<Box<crate::presence::Member>>,
    /// The presence sequence number its client's member list reflects: presence frames at or
    /// below it are not written (see [`crate::presence`]).
    presence_seq: u64,
}

impl Subscription {
    fn registered(&self) -> bool {
        matches!(
            self.phase,
            Phase::Live | Phase::CatchingUp { registered: true }
        )
    }
}

pub struct Session<S> {
    state: AppState,
    reg: Registration,
    io: Connection<S>,
    subs: Vec<Subscription>,
    next_slot: u32,
    /// Who the connection is; `None` until the first frame.
    /// 16 bytes: a key is shared, a user's claims are boxed.
    identity: Option<crate::auth::Identity>,
    /// Counted against the per-address and per-user caps while the session lives (boxed:
    /// most deployments count neither, and idle sessions should not carry the space).
    ip_slot: Option<Box<crate::limits::ConnSlot<std::net::IpAddr>>>,
    /// The per-user counter this socket holds, released when it ends.
    user_slot: Option<u32>,
    limit: FrameLimiter,
    /// Grown by `recv_many` on first use: idle connections never pay for it.
    batch: Vec<Outbound>,
}

impl<S: Socket> Session<S> {
    pub fn new(state: AppState, reg: Registration, socket: S) -> Self {
        let limit = FrameLimiter::new(state.config.frames_per_sec);
        let io = Connection::new(socket, reg.conn.clone());
        Self {
            state,
            reg,
            io,
            subs: Vec::new(),
            next_slot: 0,
            identity: None,
            ip_slot: None,
            user_slot: None,
            limit,
            batch: Vec::new(),
        }
    }

    /// Holds `slot` (the per-address cap) for the session's life.
    pub fn holding(mut self, slot: Option<Box<crate::limits::ConnSlot<std::net::IpAddr>>>) -> Self {
        self.ip_slot = slot;
        self
    }

    /// Runs the connection to its end, closes it with the code that ended it (if it can still
    /// be sent) and unregisters it.
    ///
    /// Not an `async fn`: rustc copies an `async fn`'s by-value arguments into locals of its
    /// future and keeps the argument's slot too, so `mut self` was in every idle connection's
    /// task twice (560 bytes more per socket). The `async move` block below uses the captured
    /// `self` in place (which is what clippy's `manual_async_fn` would undo).
    #[allow(clippy::manual_async_fn)]
    pub fn run(
        mut self,
        mut rx: mpsc::Receiver<Outbound>,
    ) -> impl std::future::Future<Output = ()> {
        async move {
            let conn_id = self.reg.conn.id;
            tracing::debug!(conn_id, "connected");
            let auth_timeout = self.state.config.auth_timeout();
            self.state.hub.set_deadline(
                &self.reg.conn,
                Some(auth_timeout),
                app::protocol::close_code::AUTH_TIMEOUT,
            );
            // Encoded before the await: a `ServerFrame` (240 bytes) held across it would size
            // the future's largest state, which every idle connection carries.
            let welcome = connection::encode(&ServerFrame::Welcome {
                conn_id,
                max_frame_bytes: self.state.config.max_frame_bytes,
                heartbeat_ms: self.state.config.heartbeat_ms,
                auth_timeout_ms: auth_timeout.as_millis() as u64,
            });
            let welcomed = match self.io.feed(welcome).await {
                Ok(()) => self.io.flush().await,
                Err(stop) => Err(stop),
            };
            let mut stop = match welcomed {
                Ok(()) => self.serve(&mut rx).await,
                Err(stop) => stop,
            };
            // A close request explains the end better than the failed write it caused.
            if let Some(code) = self.reg.conn.close_code() {
                stop = Stop::Close(code);
            }
            if let Stop::Close(code) = stop {
                tracing::debug!(conn_id, code, "closing");
                self.io.close(code).await;
                crate::metrics::connection_closed(Some(code));
            } else {
                crate::metrics::connection_closed(None);
            }
            if let Some(counter) = self.user_slot.take() {
                self.state.limits.conns_per_user.release(counter);
            }
            for sub in std::mem::take(&mut self.subs) {
                if sub.registered() {
                    self.unregister(&sub.topic, sub.slot);
                }
            }
            tracing::debug!(conn_id, "disconnected");
        }
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Stop {
        let conn = self.reg.conn.clone();
        loop {
            if let Some(code) = conn.close_code() {
                return Stop::Close(code);
            }
            let step = if self.catching_up() {
                // Boxed: the catch-up path is a large future that idle connections need not
                // carry in their task.
                match Box::pin(self.between_pages(rx)).await {
                    Ok(()) => Box::pin(self.replay_step()).await,
                    Err(stop) => Err(stop),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = conn.closed() => Ok(()),
                    inbound = self.io.recv() => self.inbound(inbound).await,
                    n = rx.recv_many(&mut self.batch, WRITE_BATCH) => {
                        if n == 0 {
                            Err(Stop::Gone)
                        } else {
                            self.write_batch().await
                        }
                    }
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// During a replay: handles the inbound frames and queued frames that are already waiting,
    /// without waiting for more.
    async fn between_pages(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Result<(), Stop> {
        for _ in 0..INBOUND_BETWEEN_PAGES {
            match self.io.recv().now_or_never() {
                Some(inbound) => self.inbound(inbound).await?,
                None => break,
            }
        }
        while self.batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(item) => self.batch.push(item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(Stop::Gone),
            }
        }
        self.write_batch().await
    }

    fn catching_up(&self) -> bool {
        self.subs
            .iter()
            .any(|s| matches!(s.phase, Phase::CatchingUp { .. }))
    }

    /// Feeds every queued frame the client still needs, then flushes once.
    async fn write_batch(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let result = self.write_items(&mut batch).await;
        batch.clear();
        self.batch = batch;
        result
    }

    async fn write_items(&mut self, batch: &mut [Outbound]) -> Result<(), Stop> {
        if self.key_revoked() {
            // Boxed: rare, and its future would otherwise sit in every idle session.
            return Box::pin(self.close_revoked()).await;
        }
        let mut fed = false;
        let mut written = 0u64;
        for item in batch.iter() {
            let msg = match item {
                Outbound::Ping => Message::Ping(Default::default()),
                Outbound::Wake => continue,
                Outbound::TokenExpiring => match self.expiring_frame() {
                    Some(text) => Message::Text(text.into()),
                    None => continue,
                },
                Outbound::Notification { slot, stored } => {
                    let Some(sub) = self.subs.iter_mut().find(|s| s.slot == *slot) else {
                        continue;
                    };
                    if !resume::accept_live(sub, &stored.notification) {
                        continue;
                    }
                    written += 1;
                    if let Some(count) = stored.inbox {
                        // An inbox arrival: the notification, then the count after it.
                        self.io.feed(Message::Text(stored.frame().clone())).await?;
                        Message::Text(crate::inbox::count_frame(count))
                    } else {
                        Message::Text(stored.frame().clone())
                    }
                }
                Outbound::Frame(frame) => Message::Text(axum::extract::ws::Utf8Bytes::clone(frame)),
                Outbound::Presence(a) => {
                    let Some(sub) = self.subs.iter_mut().find(|s| *s.topic == *a.room) else {
                        continue;
                    };
                    if a.seq <= sub.presence_seq {
                        continue; // the list the client has reflects it
                    }
                    sub.presence_seq = a.seq;
                    Message::Text(a.frame.clone())
                }
            };
            self.io.feed(msg).await?;
            fed = true;
        }
        if fed {
            self.io.flush().await?;
        }
        self.state.hub.record_written(written);
        if self.reg.conn.take_resync() {
            // Boxed: rare, and its future would otherwise sit in every idle session.
            return Box::pin(self.resync_presence()).await;
        }
        Ok(())
    }

    /// Presence frames were dropped for this connection: a fresh list per room replaces the
    /// ones it missed.
    async fn resync_presence(&mut self) -> Result<(), Stop> {
        for i in 0..self.subs.len() {
            if self.subs[i].registered() && self.state.presence.applies(&self.subs[i].topic) {
                self.sync_presence(i).await?;
            }
        }
        Ok(())
    }

    /// Writes the room's member list now as a `presence_sync` for subscription `i`; only
    /// presence frames newer than it are written after it.
    async fn sync_presence(&mut self, i: usize) -> Result<(), Stop> {
        let topic = self.subs[i].topic.clone();
        let snapshot = self.state.presence.snapshot(&topic).await;
        // Nothing else touches the subscriptions while the snapshot is awaited.
        let sub = &mut self.subs[i];
        sub.presence_seq = snapshot.seq;
        let (members, member_count) = snapshot.members.into_fields();
        let frame = ServerFrame::PresenceSync {
            topic: sub.topic.to_string(),
            members,
            member_count,
        };
        self.io.send(&frame).await
    }

    /// Registers a subscription with the hub, then makes sure this node hears every later
    /// append to the topic from any node (the broker). Only after this may the topic's head
    /// or history be read; on an error the caller unregisters.
    async fn register(
        &mut self,
        topic: &Arc<str>,
        slot: u32,
    ) -> Result<(), crate::store::StoreError> {
        self.state.hub.subscribe(topic, &self.reg.conn, slot);
        self.state.broker.watch(topic).await
    }

    /// Ends what [`Session::register`] began.
    fn unregister(&self, topic: &str, slot: u32) {
        self.state.hub.unsubscribe(topic, self.reg.conn.id, slot);
        self.state.broker.unwatch(topic);
    }

    /// A subscribe that could not register (the broker's store is unreachable).
    async fn unavailable(
        &mut self,
        e: &crate::store::StoreError,
        topic: &str,
        slot: u32,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        tracing::warn!(error = %e, topic, "watching the topic failed");
        self.unregister(topic, slot);
        let msg = "store unavailable; subscribe again";
        self.error(app::protocol::ErrorCode::Unavailable, msg, id)
            .await
    }

    fn find_sub(&self, topic: &str) -> Option<usize> {
        self.subs.iter().position(|s| *s.topic == *topic)
    }

    /// Ends a subscription, leaving the hub if it had registered.
    fn drop_sub(&mut self, slot: u32) {
        if let Some(i) = self.subs.iter().position(|s| s.slot == slot) {
            let sub = self.subs.swap_remove(i);
            if sub.registered() {
                self.unregister(&sub.topic, sub.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests;
