//! Live fan-out between nodes, beside the store: which topics this node must hear about.
//!
//! The store keeps the log (offsets, epochs, history, idempotency, inbox state); the broker
//! brings what any node appends to the feed of every node with subscribers for it. Sessions
//! call [`Broker::watch`] after registering a subscription with the hub and before reading
//! the topic's head or history, and [`Broker::unwatch`] when the registration ends.
//!
//! - [`Local`]: one node. The store's own appends are the feed; nothing to do.
//! - [`crate::store::redis::pubsub::Fanout`]: Redis Pub/Sub, checked and repaired.

use crate::store::redis::pubsub::Fanout;
use crate::store::StoreError;
use async_trait::async_trait;

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Resolves once every later append to `topic`, on any node, reaches this node's feed.
    async fn watch(&self, topic: &str) -> Result<(), StoreError>;
    /// One local subscription of `topic` fewer (each `watch` is paired with one, also when
    /// it failed).
    fn unwatch(&self, topic: &str);
}

/// One node: the embedded stores feed the hub themselves.
pub struct Local;

#[async_trait]
impl Broker for Local {
    async fn watch(&self, _topic: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn unwatch(&self, _topic: &str) {}
}

#[async_trait]
impl Broker for Fanout {
    async fn watch(&self, topic: &str) -> Result<(), StoreError> {
        Fanout::watch(self, topic).await
    }
    fn unwatch(&self, topic: &str) {
        Fanout::unwatch(self, topic)
    }
}
