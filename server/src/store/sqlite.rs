//! The embedded SQLite store (WAL mode) with group commit.
//!
//! One writer thread owns the write connection. Appends queue up on a bounded channel; the
//! writer takes everything queued (up to `max_batch`), writes it in one transaction and commits
//! once, so under load many publishes share one fsync. Only after the commit does it send the
//! batch to the feed (in offset order) and answer the publishers: an acknowledged publish is
//! committed, and with `SyncMode::Full` fsynced, so it survives a crash of the process or the
//! machine. Reads use their own connection; WAL lets them run beside the writer.

use super::{
    materialize, now_ms, random_id, Appended, Feed, ReadQuery, Retention, Store, StoreError,
    Stored, TopicPosition,
};
use crate::config::SyncMode;
use app::protocol::{NewNotification, Notification};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// Appends waiting for the writer; publishers wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 8192;

type AppendReply = oneshot::Sender<Result<Appended, StoreError>>;

/// One queued append: topic, notification, idempotency key, where to answer.
type AppendRequest = (String, NewNotification, Option<String>, AppendReply);

enum Command {
    Append {
        topic: String,
        new: NewNotification,
        key: Option<String>,
        reply: AppendReply,
    },
    Prune {
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    /// One read connection; reads are short and run on the blocking pool.
    reader: Arc<Mutex<Connection>>,
    /// The store-wide epoch, read once at open: the epoch of topics never published to.
    epoch: Arc<str>,
}

impl SqliteStore {
    /// Opens (creating it, its directory and its schema if needed) the database at `path`.
    pub fn open(
        path: &Path,
        sync: SyncMode,
        max_batch: usize,
        retention: Retention,
        feed: Feed,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
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
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            conn,
            epoch: epoch.clone(),
            topics: HashMap::new(),
            feed,
            retention,
            max_batch: max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            epoch: Arc::from(epoch),
        })
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// `store_epoch` is the epoch of a topic that has never been published to.
fn position(
    conn: &Connection,
    topic: &str,
    store_epoch: &str,
) -> Result<TopicPosition, StoreError> {
    let row: Option<(String, u64)> = conn
        .query_row(
            "SELECT epoch, last_offset FROM topics WHERE name = ?1",
            [topic],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (epoch, last) = row.unwrap_or_else(|| (store_epoch.to_owned(), 0));
    let first: Option<u64> = conn.query_row(
        "SELECT MIN(offset) FROM notifications WHERE topic = ?1",
        [topic],
        |r| r.get(0),
    )?;
    Ok(TopicPosition {
        epoch,
        first: first.unwrap_or(last + 1),
        last,
    })
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
    })
}

struct Writer {
    conn: Connection,
    /// The store-wide epoch, given to topics when they are first published to.
    epoch: String,
    /// Topic name -> (epoch, last offset), loaded on first use; the writer is the only one who
    /// changes offsets, so this cache is authoritative while the writer runs.
    topics: HashMap<String, (String, u64)>,
    feed: Feed,
    retention: Retention,
    max_batch: usize,
}

/// What one append in a batch turned into, before the commit decides its fate.
enum Pending {
    New(Arc<Stored>, AppendReply),
    Duplicate(Arc<Stored>, AppendReply),
    Failed(StoreError, AppendReply),
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while rx.blocking_recv().map(|c| batch.push(c)).is_some() {
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(batch.len());
            let mut prunes = Vec::new();
            for c in batch.drain(..) {
                match c {
                    Command::Append {
                        topic,
                        new,
                        key,
                        reply,
                    } => appends.push((topic, new, key, reply)),
                    Command::Prune { reply } => prunes.push(reply),
                }
            }
            if !appends.is_empty() {
                self.append_batch(appends);
            }
            for reply in prunes {
                let _ = reply.send(self.prune());
            }
        }
        tracing::debug!("sqlite writer stopped");
    }

    fn append_batch(&mut self, appends: Vec<AppendRequest>) {
        // Topic -> its (epoch, last offset) before this batch, to restore if the commit fails.
        let mut touched: HashMap<String, (String, u64)> = HashMap::new();
        let mut results = Vec::with_capacity(appends.len());
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            let now = now_ms();
            let idem_cutoff = now - self.retention.idempotency_window.as_millis() as i64;
            let mut batch_keys: HashMap<(String, String), Arc<Stored>> = HashMap::new();
            for (topic, new, key, reply) in appends {
                if let Some(k) = &key {
                    let hit = match batch_keys.get(&(topic.clone(), k.clone())) {
                        Some(s) => Some(s.clone()),
                        None => lookup_key(&tx, &topic, k, idem_cutoff)?,
                    };
                    if let Some(s) = hit {
                        results.push(Pending::Duplicate(s, reply));
                        continue;
                    }
                }
                let (epoch, last) = match self.topics.get(&topic) {
                    Some(m) => m.clone(),
                    None => {
                        let m: Option<(String, u64)> = tx
                            .query_row(
                                "SELECT epoch, last_offset FROM topics WHERE name = ?1",
                                [&topic],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )
                            .optional()?;
                        m.unwrap_or_else(|| (self.epoch.clone(), 0))
                    }
                };
                touched
                    .entry(topic.clone())
                    .or_insert_with(|| (epoch.clone(), last));
                let offset = last + 1;
                let n = materialize(&topic, &epoch, offset, now, new);
                let tags = serde_json::to_string(&n.tags).unwrap_or_else(|_| "[]".into());
                // Cached statements: preparing costs more than the insert itself.
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO notifications (topic, offset, id, time, title, body, priority, tags, link)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![n.topic, n.offset, n.id, n.time, n.title, n.body, n.priority, tags, n.link])
                    });
                if let Err(e) = inserted {
                    results.push(Pending::Failed(StoreError::Backend(e.to_string()), reply));
                    continue;
                }
                self.topics.insert(topic.clone(), (epoch, offset));
                let stored = Stored::new(n);
                if let Some(k) = key {
                    let json = serde_json::to_string(&stored.notification)
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency (topic, key, time, notification) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![topic, k, now, json])?;
                    batch_keys.insert((topic.clone(), k), stored.clone());
                }
                results.push(Pending::New(stored, reply));
            }
            for name in touched.keys() {
                let (epoch, last) = &self.topics[name];
                tx.prepare_cached(
                    "INSERT INTO topics (name, epoch, last_offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET last_offset = excluded.last_offset",
                )?
                .execute(params![name, epoch, last])?;
            }
            tx.commit()?;
            Ok(())
        })();

        match outcome {
            Ok(()) => {
                for p in results {
                    match p {
                        Pending::New(stored, reply) => {
                            // The hub may be gone during shutdown; the notification is stored.
                            let _ = self.feed.blocking_send(stored.clone());
                            let _ = reply.send(Ok(Appended {
                                stored,
                                duplicate: false,
                            }));
                        }
                        Pending::Duplicate(stored, reply) => {
                            let _ = reply.send(Ok(Appended {
                                stored,
                                duplicate: true,
                            }));
                        }
                        Pending::Failed(e, reply) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing in the batch was acknowledged");
                // Offsets handed out in the failed transaction were never committed: restore.
                for (name, meta) in touched {
                    self.topics.insert(name, meta);
                }
                for p in results {
                    let reply = match p {
                        Pending::New(_, r) | Pending::Duplicate(_, r) | Pending::Failed(_, r) => r,
                    };
                    let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }

    fn prune(&mut self) -> Result<u64, StoreError> {
        let now = now_ms();
        let cutoff = now - self.retention.max_age.as_millis() as i64;
        let idem_cutoff = now - self.retention.idempotency_window.as_millis() as i64;
        let tx = self.conn.transaction()?;
        let mut dropped = tx.execute("DELETE FROM notifications WHERE time < ?1", [cutoff])? as u64;
        // Per topic, a primary-key range delete: cheap, and a no-op for topics within bounds
        // (a correlated subquery would scan the whole table on the writer thread).
        let limits: Vec<(String, u64)> = {
            let mut st =
                tx.prepare("SELECT name, last_offset FROM topics WHERE last_offset > ?1")?;
            let rows = st.query_map([self.retention.max_count], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (topic, last) in limits {
            dropped += tx
                .prepare_cached("DELETE FROM notifications WHERE topic = ?1 AND offset <= ?2")?
                .execute(params![topic, last - self.retention.max_count])?
                as u64;
        }
        tx.execute("DELETE FROM idempotency WHERE time < ?1", [idem_cutoff])?;
        tx.commit()?;
        Ok(dropped)
    }
}

fn lookup_key(
    tx: &Connection,
    topic: &str,
    key: &str,
    cutoff: i64,
) -> Result<Option<Arc<Stored>>, StoreError> {
    let json: Option<String> = tx
        .prepare_cached(
            "SELECT notification FROM idempotency WHERE topic = ?1 AND key = ?2 AND time >= ?3",
        )?
        .query_row(params![topic, key, cutoff], |r| r.get(0))
        .optional()?;
    match json {
        Some(j) => {
            let n: Notification =
                serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(Some(Stored::new(n)))
        }
        None => Ok(None),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        topic: &str,
        new: NewNotification,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Append {
            topic: topic.to_owned(),
            new,
            key: idempotency_key,
            reply,
        };
        self.writer
            .send(cmd)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read(
        &self,
        topic: &str,
        q: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        let (topic, epoch) = (topic.to_owned(), self.epoch.clone());
        self.with_reader(move |conn| {
            // One read transaction, so the position and the rows agree.
            let tx = conn.transaction()?;
            let pos = position(&tx, &topic, &epoch)?;
            let order = if q.newest_first { "DESC" } else { "ASC" };
            let sql = format!(
                "SELECT topic, offset, id, time, title, body, priority, tags, link FROM notifications
                 WHERE topic = ?1 AND offset > ?2 AND offset < ?3 ORDER BY offset {order} LIMIT ?4"
            );
            let before = q.before.min(i64::MAX as u64);
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![topic, q.after, before, q.limit as u64], row_to_notification)?;
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

    async fn position(&self, topic: &str) -> Result<TopicPosition, StoreError> {
        let (topic, epoch) = (topic.to_owned(), self.epoch.clone());
        self.with_reader(move |conn| position(conn, &topic, &epoch))
            .await
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Command::Prune { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
