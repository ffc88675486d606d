//! Per-user inboxes: notifications addressed to one person, with read state kept here.
//!
//! A user's inbox is the topic `@<user>` ([`app::protocol::inbox_topic`]), so it has offsets,
//! an epoch, retention, idempotency and gap-free resume exactly like a topic, and its
//! notifications reach every socket of that user subscribed to it (and nobody else: only the
//! user may read it, see [`crate::auth::Authority::check`]). What the inbox adds lives in the
//! store (read state, the unread count and the change counter, see [`crate::store`]) and here:
//! the one implementation of listing, updating and sending that the HTTP API and the socket
//! both call, so they cannot drift apart.
//!
//! # Guarantees
//! - After every state change, every subscribed socket of the user gets `inbox_changed` with
//!   the count after it; after every arrival, the notification and then `inbox_count`.
//!   Both carry `seq`, so a client applies counts in order whatever path they took.
//! - A bulk send stores each user's copy independently: the reply says, per user, what was
//!   stored or why not. A batch ([`send_each`]: a notification of its own per user) likewise,
//!   per item.

use crate::error::ApiError;
use crate::store::{AppendItem, Appended, InboxChange, InboxCount};
use crate::AppState;
use app::protocol::{
    inbox_topic, validate_user, ErrorCode, InboxPage, InboxQuery, InboxUpdate, NewNotification,
    ServerFrame, MAX_BULK_USERS, MAX_INBOX_PAGE,
};
use axum::extract::ws::Utf8Bytes;

/// Items in an inbox page unless the client asks for another number.
pub const DEFAULT_PAGE: usize = 50;

/// A page of `user`'s inbox, newest first, with the count as of the same moment.
pub async fn list(state: &AppState, user: &str, query: InboxQuery) -> Result<InboxPage, ApiError> {
    validate_user(user)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_INBOX_PAGE {
        return Err(ApiError::Invalid(
            ErrorCode::BadQuery,
            format!("limit must be 1 to {MAX_INBOX_PAGE}"),
        ));
    }
    if let Some(c) = &query.category {
        app::protocol::validate_category(c)
            .map_err(|e| ApiError::Invalid(ErrorCode::BadQuery, e.message))?;
    }
    let (items, count) = state
        .store
        .inbox_list(&inbox_topic(user), query, limit)
        .await?;
    let next = if items.len() == limit {
        items.last().map(|i| i.notification.offset)
    } else {
        None
    };
    Ok(InboxPage {
        user: user.to_owned(),
        items,
        unread: count.unread,
        seq: count.seq,
        next,
    })
}

/// Changes read state in `user`'s inbox and tells every subscribed socket of the user.
pub async fn update(
    state: &AppState,
    user: &str,
    update: InboxUpdate,
) -> Result<InboxChange, ApiError> {
    validate_user(user)?;
    update.validate()?;
    let topic = inbox_topic(user);
    let change = state.store.inbox_update(&topic, update.clone()).await?;
    if change.changed > 0 {
        let frame = ServerFrame::InboxChanged {
            update,
            unread: change.count.unread,
            seq: change.count.seq,
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            let kind = crate::broker::FrameKind::Required;
            state.broker.send_frame(&topic, text.into(), kind).await;
        }
    }
    Ok(change)
}

/// Stores `new` in `user`'s inbox (and so delivers it live).
pub async fn send(
    state: &AppState,
    user: &str,
    new: NewNotification,
    key: Option<String>,
) -> Result<Appended, ApiError> {
    let sent = async {
        validate_user(user)?;
        Ok(state.store.append(&inbox_topic(user), new, key).await?)
    }
    .await;
    crate::metrics::publish(crate::metrics::Route::Inbox, outcome(&sent));
    sent
}

/// How a publish ended, for the metrics.
pub(crate) fn outcome(result: &Result<Appended, ApiError>) -> crate::metrics::Outcome {
    use crate::metrics::Outcome;
    match result {
        Ok(a) if a.duplicate => Outcome::Duplicate,
        Ok(_) => Outcome::Stored,
        Err(e) => crate::metrics::failed_outcome(e.code()),
    }
}

/// Stores `new` in each user's inbox, submitted together ([`crate::store::Store::append_many`]:
/// one group commit on SQLite). One result per user, in order; a user named twice gets one
/// copy.
pub async fn send_many(
    state: &AppState,
    users: &[String],
    new: &NewNotification,
    key: Option<&str>,
) -> Result<Vec<(String, Result<Appended, ApiError>)>, ApiError> {
    if users.is_empty() || users.len() > MAX_BULK_USERS {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            format!("users must name 1 to {MAX_BULK_USERS} users"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&String> = users.iter().filter(|u| seen.insert(*u)).collect();
    for user in &unique {
        validate_user(user)?;
    }
    let items = unique
        .into_iter()
        .map(|u| Addressed {
            user: u.clone(),
            new: new.clone(),
            key: key.map(str::to_owned),
        })
        .collect();
    Ok(submit(state, items).await)
}

/// One notification of a batch, for one user.
#[derive(Debug, Clone)]
pub struct Addressed {
    pub user: String,
    pub new: NewNotification,
    /// Its idempotency key in that user's inbox.
    pub key: Option<String>,
}

/// Stores each notification in its own user's inbox, submitted together like
/// [`send_many`]. Unlike there, a user may be named more than once: every item is a
/// notification of its own (in the order given, so within one inbox in offset order). One
/// result per item, in order.
pub async fn send_each(
    state: &AppState,
    items: Vec<Addressed>,
) -> Result<Vec<(String, Result<Appended, ApiError>)>, ApiError> {
    check_batch_len(items.len())?;
    for item in &items {
        validate_user(&item.user)?;
    }
    Ok(submit(state, items).await)
}

/// A batch holds 1 to [`MAX_BULK_USERS`] notifications.
pub fn check_batch_len(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_BULK_USERS {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            format!("notifications must hold 1 to {MAX_BULK_USERS} notifications"),
        ));
    }
    Ok(())
}

/// Appends the items together and pairs each result with its user.
async fn submit(
    state: &AppState,
    items: Vec<Addressed>,
) -> Vec<(String, Result<Appended, ApiError>)> {
    let (users, appends): (Vec<String>, Vec<AppendItem>) = items
        .into_iter()
        .map(|a| {
            let topic = inbox_topic(&a.user);
            (
                a.user,
                AppendItem {
                    topic,
                    new: a.new,
                    key: a.key,
                },
            )
        })
        .unzip();
    let results = state.store.append_many(appends).await;
    users
        .into_iter()
        .zip(results)
        .map(|(user, r)| {
            let r = r.map_err(ApiError::from);
            crate::metrics::publish(crate::metrics::Route::Inbox, outcome(&r));
            (user, r)
        })
        .collect()
}

/// The `inbox_count` frame that follows an inbox arrival on the socket.
pub fn count_frame(count: InboxCount) -> Utf8Bytes {
    let frame = ServerFrame::InboxCount {
        unread: count.unread,
        seq: count.seq,
    };
    serde_json::to_string(&frame).unwrap_or_default().into()
}
