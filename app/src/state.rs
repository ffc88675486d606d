//! The notification center's state, and the pure rules for changing it (tested natively).

use crate::protocol::{Notification, Position};
use leptos::prelude::*;
use std::collections::HashMap;

/// Most notifications the page keeps in memory, across topics.
pub const MAX_ITEMS: usize = 500;
/// Most toasts on screen at once; older ones are dismissed.
pub const MAX_TOASTS: usize = 4;

/// What the connection indicator shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// No token: waiting for the user to sign in.
    SignedOut,
    Connecting,
    Live,
    Reconnecting {
        in_secs: u32,
    },
}

impl ConnState {
    pub fn label(&self) -> String {
        match self {
            ConnState::SignedOut => "signed out".into(),
            ConnState::Connecting => "connecting".into(),
            ConnState::Live => "live".into(),
            ConnState::Reconnecting { in_secs } => format!("reconnecting in {in_secs}s"),
        }
    }
    pub fn class(&self) -> &'static str {
        match self {
            ConnState::SignedOut => "conn conn-signed-out",
            ConnState::Connecting => "conn conn-connecting",
            ConnState::Live => "conn conn-live",
            ConnState::Reconnecting { .. } => "conn conn-reconnecting",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToastKind {
    Notification,
    Notice,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toast {
    pub id: u64,
    pub kind: ToastKind,
    pub title: String,
    pub body: String,
    pub priority: u8,
}

/// The page's shared state; every field is a cheap `Copy` handle.
#[derive(Clone, Copy)]
pub struct Center {
    /// Followed topics, in the order the user added them.
    pub topics: RwSignal<Vec<String>>,
    /// Notifications of followed topics, newest first.
    pub items: RwSignal<Vec<Notification>>,
    pub toasts: RwSignal<Vec<Toast>>,
    pub unread: RwSignal<usize>,
    pub conn: RwSignal<ConnState>,
    /// The last position seen per topic: what a reconnect resumes from.
    pub positions: RwSignal<HashMap<String, Position>>,
    /// The signed-in user (the token itself stays in the browser's storage).
    pub user: RwSignal<Option<String>>,
    /// The signed-in user's inbox.
    pub inbox: crate::inbox::Inbox,
    /// Chat rooms.
    pub chat: crate::chat::Chat,
    next_toast: StoredValue<u64>,
}

impl Center {
    pub fn new(topics: Vec<String>, items: Vec<Notification>) -> Self {
        Self {
            topics: RwSignal::new(topics),
            items: RwSignal::new(items),
            toasts: RwSignal::new(Vec::new()),
            unread: RwSignal::new(0),
            conn: RwSignal::new(ConnState::Connecting),
            positions: RwSignal::new(HashMap::new()),
            user: RwSignal::new(None),
            inbox: crate::inbox::Inbox::new(),
            chat: crate::chat::Chat::new(),
            next_toast: StoredValue::new(1),
        }
    }

    /// Shows a toast and returns its id (so it can be dismissed later).
    pub fn toast(&self, kind: ToastKind, title: String, body: String, priority: u8) -> u64 {
        let id = self.next_toast.get_value();
        self.next_toast.set_value(id + 1);
        self.toasts.update(|t| {
            t.push(Toast {
                id,
                kind,
                title,
                body,
                priority,
            });
            let excess = t.len().saturating_sub(MAX_TOASTS);
            t.drain(..excess);
        });
        id
    }

    pub fn dismiss(&self, id: u64) {
        self.toasts.update(|t| t.retain(|x| x.id != id));
    }

    pub fn mark_read(&self) {
        self.unread.set(0);
    }
}

/// Whether `n` is new for a client whose last position on the topic is `pos` (a duplicate or
/// an older offset of the same epoch is not).
pub fn is_new(pos: Option<&Position>, n: &Notification) -> bool {
    match pos {
        Some(p) if p.epoch == n.epoch => n.offset > p.offset,
        _ => true,
    }
}

fn newest_first(a: &Notification, b: &Notification) -> std::cmp::Ordering {
    b.time
        .cmp(&a.time)
        .then_with(|| b.offset.cmp(&a.offset))
        .then_with(|| a.topic.cmp(&b.topic))
}

/// Adds `n` to `items` (newest first) unless an entry with its topic, epoch and offset is
/// there; keeps at most [`MAX_ITEMS`]. Returns whether it was added.
pub fn insert(items: &mut Vec<Notification>, n: Notification) -> bool {
    if items
        .iter()
        .any(|x| x.topic == n.topic && x.offset == n.offset && x.epoch == n.epoch)
    {
        return false;
    }
    let at = items.partition_point(|x| newest_first(x, &n).is_lt());
    items.insert(at, n);
    items.truncate(MAX_ITEMS);
    true
}

/// Replaces everything of `topic` with a page of its history (on first load, after a gap or
/// reset). `epoch` and `last_offset` are the topic's head when the page was read.
pub fn replace_topic(
    items: &mut Vec<Notification>,
    topic: &str,
    epoch: &str,
    last_offset: u64,
    fresh: Vec<Notification>,
) {
    // Live items past the head the page was read at (same epoch) stay: they arrived while it
    // was read. The head, not the page's newest item: a page read before the first publish is
    // empty, and must not take away what arrived live since.
    items.retain(|x| x.topic != topic || (x.epoch == epoch && x.offset > last_offset));
    for n in fresh {
        insert(items, n);
    }
}

/// Parses the topics cookie / storage value: comma separated, invalid names dropped,
/// duplicates removed, the default topic when nothing valid remains.
pub fn parse_topics(raw: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in raw.split(',').map(str::trim) {
        if crate::protocol::validate_topic(t).is_ok() && !out.iter().any(|x| x == t) {
            out.push(t.to_owned());
        }
        if out.len() >= 16 {
            break;
        }
    }
    if out.is_empty() {
        out.push(crate::DEFAULT_TOPIC.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(topic: &str, offset: u64, time: i64) -> Notification {
        Notification {
            id: format!("{topic}{offset}"),
            topic: topic.into(),
            epoch: "e".into(),
            offset,
            time,
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
    fn insert_keeps_newest_first_and_drops_duplicates() {
        let mut items = Vec::new();
        assert!(insert(&mut items, n("a", 1, 10)));
        assert!(insert(&mut items, n("a", 3, 30)));
        assert!(insert(&mut items, n("b", 1, 20)));
        assert!(!insert(&mut items, n("a", 3, 30)));
        let order: Vec<_> = items.iter().map(|x| (x.topic.as_str(), x.offset)).collect();
        assert_eq!(order, [("a", 3), ("b", 1), ("a", 1)]);
    }

    #[test]
    fn positions_reject_replays_of_the_same_epoch_only() {
        let pos = Position {
            epoch: "e".into(),
            offset: 5,
        };
        assert!(!is_new(Some(&pos), &n("a", 5, 0)));
        assert!(is_new(Some(&pos), &n("a", 6, 0)));
        let other = Position {
            epoch: "f".into(),
            offset: 9,
        };
        assert!(is_new(Some(&other), &n("a", 1, 0)));
        assert!(is_new(None, &n("a", 1, 0)));
    }

    #[test]
    fn replace_topic_swaps_one_topic() {
        let mut items = vec![n("a", 1, 1), n("b", 1, 2)];
        replace_topic(&mut items, "a", "e", 7, vec![n("a", 7, 3)]);
        let order: Vec<_> = items.iter().map(|x| (x.topic.as_str(), x.offset)).collect();
        assert_eq!(order, [("a", 7), ("b", 1)]);
    }

    #[test]
    fn replace_topic_keeps_what_arrived_after_the_page_was_read() {
        // Read at head 0 (nothing published yet), answered after offset 1 arrived live.
        let mut items = vec![n("a", 1, 5)];
        replace_topic(&mut items, "a", "e", 0, vec![]);
        assert_eq!(items.len(), 1);
        // Read at head 1, answered after 2 arrived: 2 stays, 1 comes from the page.
        let mut items = vec![n("a", 2, 6), n("a", 1, 5)];
        replace_topic(&mut items, "a", "e", 1, vec![n("a", 1, 5)]);
        let offsets: Vec<_> = items.iter().map(|x| x.offset).collect();
        assert_eq!(offsets, [2, 1]);
        // Another epoch (a reset): what the page does not have goes.
        let mut items = vec![n("a", 9, 5)];
        replace_topic(&mut items, "a", "f", 0, vec![]);
        assert!(items.is_empty());
    }

    #[test]
    fn topics_are_parsed_defensively() {
        assert_eq!(
            parse_topics("ops, general,ops,bad topic"),
            ["ops", "general"]
        );
        assert_eq!(parse_topics(""), ["general"]);
    }
}
