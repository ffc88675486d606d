//! The signed-in user's inbox in the page: the listing, the server's unread count, and the
//! pure rules that keep them in step with the server (tested natively).
//!
//! The count is the server's, never counted here: it arrives after every arrival
//! (`inbox_count`), change (`inbox_changed`, `inbox_updated`) and listing (`inbox_page`), each
//! with the inbox's change counter `seq`, and a frame older than what is shown is ignored.

use crate::protocol::{InboxFilter, InboxItem, InboxPage, InboxUpdate, Notification};
use leptos::prelude::*;

/// Most inbox items the page keeps.
pub const MAX_INBOX_ITEMS: usize = 500;

#[derive(Clone, Copy)]
pub struct Inbox {
    /// The current listing (filter and category below), newest first.
    pub items: RwSignal<Vec<InboxItem>>,
    /// Unread and not archived, as the server last said.
    pub unread: RwSignal<u64>,
    seq: RwSignal<u64>,
    pub filter: RwSignal<InboxFilter>,
    pub category: RwSignal<Option<String>>,
    /// `before` for the next page, when there is one.
    pub more: RwSignal<Option<u64>>,
    /// Whether the inbox view is showing (rather than the topics').
    pub open: RwSignal<bool>,
    /// The item a desktop notification was clicked for.
    pub focus: RwSignal<Option<u64>>,
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbox {
    pub fn new() -> Self {
        Self {
            items: RwSignal::new(Vec::new()),
            unread: RwSignal::new(0),
            seq: RwSignal::new(0),
            filter: RwSignal::new(InboxFilter::All),
            category: RwSignal::new(None),
            more: RwSignal::new(None),
            open: RwSignal::new(false),
            focus: RwSignal::new(None),
        }
    }

    /// Takes the server's count unless a newer one is already shown.
    pub fn count(&self, unread: u64, seq: u64) {
        if seq >= self.seq.get_untracked() {
            self.seq.set(seq);
            self.unread.set(unread);
        }
    }

    /// A listing from the server: the first page replaces, a later one appends.
    pub fn page(&self, page: InboxPage, first: bool) {
        let (unread, seq, next) = (page.unread, page.seq, page.next);
        self.items.update(|items| {
            if first {
                items.clear();
            }
            for item in page.items {
                if !items
                    .iter()
                    .any(|x| x.notification.offset == item.notification.offset)
                {
                    items.push(item);
                }
            }
            items.truncate(MAX_INBOX_ITEMS);
        });
        self.more.set(next);
        self.count(unread, seq);
    }

    /// A live arrival: shown if it fits the listing. Returns whether it is new.
    pub fn arrive(&self, n: Notification) -> bool {
        let (filter, category) = (self.filter.get_untracked(), self.category.get_untracked());
        self.items
            .try_update(|items| arrive(items, n, filter, category.as_deref()))
            .unwrap_or(false)
    }

    /// A change made anywhere (this tab, another one, the API).
    pub fn changed(&self, update: &InboxUpdate, unread: u64, seq: u64) {
        let filter = self.filter.get_untracked();
        self.items.update(|items| apply(items, update, filter));
        self.count(unread, seq);
    }

    /// The newest offset listed: what "mark all read" covers.
    pub fn newest(&self) -> Option<u64> {
        self.items
            .with_untracked(|i| i.iter().map(|x| x.notification.offset).max())
    }
}

/// Whether an item belongs in a listing with this filter and category.
pub fn fits(item: &InboxItem, filter: InboxFilter, category: Option<&str>) -> bool {
    filter.admits(item.read, item.archived)
        && category.is_none_or(|c| item.notification.category.as_deref() == Some(c))
}

/// Adds a new arrival (unread) at the top of a listing it fits; an offset already listed is
/// not added twice. Returns whether it was added.
pub fn arrive(
    items: &mut Vec<InboxItem>,
    n: Notification,
    filter: InboxFilter,
    category: Option<&str>,
) -> bool {
    if items
        .iter()
        .any(|x| x.notification.offset == n.offset && x.notification.epoch == n.epoch)
    {
        return false;
    }
    let item = InboxItem {
        notification: n,
        read: false,
        archived: false,
    };
    if !fits(&item, filter, category) {
        return false;
    }
    let at = items.partition_point(|x| x.notification.offset > item.notification.offset);
    items.insert(at, item);
    items.truncate(MAX_INBOX_ITEMS);
    true
}

/// Applies a change to a listing; items that no longer fit its filter leave it.
pub fn apply(items: &mut Vec<InboxItem>, update: &InboxUpdate, filter: InboxFilter) {
    for item in items.iter_mut() {
        update.apply(item.notification.offset, &mut item.read, &mut item.archived);
    }
    items.retain(|i| fits(i, filter, None));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(offset: u64, read: bool, archived: bool) -> InboxItem {
        InboxItem {
            notification: Notification {
                id: format!("n{offset}"),
                topic: "@ana".into(),
                epoch: "e".into(),
                offset,
                time: 0,
                title: None,
                body: "b".into(),
                priority: 3,
                tags: vec![],
                link: None,
                category: offset.is_multiple_of(2).then(|| "mention".into()),
                author: None,
            },
            read,
            archived,
        }
    }

    fn offsets(items: &[InboxItem]) -> Vec<(u64, bool)> {
        items
            .iter()
            .map(|i| (i.notification.offset, i.read))
            .collect()
    }

    #[test]
    fn read_all_reaches_only_up_to_its_offset() {
        let mut items = vec![
            item(3, false, false),
            item(2, false, false),
            item(1, true, false),
        ];
        apply(
            &mut items,
            &InboxUpdate::ReadAll { up_to: 2 },
            InboxFilter::All,
        );
        assert_eq!(offsets(&items), [(3, false), (2, true), (1, true)]);
    }

    #[test]
    fn changes_move_items_out_of_listings_they_no_longer_fit() {
        let mut unread = vec![item(2, false, false), item(1, false, false)];
        apply(
            &mut unread,
            &InboxUpdate::Read { offsets: vec![1] },
            InboxFilter::Unread,
        );
        assert_eq!(offsets(&unread), [(2, false)]);
        let mut all = vec![item(2, false, false), item(1, false, false)];
        apply(
            &mut all,
            &InboxUpdate::Archive { offsets: vec![2] },
            InboxFilter::All,
        );
        assert_eq!(offsets(&all), [(1, false)]);
    }

    #[test]
    fn arrivals_land_in_order_once_and_only_where_they_fit() {
        let mut items = vec![item(5, false, false), item(3, false, false)];
        assert!(arrive(
            &mut items,
            item(4, false, false).notification,
            InboxFilter::All,
            None
        ));
        assert!(!arrive(
            &mut items,
            item(4, false, false).notification,
            InboxFilter::All,
            None
        ));
        assert_eq!(offsets(&items), [(5, false), (4, false), (3, false)]);
        let mut archived = Vec::new();
        assert!(!arrive(
            &mut archived,
            item(6, false, false).notification,
            InboxFilter::Archived,
            None
        ));
        let mut mentions = Vec::new();
        assert!(!arrive(
            &mut mentions,
            item(7, false, false).notification,
            InboxFilter::All,
            Some("mention")
        ));
        assert!(arrive(
            &mut mentions,
            item(8, false, false).notification,
            InboxFilter::All,
            Some("mention")
        ));
    }

    #[test]
    fn an_older_count_never_replaces_a_newer_one() {
        let owner = Owner::new();
        owner.with(|| {
            let inbox = Inbox::new();
            inbox.count(5, 10);
            inbox.count(7, 9);
            assert_eq!(inbox.unread.get_untracked(), 5);
            inbox.count(4, 11);
            assert_eq!(inbox.unread.get_untracked(), 4);
        });
    }
}
