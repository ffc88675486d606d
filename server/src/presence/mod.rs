//! Presence: who is in a room right now, by user (two tabs of one user count once), for the
//! topics configured to have it (`--presence-topics`).
//!
//! # Guarantees
//! - A user is a member of a room while at least one of their sockets is subscribed to it.
//!   The first socket's arrival pushes `presence join` to the room's subscribers, the last
//!   one's departure `presence leave`; sockets in between change nothing anyone sees.
//! - Membership is held by [`Member`] guards that live in the session's subscriptions, so it
//!   ends however the subscription ends: unsubscribe, a closed socket, a heartbeat timeout, a
//!   slow-consumer cut. Nothing is persisted: after a restart nobody is present until their
//!   socket is back.
//! - The joiner learns the members in its `subscribed` frame (or their number, above
//!   `--presence-list-max`).
//!
//! # Presence frames never cost a notification
//! Presence frames take the hub's ephemeral path: not stored, no offsets, and never the reason
//! a connection is cut. They may fill at most half of a connection's queue; beyond that they
//! are dropped for that connection and the hub marks it for a resync, after which its session
//! writes a `presence_sync` (the room's members now) instead of the frames it missed. So a
//! storm of joins and leaves (a node restart, everyone closing a tab at once) costs a member
//! at most half a queue and one list, never its notification stream.
//!
//! Exactness: every announcement gets the next number of one sequence for all rooms, taken
//! and queued under the rooms' lock, so frames reach each queue in sequence order. A snapshot
//! (the joiner's list, a resync) carries the sequence number it was taken at; the session
//! writes only presence frames numbered above the last snapshot it wrote, so a frame already
//! reflected in a list never follows it and the client's list is always a true past state.
//!
//! # Several nodes
//! In Redis mode ([`cluster`]) this node still counts its own sockets, but a user's first and
//! last socket here go to Redis, which numbers the room's announcements (one sequence per
//! room) and publishes them to every node; lists come from Redis too. The same rule applies:
//! a session writes only announcements numbered above the list it last wrote.

pub mod cluster;

use crate::auth::Pattern;
use crate::hub::{Hub, Outbound};
use app::protocol::{PresenceAction, ServerFrame};
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Rooms and their members.
pub struct Presence {
    patterns: Vec<Pattern>,
    list_max: usize,
    state: Mutex<Rooms>,
    /// Redis mode: membership across nodes (this node's sockets are still counted here).
    cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

#[derive(Default)]
struct Rooms {
    /// Room -> user -> sockets of that user in the room.
    rooms: HashMap<Arc<str>, HashMap<String, u32>>,
    /// The last announcement's number (never reset, so a room that empties and fills again
    /// does not reuse numbers).
    seq: u64,
}

/// Who is in a room, as a joiner is told.
pub enum Members {
    List(Vec<String>),
    Count(u64),
}

impl Members {
    /// As the `subscribed` and `presence_sync` frames carry it: a list or a count.
    pub fn into_fields(self) -> (Option<Vec<String>>, Option<u64>) {
        match self {
            Members::List(l) => (Some(l), None),
            Members::Count(n) => (None, Some(n)),
        }
    }
}

/// A room's members at one point of the announcement sequence.
pub struct Snapshot {
    pub members: Members,
    /// Every announcement numbered up to this is reflected in `members`.
    pub seq: u64,
}

/// One presence announcement, shared by every queue it goes to.
#[derive(Debug)]
pub struct Announcement {
    pub room: Arc<str>,
    pub seq: u64,
    pub frame: Utf8Bytes,
}

/// One socket's membership of one room; dropping it leaves.
pub struct Member {
    presence: Arc<Presence>,
    hub: Arc<Hub>,
    room: Arc<str>,
    user: String,
    /// When this socket last passed on a `typing` (they are rate-limited).
    pub typed_at: Option<tokio::time::Instant>,
}

impl Presence {
    /// From `--presence-topics` and `--presence-list-max`.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Arc<Self>> {
        let patterns = Pattern::parse_list(&config.presence_topics).map_err(anyhow::Error::msg)?;
        Ok(Self::new(patterns, config.presence_list_max))
    }

    pub fn new(patterns: Vec<Pattern>, list_max: usize) -> Arc<Self> {
        Arc::new(Self {
            patterns,
            list_max,
            state: Mutex::new(Rooms::default()),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Redis mode: rooms span the nodes from now on.
    pub fn set_cluster(&self, cluster: Arc<cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn list_max(&self) -> usize {
        self.list_max
    }

    /// Whether `topic` is a room with presence.
    pub fn applies(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a socket of `user` in `room`: announces the user (to everyone but the joining
    /// connection `conn`) if it is their first, and returns the guard and who is there (the
    /// user included). In Redis mode the announcement and the list are the cluster's.
    pub async fn join(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        room: &Arc<str>,
        user: &str,
        conn: u64,
    ) -> (Member, Snapshot) {
        let cluster = self.cluster.get();
        let (first, local) = {
            let mut state = self.lock();
            let users = state.rooms.entry(room.clone()).or_default();
            let n = users.entry(user.to_owned()).or_insert(0);
            *n += 1;
            let first = *n == 1;
            if first && cluster.is_none() {
                state.announce(hub, room, user, PresenceAction::Join, Some(conn));
            }
            (first, self.snapshot_of(&state, room))
        };
        let member = Member {
            presence: self.clone(),
            hub: hub.clone(),
            room: room.clone(),
            user: user.to_owned(),
            typed_at: None,
        };
        let snapshot = match cluster {
            Some(c) => c.join(room, user, first).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, %room, "presence unavailable: this node's list");
                Snapshot { seq: 0, ..local }
            }),
            None => local,
        };
        (member, snapshot)
    }

    /// Who is in `room` now.
    pub async fn snapshot(&self, room: &Arc<str>) -> Snapshot {
        let local = self.snapshot_of(&self.lock(), room);
        match self.cluster.get() {
            Some(c) => c
                .snapshot(room)
                .await
                .unwrap_or(Snapshot { seq: 0, ..local }),
            None => local,
        }
    }

    fn snapshot_of(&self, state: &Rooms, room: &str) -> Snapshot {
        let members = match state.rooms.get(room) {
            Some(users) if users.len() > self.list_max => Members::Count(users.len() as u64),
            Some(users) => {
                let mut list: Vec<String> = users.keys().cloned().collect();
                list.sort();
                Members::List(list)
            }
            None => Members::List(Vec::new()),
        };
        Snapshot {
            members,
            seq: state.seq,
        }
    }

    /// Every (room, user) with a socket on this node.
    pub fn local_members(&self) -> Vec<(Arc<str>, String)> {
        let state = self.lock();
        state
            .rooms
            .iter()
            .flat_map(|(room, users)| users.keys().map(|u| (room.clone(), u.clone())))
            .collect()
    }

    /// How many users are in `room`.
    pub fn count(&self, room: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, HashMap::len)
    }
}

impl Rooms {
    /// Numbers the announcement and queues it for the room's subscribers (but `except`),
    /// under the lock, so queues receive announcements in number order.
    fn announce(
        &mut self,
        hub: &Hub,
        room: &Arc<str>,
        user: &str,
        action: PresenceAction,
        except: Option<u64>,
    ) {
        self.seq += 1;
        let frame = ServerFrame::Presence {
            topic: room.to_string(),
            action,
            user: user.to_owned(),
        };
        let Ok(text) = serde_json::to_string(&frame) else {
            return;
        };
        let announcement = Arc::new(Announcement {
            room: room.clone(),
            seq: self.seq,
            frame: text.into(),
        });
        hub.send_ephemeral(room, || Outbound::Presence(announcement.clone()), except);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.presence.lock();
        let Some(users) = state.rooms.get_mut(&self.room) else {
            return;
        };
        let last = match users.get_mut(&self.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                users.remove(&self.user);
                true
            }
            None => false,
        };
        if users.is_empty() {
            state.rooms.remove(&self.room);
        }
        if let (true, Some(cluster)) = (last, self.presence.cluster.get()) {
            cluster.leave(&self.room, &self.user);
        } else if last {
            state.announce(
                &self.hub,
                &self.room,
                &self.user,
                PresenceAction::Leave,
                None,
            );
        }
    }
}

impl Member {
    pub fn user(&self) -> &str {
        &self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_is_in_a_room_once_however_many_sockets() {
        let hub = Hub::new(10, 16);
        let presence = Presence::new(vec![Pattern::parse("room-*").unwrap()], 2);
        assert!(presence.applies("room-a") && !presence.applies("ops"));
        let (watcher, mut rx) = hub.register().unwrap();
        hub.subscribe("room-a", &watcher.conn, 0);
        let room: Arc<str> = Arc::from("room-a");
        let (tab1, snap) = presence.join(&hub, &room, "ana", 1001).await;
        assert!(matches!(snap.members, Members::List(ref l) if l == &["ana"]));
        let (tab2, _) = presence.join(&hub, &room, "ana", 1002).await;
        let frame = |o: Option<crate::hub::Outbound>| match o {
            Some(crate::hub::Outbound::Presence(a)) => a.frame.to_string(),
            _ => String::new(),
        };
        assert!(frame(rx.try_recv().ok()).contains(r#""action":"join""#));
        assert!(rx.try_recv().is_err(), "the second tab announces nothing");
        let (_bo, _) = presence.join(&hub, &room, "bo", 1003).await;
        let (_cy, snap) = presence.join(&hub, &room, "cy", 1004).await;
        assert!(
            matches!(snap.members, Members::Count(3)),
            "above the list limit, a count"
        );
        drop(tab1);
        assert_eq!(presence.count("room-a"), 3);
        let _ = rx.try_recv(); // bo's join
        let _ = rx.try_recv(); // cy's join
        assert!(rx.try_recv().is_err(), "one tab left: ana is still there");
        drop(tab2);
        assert!(frame(rx.try_recv().ok()).contains(r#""action":"leave""#));
        assert_eq!(presence.count("room-a"), 2);
    }

    #[tokio::test]
    async fn a_storm_never_cuts_a_member_and_numbers_what_it_drops() {
        // A queue of 8: presence may take 4 places, the rest stays for notifications.
        let hub = Hub::new(10, 8);
        let presence = Presence::new(vec![Pattern::parse("room-*").unwrap()], 100);
        let (watcher, mut rx) = hub.register().unwrap();
        hub.subscribe("room-a", &watcher.conn, 0);
        let room: Arc<str> = Arc::from("room-a");
        let mut members = Vec::new();
        for i in 0..20 {
            members.push(
                presence
                    .join(&hub, &room, &format!("u{i}"), 2000 + i)
                    .await
                    .0,
            );
        }
        assert_eq!(watcher.conn.close_code(), None, "presence never cuts");
        assert_eq!(hub.stats().slow_closed, 0);
        let mut seqs = Vec::new();
        while let Ok(o) = rx.try_recv() {
            match o {
                crate::hub::Outbound::Presence(a) => seqs.push(a.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seqs.len(), 4, "at most half the queue");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "queued in number order"
        );
        assert!(watcher.conn.take_resync(), "the drop is marked");
        assert!(!watcher.conn.take_resync(), "once");
        let snap = presence.snapshot(&room).await;
        assert!(matches!(snap.members, Members::List(ref l) if l.len() == 20));
        assert!(snap.seq >= 20 && snap.seq > *seqs.last().unwrap());
        // The other half is the notifications': with presence at its share, 4 more fit.
        for i in 0..4 {
            members.push(
                presence
                    .join(&hub, &room, &format!("v{i}"), 3000 + i)
                    .await
                    .0,
            );
        }
        for _ in 0..4 {
            hub.sweep(std::time::Duration::from_secs(60)); // queues a ping
        }
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(
            queued, 8,
            "4 presence frames, then 4 pings in the other half"
        );
    }
}
