//! Redis mode: Redis holds every topic's epoch, offsets, retained history, idempotency keys and
//! inbox read state, so any number of Herald nodes share one log. Nodes keep nothing durable.
//!
//! # How it keeps the store contract
//! - **Offsets**: one Lua script per append takes the next offset, appends to the topic's
//!   stream (entry id = offset), trims to retention, records the idempotency key and publishes
//!   to the topic's channel, atomically; Redis runs scripts one at a time, so channel order is
//!   offset order. See `scripts.rs`.
//! - **Epochs** come from the Redis server itself: a hash of its run id and replication id,
//!   read on every (re)connection. A restarted Redis (which may have lost acknowledged
//!   appends, unless it runs with `appendfsync always`) or a promoted replica gives a new
//!   epoch, and the first script to touch a topic after that switches the topic to it: clients
//!   get a `reset`, never an offset reused for a different notification.
//! - **The feed** is fed by [`pubsub::Fanout`] from the channels of the topics this node has
//!   subscribers for (its own appends included), not by `append`.
//! - **Head** costs one round trip (other nodes append too).
//! - **Redis down**: every call fails within [`CALL_TIMEOUT`] with
//!   [`StoreError::Unavailable`] (503 with Retry-After over HTTP); the next call reconnects.

pub mod pubsub;
mod scripts;
pub mod testing;

use super::{
    is_inbox, materialize, random_id, Appended, Head, InboxChange, InboxCount, ReadQuery,
    Retention, Store, StoreError, Stored, TopicPosition,
};
use app::protocol::{InboxItem, InboxQuery, InboxUpdate, NewNotification, Notification};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Longest a Redis call (connecting included) may take before it counts as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest offset handed to a script (Lua numbers are doubles).
const MAX_OFFSET: u64 = 1 << 53;
/// Notifications dropped per prune call on one topic.
const PRUNE_CHUNK: usize = 1000;

/// The notification as the stream keeps it: without topic, epoch and offset, which the key,
/// the meta hash and the entry id give.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    id: String,
    time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    body: String,
    priority: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
}

impl Entry {
    fn of(n: &Notification) -> Self {
        Entry {
            id: n.id.clone(),
            time: n.time,
            title: n.title.clone(),
            body: n.body.clone(),
            priority: n.priority,
            tags: n.tags.clone(),
            link: n.link.clone(),
            category: n.category.clone(),
            author: n.author.clone(),
        }
    }

    fn into_notification(self, topic: &str, epoch: &str, offset: u64) -> Notification {
        Notification {
            id: self.id,
            topic: topic.to_owned(),
            epoch: epoch.to_owned(),
            offset,
            time: self.time,
            title: self.title,
            body: self.body,
            priority: self.priority,
            tags: self.tags,
            link: self.link,
            category: self.category,
            author: self.author,
        }
    }
}

/// Key names: `<prefix>:{<topic>}:<part>` (the topic is the hash tag), and the channel.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub(crate) fn key(&self, topic: &str, part: &str) -> String {
        format!("{}:{{{topic}}}:{part}", self.prefix)
    }
    /// A topic's meta hash, log stream and inbox state, as the scripts take them.
    fn topic(&self, topic: &str) -> [String; 3] {
        [
            self.key(topic, "m"),
            self.key(topic, "l"),
            self.key(topic, "s"),
        ]
    }
    pub fn channel(&self, topic: &str) -> String {
        format!("{}:ch:{{{topic}}}", self.prefix)
    }
    /// The topic a channel name belongs to.
    pub fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ch:{")?
            .strip_suffix('}')
    }
    fn topics(&self) -> String {
        format!("{}:topics", self.prefix)
    }
    /// Every node that ever had presence members (live or not yet swept).
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    /// Exists while the node is alive.
    pub(crate) fn node_alive(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    /// Rooms the node has had members in.
    pub(crate) fn node_rooms(&self, node: &str) -> String {
        format!("{}:noderooms:{node}", self.prefix)
    }
}

/// A live Redis message or an idempotent repeat: "epoch:offset:unread:seq:entry".
pub(crate) fn parse_message(topic: &str, msg: &[u8]) -> Option<Arc<Stored>> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut parts = text.splitn(5, ':');
    let epoch = parts.next()?;
    let offset: u64 = parts.next()?.parse().ok()?;
    let unread = parts.next()?;
    let seq = parts.next()?;
    let entry: Entry = serde_json::from_str(parts.next()?).ok()?;
    let count = match (unread.parse(), seq.parse()) {
        (Ok(unread), Ok(seq)) => Some(InboxCount { unread, seq }),
        _ => None,
    };
    Some(Stored::with_inbox(
        entry.into_notification(topic, epoch, offset),
        count,
    ))
}

/// One multiplexed command connection, made on first use and again after a failure, with
/// the epoch of the Redis server it reached.
pub(crate) struct Connector {
    client: redis::Client,
    /// The connection in use: read (cloned) by every call without waiting on anyone.
    current: std::sync::RwLock<Option<(MultiplexedConnection, Arc<str>)>>,
    /// Held while connecting, so that one caller connects and the others wait for it.
    connecting: Mutex<()>,
    /// When a call last got an answer ([`now_ms`](super::now_ms)): a call that times out
    /// while others are answered is load, not a dead connection.
    last_answer_ms: std::sync::atomic::AtomicI64,
}

impl Connector {
    fn new(url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Backend(format!("redis url: {e}")))?;
        Ok(Self {
            client,
            current: std::sync::RwLock::new(None),
            connecting: Mutex::new(()),
            last_answer_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection and its epoch, connecting if there is none.
    async fn get(&self) -> Result<(MultiplexedConnection, Arc<str>), StoreError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let made = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            let epoch = epoch_of_server(&mut conn).await?;
            redis::RedisResult::Ok((conn, epoch))
        })
        .await
        .map_err(|_| unavailable("connecting timed out"))?
        .map_err(|e| unavailable(&e.to_string()))?;
        tracing::info!(epoch = %made.1, "connected to redis");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(made.clone());
        Ok(made)
    }

    fn current(&self) -> Option<(MultiplexedConnection, Arc<str>)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the connection after a failure; the next call reconnects (and reads the
    /// epoch again: a restarted Redis has a new one).
    fn reset(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `f` on the connection within [`CALL_TIMEOUT`]; a failure that may be the
    /// connection's drops it.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection, Arc<str>) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (conn, epoch) = self.get().await?;
        crate::metrics::hot().redis_round_trips.increment(1);
        let answered = |this: &Self| {
            this.last_answer_ms
                .store(super::now_ms(), std::sync::atomic::Ordering::Relaxed)
        };
        match tokio::time::timeout(CALL_TIMEOUT, f(conn, epoch)).await {
            Ok(Ok(v)) => {
                answered(self);
                Ok(v)
            }
            // The connection's fault: drop it, and say "try again".
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error() =>
            {
                self.reset();
                Err(unavailable(&e.to_string()))
            }
            // A script error or an answer of the wrong shape: a bug, not a state.
            Ok(Err(e)) => {
                answered(self);
                Err(StoreError::Backend(format!("redis: {e}")))
            }
            Err(_) => {
                // Silent for a whole timeout: the connection is dead (or black-holed); drop
                // it. Answers meanwhile: Redis is busy, keep it.
                let last = self
                    .last_answer_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if super::now_ms() - last > CALL_TIMEOUT.as_millis() as i64 {
                    self.reset();
                }
                Err(unavailable("call timed out"))
            }
        }
    }
}

/// `script` with every one of `keys` (the topic's, in the order the script names them).
pub(crate) fn with_keys<'a>(
    script: &'a redis::Script,
    keys: &[String],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for k in keys {
        invocation.key(k);
    }
    invocation
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(format!("redis unavailable: {why}"))
}

/// The epoch for everything this Redis server holds: a hash of its run id (new on every
/// start) and replication id (new when a replica is promoted).
async fn epoch_of_server(conn: &mut MultiplexedConnection) -> redis::RedisResult<Arc<str>> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let repl: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let run_id = field(&info, "run_id");
    let replid = field(&repl, "master_replid");
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{run_id}/{replid}").as_bytes());
    // 12 base-62 symbols from the digest: 71 bits.
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let epoch: String = digest[..12]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % 62] as char)
        .collect();
    Ok(Arc::from(epoch))
}

/// Appends waiting for their round trip, at most this many (callers wait for room beyond).
const APPEND_QUEUE: usize = 4096;
/// Most appends taken from the queue at once.
const APPEND_BATCH: usize = 256;

/// One append on its way.
struct Pending {
    topic: String,
    /// The notification, without epoch and offset yet.
    n: Notification,
    entry: String,
    key: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<Appended, StoreError>>,
}

/// Sends appends: everything waiting is taken at once, grouped by topic (in arrival order
/// within a topic), and each topic's group goes to Redis as one script call, the groups side
/// by side. Like SQLite's group commit: under load, one round trip and one script carry many
/// publishes, and a lone publish waits for nothing.
struct Appender {
    conn: Arc<Connector>,
    keys: Keys,
    retention: Retention,
    script: redis::Script,
    /// Topics this node has put in the registry.
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Appender {
    async fn run(self: Arc<Self>, mut waiting: tokio::sync::mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        while waiting.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            let mut groups: Vec<(String, Vec<Pending>)> = Vec::new();
            for p in batch.drain(..) {
                match groups.iter_mut().find(|(t, _)| *t == p.topic) {
                    Some((_, g)) => g.push(p),
                    None => groups.push((p.topic.clone(), vec![p])),
                }
            }
            futures::future::join_all(groups.into_iter().map(|(t, g)| self.send(t, g))).await;
        }
    }

    /// Whether this node already put `topic` in the registry (remembered for a bounded number
    /// of topics; forgetting one only costs a repeated SADD).
    fn registered(&self, topic: &str) -> bool {
        let mut known = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(topic) {
            return true;
        }
        if known.len() >= 100_000 {
            known.clear();
        }
        known.insert(topic.to_owned());
        false
    }

    /// One script call for `group` (appends to `topic`, in order); answers each.
    async fn send(&self, topic: String, group: Vec<Pending>) {
        let ttl = self.retention.idempotency_window.as_millis().max(1) as u64;
        let mut keys: Vec<String> = self.keys.topic(&topic).into();
        for p in &group {
            let key = p.key.as_deref().unwrap_or("");
            keys.push(self.keys.key(&topic, &format!("i:{key}")));
        }
        let (channel, topics) = (self.keys.channel(&topic), self.keys.topics());
        let (max_count, inbox) = (self.retention.max_count, is_inbox(&topic));
        // The registry of topics, for retention by age (another slot: not in the script);
        // once per topic per node, in the same round trip as its first append.
        let register = !self.registered(&topic);
        let (script, group_ref, topic_ref) = (&self.script, &group, &topic);
        let started = std::time::Instant::now();
        let out: Result<Vec<Vec<u8>>, StoreError> = self
            .conn
            .call(|mut c, epoch| async move {
                let mut invocation = with_keys(script, &keys);
                invocation
                    .arg(&*epoch)
                    .arg(max_count)
                    .arg(&channel)
                    .arg(u8::from(inbox));
                for p in group_ref {
                    let ttl = if p.key.is_some() { ttl } else { 0 };
                    invocation.arg(p.n.time).arg(&p.entry).arg(ttl);
                }
                if register {
                    let _: () = redis::cmd("SADD")
                        .arg(&topics)
                        .arg(topic_ref)
                        .query_async(&mut c)
                        .await?;
                }
                invocation.invoke_async(&mut c).await
            })
            .await;
        let m = crate::metrics::hot();
        m.redis_append.record(started.elapsed().as_secs_f64());
        m.redis_group.record(group.len() as f64);
        let out = match out {
            Ok(out) if out.len() == 5 * group.len() => out,
            Ok(_) => {
                for p in group {
                    let _ = p
                        .reply
                        .send(Err(StoreError::Corrupt("short append answer".into())));
                }
                return;
            }
            Err(e) => {
                let why = e.to_string();
                for p in group {
                    let e = match &e {
                        StoreError::Unavailable(_) => StoreError::Unavailable(why.clone()),
                        _ => StoreError::Backend(why.clone()),
                    };
                    let _ = p.reply.send(Err(e));
                }
                return;
            }
        };
        for (p, answer) in group.into_iter().zip(out.chunks_exact(5)) {
            let _ = p.reply.send(appended(&topic, p.n, answer));
        }
    }
}

/// One notification's five answer values (see the script).
fn appended(topic: &str, mut n: Notification, answer: &[Vec<u8>]) -> Result<Appended, StoreError> {
    let corrupt = || StoreError::Corrupt("unreadable append answer".into());
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| corrupt())
    };
    if answer[0].as_slice() != b"1" {
        return Ok(Appended {
            stored: parse_message(topic, &answer[1]).ok_or_else(corrupt)?,
            duplicate: true,
        });
    }
    n.epoch = text(&answer[1])?;
    n.offset = text(&answer[2])?.parse().map_err(|_| corrupt())?;
    let count = match (text(&answer[3])?.parse(), text(&answer[4])?.parse()) {
        (Ok(unread), Ok(seq)) => Some(InboxCount { unread, seq }),
        _ => None,
    };
    Ok(Appended {
        stored: Stored::with_inbox(n, count),
        duplicate: false,
    })
}

/// The store over Redis. Cheap to share; every call is a round trip or a script.
pub struct RedisStore {
    pub(crate) conn: Arc<Connector>,
    pub(crate) keys: Keys,
    retention: Retention,
    /// Appends wait here for [`Appender`], which sends each topic's waiting appends as one
    /// script call.
    appends: tokio::sync::mpsc::Sender<Pending>,
    read: redis::Script,
    inbox_update: redis::Script,
    inbox_list: redis::Script,
    prune: redis::Script,
}

impl RedisStore {
    /// Connects lazily: the first call reaches Redis (and a Redis that is down makes calls
    /// fail with `Unavailable`, not the start).
    /// Call within a tokio runtime: it starts the task that sends appends.
    pub fn new(url: &str, prefix: &str, retention: Retention) -> Result<Self, StoreError> {
        let conn = Arc::new(Connector::new(url)?);
        let keys = Keys::new(prefix);
        let (appends, waiting) = tokio::sync::mpsc::channel(APPEND_QUEUE);
        let appender = Arc::new(Appender {
            conn: conn.clone(),
            keys: keys.clone(),
            retention,
            script: redis::Script::new(&scripts::full(scripts::APPEND)),
            registered: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        tokio::spawn(appender.run(waiting));
        Ok(Self {
            conn,
            keys,
            retention,
            appends,
            read: redis::Script::new(&scripts::full(scripts::READ)),
            inbox_update: redis::Script::new(&scripts::full(scripts::INBOX_UPDATE)),
            inbox_list: redis::Script::new(&scripts::full(scripts::INBOX_LIST)),
            prune: redis::Script::new(&scripts::full(scripts::PRUNE)),
        })
    }

    /// The stored notifications of a `read` script's answer, after its three header fields.
    fn entries(topic: &str, epoch: &str, rest: &[String]) -> Result<Vec<Arc<Stored>>, StoreError> {
        rest.chunks_exact(2)
            .map(|pair| {
                let offset = pair[0]
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("offset {:?}", pair[0])))?;
                let entry: Entry = serde_json::from_str(&pair[1])
                    .map_err(|e| StoreError::Corrupt(format!("entry {offset}: {e}")))?;
                Ok(Stored::new(entry.into_notification(topic, epoch, offset)))
            })
            .collect()
    }

    /// A topic's position and up to `limit` entries between `lo` and `hi` (inclusive).
    async fn read_range(
        &self,
        topic: &str,
        lo: u64,
        hi: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        let keys = [self.keys.key(topic, "m"), self.keys.key(topic, "l")];
        let script = &self.read;
        let out: Vec<String> = self
            .conn
            .call(|mut c, epoch| async move {
                with_keys(script, &keys)
                    .arg(&*epoch)
                    .arg(lo)
                    .arg(hi)
                    .arg(limit)
                    .arg(u8::from(newest_first))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [epoch, top, first, rest @ ..] = out.as_slice() else {
            return Err(StoreError::Corrupt("short read answer".into()));
        };
        let num = |s: &String| {
            s.parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("number {s:?}")))
        };
        let pos = TopicPosition {
            epoch: epoch.clone(),
            first: num(first)?,
            last: num(top)?,
        };
        let items = Self::entries(topic, epoch, rest)?;
        Ok((pos, items))
    }

    /// Every topic that was ever appended to (for retention by age).
    async fn topics(&self) -> Result<Vec<String>, StoreError> {
        let key = self.keys.topics();
        self.conn
            .call(|mut c, _| async move {
                redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await
            })
            .await
    }
}

#[async_trait]
impl Store for RedisStore {
    /// A connection is up: made, and not dropped by a failed call since. Every node calls
    /// Redis at least every two seconds (presence liveness, the fan-out's checks), so a Redis
    /// that went away is noticed within a call timeout of that.
    fn ready(&self) -> Result<(), String> {
        match self.conn.current() {
            Some(_) => Ok(()),
            None => Err("not connected to redis".into()),
        }
    }

    async fn append(
        &self,
        topic: &str,
        new: NewNotification,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError> {
        let n = materialize(topic, "", 0, super::now_ms(), new);
        let entry = serde_json::to_string(&Entry::of(&n))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            topic: topic.to_owned(),
            n,
            entry,
            key: idempotency_key,
            reply,
        };
        self.appends
            .send(pending)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read(
        &self,
        topic: &str,
        q: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        let lo = q.after.saturating_add(1).min(MAX_OFFSET);
        let hi = q.before.saturating_sub(1).min(MAX_OFFSET);
        // A count Redis accepts (any page is far smaller than retention anyway).
        let limit = if lo > hi || q.before == 0 {
            0
        } else {
            q.limit.min(1 << 31)
        };
        self.read_range(topic, lo, hi, limit, q.newest_first).await
    }

    async fn head(&self, topic: &str) -> Result<Head, StoreError> {
        let (pos, _) = self.read_range(topic, 1, 0, 0, false).await?;
        Ok(Head {
            epoch: pos.epoch,
            last: pos.last,
        })
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let cutoff = super::now_ms() - self.retention.max_age.as_millis() as i64;
        let mut dropped = 0u64;
        for topic in self.topics().await? {
            loop {
                let keys = self.keys.topic(&topic);
                let script = &self.prune;
                let inbox = is_inbox(&topic);
                let n: u64 = self
                    .conn
                    .call(|mut c, _| async move {
                        with_keys(script, &keys)
                            .arg(cutoff)
                            .arg(PRUNE_CHUNK)
                            .arg(u8::from(inbox))
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?;
                dropped += n;
                if (n as usize) < PRUNE_CHUNK {
                    break;
                }
            }
        }
        Ok(dropped)
    }

    async fn inbox_update(
        &self,
        topic: &str,
        update: InboxUpdate,
    ) -> Result<InboxChange, StoreError> {
        if !is_inbox(topic) {
            return Ok(InboxChange::default());
        }
        let (op, args): (&str, Vec<u64>) = match &update {
            InboxUpdate::Read { offsets } => ("read", offsets.clone()),
            InboxUpdate::Unread { offsets } => ("unread", offsets.clone()),
            InboxUpdate::Archive { offsets } => ("archive", offsets.clone()),
            InboxUpdate::Unarchive { offsets } => ("unarchive", offsets.clone()),
            InboxUpdate::ReadAll { up_to } => ("read_all", vec![(*up_to).min(MAX_OFFSET)]),
        };
        let args: Vec<u64> = args.into_iter().map(|o| o.min(MAX_OFFSET)).collect();
        let keys = self.keys.topic(topic);
        let script = &self.inbox_update;
        let (changed, unread, seq): (u64, u64, u64) = self
            .conn
            .call(|mut c, epoch| async move {
                with_keys(script, &keys)
                    .arg(&*epoch)
                    .arg(op)
                    .arg(&args)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(InboxChange {
            changed,
            count: InboxCount { unread, seq },
        })
    }

    async fn inbox_list(
        &self,
        topic: &str,
        query: InboxQuery,
        limit: usize,
    ) -> Result<(Vec<InboxItem>, InboxCount), StoreError> {
        if !is_inbox(topic) {
            return Ok((Vec::new(), InboxCount::default()));
        }
        let hi = match query.before {
            None => "+".to_owned(),
            Some(0) | Some(1) => return self.inbox_count_only(topic).await,
            Some(b) => (b - 1).min(MAX_OFFSET).to_string(),
        };
        let filter = match query.filter {
            app::protocol::InboxFilter::Unread => "unread",
            app::protocol::InboxFilter::All => "all",
            app::protocol::InboxFilter::Archived => "archived",
        };
        let category = query.category.clone().unwrap_or_default();
        let keys = self.keys.topic(topic);
        let script = &self.inbox_list;
        let out: Vec<String> = self
            .conn
            .call(|mut c, epoch| async move {
                with_keys(script, &keys)
                    .arg(&*epoch)
                    .arg(&hi)
                    .arg(filter)
                    .arg(&category)
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [epoch, unread, seq, rest @ ..] = out.as_slice() else {
            return Err(StoreError::Corrupt("short inbox answer".into()));
        };
        let count = InboxCount {
            unread: unread.parse().unwrap_or(0),
            seq: seq.parse().unwrap_or(0),
        };
        let items = rest
            .chunks_exact(3)
            .map(|t| {
                let offset: u64 = t[0]
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("offset {:?}", t[0])))?;
                let state: u8 = t[1].parse().unwrap_or(0);
                let entry: Entry = serde_json::from_str(&t[2])
                    .map_err(|e| StoreError::Corrupt(format!("entry {offset}: {e}")))?;
                Ok(InboxItem {
                    notification: entry.into_notification(topic, epoch, offset),
                    read: state & 1 == 1,
                    archived: state & 2 == 2,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((items, count))
    }
}

impl RedisStore {
    async fn inbox_count_only(
        &self,
        topic: &str,
    ) -> Result<(Vec<InboxItem>, InboxCount), StoreError> {
        let key = self.keys.key(topic, "m");
        let (unread, seq): (Option<u64>, Option<u64>) = self
            .conn
            .call(|mut c, _| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("u")
                    .arg("q")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((
            Vec::new(),
            InboxCount {
                unread: unread.unwrap_or(0),
                seq: seq.unwrap_or(0),
            },
        ))
    }
}

/// A fresh key prefix, so that tests (and several deployments) can share one Redis.
pub fn unique_prefix() -> String {
    format!("herald-{}", random_id(8))
}
