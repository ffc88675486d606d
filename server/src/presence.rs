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
//!   `--presence-list-max`). Presence frames take the hub's frame path: not stored, no
//!   offsets, never in the way of the ordered stream.

use crate::auth::Pattern;
use crate::hub::Hub;
use app::protocol::{PresenceAction, ServerFrame};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Rooms and their members.
pub struct Presence {
    patterns: Vec<Pattern>,
    list_max: usize,
    /// Room -> user -> sockets of that user in the room.
    rooms: Mutex<HashMap<Arc<str>, HashMap<String, u32>>>,
}

/// Who is in a room, as a joiner is told.
pub enum Members {
    List(Vec<String>),
    Count(u64),
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
            rooms: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `topic` is a room with presence.
    pub fn applies(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashMap<String, u32>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a socket of `user` in `room`: announces the user (to everyone but the joining
    /// connection `conn`) if it is their first, and returns the guard and who is there (the
    /// user included).
    pub fn join(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        room: &Arc<str>,
        user: &str,
        conn: u64,
    ) -> (Member, Members) {
        let (first, members) = {
            let mut rooms = self.lock();
            let users = rooms.entry(room.clone()).or_default();
            let first = {
                let n = users.entry(user.to_owned()).or_insert(0);
                *n += 1;
                *n == 1
            };
            let members = if users.len() > self.list_max {
                Members::Count(users.len() as u64)
            } else {
                let mut list: Vec<String> = users.keys().cloned().collect();
                list.sort();
                Members::List(list)
            };
            (first, members)
        };
        if first {
            announce(hub, room, user, PresenceAction::Join, Some(conn));
        }
        let member = Member {
            presence: self.clone(),
            hub: hub.clone(),
            room: room.clone(),
            user: user.to_owned(),
            typed_at: None,
        };
        (member, members)
    }

    /// How many users are in `room`.
    pub fn count(&self, room: &str) -> usize {
        self.lock().get(room).map_or(0, HashMap::len)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let last = {
            let mut rooms = self.presence.lock();
            let Some(users) = rooms.get_mut(&self.room) else {
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
                rooms.remove(&self.room);
            }
            last
        };
        if last {
            announce(
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

fn announce(hub: &Hub, room: &str, user: &str, action: PresenceAction, except: Option<u64>) {
    let frame = ServerFrame::Presence {
        topic: room.to_owned(),
        action,
        user: user.to_owned(),
    };
    if let Ok(text) = serde_json::to_string(&frame) {
        hub.send_frame(room, text.into(), except);
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
        let (tab1, members) = presence.join(&hub, &room, "ana", 1001);
        assert!(matches!(members, Members::List(ref l) if l == &["ana"]));
        let (tab2, _) = presence.join(&hub, &room, "ana", 1002);
        let frame = |o: Option<crate::hub::Outbound>| match o {
            Some(crate::hub::Outbound::Frame(f)) => f.to_string(),
            _ => String::new(),
        };
        assert!(frame(rx.try_recv().ok()).contains(r#""action":"join""#));
        assert!(rx.try_recv().is_err(), "the second tab announces nothing");
        let (_bo, _) = presence.join(&hub, &room, "bo", 1003);
        let (_cy, members) = presence.join(&hub, &room, "cy", 1004);
        assert!(
            matches!(members, Members::Count(3)),
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
}
