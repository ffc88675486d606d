//! Chat rooms in the page: messages per room, members, who is typing, and messages on their
//! way (pending until acknowledged, failed with a retry). Pure rules, tested natively.
//!
//! A room is a topic with presence: the server says so by listing its members when the page
//! subscribes. Messages are the room's notifications (author and time set by the server).
//! A message is sent with a `client_id`, so a retry (after an error or a reconnect) is stored
//! once.

use crate::protocol::Notification;
use leptos::prelude::*;
use std::collections::{BTreeSet, HashMap};

/// Messages kept per room.
pub const MAX_MESSAGES: usize = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendState {
    Sending,
    Failed(String),
}

/// A message this page sent that the server has not acknowledged yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub room: String,
    pub client_id: String,
    pub body: String,
    pub state: SendState,
}

#[derive(Clone, Copy)]
pub struct Chat {
    /// Rooms the page follows, in the order joined.
    pub rooms: RwSignal<Vec<String>>,
    /// The room on screen.
    pub current: RwSignal<Option<String>>,
    /// Per room, oldest first.
    pub messages: RwSignal<HashMap<String, Vec<Notification>>>,
    /// Per room: members by user, or only a count for a large room.
    pub members: RwSignal<HashMap<String, BTreeSet<String>>>,
    pub member_counts: RwSignal<HashMap<String, u64>>,
    /// Per room: who is typing, until when (page milliseconds).
    pub typing: RwSignal<HashMap<String, HashMap<String, f64>>>,
    pub outgoing: RwSignal<Vec<Outgoing>>,
    /// Whether the chat view is on screen.
    pub open: RwSignal<bool>,
}

impl Default for Chat {
    fn default() -> Self {
        Self::new()
    }
}

impl Chat {
    pub fn new() -> Self {
        Self {
            rooms: RwSignal::new(Vec::new()),
            current: RwSignal::new(None),
            messages: RwSignal::new(HashMap::new()),
            members: RwSignal::new(HashMap::new()),
            member_counts: RwSignal::new(HashMap::new()),
            typing: RwSignal::new(HashMap::new()),
            outgoing: RwSignal::new(Vec::new()),
            open: RwSignal::new(false),
        }
    }

    pub fn is_room(&self, topic: &str) -> bool {
        self.rooms.with_untracked(|r| r.iter().any(|x| x == topic))
    }

    /// A message arrived (live or from history): kept in offset order, once. Its author no
    /// longer types.
    pub fn arrive(&self, n: Notification) {
        if let Some(author) = &n.author {
            let (room, author) = (n.topic.clone(), author.clone());
            self.typing.update(|t| {
                if let Some(users) = t.get_mut(&room) {
                    users.remove(&author);
                }
            });
        }
        self.messages
            .update(|m| insert(m.entry(n.topic.clone()).or_default(), n));
    }

    /// The server's member list (or count) for a room, when the page subscribed.
    pub fn members_are(&self, room: &str, list: Option<Vec<String>>, count: Option<u64>) {
        match list {
            Some(l) => {
                self.members
                    .update(|m| _ = m.insert(room.to_owned(), l.into_iter().collect()));
                self.member_counts.update(|c| _ = c.remove(room));
            }
            None => {
                self.member_counts
                    .update(|c| _ = c.insert(room.to_owned(), count.unwrap_or(0)));
            }
        }
    }

    pub fn joined(&self, room: &str, user: &str, present: bool) {
        self.members.update(|m| {
            let set = m.entry(room.to_owned()).or_default();
            if present {
                set.insert(user.to_owned());
            } else {
                set.remove(user);
            }
        });
        if !present {
            self.typing.update(|t| {
                if let Some(users) = t.get_mut(room) {
                    users.remove(user);
                }
            });
        }
    }

    pub fn typing_now(&self, room: &str, user: &str, until: f64) {
        self.typing.update(|t| {
            t.entry(room.to_owned())
                .or_default()
                .insert(user.to_owned(), until);
        });
    }

    /// Who is typing in `room` at `now`, but `me`.
    pub fn typists(&self, room: &str, now: f64, me: Option<&str>) -> Vec<String> {
        self.typing.with(|t| typists(t.get(room), now, me))
    }
}

/// Inserts a message in offset order (same epoch), dropping a duplicate, keeping the newest
/// [`MAX_MESSAGES`].
pub fn insert(list: &mut Vec<Notification>, n: Notification) {
    if list
        .iter()
        .any(|x| x.offset == n.offset && x.epoch == n.epoch)
    {
        return;
    }
    let at = list.partition_point(|x| (x.epoch != n.epoch) || x.offset < n.offset);
    list.insert(at, n);
    let excess = list.len().saturating_sub(MAX_MESSAGES);
    list.drain(..excess);
}

/// Users typing (until after `now`), but `me`, sorted.
pub fn typists(t: Option<&HashMap<String, f64>>, now: f64, me: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = t
        .into_iter()
        .flatten()
        .filter(|(u, until)| **until > now && Some(u.as_str()) != me)
        .map(|(u, _)| u.clone())
        .collect();
    v.sort();
    v
}

/// Consecutive messages by one author form a group: `(author, messages)`.
pub fn groups(list: &[Notification]) -> Vec<(Option<String>, Vec<Notification>)> {
    let mut out: Vec<(Option<String>, Vec<Notification>)> = Vec::new();
    for n in list {
        match out.last_mut() {
            Some((author, msgs)) if *author == n.author => msgs.push(n.clone()),
            _ => out.push((n.author.clone(), vec![n.clone()])),
        }
    }
    out
}

/// A room name the page accepts: a topic name.
pub fn valid_room(room: &str) -> bool {
    crate::protocol::validate_topic(room).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(offset: u64, author: &str) -> Notification {
        Notification {
            id: format!("m{offset}"),
            topic: "chat-a".into(),
            epoch: "e".into(),
            offset,
            time: 0,
            title: None,
            body: format!("{author} {offset}"),
            priority: 3,
            tags: vec![],
            link: None,
            category: None,
            author: Some(author.into()),
        }
    }

    #[test]
    fn messages_stay_in_offset_order_once() {
        let mut list = Vec::new();
        for o in [2, 1, 3, 2] {
            insert(&mut list, msg(o, "ana"));
        }
        assert_eq!(list.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn consecutive_messages_of_one_author_are_grouped() {
        let list = [msg(1, "ana"), msg(2, "ana"), msg(3, "bo"), msg(4, "ana")];
        let g: Vec<_> = groups(&list)
            .into_iter()
            .map(|(a, m)| (a.unwrap(), m.len()))
            .collect();
        assert_eq!(g, [("ana".into(), 2), ("bo".into(), 1), ("ana".into(), 1)]);
    }

    #[test]
    fn typing_expires_and_never_shows_oneself() {
        let t: HashMap<String, f64> = [
            ("ana".into(), 100.0),
            ("bo".into(), 50.0),
            ("me".into(), 100.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(typists(Some(&t), 60.0, Some("me")), ["ana"]);
        assert!(typists(Some(&t), 200.0, None).is_empty());
    }
}
