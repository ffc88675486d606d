//! The memory store: a bounded ring per topic behind one mutex.
//!
//! Offsets are assigned and the feed is written inside the same critical section, so feed order
//! is offset order. The feed slot is reserved *before* taking the lock (the reservation may wait
//! when the hub is behind), so the lock is never held across an await.

use super::{
    materialize, now_ms, random_id, Appended, Feed, ReadQuery, Retention, Store, StoreError,
    Stored, TopicPosition,
};
use app::protocol::NewNotification;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub struct MemoryStore {
    /// A std mutex: every critical section is short and never awaits.
    inner: Mutex<Inner>,
    feed: Feed,
    retention: Retention,
    /// New on every start: the memory store forgets everything, so every restart is a reset.
    epoch: String,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, TopicLog>,
    idempotency: HashMap<(String, String), (Instant, Arc<Stored>)>,
}

#[derive(Default)]
struct TopicLog {
    last: u64,
    /// Contiguous offsets, oldest first; pruning only pops the front.
    log: VecDeque<Arc<Stored>>,
}

impl TopicLog {
    fn first(&self) -> u64 {
        self.log
            .front()
            .map_or(self.last + 1, |s| s.notification.offset)
    }
}

impl MemoryStore {
    pub fn new(feed: Feed, retention: Retention) -> Self {
        Self {
            inner: Mutex::default(),
            feed,
            retention,
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
            if let Some((at, stored)) = inner.idempotency.get(k) {
                if at.elapsed() < self.retention.idempotency_window {
                    return Ok(Appended {
                        stored: stored.clone(),
                        duplicate: true,
                    });
                }
            }
        }
        let log = inner.topics.entry(topic.to_owned()).or_default();
        log.last += 1;
        let stored = Stored::new(materialize(topic, &self.epoch, log.last, now_ms(), new));
        log.log.push_back(stored.clone());
        while log.log.len() as u64 > self.retention.max_count {
            log.log.pop_front();
        }
        if let Some(k) = key {
            inner
                .idempotency
                .insert(k, (Instant::now(), stored.clone()));
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

    async fn position(&self, topic: &str) -> Result<TopicPosition, StoreError> {
        let inner = self.lock();
        Ok(self.position_of(inner.topics.get(topic)))
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let cutoff = now_ms() - self.retention.max_age.as_millis() as i64;
        let window = self.retention.idempotency_window;
        let mut inner = self.lock();
        let mut dropped = 0;
        for log in inner.topics.values_mut() {
            while log
                .log
                .front()
                .is_some_and(|s| s.notification.time < cutoff)
            {
                log.log.pop_front();
                dropped += 1;
            }
        }
        inner.idempotency.retain(|_, (at, _)| at.elapsed() < window);
        Ok(dropped)
    }
}
