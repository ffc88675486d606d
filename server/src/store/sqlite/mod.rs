//! The embedded SQLite store (WAL mode) with group commit.
//!
//! - One writer thread ([`writer`]) owns the write connection. Appends queue up on a bounded
//!   channel; the writer takes everything queued (up to `max_batch`), writes it in one
//!   transaction and commits once, so under load many publishes share one fsync. Only after
//!   the commit does it update the position cache, send the batch to the feed (in offset
//!   order) and answer the publishers: an acknowledged publish is committed, and with
//!   `SyncMode::Full` fsynced, so it survives a crash of the process or the machine.
//! - Reads go through a small pool of reader connections ([`Readers`]): at most
//!   `readers` reads run at once, each on tokio's blocking pool, so a burst of subscribers
//!   cannot spawn a thread each. WAL lets them run beside the writer.
//! - Heads come from a bounded LRU cache of per-topic positions ([`PositionCache`]); only a
//!   topic not in it costs a disk read.
//! - If the writer thread dies, the store reports it through `fatal` once and for all; every
//!   append from then on fails with `Closed` (503), never with a false acknowledgement.
//! - Checkpoints (copying the WAL back into the database) run on a thread of their own, not
//!   inside the writer's commits: SQLite's automatic checkpoint makes the commit that
//!   crosses its threshold pay for it, which was every tail latency of the inbox benchmarks
//!   (a mark-all-read p99 of 11 ms against a p50 of 0.9 ms). The writer only finishes the
//!   thread's work, a few pages, so that the WAL can start over ([`checkpoint`]).

mod checkpoint;
mod writer;

use super::{
    random_id, AppendItem, Appended, Feed, Head, InboxChange, InboxCount, ReadQuery, Retention,
    Store, StoreError, StoreStats, Stored, TopicPosition,
};
use crate::config::SyncMode;
use crate::hooks::Hooks;
use app::protocol::{
    InboxFilter, InboxItem, InboxQuery, InboxUpdate, NewNotification, Notification,
};
use async_trait::async_trait;
use lru::LruCache;
use rusqlite::{params, Connection, OptionalExtension};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use writer::{Command, Writer};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE topics (
        name TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        last_offset INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE notifications (
        topic TEXT NOT NULL,
        offset INTEGER NOT NULL,
        id TEXT NOT NULL,
        time INTEGER NOT NULL,
        title TEXT,
        body TEXT NOT NULL,
        priority INTEGER NOT NULL,
        tags TEXT NOT NULL,
        link TEXT,
        PRIMARY KEY (topic, offset)
    ) WITHOUT ROWID;
    CREATE INDEX notifications_time ON notifications (time);
    CREATE TABLE idempotency (
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        time INTEGER NOT NULL,
        notification TEXT NOT NULL,
        PRIMARY KEY (topic, key)
    ) WITHOUT ROWID;
"#,
    // Expired idempotency keys are pruned in chunks, oldest first.
    "CREATE INDEX idempotency_time ON idempotency (time);",
    // Inboxes (topics named `@<user>`): read state per notification, and per inbox its unread
    // count and change counter, on the topic's own row (which every append updates anyway),
    // kept in the same transactions as the changes. No index: with arrivals to distinct
    // users, every index is one more page written per notification (measured: the count in a
    // table of its own and a partial index of unread items cost a third of the rate).
    r#"
    ALTER TABLE notifications ADD COLUMN category TEXT;
    ALTER TABLE notifications ADD COLUMN read INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE notifications ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE topics ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE topics ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
"#,
    // Chat: who sent a message, as the server established it.
    "ALTER TABLE notifications ADD COLUMN author TEXT;",
];

/// The writer's page cache, in KiB (SQLite's default is 2 MiB). An append writes the last
/// leaf of its topic's B-tree; with arrivals spread over many topics (a bulk send to 1,000
/// inboxes touches 1,000 leaves) a small cache reads each of them back from the OS on every
/// commit. Measured on the bulk benchmark: 15-20% more notifications stored per second.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Appends waiting for the writer; publishers wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 8192;
/// No offset can exceed SQLite's largest integer; larger query bounds mean "no bound".
const MAX_OFFSET: u64 = i64::MAX as u64;

/// How the SQLite store is run.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    pub sync: SyncMode,
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Reader connections: at most this many reads run at once.
    pub readers: usize,
    /// Topics whose position is kept in memory.
    pub cached_topics: usize,
    /// Rows deleted per prune transaction.
    pub prune_chunk: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Full,
            max_batch: 1024,
            readers: 4,
            cached_topics: 65_536,
            prune_chunk: 1000,
        }
    }
}

/// Per-topic positions (epoch, last offset) of recently used topics, shared by the writer
/// (the only one who raises them, after each commit and before the feed) and the readers
/// (who fill in topics they had to read from disk). A bounded LRU: topic names are chosen by
/// clients, so the cache must not grow with them.
pub(super) struct PositionCache {
    inner: Mutex<LruCache<String, (Arc<str>, u64)>>,
}

impl PositionCache {
    fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Arc<str>, u64)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, topic: &str) -> Option<(Arc<str>, u64)> {
        self.lock().get(topic).cloned()
    }

    /// The writer's update after a commit: authoritative.
    pub(super) fn set(&self, topic: &str, epoch: Arc<str>, last: u64) {
        self.lock().put(topic.to_owned(), (epoch, last));
    }

    /// A reader's update from disk: it may be older than what the writer set meanwhile, so
    /// it never lowers a cached offset.
    fn fill(&self, topic: &str, epoch: Arc<str>, last: u64) {
        let mut cache = self.lock();
        match cache.get_mut(topic) {
            Some(entry) if entry.1 >= last => {}
            Some(entry) => *entry = (epoch, last),
            None => {
                cache.put(topic.to_owned(), (epoch, last));
            }
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A bounded pool of reader connections. A read takes a permit, borrows a connection, and
/// runs on tokio's blocking pool; with `n` permits at most `n` blocking threads ever read.
struct Readers {
    path: PathBuf,
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    running: AtomicU64,
    running_max: AtomicU64,
    disk_reads: AtomicU64,
}

impl Readers {
    fn open(path: &Path, n: usize) -> Result<Self, StoreError> {
        let n = n.max(1);
        let conns = (0..n)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_owned(),
            conns: Mutex::new(conns),
            permits: Semaphore::new(n),
            running: AtomicU64::new(0),
            running_max: AtomicU64::new(0),
            disk_reads: AtomicU64::new(0),
        })
    }

    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = self.conns.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match conn {
            Some(c) => c,
            // A read that panicked took its connection with it: open a replacement.
            None => open_reader(&self.path)?,
        };
        let now = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.running_max.fetch_max(now, Ordering::AcqRel);
        self.disk_reads.fetch_add(1, Ordering::Relaxed);
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&mut conn);
            (conn, r)
        })
        .await;
        self.running.fetch_sub(1, Ordering::AcqRel);
        let (conn, result) = joined.map_err(|e| StoreError::Backend(e.to_string()))?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }
}

/// Opens a connection to a database of Herald's. Every SQLite connection of the process (tests
/// included: SQLite must not be started while the wrapper is installed) is opened here, so
/// that SQLite's page cache is wrapped ([`sqlite_pcache`]: commits that split
/// a B-tree page no longer walk the writer's whole cache) before the first one opens. Should
/// that fail (SQLite was started by someone else first), nothing is wrong, only slower.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = sqlite_pcache::install() {
        REPORTED.call_once(|| tracing::warn!(error = %e, "SQLite's page cache is not wrapped"));
    }
    let conn = Connection::open(path)?;
    // One plan per statement, whatever the values bound to it. SQLite built with STAT4 (as
    // rusqlite bundles it) otherwise marks a statement whose plan could depend on a bound
    // value (a range of offsets in one topic, say) to be parsed and planned again whenever a
    // new value is bound: every read of a page of history. Herald never runs ANALYZE, so
    // there are no statistics that another plan could come from.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = connect(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: Arc<Readers>,
    cache: Arc<PositionCache>,
    /// The store-wide epoch, read once at open: the epoch of topics never published to.
    epoch: Arc<str>,
    /// `Some(reason)` once the writer thread has died.
    fatal: watch::Receiver<Option<String>>,
    /// Dropped with the store: the checkpoint thread then stops.
    _checkpoints: std::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating it, its directory and its schema if needed) the database at `path`.
    pub fn open(
        path: &Path,
        options: SqliteOptions,
        retention: Retention,
        feed: Feed,
        hooks: Hooks,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        let sync = match options.sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        let progress = Arc::new(checkpoint::Progress::default());
        let cycle = checkpoint::Cycle::DEFAULT;
        checkpoint::install(&mut conn, cycle, progress.clone())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let epoch: String = match conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .optional()?
        {
            Some(e) => e,
            None => {
                let e = random_id(8);
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", [&e])?;
                e
            }
        };
        let epoch: Arc<str> = Arc::from(epoch);
        let readers = Arc::new(Readers::open(path, options.readers)?);
        let cache = Arc::new(PositionCache::new(options.cached_topics));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (fatal_tx, fatal) = watch::channel(None);
        let writer = Writer::new(
            conn,
            epoch.clone(),
            cache.clone(),
            feed,
            retention,
            options,
            hooks,
        );
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer::run_guarded(writer, rx, fatal_tx))?;
        let checkpointer = open_reader(path)?;
        let (checkpoints, stop) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("herald-sqlite-checkpoint".into())
            .spawn(move || checkpoint::run(&checkpointer, cycle, &progress, &stop))?;
        Ok(Self {
            writer: tx,
            readers,
            cache,
            epoch,
            fatal,
            _checkpoints: checkpoints,
        })
    }
}

impl SqliteStore {
    /// Queues a command for the writer and waits for its answer. A dropped reply means the
    /// writer died mid-batch: nothing is acknowledged.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        // A newer Herald's database: what its rows mean may have changed in ways this version
        // would get wrong (reusing offsets, say), so it is not opened at all.
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this Herald's {}: \
             run the Herald that wrote it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The committed (epoch, last offset) of a topic; `store_epoch` and 0 if never published to.
fn head_on_disk(
    conn: &Connection,
    topic: &str,
    store_epoch: &str,
) -> Result<(String, u64), StoreError> {
    let row: Option<(String, u64)> = conn
        .prepare_cached("SELECT epoch, last_offset FROM topics WHERE name = ?1")?
        .query_row([topic], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.unwrap_or_else(|| (store_epoch.to_owned(), 0)))
}

fn position(
    conn: &Connection,
    topic: &str,
    store_epoch: &str,
) -> Result<TopicPosition, StoreError> {
    let (epoch, last) = head_on_disk(conn, topic, store_epoch)?;
    let first: Option<u64> = conn
        .prepare_cached("SELECT MIN(offset) FROM notifications WHERE topic = ?1")?
        .query_row([topic], |r| r.get(0))?;
    Ok(TopicPosition {
        epoch,
        first: first.unwrap_or(last + 1),
        last,
    })
}

/// An inbox's count as committed (zero for an inbox that never received anything).
pub(super) fn inbox_count(conn: &Connection, topic: &str) -> Result<InboxCount, StoreError> {
    let row: Option<(u64, u64)> = conn
        .prepare_cached("SELECT unread, seq FROM topics WHERE name = ?1")?
        .query_row([topic], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(
        row.map_or_else(InboxCount::default, |(unread, seq)| InboxCount {
            unread,
            seq,
        }),
    )
}

fn row_to_notification(r: &rusqlite::Row<'_>) -> rusqlite::Result<Notification> {
    let tags: String = r.get(7)?;
    Ok(Notification {
        topic: r.get(0)?,
        epoch: String::new(),
        offset: r.get(1)?,
        id: r.get(2)?,
        time: r.get(3)?,
        title: r.get(4)?,
        body: r.get(5)?,
        priority: r.get(6)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        link: r.get(8)?,
        category: r.get(9)?,
        author: r.get(10)?,
    })
}

/// The columns [`row_to_notification`] reads, in order.
const COLUMNS: &str =
    "topic, offset, id, time, title, body, priority, tags, link, category, author";

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        topic: &str,
        new: NewNotification,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError> {
        self.ask(|reply| Command::Append {
            topic: topic.to_owned(),
            new,
            key: idempotency_key,
            reply,
        })
        .await
    }

    async fn append_many(&self, items: Vec<AppendItem>) -> Vec<Result<Appended, StoreError>> {
        let n = items.len();
        let closed = || (0..n).map(|_| Err(StoreError::Closed)).collect();
        let (reply, rx) = oneshot::channel();
        if self
            .writer
            .send(Command::AppendMany { items, reply })
            .await
            .is_err()
        {
            return closed();
        }
        rx.await.unwrap_or_else(|_| closed())
    }

    async fn read(
        &self,
        topic: &str,
        q: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        let (topic, epoch) = (topic.to_owned(), self.epoch.clone());
        let after = q.after.min(MAX_OFFSET);
        let before = q.before.min(MAX_OFFSET);
        let limit = q.limit.min(MAX_OFFSET as usize) as u64;
        self.readers
            .run(move |conn| {
                // One read transaction, so the position and the rows agree.
                let tx = conn.transaction()?;
                let pos = position(&tx, &topic, &epoch)?;
                let order = if q.newest_first { "DESC" } else { "ASC" };
                let sql = format!(
                    "SELECT {COLUMNS} FROM notifications
                     WHERE topic = ?1 AND offset > ?2 AND offset < ?3 ORDER BY offset {order} LIMIT ?4"
                );
                let mut stmt = tx.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![topic, after, before, limit], row_to_notification)?;
                let mut out = Vec::new();
                for r in rows {
                    let mut n = r?;
                    n.epoch.clone_from(&pos.epoch);
                    out.push(Stored::new(n));
                }
                drop(stmt);
                tx.finish()?;
                Ok((pos, out))
            })
            .await
    }

    async fn head(&self, topic: &str) -> Result<Head, StoreError> {
        if let Some((epoch, last)) = self.cache.get(topic) {
            return Ok(Head {
                epoch: epoch.to_string(),
                last,
            });
        }
        let (name, store_epoch) = (topic.to_owned(), self.epoch.clone());
        let (epoch, last) = self
            .readers
            .run(move |conn| head_on_disk(conn, &name, &store_epoch))
            .await?;
        self.cache.fill(topic, Arc::from(epoch.as_str()), last);
        // Whatever the cache holds now is at least as new as the disk read.
        let (epoch, last) = self.cache.get(topic).unwrap_or((Arc::from(epoch), last));
        Ok(Head {
            epoch: epoch.to_string(),
            last,
        })
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        self.ask(|reply| Command::Prune { reply }).await
    }

    async fn inbox_update(
        &self,
        topic: &str,
        update: InboxUpdate,
    ) -> Result<InboxChange, StoreError> {
        self.ask(|reply| Command::Inbox {
            topic: topic.to_owned(),
            update,
            reply,
        })
        .await
    }

    async fn inbox_list(
        &self,
        topic: &str,
        query: InboxQuery,
        limit: usize,
    ) -> Result<(Vec<InboxItem>, InboxCount), StoreError> {
        let (topic, epoch) = (topic.to_owned(), self.epoch.clone());
        self.readers
            .run(move |conn| {
                // One read transaction, so the page and the count agree.
                let tx = conn.transaction()?;
                let (epoch, _) = head_on_disk(&tx, &topic, &epoch)?;
                let count = inbox_count(&tx, &topic)?;
                let state = match query.filter {
                    InboxFilter::Unread => "AND read = 0 AND archived = 0",
                    InboxFilter::All => "AND archived = 0",
                    InboxFilter::Archived => "AND archived = 1",
                };
                let sql = format!(
                    "SELECT {COLUMNS}, read, archived FROM notifications
                     WHERE topic = ?1 AND offset < ?2 AND (?3 IS NULL OR category = ?3) {state}
                     ORDER BY offset DESC LIMIT ?4"
                );
                let before = query.before.unwrap_or(MAX_OFFSET).min(MAX_OFFSET);
                let mut stmt = tx.prepare_cached(&sql)?;
                let rows =
                    stmt.query_map(params![topic, before, query.category, limit as u64], |r| {
                        let mut notification = row_to_notification(r)?;
                        notification.epoch.clone_from(&epoch);
                        Ok(InboxItem {
                            notification,
                            read: r.get(11)?,
                            archived: r.get(12)?,
                        })
                    })?;
                let items = rows.collect::<Result<Vec<_>, _>>()?;
                drop(stmt);
                tx.finish()?;
                Ok((items, count))
            })
            .await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            disk_reads: self.readers.disk_reads.load(Ordering::Relaxed),
            concurrent_reads_max: self.readers.running_max.load(Ordering::Relaxed),
            cached_topics: self.cache.len() as u64,
            queued_writes: (self.writer.max_capacity() - self.writer.capacity()) as u64,
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    fn ready(&self) -> Result<(), String> {
        if let Some(why) = self.fatal() {
            return Err(why);
        }
        if self.writer.is_closed() {
            return Err("the database writer has stopped".into());
        }
        Ok(())
    }

    async fn failed(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The writer thread ended without a failure (shutdown): never resolves.
                return std::future::pending().await;
            }
        }
    }
}
