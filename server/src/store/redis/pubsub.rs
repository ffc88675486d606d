//! Live fan-out between nodes: one Pub/Sub connection per node, subscribed to the channels of
//! the topics this node has subscribers for, feeding the hub. Checked, not trusted.
//!
//! # Guarantees
//! - **Subscribed before read.** [`Fanout::watch`] resolves once Redis confirmed the
//!   subscription, and sessions read a topic's head or history only after it: everything
//!   appended later arrives here, everything earlier is in what they read.
//! - **In order, once, without holes.** Per topic the fan-out feeds offset `last + 1` only:
//!   a repeat is dropped, and a message that skips ahead first has the missing offsets read
//!   from the stream and fed (a message lost on the way is repaired here, once per node, not
//!   by every client). An epoch change is fed as is; sessions turn it into `reset`.
//! - **A lost connection is repaired.** The connection is made again with backoff, every
//!   watched channel subscribed again, then every watched topic's top compared with what was
//!   fed and the difference read from the stream.
//! - **A lost last message is found.** Every [`CHECK_EVERY`] the tops of the watched topics
//!   are compared (one pipelined round trip) with what was fed.
//! - **A silent connection is noticed.** Every [`PROBE_EVERY`] the node publishes to its own
//!   probe channel; when the probe does not come back on the Pub/Sub connection within two
//!   periods, the connection is treated as lost.
//! - **Never blocks the reader on a slow hub indefinitely**: the feed is bounded; a full feed
//!   waits (the dispatcher drains it into the hub, which never waits).

use super::{parse_message, Keys, RedisStore};
use crate::broker::FrameKind;
use crate::hub::Hub;
use crate::store::{Feed, ReadQuery, Store, StoreError, Stored};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the tops of the watched topics are checked against what was fed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the node's probe goes round its own Pub/Sub connection.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for a `watch` (the subscription confirmed and, for a topic's first watch, its
/// top read) before the caller gets an error: both calls' timeouts and a second to spare.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reading a topic's top again after a failed read.
const TOP_RETRY: Duration = Duration::from_millis(100);
/// Notifications read per repair round trip.
const REPAIR_PAGE: usize = 500;

enum Command {
    Watch(String, oneshot::Sender<()>),
    Unwatch(String),
}

/// Which channels a node follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The channels of topics with local subscribers (a server node).
    Watched,
    /// Every topic's channel (the store conformance tests, which read the feed directly).
    All,
}

/// Counters for tests and stats.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FanoutStats {
    /// Pub/Sub connections made (the first included).
    pub connects: u64,
    /// Notifications fed after being read from the stream (a hole, a lost connection, a lost
    /// last message).
    pub repaired: u64,
    /// Messages dropped because they were already fed.
    pub repeats: u64,
}

pub struct Fanout {
    commands: mpsc::UnboundedSender<Command>,
    /// Per watched topic, the last position fed to the hub (see [`Fanout::head`]).
    positions: Positions,
    stats: Arc<std::sync::Mutex<FanoutStats>>,
    store: Arc<RedisStore>,
    hub: Option<Arc<Hub>>,
}

/// What starts a frame's message on a topic channel (a notification's starts with its epoch,
/// which is alphanumeric): then `r` (required) or `e` (ephemeral), then the frame.
const FRAME_MARK: u8 = b'!';

impl Fanout {
    /// Starts the node's Pub/Sub connection (made in the background, and again whenever it is
    /// lost) until `cancel`.
    /// Frames sent through it reach `hub` (none in the store's own tests).
    pub fn start(
        store: Arc<RedisStore>,
        feed: Feed,
        hub: Option<Arc<Hub>>,
        scope: Scope,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(std::sync::Mutex::new(FanoutStats::default()));
        let positions = Positions::default();
        let worker = Worker {
            positions: positions.clone(),
            keys: store.keys.clone(),
            store: store.clone(),
            hub: hub.clone(),
            feed,
            scope,
            watched: HashMap::new(),
            pending: HashMap::new(),
            heads: mpsc::unbounded_channel(),
            stats: stats.clone(),
            probe: format!("probe-{}", crate::store::random_id(10)),
        };
        tokio::spawn(worker.run(rx, cancel));
        Arc::new(Self {
            commands: tx,
            positions,
            stats,
            store,
            hub,
        })
    }

    /// Publishes `frame` on the topic's channel; every node with subscribers hands it to its
    /// hub (this one included). With Redis unreachable, this node's subscribers still get it.
    pub async fn send_frame(&self, topic: &str, frame: Utf8Bytes, kind: FrameKind) {
        let mut msg = Vec::with_capacity(frame.len() + 2);
        msg.push(FRAME_MARK);
        msg.push(if kind == FrameKind::Required {
            b'r'
        } else {
            b'e'
        });
        msg.extend_from_slice(frame.as_bytes());
        let channel = self.store.keys.channel(topic);
        let sent = self
            .store
            .conn
            .call(|mut c, _| async move {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&msg)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, topic, "frame not published; delivered on this node only");
            if let Some(hub) = &self.hub {
                crate::broker::deliver_frame(hub, topic, frame, kind);
            }
        }
    }

    /// Resolves once this node receives every later append to `topic` (see the module docs).
    pub async fn watch(&self, topic: &str) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Watch(topic.to_owned(), tx))
            .map_err(|_| StoreError::Closed)?;
        match tokio::time::timeout(WATCH_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                // Counted as watched all the same: the caller unwatches as usual.
                Err(StoreError::Unavailable(
                    "redis unavailable: subscribing timed out".into(),
                ))
            }
        }
    }

    /// The last position this node fed for `topic`, if it follows it (and has one).
    pub fn head(&self, topic: &str) -> Option<crate::store::Head> {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions
            .get(topic)
            .map(|(epoch, last)| crate::store::Head {
                epoch: epoch.to_string(),
                last: *last,
            })
    }

    /// One local subscriber of `topic` fewer.
    pub fn unwatch(&self, topic: &str) {
        let _ = self.commands.send(Command::Unwatch(topic.to_owned()));
    }

    pub fn stats(&self) -> FanoutStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A topic's top, read in the background.
type TopRead = (String, Result<crate::store::Head, StoreError>);

/// A position fed: epoch and offset.
type Fed = Option<(Arc<str>, u64)>;

/// The last position fed per watched topic, shared with the sessions' subscribes.
type Positions = Arc<std::sync::Mutex<HashMap<String, (Arc<str>, u64)>>>;

/// Per watched topic: local subscriptions, and the last position fed.
#[derive(Default)]
struct Watched {
    count: usize,
    last: Fed,
}

struct Worker {
    positions: Positions,
    store: Arc<RedisStore>,
    hub: Option<Arc<Hub>>,
    keys: Keys,
    feed: Feed,
    scope: Scope,
    watched: HashMap<String, Watched>,
    /// Watches of topics whose top is being read (their first watch on this connection):
    /// answered together when the read is back, so that they find the node's position.
    pending: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Tops read in the background (the worker goes on serving meanwhile).
    heads: (
        mpsc::UnboundedSender<TopRead>,
        mpsc::UnboundedReceiver<TopRead>,
    ),
    stats: Arc<std::sync::Mutex<FanoutStats>>,
    probe: String,
}

/// Why a connection's loop ended.
enum End {
    Cancelled,
    Lost,
}

impl Worker {
    fn stat(&self, f: impl FnOnce(&mut FanoutStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        // Watch requests that arrived while there was no connection: answered once the
        // connection is back and subscribed.
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                c = tokio::time::timeout(super::CALL_TIMEOUT, self.store.conn.client().get_async_pubsub()) => c,
            };
            let failed = match connected {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
            let pubsub = match failed {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(error, "redis pub/sub connection failed; retrying");
                    if self
                        .idle_until(&mut rx, &mut waiting, backoff, &cancel)
                        .await
                    {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            self.stat(|s| s.connects += 1);
            match self.serve(pubsub, &mut rx, &mut waiting, &cancel).await {
                End::Cancelled => return,
                End::Lost => {
                    // Watches waiting for a top: answered after the next subscribe, and the
                    // sessions read the top themselves.
                    for (_, acks) in self.pending.drain() {
                        waiting.extend(acks);
                    }
                    crate::metrics::pubsub_repair("reconnect");
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
            }
        }
    }

    /// Without a connection: takes commands for `wait`, so watches are counted (and answered
    /// later) and unwatches applied. Returns true when cancelled.
    async fn idle_until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        waiting: &mut Vec<oneshot::Sender<()>>,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return true,
                _ = tokio::time::sleep_until(until) => return false,
                cmd = rx.recv() => match cmd {
                    None => return true,
                    Some(Command::Watch(topic, ack)) => {
                        self.watched.entry(topic).or_default().count += 1;
                        waiting.push(ack);
                    }
                    Some(Command::Unwatch(topic)) => {
                        self.forget(&topic);
                    }
                },
            }
        }
    }

    fn forget(&mut self, topic: &str) -> bool {
        if let Some(w) = self.watched.get_mut(topic) {
            w.count = w.count.saturating_sub(1);
            if w.count == 0 {
                self.watched.remove(topic);
                self.pending.remove(topic);
                self.positions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(topic);
                return true;
            }
        }
        false
    }

    async fn serve(
        &mut self,
        pubsub: redis::aio::PubSub,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        waiting: &mut Vec<oneshot::Sender<()>>,
        cancel: &CancellationToken,
    ) -> End {
        let (mut sink, mut stream) = pubsub.split();
        let probe_channel = format!("{}:{}", self.store.keys.channel("_"), self.probe);
        // Everything watched, again (a new connection follows nothing).
        let mut channels: Vec<String> = self.watched.keys().map(|t| self.keys.channel(t)).collect();
        channels.push(probe_channel.clone());
        for chunk in channels.chunks(500) {
            if tokio::time::timeout(super::CALL_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_or(true, |r| r.is_err())
            {
                return End::Lost;
            }
        }
        if self.scope == Scope::All {
            let pattern = format!("{}:ch:*", self.keys_prefix());
            if tokio::time::timeout(super::CALL_TIMEOUT, sink.psubscribe(pattern))
                .await
                .map_or(true, |r| r.is_err())
            {
                return End::Lost;
            }
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        // What was appended while there was no connection; and presence announcements made
        // meanwhile are gone: the sessions write fresh lists.
        self.check_positions().await;
        if let Some(hub) = &self.hub {
            for topic in self.watched.keys() {
                hub.resync(topic);
            }
        }
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        let mut probe_seen = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                cmd = rx.recv() => match cmd {
                    None => return End::Cancelled,
                    Some(Command::Watch(topic, ack)) => {
                        let w = self.watched.entry(topic.clone()).or_default();
                        w.count += 1;
                        if w.count == 1 {
                            let channel = self.keys.channel(&topic);
                            let done = tokio::time::timeout(super::CALL_TIMEOUT, sink.subscribe(&channel)).await;
                            if done.map_or(true, |r| r.is_err()) {
                                waiting.push(ack);
                                return End::Lost;
                            }
                            // Subscribed first, read second: the top read now is a position
                            // every later append is fed after, so later subscribers of this
                            // topic on this node need not ask Redis. Read in the background:
                            // a burst of subscribes to other topics (and this topic's
                            // messages) is served meanwhile; this topic's watches wait for it.
                            self.read_top(&topic, Duration::ZERO);
                            self.pending.entry(topic).or_default().push(ack);
                        } else if let Some(acks) = self.pending.get_mut(&topic) {
                            acks.push(ack);
                        } else {
                            let _ = ack.send(());
                        }
                    }
                    Some(Command::Unwatch(topic)) => {
                        if self.forget(&topic) {
                            let channel = self.keys.channel(&topic);
                            let done = tokio::time::timeout(super::CALL_TIMEOUT, sink.unsubscribe(&channel)).await;
                            if done.map_or(true, |r| r.is_err()) {
                                return End::Lost;
                            }
                        }
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else { return End::Lost };
                    let channel = msg.get_channel_name();
                    if channel == probe_channel {
                        probe_seen = tokio::time::Instant::now();
                        continue;
                    }
                    let Some(topic) = self.keys.topic_of(channel).map(str::to_owned) else {
                        continue;
                    };
                    let payload = msg.get_payload_bytes();
                    if let [FRAME_MARK, b'p', rest @ ..] = payload {
                        // A presence announcement, numbered by the cluster (see presence).
                        match (&self.hub, crate::presence::cluster::parse_announcement(&topic, rest)) {
                            (Some(hub), Some(a)) => {
                                let a = Arc::new(a);
                                hub.send_ephemeral(&topic, || crate::hub::Outbound::Presence(a.clone()), None);
                            }
                            (_, None) => tracing::error!(channel, "unreadable presence message"),
                            _ => {}
                        }
                        continue;
                    }
                    if let [FRAME_MARK, kind, frame @ ..] = payload {
                        let kind = if *kind == b'r' { FrameKind::Required } else { FrameKind::Ephemeral };
                        if let (Some(hub), Ok(text)) = (&self.hub, std::str::from_utf8(frame)) {
                            crate::broker::deliver_frame(hub, &topic, Utf8Bytes::from(text), kind);
                        }
                        continue;
                    }
                    match parse_message(&topic, payload) {
                        Some(stored) => self.deliver(&topic, stored).await,
                        None => tracing::error!(channel, "unreadable message on a topic channel"),
                    }
                }
                Some((topic, head)) = self.heads.1.recv() => {
                    match head {
                        Ok(head) => {
                            if self.watched.get(&topic).is_some_and(|w| w.last.is_none()) {
                                self.fed(&topic, &head.epoch, head.last);
                            }
                        }
                        Err(e) => {
                            // Redis is struggling: read again for the watches still waiting
                            // (each gives up at its own timeout) rather than sending every
                            // one of them to Redis on its own.
                            if let Some(acks) = self.pending.get_mut(&topic) {
                                acks.retain(|a| !a.is_closed());
                                if !acks.is_empty() {
                                    tracing::debug!(error = %e, topic, "reading the top again");
                                    self.read_top(&topic, TOP_RETRY);
                                    continue;
                                }
                            }
                        }
                    }
                    for ack in self.pending.remove(&topic).unwrap_or_default() {
                        let _ = ack.send(());
                    }
                }
                _ = check.tick() => self.check_positions().await,
                _ = probe.tick() => {
                    if probe_seen.elapsed() > PROBE_EVERY * 2 + super::CALL_TIMEOUT {
                        tracing::warn!("redis pub/sub probe did not come back: connection is silent");
                        return End::Lost;
                    }
                    let channel = probe_channel.clone();
                    // A failed publish is the command connection's problem, reported there.
                    let _ = self.store.conn.call(|mut c, _| async move {
                        redis::cmd("PUBLISH").arg(&channel).arg("p").query_async::<i64>(&mut c).await
                    }).await;
                }
            }
        }
    }

    /// Reads `topic`'s top in the background, after `delay`; the answer comes back on `heads`.
    fn read_top(&self, topic: &str, delay: Duration) {
        let (store, heads, topic) = (self.store.clone(), self.heads.0.clone(), topic.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let head = store.head(&topic).await;
            let _ = heads.send((topic, head));
        });
    }

    fn keys_prefix(&self) -> String {
        let ch = self.keys.channel("x");
        ch.strip_suffix(":ch:{x}").unwrap_or(&ch).to_owned()
    }

    /// Feeds `stored` if it is the next offset of its topic, first reading what is missing
    /// before it; drops a repeat.
    async fn deliver(&mut self, topic: &str, stored: Arc<Stored>) {
        let n = &stored.notification;
        let last = match self.scope {
            Scope::All => self
                .watched
                .entry(topic.to_owned())
                .or_default()
                .last
                .clone(),
            Scope::Watched => match self.watched.get(topic) {
                Some(w) => w.last.clone(),
                // Unwatched meanwhile (the unsubscribe was on its way).
                None => return,
            },
        };
        if let Some((epoch, offset)) = &last {
            if **epoch == *n.epoch {
                if n.offset <= *offset {
                    self.stat(|s| s.repeats += 1);
                    return;
                }
                if n.offset > offset + 1 {
                    crate::metrics::pubsub_repair("hole");
                    self.repair(topic, *offset, n.offset - 1).await;
                }
            }
        }
        self.fed(topic, &n.epoch, n.offset);
        let _ = self.feed.send(stored).await;
    }

    fn fed(&mut self, topic: &str, epoch: &str, offset: u64) {
        if let Some(w) = self.watched.get_mut(topic) {
            match &w.last {
                Some((e, _)) if **e == *epoch => w.last = Some((e.clone(), offset)),
                _ => w.last = Some((Arc::from(epoch), offset)),
            }
            if let Some(last) = &w.last {
                let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
                positions.insert(topic.to_owned(), last.clone());
            }
        }
    }

    /// Reads offsets `after + 1 ..= upto` from the stream and feeds them (what was trimmed
    /// meanwhile is not there: the sessions' own reads turn that into a `gap`).
    async fn repair(&mut self, topic: &str, mut after: u64, upto: u64) {
        while after < upto {
            let q = ReadQuery {
                after,
                before: upto + 1,
                limit: REPAIR_PAGE,
                newest_first: false,
            };
            let page = match self.store.read(topic, q).await {
                Ok((_, page)) => page,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "repair read failed");
                    return;
                }
            };
            let Some(last) = page.last().map(|s| s.notification.offset) else {
                return;
            };
            let n = page.len() as u64;
            for stored in page {
                let (epoch, offset) = (
                    stored.notification.epoch.clone(),
                    stored.notification.offset,
                );
                self.fed(topic, &epoch, offset);
                let _ = self.feed.send(stored).await;
            }
            self.stat(|s| s.repaired += n);
            after = last;
        }
    }

    /// Compares every watched topic's top in Redis with what was fed, and repairs the
    /// difference (a message lost on the way, or appended while the connection was down).
    async fn check_positions(&mut self) {
        let topics: Vec<(String, Fed)> = self
            .watched
            .iter()
            .map(|(t, w)| (t.clone(), w.last.clone()))
            .collect();
        for chunk in topics.chunks(500) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(t, _)| self.store.keys.key(t, "m"))
                .collect();
            let tops: Result<Vec<(Option<String>, Option<u64>)>, _> = self
                .store
                .conn
                .call(|mut c, _| async move {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("HMGET").arg(k).arg("e").arg("s");
                    }
                    pipe.query_async(&mut c).await
                })
                .await;
            let Ok(tops) = tops else { return };
            for ((topic, last), (epoch, top)) in chunk.iter().zip(tops) {
                let (Some(epoch), Some(top)) = (epoch, top) else {
                    continue;
                };
                match last {
                    Some((e, offset)) if **e == *epoch && top > *offset => {
                        crate::metrics::pubsub_repair("check");
                        self.repair(topic, *offset, top).await;
                    }
                    // A new epoch (Redis restarted or failed over) whose first message was
                    // missed: its newest notification tells the sessions, which then reset
                    // and read the rest themselves.
                    Some((e, _)) if **e != *epoch && top > 0 => {
                        crate::metrics::pubsub_repair("epoch");
                        self.repair(topic, top - 1, top).await;
                    }
                    // Nothing fed yet: the sessions read the history themselves; start here.
                    None => {
                        if let Some(w) = self.watched.get_mut(topic) {
                            w.last = Some((Arc::from(epoch.as_str()), top));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
