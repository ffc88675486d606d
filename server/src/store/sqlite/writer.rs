//! The SQLite writer thread: group commit of appends, and retention in bounded chunks.
//!
//! The thread owns the only write connection, so it is the only place offsets are assigned.
//! Its loop: take every queued command (up to `max_batch` appends), commit the appends in one
//! transaction, then do one prune chunk if a prune is running. A prune therefore never holds
//! appends up for longer than one chunk (`prune_chunk` rows, a few milliseconds), however much
//! it has to delete.

use super::{head_on_disk, inbox_count, PositionCache, SqliteOptions};
use crate::hooks::Hooks;
use crate::store::{
    is_inbox, materialize, now_ms, AppendItem, Appended, Feed, InboxChange, InboxCount, Retention,
    StoreError, Stored,
};
use app::protocol::{InboxUpdate, NewNotification, Notification};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

type AppendReply = oneshot::Sender<Result<Appended, StoreError>>;
pub(super) type ManyReply = oneshot::Sender<Vec<Result<Appended, StoreError>>>;
type PruneReply = oneshot::Sender<Result<u64, StoreError>>;
type InboxReply = oneshot::Sender<Result<InboxChange, StoreError>>;

pub(super) enum Command {
    Append {
        topic: String,
        new: NewNotification,
        key: Option<String>,
        reply: AppendReply,
    },
    /// Appends that go into one group commit together (never split between two), answered
    /// together, one result per item in order.
    AppendMany {
        items: Vec<AppendItem>,
        reply: ManyReply,
    },
    Prune {
        reply: PruneReply,
    },
    Inbox {
        topic: String,
        update: InboxUpdate,
        reply: InboxReply,
    },
}

/// Work committed in one group transaction, in the order it was queued: appends, and inbox
/// state changes (which must see every append queued before them).
enum Work {
    Append(String, NewNotification, Option<String>, Sink),
    Inbox(String, InboxUpdate, InboxReply),
}

/// Where an append's result goes: its own reply, or its place in an `AppendMany`'s results.
enum Sink {
    One(AppendReply),
    Many { job: usize, index: usize },
}

/// An `AppendMany` of the batch, collecting its items' results.
struct ManyJob {
    results: Vec<Option<Result<Appended, StoreError>>>,
    reply: ManyReply,
}

impl ManyJob {
    /// Sends the results; an item the batch never got to (it failed before) is `Closed`, as
    /// for a single append whose reply was dropped.
    fn answer(self) {
        let results = self
            .results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
            .collect();
        let _ = self.reply.send(results);
    }
}

/// Delivers one append's result to where it goes.
fn answer(sink: Sink, many: &mut [ManyJob], result: Result<Appended, StoreError>) {
    match sink {
        Sink::One(reply) => {
            let _ = reply.send(result);
        }
        Sink::Many { job, index } => {
            if let Some(slot) = many.get_mut(job).and_then(|j| j.results.get_mut(index)) {
                *slot = Some(result);
            }
        }
    }
}

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
    New(Arc<Stored>, Sink),
    Duplicate(Arc<Stored>, Sink),
    Failed(StoreError, Sink),
    Inbox(InboxChange, InboxReply),
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
        // Appends (and other commands) in `batch`: an `AppendMany` counts its items.
        let size = |c: &Command| match c {
            Command::AppendMany { items, .. } => items.len(),
            _ => 1,
        };
        while open || prune.is_some() {
            let mut queued = 0;
            if prune.is_none() {
                // Idle: wait for work.
                match rx.blocking_recv() {
                    Some(c) => {
                        queued += size(&c);
                        batch.push(c);
                    }
                    None => break,
                }
            }
            while queued < max_batch {
                match rx.try_recv() {
                    Ok(c) => {
                        queued += size(&c);
                        batch.push(c);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let mut appends = Vec::with_capacity(queued);
            let mut many = Vec::new();
            for c in batch.drain(..) {
                match c {
                    Command::Append {
                        topic,
                        new,
                        key,
                        reply,
                    } => appends.push(Work::Append(topic, new, key, Sink::One(reply))),
                    Command::AppendMany { items, reply } => {
                        let job = many.len();
                        many.push(ManyJob {
                            results: (0..items.len()).map(|_| None).collect(),
                            reply,
                        });
                        for (index, i) in items.into_iter().enumerate() {
                            appends.push(Work::Append(
                                i.topic,
                                i.new,
                                i.key,
                                Sink::Many { job, index },
                            ));
                        }
                    }
                    Command::Inbox {
                        topic,
                        update,
                        reply,
                    } => appends.push(Work::Inbox(topic, update, reply)),
                    Command::Prune { reply } => match &mut prune {
                        // One prune at a time; a second request shares the running one's result.
                        Some(job) => job.replies.push(reply),
                        None => prune = Some(self.start_prune(reply)),
                    },
                }
            }
            if !appends.is_empty() {
                self.append_batch(appends, &mut many);
            }
            for job in many {
                job.answer();
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

    fn append_batch(&mut self, appends: Vec<Work>, many: &mut [ManyJob]) {
        // Topic -> (epoch, last offset) as this batch leaves it; published to the cache only
        // after the commit, so nobody sees an offset that could still be rolled back.
        let mut touched: HashMap<String, Touched> = HashMap::new();
        let mut results = Vec::with_capacity(appends.len());
        let (started, group) = (std::time::Instant::now(), appends.len());
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            let now = now_ms();
            let idem_cutoff = now - self.retention.idempotency_window.as_millis() as i64;
            let mut batch_keys: HashMap<(String, String), Arc<Stored>> = HashMap::new();
            for work in appends {
                let (topic, new, key, reply) = match work {
                    Work::Append(topic, new, key, reply) => (topic, new, key, reply),
                    Work::Inbox(topic, update, reply) => {
                        // Arrivals earlier in this batch first, so the change sees them.
                        if let Some(t) = touched.get(&topic) {
                            write_topic(&tx, &topic, t)?;
                        }
                        let change = inbox_update(&tx, &topic, &update)?;
                        if let Some(t) = touched.get_mut(&topic) {
                            t.count = Some(change.count);
                        }
                        results.push(Pending::Inbox(change, reply));
                        continue;
                    }
                };
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
                    Some(t) => (t.epoch.clone(), t.last),
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
                        "INSERT INTO notifications (topic, offset, id, time, title, body, priority, tags, link, category, author)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![n.topic, n.offset, n.id, n.time, n.title, n.body, n.priority, tags, n.link, n.category, n.author])
                    });
                if let Err(e) = inserted {
                    results.push(Pending::Failed(StoreError::Backend(e.to_string()), reply));
                    continue;
                }
                let count = if is_inbox(&topic) {
                    // The count before this batch is read once per inbox per batch.
                    let before = match touched.get(&topic).and_then(|t| t.count) {
                        Some(c) => c,
                        None => inbox_count(&tx, &topic)?,
                    };
                    Some(InboxCount {
                        unread: before.unread + 1,
                        seq: before.seq + 1,
                    })
                } else {
                    None
                };
                touched.insert(
                    topic.clone(),
                    Touched {
                        epoch,
                        last: offset,
                        count,
                    },
                );
                let stored = Stored::with_inbox(n, count);
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
            for (name, t) in &touched {
                write_topic(&tx, name, t)?;
            }
            if let Some(hook) = &self.hooks.before_commit {
                hook();
            }
            tx.commit()?;
            Ok(())
        })();
        let m = crate::metrics::hot();
        m.sqlite_commit.record(started.elapsed().as_secs_f64());
        m.sqlite_group.record(group as f64);

        match outcome {
            Ok(()) => {
                // Cache first, feed second: a head read never lags the feed (see the store's
                // contract), and never runs ahead of what is committed.
                for (name, t) in touched {
                    self.cache.set(&name, t.epoch, t.last);
                }
                for p in results {
                    match p {
                        Pending::New(stored, sink) => {
                            // The hub may be gone during shutdown; the notification is stored.
                            let _ = self.feed.blocking_send(stored.clone());
                            let appended = Appended {
                                stored,
                                duplicate: false,
                            };
                            answer(sink, many, Ok(appended));
                        }
                        Pending::Duplicate(stored, sink) => {
                            let appended = Appended {
                                stored,
                                duplicate: true,
                            };
                            answer(sink, many, Ok(appended));
                        }
                        Pending::Failed(e, sink) => answer(sink, many, Err(e)),
                        Pending::Inbox(change, reply) => {
                            let _ = reply.send(Ok(change));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing in the batch was acknowledged");
                for p in results {
                    let err = StoreError::Backend(e.to_string());
                    match p {
                        Pending::New(_, sink)
                        | Pending::Duplicate(_, sink)
                        | Pending::Failed(_, sink) => answer(sink, many, Err(err)),
                        Pending::Inbox(_, r) => {
                            let _ = r.send(Err(err));
                        }
                    }
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
                let n = delete_counting_unread(
                    &tx,
                    "DELETE FROM notifications WHERE (topic, offset) IN
                     (SELECT topic, offset FROM notifications WHERE time < ?1 LIMIT ?2)
                     RETURNING topic, read, archived",
                    params![job.cutoff, chunk],
                )?;
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
                        let n = delete_counting_unread(
                            &tx,
                            "DELETE FROM notifications WHERE topic = ?1 AND offset IN
                             (SELECT offset FROM notifications WHERE topic = ?1 AND offset <= ?2
                              ORDER BY offset LIMIT ?3)
                             RETURNING topic, read, archived",
                            params![topic, last - max_count, budget],
                        )?;
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

/// Runs a `DELETE ... RETURNING topic, read, archived` and takes every unread, unarchived
/// inbox notification it removed off its inbox's count. Returns how many rows went.
fn delete_counting_unread(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<u64, StoreError> {
    let mut st = tx.prepare_cached(sql)?;
    let mut rows = st.query(params)?;
    let mut n = 0u64;
    let mut unread: HashMap<String, i64> = HashMap::new();
    while let Some(r) = rows.next()? {
        n += 1;
        let topic: String = r.get(0)?;
        let (read, archived): (bool, bool) = (r.get(1)?, r.get(2)?);
        if is_inbox(&topic) && !read && !archived {
            *unread.entry(topic).or_default() -= 1;
        }
    }
    drop(rows);
    drop(st);
    for (topic, delta) in unread {
        bump_inbox(tx, &topic, delta)?;
    }
    Ok(n)
}

/// A topic as this batch leaves it, written to its row once, at the end of the batch.
struct Touched {
    epoch: Arc<str>,
    last: u64,
    /// An inbox's count after the batch's changes so far.
    count: Option<InboxCount>,
}

/// Writes a topic's row: its last offset and, for an inbox, its count.
fn write_topic(tx: &Connection, name: &str, t: &Touched) -> Result<(), StoreError> {
    let count = t.count.unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO topics (name, epoch, last_offset, unread, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET last_offset = excluded.last_offset,
             unread = CASE WHEN ?6 THEN excluded.unread ELSE unread END,
             seq = CASE WHEN ?6 THEN excluded.seq ELSE seq END",
    )?
    .execute(params![
        name,
        t.epoch.as_ref(),
        t.last,
        count.unread,
        count.seq,
        t.count.is_some()
    ])?;
    Ok(())
}

/// Adds `delta` to an inbox's unread count and one to its change counter. An inbox that
/// never received anything has no row and nothing to change.
fn bump_inbox(tx: &Connection, topic: &str, delta: i64) -> Result<InboxCount, StoreError> {
    let row: Option<(i64, u64)> = tx
        .prepare_cached(
            "UPDATE topics SET unread = max(unread + ?2, 0), seq = seq + 1 WHERE name = ?1
             RETURNING unread, seq",
        )?
        .query_row(params![topic, delta], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(
        row.map_or_else(InboxCount::default, |(unread, seq)| InboxCount {
            unread: unread.max(0) as u64,
            seq,
        }),
    )
}

/// Applies one inbox state change inside the writer's transaction.
fn inbox_update(
    tx: &Connection,
    topic: &str,
    update: &InboxUpdate,
) -> Result<InboxChange, StoreError> {
    // (SQL that changes one notification and returns the other flag, whether the change makes
    // it count as unread (+1) or not (-1) when that other flag is clear.)
    let one = |sql: &str, offsets: &[u64], delta: i64| -> Result<(u64, i64), StoreError> {
        let mut st = tx.prepare_cached(sql)?;
        let (mut changed, mut unread) = (0u64, 0i64);
        let mut seen = std::collections::HashSet::new();
        for &offset in offsets {
            if offset > i64::MAX as u64 || !seen.insert(offset) {
                continue;
            }
            let other: Option<bool> = st
                .query_row(params![topic, offset], |r| r.get(0))
                .optional()?;
            if let Some(other) = other {
                changed += 1;
                if !other {
                    unread += delta;
                }
            }
        }
        Ok((changed, unread))
    };
    let (changed, delta) = match update {
        InboxUpdate::Read { offsets } => one(
            "UPDATE notifications SET read = 1 WHERE topic = ?1 AND offset = ?2 AND read = 0
             RETURNING archived",
            offsets,
            -1,
        )?,
        InboxUpdate::Unread { offsets } => one(
            "UPDATE notifications SET read = 0 WHERE topic = ?1 AND offset = ?2 AND read = 1
             RETURNING archived",
            offsets,
            1,
        )?,
        InboxUpdate::Archive { offsets } => one(
            "UPDATE notifications SET archived = 1 WHERE topic = ?1 AND offset = ?2 AND archived = 0
             RETURNING read",
            offsets,
            -1,
        )?,
        InboxUpdate::Unarchive { offsets } => one(
            "UPDATE notifications SET archived = 0 WHERE topic = ?1 AND offset = ?2 AND archived = 1
             RETURNING read",
            offsets,
            1,
        )?,
        InboxUpdate::ReadAll { up_to } => {
            let n = tx
                .prepare_cached(
                    "UPDATE notifications SET read = 1
                     WHERE topic = ?1 AND offset <= ?2 AND read = 0 AND archived = 0",
                )?
                .execute(params![topic, (*up_to).min(i64::MAX as u64)])? as u64;
            (n, -(n as i64))
        }
    };
    let count = if changed > 0 {
        bump_inbox(tx, topic, delta)?
    } else {
        inbox_count(tx, topic)?
    };
    Ok(InboxChange { changed, count })
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
