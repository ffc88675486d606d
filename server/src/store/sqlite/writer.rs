//! The SQLite writer thread: group commit of appends, and retention in bounded chunks.
//!
//! The thread owns the only write connection, so it is the only place offsets are assigned.
//! Its loop: take every queued command (up to `max_batch` appends), commit the appends in one
//! transaction, then do one prune chunk if a prune is running. A prune therefore never holds
//! appends up for longer than one chunk (`prune_chunk` rows, a few milliseconds), however much
//! it has to delete.

use super::{head_on_disk, PositionCache, SqliteOptions};
use crate::hooks::Hooks;
use crate::store::{materialize, now_ms, Appended, Feed, Retention, StoreError, Stored};
use app::protocol::{NewNotification, Notification};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

type AppendReply = oneshot::Sender<Result<Appended, StoreError>>;
type PruneReply = oneshot::Sender<Result<u64, StoreError>>;

pub(super) enum Command {
    Append {
        topic: String,
        new: NewNotification,
        key: Option<String>,
        reply: AppendReply,
    },
    Prune {
        reply: PruneReply,
    },
}

/// One queued append: topic, notification, idempotency key, where to answer.
type AppendRequest = (String, NewNotification, Option<String>, AppendReply);

/// Topics examined per prune chunk when pruning by count.
const PRUNE_TOPICS_PER_CHUNK: usize = 256;

pub(super) struct Writer {
    conn: Connection,
    /// The store-wide epoch, given to topics when they are first published to.
    epoch: Arc<str>,
    /// Shared with the readers; the writer raises a topic's offset only after its commit.
    cache: Arc<PositionCache>,
    feed: Feed,
    retention: Retention,
    options: SqliteOptions,
    hooks: Hooks,
}

/// What one append in a batch turned into, before the commit decides its fate.
enum Pending {
    New(Arc<Stored>, AppendReply),
    Duplicate(Arc<Stored>, AppendReply),
    Failed(StoreError, AppendReply),
}

/// A prune in progress: which stage it is in, and who waits for its result.
struct PruneJob {
    replies: Vec<PruneReply>,
    dropped: u64,
    stage: Stage,
    /// Age and idempotency cutoffs, fixed when the job starts.
    cutoff: i64,
    idem_cutoff: i64,
}

enum Stage {
    /// Notifications older than the age limit, oldest first (the time index).
    Age,
    /// Topics over the count limit, a page at a time in name order: `after` is the last name
    /// fetched, `queue` the fetched topics still to trim (with their last offsets).
    Count {
        after: String,
        queue: Vec<(String, u64)>,
    },
    /// Expired idempotency keys.
    Idempotency,
}

/// Runs the writer; if it panics, records why in `fatal` (once) so the store and the server
/// can report it. A clean stop (the store was dropped) records nothing.
pub(super) fn run_guarded(
    writer: Writer,
    rx: mpsc::Receiver<Command>,
    fatal: watch::Sender<Option<String>>,
) {
    let result = std::panic::catch_unwind(AssertUnwindSafe(move || writer.run(rx)));
    if let Err(panic) = result {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let why = format!("the SQLite writer thread died: {why}");
        tracing::error!(error = %why, "store failed; publishes are refused from now on");
        let _ = fatal.send(Some(why));
    }
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        epoch: Arc<str>,
        cache: Arc<PositionCache>,
        feed: Feed,
        retention: Retention,
        options: SqliteOptions,
        hooks: Hooks,
    ) -> Self {
        Self {
            conn,
            epoch,
            cache,
            feed,
            retention,
            options,
            hooks,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let max_batch = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        let mut prune: Option<PruneJob> = None;
        let mut open = true;
        while open || prune.is_some() {
            if prune.is_none() {
                // Idle: wait for work.
                match rx.blocking_recv() {
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let mut appends = Vec::with_capacity(batch.len());
            for c in batch.drain(..) {
                match c {
                    Command::Append {
                        topic,
                        new,
                        key,
                        reply,
                    } => appends.push((topic, new, key, reply)),
                    Command::Prune { reply } => match &mut prune {
                        // One prune at a time; a second request shares the running one's result.
                        Some(job) => job.replies.push(reply),
                        None => prune = Some(self.start_prune(reply)),
                    },
                }
            }
            if !appends.is_empty() {
                self.append_batch(appends);
            }
            if let Some(job) = &mut prune {
                let step = self.prune_chunk(job);
                if let Some(hook) = &self.hooks.after_prune_chunk {
                    hook(job.dropped);
                }
                match step {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Some(job) = prune.take() {
                            for r in job.replies {
                                let _ = r.send(Ok(job.dropped));
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(job) = prune.take() {
                            let msg = e.to_string();
                            for r in job.replies {
                                let _ = r.send(Err(StoreError::Backend(msg.clone())));
                            }
                        }
                    }
                }
            }
            if !open {
                // The store is gone: a prune in progress has nobody to answer.
                break;
            }
        }
        tracing::debug!("sqlite writer stopped");
    }

    fn append_batch(&mut self, appends: Vec<AppendRequest>) {
        // Topic -> (epoch, last offset) as this batch leaves it; published to the cache only
        // after the commit, so nobody sees an offset that could still be rolled back.
        let mut touched: HashMap<String, (Arc<str>, u64)> = HashMap::new();
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
                let (epoch, last) = match touched.get(&topic) {
                    Some(m) => m.clone(),
                    None => match self.cache.get(&topic) {
                        Some(m) => m,
                        None => {
                            let (e, l) = head_on_disk(&tx, &topic, &self.epoch)?;
                            (Arc::from(e), l)
                        }
                    },
                };
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
                touched.insert(topic.clone(), (epoch, offset));
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
            for (name, (epoch, last)) in &touched {
                tx.prepare_cached(
                    "INSERT INTO topics (name, epoch, last_offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET last_offset = excluded.last_offset",
                )?
                .execute(params![name, epoch.as_ref(), last])?;
            }
            if let Some(hook) = &self.hooks.before_commit {
                hook();
            }
            tx.commit()?;
            Ok(())
        })();

        match outcome {
            Ok(()) => {
                // Cache first, feed second: a head read never lags the feed (see the store's
                // contract), and never runs ahead of what is committed.
                for (name, (epoch, last)) in touched {
                    self.cache.set(&name, epoch, last);
                }
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
                for p in results {
                    let reply = match p {
                        Pending::New(_, r) | Pending::Duplicate(_, r) | Pending::Failed(_, r) => r,
                    };
                    let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }

    fn start_prune(&self, reply: PruneReply) -> PruneJob {
        let now = now_ms();
        PruneJob {
            replies: vec![reply],
            dropped: 0,
            stage: Stage::Age,
            cutoff: now - self.retention.max_age.as_millis() as i64,
            idem_cutoff: now - self.retention.idempotency_window.as_millis() as i64,
        }
    }

    /// One bounded step of a prune, in its own transaction. Returns whether the job is done.
    fn prune_chunk(&mut self, job: &mut PruneJob) -> Result<bool, StoreError> {
        let chunk = self.options.prune_chunk.max(1) as u64;
        let max_count = self.retention.max_count;
        let tx = self.conn.transaction()?;
        let done = match &mut job.stage {
            Stage::Age => {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM notifications WHERE (topic, offset) IN
                         (SELECT topic, offset FROM notifications WHERE time < ?1 LIMIT ?2)",
                    )?
                    .execute(params![job.cutoff, chunk])? as u64;
                job.dropped += n;
                if n < chunk {
                    job.stage = Stage::Count {
                        after: String::new(),
                        queue: Vec::new(),
                    };
                }
                false
            }
            Stage::Count { after, queue } => {
                if queue.is_empty() {
                    // The next page of topics that ever exceeded the limit, in name order.
                    let mut st = tx.prepare_cached(
                        "SELECT name, last_offset FROM topics WHERE name > ?1 AND last_offset > ?2
                         ORDER BY name LIMIT ?3",
                    )?;
                    let rows = st.query_map(
                        params![after.as_str(), max_count, PRUNE_TOPICS_PER_CHUNK as u64],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
                    )?;
                    *queue = rows.collect::<Result<_, _>>()?;
                    if let Some((last_name, _)) = queue.last() {
                        after.clone_from(last_name);
                    }
                    // Reversed, so `pop` takes them in name order.
                    queue.reverse();
                }
                if queue.is_empty() {
                    job.stage = Stage::Idempotency;
                } else {
                    // Trim topics until this chunk's row budget is spent.
                    let mut budget = chunk;
                    let mut visited = 0;
                    while let Some((topic, last)) = queue.last().cloned() {
                        if budget == 0 || visited == PRUNE_TOPICS_PER_CHUNK {
                            break;
                        }
                        visited += 1;
                        let n = tx
                            .prepare_cached(
                                "DELETE FROM notifications WHERE topic = ?1 AND offset IN
                                 (SELECT offset FROM notifications WHERE topic = ?1 AND offset <= ?2
                                  ORDER BY offset LIMIT ?3)",
                            )?
                            .execute(params![topic, last - max_count, budget])?
                            as u64;
                        job.dropped += n;
                        if n < budget {
                            queue.pop();
                        }
                        budget -= n;
                    }
                }
                false
            }
            Stage::Idempotency => {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM idempotency WHERE (topic, key) IN
                         (SELECT topic, key FROM idempotency WHERE time < ?1 LIMIT ?2)",
                    )?
                    .execute(params![job.idem_cutoff, chunk])? as u64;
                n < chunk
            }
        };
        tx.commit()?;
        Ok(done)
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
