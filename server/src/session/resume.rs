//! Subscribing, catching up from the store, and verifying live delivery.
//!
//! See the module docs of `session` for the rules; this file is where they are kept:
//! - a plain subscribe registers with the hub, *then* reads the topic's head (no disk read),
//!   and is live after it;
//! - a resume (`since`) replays page by page unregistered, registers when a page comes back
//!   short, then must see one more short page before it is live; a resume that is already at
//!   the head registers at once and checks the head again (no disk read);
//! - [`accept_live`] decides for every queued notification.

use super::{Phase, Session, Socket, Stop, Subscription};
use crate::store::ReadQuery;
use app::protocol::{validate_readable_topic, ErrorCode, Notification, Position, ServerFrame};
use axum::extract::ws::Message;
use std::sync::Arc;

/// Notifications read from the store and written per replay page: small enough that inbound
/// frames (heartbeat answers) and other topics get a turn often, large enough to coalesce.
pub(super) const REPLAY_PAGE: usize = 128;

/// Whether a queued notification is written to the subscription, updating what it delivered.
///
/// Only `delivered + 1` in the subscription's epoch is written. A duplicate is dropped; a hole
/// or a different epoch sends the subscription back to catching up, where the store fills the
/// hole or the client is told `gap`/`reset`. While catching up, queued frames are dropped: they
/// are readable already and the next store read includes them.
/// The error code for a store failure: `unavailable` for a state that passes (Redis down),
/// `internal` for the rest.
pub(super) fn store_code(e: &crate::store::StoreError) -> ErrorCode {
    match e {
        crate::store::StoreError::Unavailable(_) | crate::store::StoreError::Closed => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    }
}

pub(super) fn accept_live(sub: &mut Subscription, n: &Notification) -> bool {
    if sub.phase != Phase::Live {
        return false;
    }
    if n.epoch != sub.epoch || n.offset > sub.delivered + 1 {
        tracing::debug!(
            topic = %sub.topic,
            delivered = sub.delivered,
            offset = n.offset,
            "live delivery out of step; repairing from the store"
        );
        sub.phase = Phase::CatchingUp { registered: true };
        return false;
    }
    if n.offset <= sub.delivered {
        return false;
    }
    sub.delivered = n.offset;
    true
}

impl<S: Socket> Session<S> {
    pub(super) async fn subscribe(
        &mut self,
        topic: String,
        since: Option<Position>,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        if let Err(e) = validate_readable_topic(&topic) {
            return self.error(e.code, &e.message, id).await;
        }
        if let Err(e) = self.permit(crate::auth::Action::Read, &topic) {
            return self.refuse(&e, id).await;
        }
        if let Some(i) = self.find_sub(&topic) {
            // Already following: report where it stands instead of replaying twice.
            let position = Position {
                epoch: self.subs[i].epoch.clone(),
                offset: self.subs[i].delivered,
            };
            let frame = ServerFrame::Subscribed {
                topic,
                position,
                id,
                members: None,
                member_count: None,
            };
            return self.io.send(&frame).await;
        }
        if self.subs.len() >= self.state.config.max_subscriptions {
            let msg = format!(
                "at most {} subscriptions per connection",
                self.state.config.max_subscriptions
            );
            return self.error(ErrorCode::TooManySubscriptions, &msg, id).await;
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let topic: Arc<str> = Arc::from(topic);
        if since.is_none() {
            // Register first, read second: every later offset is then queued for us.
            if let Err(e) = self.register(&topic, slot).await {
                return self.unavailable(&e, &topic, slot, id).await;
            }
        }
        // Registered (no position given): this node's last fed position will do, when it
        // has one; otherwise (and before registering) the store's.
        let cached = since
            .is_none()
            .then(|| self.state.broker.head(&topic))
            .flatten();
        let head = match cached {
            Some(h) => Ok(h),
            None => self.state.store.head(&topic).await,
        };
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, %topic, "head lookup failed");
                if since.is_none() {
                    self.unregister(&topic, slot);
                }
                return self.error(store_code(&e), "store unavailable", id).await;
            }
        };
        let (epoch, delivered, phase) = match since {
            None => (head.epoch.clone(), head.last, Phase::Live),
            Some(p) if p.epoch == head.epoch && p.offset == head.last => {
                // Already at the head (a reconnect after a quiet spell): register, then check
                // the head once more instead of reading history. Anything newer than that
                // second look is queued; anything between the two looks needs a read.
                if let Err(e) = self.register(&topic, slot).await {
                    return self.unavailable(&e, &topic, slot, id).await;
                }
                let again = match self.state.store.head(&topic).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(error = %e, %topic, "head lookup failed");
                        self.unregister(&topic, slot);
                        return self.error(store_code(&e), "store unavailable", id).await;
                    }
                };
                let phase = if again.epoch == p.epoch && again.last == p.offset {
                    Phase::Live
                } else {
                    Phase::CatchingUp { registered: true }
                };
                (p.epoch, p.offset, phase)
            }
            Some(p) => (p.epoch, p.offset, Phase::CatchingUp { registered: false }),
        };
        if phase != Phase::Live {
            crate::metrics::hot().resume_replays.increment(1);
        }
        // A user subscribing to a room with presence becomes a member of it.
        // Its list reflects every presence frame numbered up to the snapshot's `seq`; the
        // session writes only later ones.
        let (member, snapshot) = match self.user_id() {
            Some(user) if self.state.presence.applies(&topic) => {
                let conn = self.reg.conn.id;
                let (m, snapshot) = self
                    .state
                    .presence
                    .join(&self.state.hub, &topic, &user, conn)
                    .await;
                (Some(Box::new(m)), Some(snapshot))
            }
            _ => (None, None),
        };
        let presence_seq = snapshot.as_ref().map_or(0, |s| s.seq);
        self.subs.push(Subscription {
            slot,
            topic: topic.clone(),
            epoch,
            delivered,
            phase,
            member,
            presence_seq,
        });
        let (members, member_count) = snapshot.map_or((None, None), |s| s.members.into_fields());
        let subscribed = ServerFrame::Subscribed {
            topic: topic.to_string(),
            position: Position {
                epoch: head.epoch,
                offset: head.last,
            },
            id,
            members,
            member_count,
        };
        self.io.send(&subscribed).await
    }

    /// Writes one replay page for the first subscription that is catching up, announcing a
    /// `reset` or a `gap` first where the store cannot give what was asked for.
    pub(super) async fn replay_step(&mut self) -> Result<(), Stop> {
        let Some(i) = self
            .subs
            .iter()
            .position(|s| matches!(s.phase, Phase::CatchingUp { .. }))
        else {
            return Ok(());
        };
        let (slot, topic, after) = (
            self.subs[i].slot,
            self.subs[i].topic.clone(),
            self.subs[i].delivered,
        );
        let read = self
            .state
            .store
            .read(&topic, ReadQuery::after(after, REPLAY_PAGE))
            .await;
        let (pos, page) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, %topic, "replay read failed");
                self.drop_sub(slot);
                return self
                    .error(
                        ErrorCode::Internal,
                        "history unavailable; subscribe again",
                        None,
                    )
                    .await;
            }
        };
        // Nothing else runs while the read is awaited, so index `i` still names the same
        // subscription.
        let sub = &mut self.subs[i];
        if pos.epoch != sub.epoch || sub.delivered > pos.last {
            // A different history (or one that lost data it had acknowledged to this client):
            // its offsets mean nothing here. Start over from what is retained; the next step
            // reads from there.
            sub.epoch.clone_from(&pos.epoch);
            sub.delivered = pos.first.saturating_sub(1);
            let reset = ServerFrame::Reset {
                topic: topic.to_string(),
                epoch: pos.epoch,
                first_available: pos.first,
            };
            crate::metrics::hot().reset_frames.increment(1);
            return self.io.send(&reset).await;
        }
        let first_available = page.first().map_or(pos.first, |s| s.notification.offset);
        if first_available > after + 1 && pos.last > after {
            sub.delivered = first_available - 1;
            let gap = ServerFrame::Gap {
                topic: topic.to_string(),
                epoch: pos.epoch.clone(),
                requested: after,
                first_available,
            };
            crate::metrics::hot().gap_frames.increment(1);
            self.io.feed(super::connection::encode(&gap)).await?;
        }
        let short = page.len() < REPLAY_PAGE;
        let mut written = 0u64;
        for stored in &page {
            let offset = stored.notification.offset;
            let sub = &mut self.subs[i];
            if offset <= sub.delivered {
                continue;
            }
            // Recorded before the await: a close request can end the session mid-page, and
            // what was fed counts as delivered to a client that resumes.
            sub.delivered = offset;
            written += 1;
            self.io.feed(Message::Text(stored.frame().clone())).await?;
        }
        self.io.flush().await?;
        self.state.hub.record_written(written);
        if short {
            let sub = &mut self.subs[i];
            match sub.phase {
                Phase::CatchingUp { registered: false } => {
                    // Near the top: register, then read once more (register first, read second).
                    sub.phase = Phase::CatchingUp { registered: true };
                    if let Err(e) = self.register(&topic, slot).await {
                        // Registered with the hub: drop_sub unregisters.
                        tracing::warn!(error = %e, %topic, "watching the topic failed");
                        self.drop_sub(slot);
                        let msg = "store unavailable; subscribe again";
                        return self.error(ErrorCode::Unavailable, msg, None).await;
                    }
                    // Presence frames were not queued while it replayed: the list now (taken
                    // after registering, so every later frame is queued).
                    if self.state.presence.applies(&topic) {
                        return self.sync_presence(i).await;
                    }
                }
                Phase::CatchingUp { registered: true } => sub.phase = Phase::Live,
                Phase::Live => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(delivered: u64, phase: Phase) -> Subscription {
        Subscription {
            slot: 0,
            topic: Arc::from("t"),
            epoch: "e".into(),
            delivered,
            phase,
            member: None,
            presence_seq: 0,
        }
    }

    fn n(epoch: &str, offset: u64) -> Notification {
        Notification {
            id: "x".into(),
            topic: "t".into(),
            epoch: epoch.into(),
            offset,
            time: 0,
            title: None,
            body: "b".into(),
            priority: 3,
            tags: vec![],
            link: None,
            category: None,
            author: None,
        }
    }

    #[test]
    fn live_delivery_takes_only_the_next_offset() {
        let mut s = sub(5, Phase::Live);
        assert!(!accept_live(&mut s, &n("e", 5)), "a duplicate is dropped");
        assert!(accept_live(&mut s, &n("e", 6)));
        assert_eq!(s.delivered, 6);
        assert_eq!(s.phase, Phase::Live);
    }

    #[test]
    fn a_hole_or_another_epoch_sends_the_subscription_back_to_the_store() {
        let mut s = sub(5, Phase::Live);
        assert!(!accept_live(&mut s, &n("e", 7)));
        assert_eq!(
            (s.delivered, s.phase),
            (5, Phase::CatchingUp { registered: true })
        );
        let mut s = sub(5, Phase::Live);
        assert!(!accept_live(&mut s, &n("other", 6)));
        assert_eq!(s.phase, Phase::CatchingUp { registered: true });
    }

    #[test]
    fn nothing_is_written_live_while_catching_up() {
        let mut s = sub(5, Phase::CatchingUp { registered: true });
        assert!(!accept_live(&mut s, &n("e", 6)));
        assert_eq!(s.delivered, 5);
    }
}
