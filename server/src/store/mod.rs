//! The store: where notifications get their offsets and are kept.
//!
//! # The contract every store keeps
//! - **Offsets**: within a topic's epoch, the store assigns offsets 1, 2, 3, ... with no hole and
//!   no repeat, in the order appends are committed. An epoch changes only when the topic's history
//!   is reset (for the embedded stores: a new database, or any restart of the memory store).
//! - **Durability**: `append` returns only after the notification is as durable as the store
//!   promises (SQLite: committed, and with `SyncMode::Full` fsynced, in a group commit).
//! - **The feed**: every appended notification is sent exactly once to the feed given at
//!   construction, after it is durable and in offset order per topic. The hub fans out from the
//!   feed, so live delivery order is offset order. A notification is readable through `read`
//!   before it appears on the feed, which is what makes resume gap-free (see `session`).
//! - **Many at once**: `append_many` is `append` for each item, in order, each result standing
//!   alone; a store that groups its writes commits them together (SQLite: one transaction).
//! - **Idempotency**: an append with an idempotency key already seen on that topic within the
//!   window returns the original notification (`duplicate = true`) and appends nothing.
//! - **Retention**: `prune` drops notifications beyond the per-topic count or older than the age;
//!   it never lowers `last_offset`, so offsets are never reused. It works in bounded chunks, so
//!   appends are never held up behind a large prune.
//! - **Head without I/O**: `head` answers from memory (a bounded cache of per-topic positions),
//!   so a plain subscribe costs no disk read. It never reports an offset that is not readable
//!   yet, and never one lower than a notification already on the feed.
//! - **Bounded memory**: nothing keyed by a client-chosen name (topic, idempotency key) grows
//!   without limit in memory.
//! - **Values out of range** (`after`, `before` up to `u64::MAX`) are answered like any other:
//!   an empty or partial page, never an error.
//! - **Failure is visible**: a store that can no longer work (its writer died) says so through
//!   `fatal`, and never acknowledges what it did not store.
//!
//! - **Inboxes**: a topic named `@<user>` is that user's inbox. Its notifications also carry
//!   read state (read, archived), and the store keeps the inbox's unread count (unread and not
//!   archived) and a change counter `seq` beside them, changed in the same transaction as
//!   every arrival, state change and pruned notification, so the count is always exact, is
//!   read in O(1), and survives a crash. State changes are applied in the order they were
//!   submitted relative to appends. An arrival's notification carries the count after it
//!   ([`Stored::inbox`]).
//!
//! Every store passes the same conformance tests (`conformance.rs`).

mod memory;
pub mod redis;
pub(crate) mod sqlite;

#[cfg(test)]
mod conformance;

pub use memory::{MemoryLimits, MemoryStore};
pub use redis::RedisStore;
pub(crate) use sqlite::connect as connect_sqlite;
pub use sqlite::{SqliteOptions, SqliteStore};

use app::protocol::{InboxItem, InboxQuery, InboxUpdate, NewNotification, Notification};
use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store failed: {0}")]
    Backend(String),
    #[error("{0}")]
    Full(String),
    #[error("the store is shutting down")]
    Closed,
    /// The store's server cannot be reached now (Redis down); worth retrying shortly.
    #[error("{0}")]
    Unavailable(String),
}

/// A notification with its two encodings, each made once and shared by every reader.
#[derive(Debug)]
pub struct Stored {
    pub notification: Notification,
    /// The notification as JSON (the body of a publish reply).
    pub json: bytes::Bytes,
    /// `ServerFrame::Notification` as JSON text, made on first use: a notification nobody
    /// is subscribed to (or replaying) never needs it. See [`Stored::frame`].
    frame: std::sync::OnceLock<Utf8Bytes>,
    /// For an inbox arrival: the inbox's count right after it (live arrivals only; a read
    /// from the store has none).
    pub inbox: Option<InboxCount>,
}

/// An inbox's unread count (unread and not archived) and its change counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCount {
    pub unread: u64,
    pub seq: u64,
}

/// What an inbox update did: how many notifications changed state, and the count after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxChange {
    pub changed: u64,
    pub count: InboxCount,
}

/// What an internally tagged `ServerFrame::Notification` starts with; the rest of the frame
/// is the notification's own JSON object without its opening brace.
const FRAME_PREFIX: &str = r#"{"type":"notification","#;

impl Stored {
    /// Encodes the notification: the one place live delivery and publish replies get their
    /// bytes. It is serialized once; the frame is that JSON with the tag spliced in front,
    /// which is byte for byte what serializing `ServerFrame::Notification` gives (tested).
    pub fn new(notification: Notification) -> Arc<Self> {
        Self::with_inbox(notification, None)
    }

    /// [`Stored::new`] for an inbox arrival, with the inbox's count after it.
    pub fn with_inbox(notification: Notification, inbox: Option<InboxCount>) -> Arc<Self> {
        // Serializing plain structs of strings and integers cannot fail.
        let n = &notification;
        // Sized up front: growing the buffer while serializing would copy it again.
        let size = 160
            + n.body.len()
            + n.topic.len()
            + n.title.as_ref().map_or(0, String::len)
            + n.link.as_ref().map_or(0, String::len)
            + n.tags.iter().map(|t| t.len() + 3).sum::<usize>();
        let mut json = Vec::with_capacity(size);
        if serde_json::to_writer(&mut json, n).is_err() {
            json = b"{}".to_vec();
        }
        Arc::new(Self {
            notification,
            json: bytes::Bytes::from(json),
            frame: std::sync::OnceLock::new(),
            inbox,
        })
    }

    /// The WebSocket frame: the notification's JSON with `"type":"notification"` spliced in
    /// front, made once (by whoever needs it first) and shared by every subscriber.
    pub fn frame(&self) -> &Utf8Bytes {
        self.frame.get_or_init(|| {
            let mut frame = String::with_capacity(FRAME_PREFIX.len() + self.json.len());
            frame.push_str(FRAME_PREFIX);
            // `json` is UTF-8 (serde_json writes nothing else) and starts with '{'.
            frame.push_str(std::str::from_utf8(&self.json[1..]).unwrap_or("}"));
            Utf8Bytes::from(frame)
        })
    }
}

/// The ordered stream of committed notifications, consumed by the hub's dispatcher.
pub type Feed = mpsc::Sender<Arc<Stored>>;

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    pub stored: Arc<Stored>,
    /// True when the idempotency key matched an earlier append, which is returned instead.
    pub duplicate: bool,
}

/// A topic's newest offset: where a live subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub epoch: String,
    /// Newest offset assigned and readable; 0 before the first publish.
    pub last: u64,
}

/// Counters a store keeps about itself (for `/api/stats` and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StoreStats {
    /// Reads that went to disk (history pages, and heads not in the cache).
    pub disk_reads: u64,
    /// Most reads that ever ran at the same time (bounded by the reader pool).
    pub concurrent_reads_max: u64,
    /// Topics whose position is cached.
    pub cached_topics: u64,
    /// Appends and prunes waiting for the writer.
    pub queued_writes: u64,
}

/// Where a topic's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPosition {
    pub epoch: String,
    /// Oldest retained offset; `last + 1` when nothing is retained.
    pub first: u64,
    /// Newest offset assigned; 0 before the first publish.
    pub last: u64,
}

/// Which slice of a topic's history to read.
#[derive(Debug, Clone, Copy)]
pub struct ReadQuery {
    /// Only offsets strictly greater than this.
    pub after: u64,
    /// Only offsets strictly smaller than this.
    pub before: u64,
    pub limit: usize,
    /// Newest first (for browsing) instead of oldest first (for replay).
    pub newest_first: bool,
}

impl ReadQuery {
    pub fn after(after: u64, limit: usize) -> Self {
        Self {
            after,
            before: u64::MAX,
            limit,
            newest_first: false,
        }
    }
}

/// Retention and idempotency bounds shared by the stores.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_count: u64,
    pub max_age: Duration,
    pub idempotency_window: Duration,
}

/// One append of an [`Store::append_many`].
#[derive(Debug, Clone)]
pub struct AppendItem {
    pub topic: String,
    pub new: NewNotification,
    pub key: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Assigns the next offset on `topic`, makes the notification durable, sends it to the feed
    /// and returns it. See the module docs for the guarantees.
    async fn append(
        &self,
        topic: &str,
        new: NewNotification,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError>;

    /// Appends each item as [`Store::append`] would, submitted together: a store that groups
    /// its writes (SQLite) commits them all in one transaction (a bulk send to 1,000 inboxes
    /// is one group commit, never split between two). One result per item, in order; each
    /// stands alone, as if appended by itself.
    async fn append_many(&self, items: Vec<AppendItem>) -> Vec<Result<Appended, StoreError>> {
        let appends = items
            .into_iter()
            .map(|i| async move { self.append(&i.topic, i.new, i.key).await });
        futures::future::join_all(appends).await
    }

    /// Reads retained notifications, with the topic's position at the time of the read.
    async fn read(
        &self,
        topic: &str,
        query: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError>;

    /// The topic's epoch and newest offset, from memory (see "Head without I/O").
    async fn head(&self, topic: &str) -> Result<Head, StoreError>;

    /// Applies retention now, in bounded chunks; returns how many notifications were dropped.
    async fn prune(&self) -> Result<u64, StoreError>;

    /// Changes read state in the inbox `topic` (`@<user>`); offsets that name nothing (never
    /// stored, pruned) or are already in the asked state change nothing.
    async fn inbox_update(
        &self,
        topic: &str,
        update: InboxUpdate,
    ) -> Result<InboxChange, StoreError>;

    /// A page of the inbox `topic`, newest first, with its count at the same moment.
    /// `limit` is the caller's, already bounded.
    async fn inbox_list(
        &self,
        topic: &str,
        query: InboxQuery,
        limit: usize,
    ) -> Result<(Vec<InboxItem>, InboxCount), StoreError>;

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Why the store can no longer work, once it cannot. It never recovers: the process
    /// should report unhealthy and exit so that a supervisor restarts it.
    fn fatal(&self) -> Option<String> {
        None
    }

    /// Whether the store can take a write now, without asking it anything (readiness must
    /// answer at once and never wait behind publishes): the writer is alive (SQLite), a
    /// connection is up (Redis). `Err` says why not.
    fn ready(&self) -> Result<(), String> {
        self.fatal().map_or(Ok(()), Err)
    }

    /// Resolves with the reason once [`Store::fatal`] has one.
    async fn failed(&self) -> String {
        std::future::pending().await
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random id of `len` URL-safe characters (62 symbols: about 5.95 bits each).
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = String::with_capacity(len);
    let mut bits = 0u64;
    for i in 0..len {
        // Ten symbols per 64-bit draw; the modulo bias over 2^6-sized slices is under 0.1%.
        if i % 10 == 0 {
            bits = fastrand::u64(..);
        }
        id.push(ALPHABET[((bits & 63) % 62) as usize] as char);
        bits >>= 6;
    }
    id
}

/// Builds the stored notification from a validated request.
pub(crate) fn materialize(
    topic: &str,
    epoch: &str,
    offset: u64,
    time: i64,
    new: NewNotification,
) -> Notification {
    Notification {
        id: random_id(12),
        topic: topic.to_owned(),
        epoch: epoch.to_owned(),
        offset,
        time,
        title: new.title.filter(|t| !t.is_empty()),
        body: new.body,
        priority: new.priority.unwrap_or(app::protocol::DEFAULT_PRIORITY),
        tags: new.tags,
        link: new.link.filter(|l| !l.is_empty()),
        category: new.category.filter(|c| !c.is_empty()),
        author: new.author,
    }
}

/// Whether `topic` is an inbox (`@<user>`).
pub fn is_inbox(topic: &str) -> bool {
    topic.starts_with('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &str) -> Notification {
        Notification {
            id: random_id(12),
            topic: "t".into(),
            epoch: "e".into(),
            offset: 7,
            time: 1,
            title: Some("T \"quoted\"".into()),
            body: body.into(),
            priority: 4,
            tags: vec!["a".into()],
            link: None,
            category: None,
            author: None,
        }
    }

    #[test]
    fn the_spliced_frame_is_exactly_the_serialized_server_frame() {
        for body in [
            "x",
            "line\nbreak",
            "ünïcödé \u{1F600}",
            "{\"type\":\"fake\"}",
        ] {
            let n = sample(body);
            let stored = Stored::new(n.clone());
            let expected =
                serde_json::to_string(&app::protocol::ServerFrame::Notification(n.clone()))
                    .unwrap();
            assert_eq!(stored.frame().as_str(), expected);
            assert_eq!(&stored.json[..], serde_json::to_vec(&n).unwrap());
        }
    }

    #[test]
    fn ids_use_the_whole_alphabet_and_have_the_asked_length() {
        let id = random_id(12);
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let seen: std::collections::HashSet<char> = (0..2000)
            .flat_map(|_| random_id(12).chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 62);
    }
}
