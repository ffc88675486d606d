//! The memory store: a bounded ring per topic behind one mutex.
//!
//! Offsets are assigned and the feed is written inside the same critical section, so feed order
//! is offset order. The feed slot is reserved *before* taking the lock (the reservation may wait
//! when the hub is behind), so the lock is never held across an await.
//!
//! Bounds: at most `max_count` notifications per topic (enforced on append), at most
//! [`MemoryLimits::max_topics`] topics (a publish that would create one more is refused: a
//! topic cannot be forgotten without reusing its offsets), and at most
//! [`MemoryLimits::max_idempotency_keys`] remembered keys (the least recently used is
//! forgotten first).

use super::{
    is_inbox, materialize, now_ms, random_id, Appended, Feed, Head, InboxChange, InboxCount,
    ReadQuery, Retention, Store, StoreError, Stored, TopicPosition,
};
use app::protocol::{InboxItem, InboxQuery, InboxUpdate, NewNotification};
use async_trait::async_trait;
use lru::LruCache;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// Notifications dropped per lock hold while pruning by age, so publishes wait at most a
/// few hundred microseconds behind a prune.
const PRUNE_CHUNK: usize = 2048;

/// How much the memory store may hold besides the notifications themselves.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    pub max_topics: usize,
    pub max_idempotency_keys: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            max_topics: 10_000,
            max_idempotency_keys: 100_000,
        }
    }
}

pub struct MemoryStore {
    /// A std mutex: every critical section is short and never awaits.
    inner: Mutex<Inner>,
    feed: Feed,
    retention: Retention,
    limits: MemoryLimits,
    /// New on every start: the memory store forgets everything, so every restart is a reset.
    epoch: String,
}

struct Inner {
    topics: HashMap<String, TopicLog>,
    /// (topic, key) -> when it was first used and what it published.
    idempotency: LruCache<(String, String), (Instant, Arc<Stored>)>,
}

#[derive(Default)]
struct TopicLog {
    last: u64,
    /// Contiguous offsets, oldest first; pruning only pops the front.
    log: VecDeque<Arc<Stored>>,
    /// For an inbox: each notification's (read, archived), beside `log`, and the count.
    state: VecDeque<(bool, bool)>,
    count: InboxCount,
}

impl TopicLog {
    /// Drops the oldest notification, taking it off the inbox count if it was unread.
    fn pop_front(&mut self) {
        self.log.pop_front();
        if let Some((read, archived)) = self.state.pop_front() {
            if !read && !archived {
                self.count.unread -= 1;
                self.count.seq += 1;
            }
        }
    }

    fn index(&self, offset: u64) -> Option<usize> {
        let first = self.first();
        (offset >= first && offset <= self.last).then(|| (offset - first) as usize)
    }

    fn first(&self) -> u64 {
        self.log
            .front()
            .map_or(self.last + 1, |s| s.notification.offset)
    }
}

impl MemoryStore {
    pub fn new(feed: Feed, retention: Retention) -> Self {
        Self::with_limits(feed, retention, MemoryLimits::default())
    }

    pub fn with_limits(feed: Feed, retention: Retention, limits: MemoryLimits) -> Self {
        let keys =
            NonZeroUsize::new(limits.max_idempotency_keys.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner {
                topics: HashMap::new(),
                idempotency: LruCache::new(keys),
            }),
            feed,
            retention,
            limits,
            epoch: random_id(8),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // breaks the offset contract (each update is a push after an increment), so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn position_of(&self, log: Option<&TopicLog>) -> TopicPosition {
        match log {
            Some(l) => TopicPosition {
                epoch: self.epoch.clone(),
                first: l.first(),
                last: l.last,
            },
            None => TopicPosition {
                epoch: self.epoch.clone(),
                first: 1,
                last: 0,
            },
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        topic: &str,
        new: NewNotification,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError> {
        let permit = self.feed.reserve().await.map_err(|_| StoreError::Closed)?;
        let mut inner = self.lock();
        let key = idempotency_key.map(|k| (topic.to_owned(), k));
        if let Some(k) = &key {
            // `peek`, not `get`: keys stay in insertion order, so the least recently used is
            // also the oldest, and pruning can stop at the first key inside the window.
            if let Some((at, stored)) = inner.idempotency.peek(k) {
                if at.elapsed() < self.retention.idempotency_window {
                    return Ok(Appended {
                        stored: stored.clone(),
                        duplicate: true,
                    });
                }
            }
        }
        let topics = inner.topics.len();
        // A lookup by `&str` (the name is allocated once, when the topic is created), then an
        // insert only for a new topic.
        let log = match inner.topics.get_mut(topic) {
            Some(log) => log,
            None if topics >= self.limits.max_topics => {
                return Err(StoreError::Full(format!(
                    "the memory store holds its limit of {} topics",
                    self.limits.max_topics
                )));
            }
            None => inner.topics.entry(topic.to_owned()).or_default(),
        };
        log.last += 1;
        let n = materialize(topic, &self.epoch, log.last, now_ms(), new);
        // Room for it first, so that an inbox arrival carries the count after the trim (an
        // unread notification trimmed with it is off the count it reports).
        while !log.log.is_empty() && log.log.len() as u64 >= self.retention.max_count {
            log.pop_front();
        }
        let count = if is_inbox(topic) {
            log.state.push_back((false, false));
            log.count.unread += 1;
            log.count.seq += 1;
            Some(log.count)
        } else {
            None
        };
        let stored = Stored::with_inbox(n, count);
        log.log.push_back(stored.clone());
        while log.log.len() as u64 > self.retention.max_count {
            log.pop_front();
        }
        if let Some(k) = key {
            inner.idempotency.put(k, (Instant::now(), stored.clone()));
        }
        permit.send(stored.clone());
        Ok(Appended {
            stored,
            duplicate: false,
        })
    }

    async fn read(
        &self,
        topic: &str,
        q: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        let inner = self.lock();
        let log = inner.topics.get(topic);
        let pos = self.position_of(log);
        let Some(log) = log else {
            return Ok((pos, Vec::new()));
        };
        // Offsets in the ring are contiguous, so an offset maps to an index directly.
        let first = pos.first;
        let lo = q.after.saturating_add(1).max(first);
        let hi = q.before.min(pos.last.saturating_add(1)); // exclusive
        if lo >= hi {
            return Ok((pos, Vec::new()));
        }
        let (lo_i, hi_i) = ((lo - first) as usize, (hi - first) as usize);
        let items: Vec<_> = if q.newest_first {
            log.log
                .range(lo_i..hi_i)
                .rev()
                .take(q.limit)
                .cloned()
                .collect()
        } else {
            log.log.range(lo_i..hi_i).take(q.limit).cloned().collect()
        };
        Ok((pos, items))
    }

    async fn inbox_update(
        &self,
        topic: &str,
        update: InboxUpdate,
    ) -> Result<InboxChange, StoreError> {
        let mut inner = self.lock();
        let Some(log) = inner.topics.get_mut(topic).filter(|_| is_inbox(topic)) else {
            return Ok(InboxChange::default());
        };
        let offsets: Vec<u64> = match &update {
            InboxUpdate::Read { offsets }
            | InboxUpdate::Unread { offsets }
            | InboxUpdate::Archive { offsets }
            | InboxUpdate::Unarchive { offsets } => {
                let mut o = offsets.clone();
                o.sort_unstable();
                o.dedup();
                o
            }
            InboxUpdate::ReadAll { up_to } => (log.first()..=(*up_to).min(log.last)).collect(),
        };
        let mut change = InboxChange::default();
        let mut delta = 0i64;
        for offset in offsets {
            let Some(i) = log.index(offset) else { continue };
            let (read, archived) = log.state[i];
            let (mut r, mut a) = (read, archived);
            update.apply(offset, &mut r, &mut a);
            if (r, a) != (read, archived) {
                change.changed += 1;
                delta += i64::from(!r && !a) - i64::from(!read && !archived);
                log.state[i] = (r, a);
            }
        }
        if change.changed > 0 {
            log.count.unread = (log.count.unread as i64 + delta).max(0) as u64;
            log.count.seq += 1;
        }
        change.count = log.count;
        Ok(change)
    }

    async fn inbox_list(
        &self,
        topic: &str,
        query: InboxQuery,
        limit: usize,
    ) -> Result<(Vec<InboxItem>, InboxCount), StoreError> {
        let inner = self.lock();
        let Some(log) = inner.topics.get(topic).filter(|_| is_inbox(topic)) else {
            return Ok((Vec::new(), InboxCount::default()));
        };
        let before = query.before.unwrap_or(u64::MAX);
        let items = log
            .log
            .iter()
            .zip(log.state.iter())
            .rev()
            .filter(|(s, &(read, archived))| {
                let n = &s.notification;
                n.offset < before
                    && query
                        .category
                        .as_ref()
                        .is_none_or(|c| n.category.as_ref() == Some(c))
                    && query.filter.admits(read, archived)
            })
            .take(limit)
            .map(|(s, &(read, archived))| InboxItem {
                notification: s.notification.clone(),
                read,
                archived,
            })
            .collect();
        Ok((items, log.count))
    }

    async fn head(&self, topic: &str) -> Result<Head, StoreError> {
        let inner = self.lock();
        Ok(Head {
            epoch: self.epoch.clone(),
            last: inner.topics.get(topic).map_or(0, |l| l.last),
        })
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let cutoff = now_ms() - self.retention.max_age.as_millis() as i64;
        let window = self.retention.idempotency_window;
        let names: Vec<String> = self.lock().topics.keys().cloned().collect();
        let mut dropped = 0;
        let mut names = names.into_iter().peekable();
        while names.peek().is_some() {
            // One chunk per lock hold; publishes get the lock between chunks.
            {
                let mut inner = self.lock();
                let mut budget = PRUNE_CHUNK;
                while budget > 0 {
                    let Some(name) = names.peek() else { break };
                    let Some(log) = inner.topics.get_mut(name) else {
                        names.next();
                        continue;
                    };
                    while budget > 0
                        && log
                            .log
                            .front()
                            .is_some_and(|s| s.notification.time < cutoff)
                    {
                        log.pop_front();
                        dropped += 1;
                        budget -= 1;
                    }
                    if budget > 0 {
                        names.next();
                    }
                    budget = budget.saturating_sub(1);
                }
            }
            tokio::task::yield_now().await;
        }
        loop {
            let expired = {
                let mut inner = self.lock();
                let mut expired = 0;
                // Oldest first: stop at the first key still inside the window.
                while expired < PRUNE_CHUNK {
                    match inner.idempotency.peek_lru() {
                        Some((_, (at, _))) if at.elapsed() >= window => {
                            inner.idempotency.pop_lru();
                            expired += 1;
                        }
                        _ => break,
                    }
                }
                expired
            };
            if expired < PRUNE_CHUNK {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(dropped)
    }
}
