//! The hub: which local connection follows which topic, and the fan-out to them.
//!
//! # Guarantees
//! - **Never blocks on a socket.** `broadcast` only `try_send`s into each connection's bounded
//!   queue; the connection's own session task does the writing.
//! - **Per-topic order.** The dispatcher feeds `broadcast` from the store's feed, which is in
//!   offset order, and each queue is FIFO, so every subscriber sees a topic in offset order.
//! - **Serialize once.** Every subscriber's queue gets a clone of the same `Utf8Bytes` frame.
//! - **Slow consumers are cut, not waited for.** When a queue is full the connection is marked
//!   to close with [`close_code::SLOW_CONSUMER`] and dropped from every topic it follows. It can
//!   reconnect and resume from its last offset, so nothing is lost to it.
//! - **Bounded.** At most `max_connections` connections are registered; each queue holds at most
//!   `queue_frames` frames.
//!
//! Topics are spread over shards, each behind its own short-held std mutex, so publishes to
//! different topics and subscribes on both cores do not contend on one lock.

use crate::store::Stored;
use app::protocol::close_code;
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

const SHARDS: usize = 32;

/// What a connection's queue carries.
#[derive(Debug)]
pub enum Outbound {
    /// A notification for the subscription with this slot; the session drops it if that
    /// subscription has already delivered its offset (replay and live overlap on resume).
    /// An `Arc` keeps the item at 16 bytes: every queue preallocates a block of them.
    Notification { slot: u32, stored: Arc<Stored> },
    /// The heartbeat: send a WebSocket ping.
    Ping,
    /// The connection's token expires soon: tell the client to send a fresh one.
    TokenExpiring,
    /// A frame that is not a stored notification (an inbox change, a typing indicator), the
    /// same bytes for every subscriber of the topic it was sent to. Not stored, not counted
    /// in offsets.
    Frame(Arc<Utf8Bytes>),
    /// A presence announcement; the session writes it unless a list it already wrote
    /// reflects it (see [`crate::presence`]).
    Presence(Arc<crate::presence::Announcement>),
    /// Nothing to write: wakes the session to act on its resync mark.
    Wake,
}

/// One registered connection, shared by the hub (to enqueue) and its session (to drain).
pub struct Conn {
    pub id: u64,
    tx: mpsc::Sender<Outbound>,
    /// First close reason wins; 0 means "open". Set by the hub (slow consumer, heartbeat,
    /// shutdown) and acted on by the session, which is woken through `closed`.
    close_code: AtomicU16,
    /// Set when an ephemeral frame was dropped for this connection because its queue was
    /// half full; its session then writes fresh presence lists (see [`Hub::send_ephemeral`]).
    resync: AtomicBool,
    /// A `Notify` rather than a channel: one permit is enough and costs a few bytes.
    closed: Notify,
    /// Milliseconds since the hub started when the client was last heard from.
    last_seen: AtomicU64,
    /// Hub milliseconds at which the connection is closed with `deadline_code` (0: none):
    /// the handshake timeout, then the token's expiry.
    deadline_ms: AtomicU64,
    deadline_code: AtomicU16,
    /// Hub milliseconds at which a `TokenExpiring` is queued (0: none).
    warn_at_ms: AtomicU64,
}

impl Conn {
    /// Asks the session to close with `code`; the first request wins. Returns whether this
    /// call was the first (so a cause is counted once however often it is detected).
    pub fn close(&self, code: u16) -> bool {
        let first = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.closed.notify_one();
        }
        first
    }

    /// Resolves once `close` was called; the code is in [`Conn::close_code`]. One permit
    /// wakes one waiter, so a session also checks `close_code` before it waits again.
    pub async fn closed(&self) {
        if self.close_code().is_none() {
            self.closed.notified().await
        }
    }

    /// Whether ephemeral frames were dropped since the last call (and clears the mark).
    pub fn take_resync(&self) -> bool {
        self.resync.load(Ordering::Relaxed) && self.resync.swap(false, Ordering::AcqRel)
    }

    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }
}

struct Subscriber {
    conn: Arc<Conn>,
    slot: u32,
}

/// One shard of the topic map: topic -> its local subscribers.
type TopicShard = Mutex<HashMap<Arc<str>, Vec<Subscriber>>>;
/// One shard of the connection registry, for the heartbeat sweep and shutdown.
type ConnShard = Mutex<HashMap<u64, Arc<Conn>>>;

pub struct Hub {
    topics: Box<[TopicShard]>,
    conns: Box<[ConnShard]>,
    hasher: RandomState,
    next_id: AtomicU64,
    count: AtomicUsize,
    max_connections: usize,
    queue_frames: usize,
    /// tokio's clock, so heartbeat tests can `pause()` it.
    started: Instant,
    /// Notification frames written to sockets (not merely queued), for stats.
    delivered: AtomicU64,
    /// Connections closed as slow consumers, each counted once, for stats.
    slow_closed: AtomicU64,
}

/// Keeps a connection registered; dropping it unregisters (also when the upgrade fails).
pub struct Registration {
    hub: Arc<Hub>,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.hub.conns[self.conn.id as usize % SHARDS]).remove(&self.conn.id);
        self.hub.count.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the maps consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A snapshot of the hub's counters.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct HubStats {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Notification frames written to sockets (a frame dropped from a queue is not counted).
    pub delivered: u64,
    /// Connections closed because their queue overflowed; each connection counts once.
    pub slow_closed: u64,
}

/// What the hub holds at one moment (see [`Hub::census`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Census {
    /// Topics with at least one local subscriber.
    pub topics: usize,
    /// Local subscriptions over all topics.
    pub subscriptions: usize,
    /// Frames waiting in connection queues, over all connections.
    pub queued_frames: usize,
    /// The longest connection queue, in frames.
    pub queue_depth_max: usize,
    /// The topics with the most local subscribers, most first.
    pub busiest: Vec<(Arc<str>, usize)>,
}

impl Hub {
    pub fn new(max_connections: usize, queue_frames: usize) -> Arc<Self> {
        Arc::new(Self {
            topics: (0..SHARDS).map(|_| Mutex::default()).collect(),
            conns: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
            max_connections,
            queue_frames: queue_frames.max(1),
            started: Instant::now(),
            delivered: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn shard(&self, topic: &str) -> &TopicShard {
        &self.topics[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    /// Registers a new connection, or `None` when `max_connections` are open.
    pub fn register(self: &Arc<Self>) -> Option<(Registration, mpsc::Receiver<Outbound>)> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            close_code: AtomicU16::new(0),
            resync: AtomicBool::new(false),
            closed: Notify::new(),
            last_seen: AtomicU64::new(self.now_ms()),
            deadline_ms: AtomicU64::new(0),
            deadline_code: AtomicU16::new(0),
            warn_at_ms: AtomicU64::new(0),
        });
        lock(&self.conns[conn.id as usize % SHARDS]).insert(conn.id, conn.clone());
        crate::metrics::hot().connections_opened.increment(1);
        Some((
            Registration {
                hub: self.clone(),
                conn,
            },
            rx,
        ))
    }

    /// Records that the client was heard from (any inbound frame, pongs included).
    pub fn touch(&self, conn: &Conn) {
        conn.last_seen.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Sessions report the notification frames they wrote (after the flush succeeded).
    pub fn record_written(&self, frames: u64) {
        if frames > 0 {
            self.delivered.fetch_add(frames, Ordering::Relaxed);
            crate::metrics::hot().deliveries.increment(frames);
        }
    }

    /// Counts what the hub holds now, for `/metrics` and the admin view: one pass over the
    /// shards (under their locks, one at a time), so only at scrape time. `busiest` is how
    /// many of the topics with the most local subscribers to list.
    pub fn census(&self, busiest: usize) -> Census {
        let mut census = Census::default();
        let mut top: Vec<(usize, Arc<str>)> = Vec::new();
        for shard in self.topics.iter() {
            let shard = lock(shard);
            census.topics += shard.len();
            for (topic, subs) in shard.iter() {
                census.subscriptions += subs.len();
                if busiest > 0 {
                    top.push((subs.len(), topic.clone()));
                }
            }
        }
        top.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        top.truncate(busiest);
        census.busiest = top.into_iter().map(|(n, t)| (t, n)).collect();
        for shard in self.conns.iter() {
            for conn in lock(shard).values() {
                let queued = conn.tx.max_capacity() - conn.tx.capacity();
                census.queued_frames += queued;
                census.queue_depth_max = census.queue_depth_max.max(queued);
            }
        }
        census
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            connections: self.connections(),
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_closed: self.slow_closed.load(Ordering::Relaxed),
        }
    }

    /// From now on, every notification broadcast on `topic` is queued for `conn` tagged `slot`.
    pub fn subscribe(&self, topic: &str, conn: &Arc<Conn>, slot: u32) {
        let mut shard = lock(self.shard(topic));
        let subs = match shard.get_mut(topic) {
            Some(s) => s,
            None => shard.entry(Arc::from(topic)).or_default(),
        };
        subs.push(Subscriber {
            conn: conn.clone(),
            slot,
        });
    }

    pub fn unsubscribe(&self, topic: &str, conn_id: u64, slot: u32) {
        let mut shard = lock(self.shard(topic));
        if let Some(subs) = shard.get_mut(topic) {
            subs.retain(|s| !(s.conn.id == conn_id && s.slot == slot));
            if subs.is_empty() {
                shard.remove(topic);
            }
        }
    }

    /// Number of local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        lock(self.shard(topic)).get(topic).map_or(0, Vec::len)
    }

    /// Queues the notification for every subscriber of its topic. Never waits.
    pub fn broadcast(&self, stored: &Arc<Stored>) {
        let topic = stored.notification.topic.as_str();
        let offset = stored.notification.offset;
        // Encode the frame here, once, rather than in the first session to write it (only
        // when someone follows the topic).
        let mut encoded = false;
        self.retain_subscribers(topic, |s| {
            if !encoded {
                let _ = stored.frame();
                encoded = true;
            }
            let item = Outbound::Notification {
                slot: s.slot,
                stored: stored.clone(),
            };
            match s.conn.tx.try_send(item) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.cut_slow(&s.conn, topic, Some(offset))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Runs `keep` for every subscriber of `topic` under its shard's lock, dropping those it
    /// answers false for (and the topic once nobody follows it).
    fn retain_subscribers(&self, topic: &str, keep: impl FnMut(&Subscriber) -> bool) {
        let mut shard = lock(self.shard(topic));
        let Some(subs) = shard.get_mut(topic) else {
            return;
        };
        subs.retain(keep);
        if subs.is_empty() {
            shard.remove(topic);
        }
    }

    /// A full queue where nothing may be dropped: the connection is closed as a slow consumer.
    /// A connection following several busy topics overflows on each of them; only the first
    /// detection closes it and counts. Returns false (drop it from the topic).
    fn cut_slow(&self, conn: &Conn, topic: &str, offset: Option<u64>) -> bool {
        if conn.close(close_code::SLOW_CONSUMER) {
            tracing::warn!(conn_id = conn.id, topic, offset = ?offset, "slow consumer: closing");
            self.slow_closed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::hot().slow_consumer_cuts.increment(1);
        }
        false
    }

    /// Queues what `item` makes for every subscriber of `topic` (but the connection
    /// `except`), beside (not in) the ordered stream, as a frame that may be lost: presence
    /// and typing. Never waits and never cuts a connection: such frames may fill at most half
    /// of a queue, so the other half stays for notifications; beyond that the frame is
    /// dropped for that connection and it is marked for a resync ([`Conn::take_resync`]).
    /// A queue that is half full is not empty, so its session wakes and sees the mark.
    pub fn send_ephemeral(&self, topic: &str, item: impl Fn() -> Outbound, except: Option<u64>) {
        let reserve = self.queue_frames / 2;
        self.retain_subscribers(topic, |s| {
            if Some(s.conn.id) == except {
                return true;
            }
            if s.conn.tx.capacity() <= reserve {
                s.conn.resync.store(true, Ordering::Release);
                return true;
            }
            match s.conn.tx.try_send(item()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.conn.resync.store(true, Ordering::Release);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Presence frames for `topic` may have been lost on the way to this node (its Pub/Sub
    /// connection was down): every subscriber writes fresh member lists.
    pub fn resync(&self, topic: &str) {
        let shard = lock(self.shard(topic));
        for s in shard.get(topic).into_iter().flatten() {
            s.conn.resync.store(true, Ordering::Release);
            // A full queue wakes the session anyway.
            let _ = s.conn.tx.try_send(Outbound::Wake);
        }
    }

    /// Queues `frame` for every subscriber of `topic` (but the connection `except`), beside
    /// (not in) the ordered stream of stored notifications, as a frame that must not be lost
    /// (an inbox change). Never waits; a full queue is a slow consumer as for `broadcast`.
    pub fn send_frame(&self, topic: &str, frame: Utf8Bytes, except: Option<u64>) {
        let frame = Arc::new(frame);
        self.retain_subscribers(topic, |s| {
            if Some(s.conn.id) == except {
                return true;
            }
            match s.conn.tx.try_send(Outbound::Frame(frame.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => self.cut_slow(&s.conn, topic, None),
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// One heartbeat pass over every connection: close those silent for longer than `timeout`
    /// and queue a ping for the rest. One sweep for all connections instead of a timer each.
    pub fn sweep(&self, timeout: Duration) {
        for shard in 0..SHARDS {
            self.sweep_shard(shard, timeout);
        }
    }

    /// [`Hub::sweep`] over the connections of one shard (`shard` modulo the shard count), a
    /// 32nd of them: what [`heartbeat`] does at each of its ticks.
    pub fn sweep_shard(&self, shard: usize, timeout: Duration) {
        let now = self.now_ms();
        let timeout = timeout.as_millis() as u64;
        for conn in lock(&self.conns[shard % SHARDS]).values() {
            if now.saturating_sub(conn.last_seen.load(Ordering::Relaxed)) > timeout {
                tracing::info!(conn_id = conn.id, "heartbeat timeout: closing");
                conn.close(close_code::HEARTBEAT_TIMEOUT);
            } else {
                // A full queue means the slow-consumer rule will act; no ping needed.
                let _ = conn.tx.try_send(Outbound::Ping);
            }
        }
    }

    /// Closes `conn` with `code` once `after` has passed (`None` disarms it). Enforced by
    /// [`deadlines`], so within [`DEADLINE_TICK`] of the time.
    pub fn set_deadline(&self, conn: &Conn, after: Option<Duration>, code: u16) {
        if after.is_some() {
            conn.deadline_code.store(code, Ordering::Relaxed);
        }
        conn.deadline_ms
            .store(self.due_ms(after), Ordering::Release);
    }

    /// Hub milliseconds `after` from now (never 0, which means "none"), or 0 for `None`.
    fn due_ms(&self, after: Option<Duration>) -> u64 {
        after.map_or(0, |a| {
            self.now_ms().saturating_add(a.as_millis() as u64).max(1)
        })
    }

    /// Queues a [`Outbound::TokenExpiring`] for `conn` once `after` has passed (`None`
    /// disarms it).
    pub fn set_warning(&self, conn: &Conn, after: Option<Duration>) {
        conn.warn_at_ms.store(self.due_ms(after), Ordering::Release);
    }

    /// Acts on every deadline and warning that has come due.
    pub fn sweep_deadlines(&self) {
        let now = self.now_ms();
        for shard in self.conns.iter() {
            for conn in lock(shard).values() {
                let due = conn.deadline_ms.load(Ordering::Acquire);
                if due != 0 && now >= due {
                    let code = conn.deadline_code.load(Ordering::Relaxed);
                    tracing::debug!(conn_id = conn.id, code, "deadline passed: closing");
                    conn.close(code);
                    continue;
                }
                let warn = conn.warn_at_ms.load(Ordering::Acquire);
                if warn != 0
                    && now >= warn
                    && conn
                        .warn_at_ms
                        .compare_exchange(warn, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    // A full queue means the slow-consumer rule acts anyway.
                    let _ = conn.tx.try_send(Outbound::TokenExpiring);
                }
            }
        }
    }

    /// Every open connection, in no particular order (the drain closes them one by one).
    pub fn open_connections(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::with_capacity(self.connections());
        for shard in self.conns.iter() {
            all.extend(lock(shard).values().cloned());
        }
        all
    }

    /// Asks every connection to close with `code` (shutdown: 1001).
    pub fn close_all(&self, code: u16) {
        for shard in self.conns.iter() {
            for conn in lock(shard).values() {
                conn.close(code);
            }
        }
    }
}

/// The heartbeat, until `cancel`: every connection is swept once per `every` (pinged if live,
/// closed if silent for more than twice `every`), one shard of them at a time, the shards
/// spread evenly over the interval. Sweeping all at once made a burst of one ping per
/// connection (10,000 writes, about 100 ms of one core) that every publish in flight waited
/// behind, once per interval. On tokio's clock, so tests can pause it.
pub async fn heartbeat(
    hub: Arc<Hub>,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval((every / SHARDS as u32).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    for shard in (0..SHARDS).cycle() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => hub.sweep_shard(shard, every * 2),
        }
    }
}

/// How often [`deadlines`] looks: the precision of the handshake timeout and token expiry.
pub const DEADLINE_TICK: Duration = Duration::from_secs(1);

/// Per-connection deadlines (handshake timeout, token expiry) and expiry warnings, for every
/// connection in one sweep per [`DEADLINE_TICK`]: no timer per connection. On tokio's clock.
pub async fn deadlines(hub: Arc<Hub>, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(DEADLINE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => hub.sweep_deadlines(),
        }
    }
}

/// Moves committed notifications from the store's feed into the hub, in feed order.
pub async fn dispatch(hub: Arc<Hub>, mut feed: mpsc::Receiver<Arc<Stored>>) {
    let mut batch = Vec::with_capacity(256);
    while feed.recv_many(&mut batch, 256).await > 0 {
        for stored in batch.drain(..) {
            hub.broadcast(&stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::protocol::Notification;

    fn stored(topic: &str, offset: u64) -> Arc<Stored> {
        Stored::new(Notification {
            id: format!("id{offset}"),
            topic: topic.into(),
            epoch: "e".into(),
            offset,
            time: 0,
            title: None,
            body: "b".into(),
            priority: 3,
            tags: vec![],
            link: None,
            category: None,
            author: None,
        })
    }

    #[tokio::test]
    async fn full_queue_closes_only_the_slow_connection() {
        let hub = Hub::new(10, 2);
        let (slow, _slow_rx) = hub.register().unwrap();
        let (fast, mut fast_rx) = hub.register().unwrap();
        hub.subscribe("t", &slow.conn, 0);
        hub.subscribe("t", &fast.conn, 7);
        for off in 1..=3 {
            hub.broadcast(&stored("t", off));
            // the fast one drains as it goes
            match fast_rx.recv().await.unwrap() {
                Outbound::Notification { slot, stored } => {
                    assert_eq!((slot, stored.notification.offset), (7, off))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(slow.conn.close_code(), Some(close_code::SLOW_CONSUMER));
        assert_eq!(fast.conn.close_code(), None);
        assert_eq!(hub.subscribers("t"), 1);
    }

    #[tokio::test]
    async fn registration_is_capped_and_released_on_drop() {
        let hub = Hub::new(1, 4);
        let first = hub.register().unwrap();
        assert!(hub.register().is_none());
        drop(first);
        assert!(hub.register().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_pings_live_connections_and_closes_silent_ones() {
        let hub = Hub::new(4, 4);
        let (silent, mut silent_rx) = hub.register().unwrap();
        let (alive, _alive_rx) = hub.register().unwrap();
        let timeout = Duration::from_secs(10);
        hub.sweep(timeout);
        assert!(matches!(silent_rx.recv().await, Some(Outbound::Ping)));
        // Exactly at the timeout a connection is still given the benefit of the doubt...
        tokio::time::advance(timeout).await;
        hub.touch(&alive.conn);
        hub.sweep(timeout);
        assert_eq!(silent.conn.close_code(), None);
        // ...one millisecond later it is closed, and one that was heard from is not.
        tokio::time::advance(Duration::from_millis(1)).await;
        hub.sweep(timeout);
        assert_eq!(
            silent.conn.close_code(),
            Some(close_code::HEARTBEAT_TIMEOUT)
        );
        assert_eq!(alive.conn.close_code(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_pings_one_shard_at_a_time_spread_over_its_interval() {
        let hub = Hub::new(128, 4);
        // 64 consecutive connection ids: two in each of the 32 shards.
        let (conns, mut rxs): (Vec<_>, Vec<_>) = (0..64).map(|_| hub.register().unwrap()).unzip();
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(heartbeat(
            hub.clone(),
            Duration::from_secs(32),
            cancel.clone(),
        ));
        let mut pings = [0; 64];
        // Looked at halfway between the ticks (one a second): each tick pinged one shard.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for second in 1..=32 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut now = 0;
            for (i, rx) in rxs.iter_mut().enumerate() {
                while let Ok(frame) = rx.try_recv() {
                    assert!(matches!(frame, Outbound::Ping));
                    pings[i] += 1;
                    now += 1;
                }
            }
            assert_eq!(now, 2, "pings in second {second}");
        }
        // Over one interval, every connection once; none closed (silent for 32 s of 64).
        assert_eq!(pings, [1; 64]);
        assert!(conns.iter().all(|c| c.conn.close_code().is_none()));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_close_and_warnings_are_queued_once_when_due() {
        let hub = Hub::new(4, 4);
        let (a, mut a_rx) = hub.register().unwrap();
        let (b, _b_rx) = hub.register().unwrap();
        hub.set_deadline(
            &a.conn,
            Some(Duration::from_secs(10)),
            close_code::TOKEN_EXPIRED,
        );
        hub.set_warning(&a.conn, Some(Duration::from_secs(5)));
        hub.set_deadline(
            &b.conn,
            Some(Duration::from_secs(3)),
            close_code::AUTH_TIMEOUT,
        );
        hub.set_deadline(&b.conn, None, 0);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        hub.sweep_deadlines();
        assert!(a_rx.try_recv().is_err(), "no warning before its time");
        tokio::time::advance(Duration::from_millis(1)).await;
        hub.sweep_deadlines();
        hub.sweep_deadlines();
        assert!(matches!(a_rx.try_recv(), Ok(Outbound::TokenExpiring)));
        assert!(a_rx.try_recv().is_err(), "one warning, however many sweeps");
        assert_eq!(a.conn.close_code(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        hub.sweep_deadlines();
        assert_eq!(a.conn.close_code(), Some(close_code::TOKEN_EXPIRED));
        assert_eq!(
            b.conn.close_code(),
            None,
            "a disarmed deadline does nothing"
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_on_several_topics_is_counted_once() {
        let hub = Hub::new(10, 1);
        let (slow, _rx) = hub.register().unwrap();
        for (slot, topic) in ["a", "b", "c"].into_iter().enumerate() {
            hub.subscribe(topic, &slow.conn, slot as u32);
        }
        for topic in ["a", "b", "c"] {
            hub.broadcast(&stored(topic, 1));
            hub.broadcast(&stored(topic, 2));
        }
        assert_eq!(slow.conn.close_code(), Some(close_code::SLOW_CONSUMER));
        assert_eq!(hub.stats().slow_closed, 1);
    }

    #[tokio::test]
    async fn the_first_close_request_wins() {
        let hub = Hub::new(10, 1);
        let (reg, _rx) = hub.register().unwrap();
        assert!(reg.conn.close(close_code::HEARTBEAT_TIMEOUT));
        assert!(!reg.conn.close(close_code::GOING_AWAY));
        assert_eq!(reg.conn.close_code(), Some(close_code::HEARTBEAT_TIMEOUT));
        // A waiter that arrives after the request does not wait.
        tokio::time::timeout(Duration::from_secs(5), reg.conn.closed())
            .await
            .expect("closed() resolves at once after close()");
    }
}
