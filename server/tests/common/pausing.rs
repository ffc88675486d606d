//! A store that parks history reads, for tests that force an interleaving.

use herald::hooks::Hooks;
use herald::store::{Appended, Head, ReadQuery, Store, StoreError, Stored, TopicPosition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A store that parks the session's history reads of one topic twice, just before and just
/// after the read itself, until the test has published more: the interleavings that resume
/// must survive, forced instead of hoped for.
pub struct PausingStore {
    pub inner: Arc<dyn Store>,
    pub topic: &'static str,
    /// What pauses: history reads (twice each), or appends (once, before the store has it).
    pub what: Pause,
    pub pauses_left: AtomicUsize,
    pub pauses: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>,
}

impl PausingStore {
    async fn pause(&self, topic: &str) {
        if topic != self.topic {
            return;
        }
        let left = self.pauses_left.load(Ordering::SeqCst);
        if left == 0
            || self
                .pauses_left
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.pauses.send(tx).is_ok() {
            let _ = rx.await;
        }
    }
}

#[async_trait::async_trait]
impl Store for PausingStore {
    async fn append(
        &self,
        topic: &str,
        new: app::protocol::NewNotification,
        key: Option<String>,
    ) -> Result<Appended, StoreError> {
        if self.what == Pause::Appends {
            self.pause(topic).await;
        }
        self.inner.append(topic, new, key).await
    }
    async fn read(
        &self,
        topic: &str,
        q: ReadQuery,
    ) -> Result<(TopicPosition, Vec<Arc<Stored>>), StoreError> {
        if self.what == Pause::Appends {
            return self.inner.read(topic, q).await;
        }
        self.pause(topic).await;
        let r = self.inner.read(topic, q).await;
        self.pause(topic).await;
        r
    }
    async fn head(&self, topic: &str) -> Result<Head, StoreError> {
        self.inner.head(topic).await
    }
    async fn prune(&self) -> Result<u64, StoreError> {
        self.inner.prune().await
    }
    async fn inbox_update(
        &self,
        topic: &str,
        update: app::protocol::InboxUpdate,
    ) -> Result<herald::store::InboxChange, StoreError> {
        self.inner.inbox_update(topic, update).await
    }
    async fn inbox_list(
        &self,
        topic: &str,
        query: app::protocol::InboxQuery,
        limit: usize,
    ) -> Result<(Vec<app::protocol::InboxItem>, herald::store::InboxCount), StoreError> {
        self.inner.inbox_list(topic, query, limit).await
    }
}

/// Each pause hands the test a sender to release it.
pub type Pauses = tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>;

/// Hooks that wrap the server's store in a [`PausingStore`] for `topic` that pauses `pauses`
/// times (twice per read: before it and after it); each pause arrives on the returned channel.
pub fn hooks(topic: &'static str, pauses: usize) -> (Hooks, Pauses) {
    hooks_for(topic, pauses, Pause::Reads)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    Reads,
    Appends,
}

/// [`hooks`] for reads or appends.
pub fn hooks_for(topic: &'static str, pauses: usize, what: Pause) -> (Hooks, Pauses) {
    let (pauses_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let slot = std::sync::Mutex::new(Some(pauses_tx));
    let hooks = Hooks {
        wrap_store: Some(Arc::new(move |inner| {
            Arc::new(PausingStore {
                inner,
                topic,
                what,
                pauses_left: AtomicUsize::new(pauses),
                pauses: slot.lock().unwrap().take().expect("one store"),
            }) as Arc<dyn Store>
        })),
        ..Hooks::default()
    };
    (hooks, rx)
}
