//! Live fan-out between nodes, beside the store: which topics this node must hear about.
//!
//! The store keeps the log (offsets, epochs, history, idempotency, inbox state); the broker
//! brings what any node appends to the feed of every node with subscribers for it. Sessions
//! call [`Broker::watch`] after registering a subscription with the hub and before reading
//! the topic's head or history, and [`Broker::unwatch`] when the registration ends.
//!
//! - [`Local`]: one node. The store's own appends are the feed; nothing to do.
//! - [`crate::store::redis::pubsub::Fanout`]: Redis Pub/Sub, checked and repaired.
//!
//! Frames beside the ordered stream (an inbox change, typing) go through the broker too, so
//! a user's tabs on other nodes get them.

use crate::hub::{Hub, Outbound};
use crate::store::redis::pubsub::Fanout;
use crate::store::StoreError;
use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;

/// How a frame beside the ordered stream treats a connection whose queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Must not be lost (an inbox change): a full queue is a slow consumer, as for
    /// notifications ([`Hub::send_frame`]).
    Required,
    /// May be lost under pressure (typing): never cuts anyone ([`Hub::send_ephemeral`]).
    Ephemeral,
}

/// Hands `frame` to this node's hub.
pub fn deliver_frame(hub: &Hub, topic: &str, frame: Utf8Bytes, kind: FrameKind) {
    match kind {
        FrameKind::Required => hub.send_frame(topic, frame, None),
        FrameKind::Ephemeral => {
            let frame = Arc::new(frame);
            hub.send_ephemeral(topic, || Outbound::Frame(frame.clone()), None);
        }
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Resolves once every later append to `topic`, on any node, reaches this node's feed.
    async fn watch(&self, topic: &str) -> Result<(), StoreError>;
    /// One local subscription of `topic` fewer (each `watch` is paired with one, also when
    /// it failed).
    fn unwatch(&self, topic: &str);
    /// Sends `frame` (not stored, no offset) to the subscribers of `topic` on every node.
    async fn send_frame(&self, topic: &str, frame: Utf8Bytes, kind: FrameKind);

    /// A head for a topic this node already follows, without asking the store: the last
    /// position this node fed to its hub. Valid for a subscription registered before the
    /// call: everything after it is still to be fed, everything up to it is readable.
    fn head(&self, _topic: &str) -> Option<crate::store::Head> {
        None
    }
}

/// One node: the embedded stores feed the hub themselves, and frames go straight to it.
pub struct Local {
    hub: Arc<Hub>,
}

impl Local {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Broker for Local {
    async fn watch(&self, _topic: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn unwatch(&self, _topic: &str) {}
    async fn send_frame(&self, topic: &str, frame: Utf8Bytes, kind: FrameKind) {
        deliver_frame(&self.hub, topic, frame, kind);
    }
}

#[async_trait]
impl Broker for Fanout {
    async fn watch(&self, topic: &str) -> Result<(), StoreError> {
        Fanout::watch(self, topic).await
    }
    fn unwatch(&self, topic: &str) {
        Fanout::unwatch(self, topic)
    }
    async fn send_frame(&self, topic: &str, frame: Utf8Bytes, kind: FrameKind) {
        Fanout::send_frame(self, topic, frame, kind).await
    }
    fn head(&self, topic: &str) -> Option<crate::store::Head> {
        Fanout::head(self, topic)
    }
}
