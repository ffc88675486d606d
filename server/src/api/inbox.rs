//! The inbox routes: send to people, list an inbox, change its read state.
//!
//! | route                                   | what                                             |
//! |-----------------------------------------|--------------------------------------------------|
//! | `POST /api/users/{user}/notifications`  | send to one user; body as a topic publish (+ `category`) |
//! | `POST /api/notifications`               | send one notification to up to 1,000 `users`, or up to 1,000 `notifications` each to its own `user` (JSON); per-user results |
//! | `GET /api/users/{user}/inbox`           | a page, newest first (`filter`, `category`, `before`, `limit`) |
//! | `POST /api/users/{user}/inbox`          | an [`InboxUpdate`] (`{"op":"read","offsets":[3]}`) |
//!
//! Sending needs `publish` on the user's inbox (`publish:@*` for every user); listing and
//! updating need `read` on it, which the user's own token always has.

use super::{created, peer, publish_rate, read_notification, ApiError};
use crate::auth::Action;
use crate::AppState;
use app::protocol::{
    inbox_topic, ErrorCode, InboxFilter, InboxPage, InboxQuery, InboxUpdate, NewNotification,
    Notification,
};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// `POST /api/users/{user}/notifications`.
#[utoipa::path(post, path = "/api/users/{user}/notifications", tag = "inbox", security(("bearer" = [])),
    params(("user" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content((NewNotification = "application/json"), (String = "text/plain"))),
    responses((status = 201, body = Notification), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody), (status = 429, body = app::protocol::ErrorBody),
        (status = 503, body = app::protocol::ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    Path(user): Path<String>,
    uri: axum::http::Uri,
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    send_to(&state, &user, uri.query(), peer(ip), &headers, body).await
}

/// Sends the request's notification to `user`'s inbox: what the routed handler and the front
/// door ([`super::serve_direct`]) both run.
pub(crate) async fn send_to<B>(
    state: &AppState,
    user: &str,
    query: Option<&str>,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: B,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    app::protocol::validate_user(user)?;
    let topic = inbox_topic(user);
    // Before the body is read: an unauthorized client gets its answer without sending it.
    let who = state.auth.from_request(headers, query)?;
    state.auth.check(&who, Action::Publish, &topic)?;
    publish_rate(state, &who, peer)?;
    // Not held across the awaits below (as for a topic publish).
    drop(who);
    let (new, key) = read_notification(state, headers, body).await?;
    let appended = crate::inbox::send(state, user, new, key).await?;
    tracing::debug!(
        offset = appended.stored.notification.offset,
        duplicate = appended.duplicate,
        "sent to a user"
    );
    Ok(created(&appended))
}

/// The body of `POST /api/notifications`: the users, and the notification as for a topic.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Bulk {
    pub users: Vec<String>,
    #[serde(flatten)]
    pub message: NewNotification,
}

/// The body of `POST /api/notifications` that gives every user a notification of its own
/// ("your order 1234 shipped"): up to 1,000, stored and delivered together.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Batch {
    pub notifications: Vec<BatchItem>,
}

/// One notification of a [`Batch`]: its user, the notification as for a topic, and an
/// idempotency key of its own (a retried batch stores nothing twice).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BatchItem {
    pub user: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(flatten)]
    pub message: NewNotification,
}

/// What `POST /api/notifications` takes: one notification for many users ([`Bulk`]), or
/// notifications each for its own user ([`Batch`]). (For the API document; the handler tells
/// them apart by the `notifications` field.)
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BulkRequest {
    Same(Bulk),
    Each(Batch),
}

/// What happened for one user (or one item of a batch) of a bulk send.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkResult {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<app::protocol::ErrorDetail>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkReply {
    pub results: Vec<BulkResult>,
}

/// The largest batch body (`notifications`: up to 1,000, each as large as a publish allows,
/// but not all of them at once).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// `POST /api/notifications`, either `{"users": [...], "body": ..., ...}` (one notification,
/// stored for each user) or `{"notifications": [{"user": ..., "body": ..., ...}, ...]}`
/// (each its own notification for its own user). Stored all at once, so they share group
/// commits. Every user must be within the caller's grants and every item valid before
/// anything is stored; the reply lists, per user (or item, in order), the stored notification
/// or the error.
#[utoipa::path(post, path = "/api/notifications", tag = "inbox", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "with `users` only; batch items carry their own `idempotency_key`")), request_body = BulkRequest,
    responses((status = 200, body = BulkReply), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody), (status = 413, description = "body too large", body = app::protocol::ErrorBody), (status = 429, body = app::protocol::ErrorBody)))]
pub async fn send_many(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = state.auth.from_request(&headers, uri.query())?;
    // One notification: room for 1,000 user ids beside the largest notification. A batch: up
    // to MAX_BATCH_BYTES.
    let same_limit = state.config.max_body_bytes
        + 8 * 1024
        + app::protocol::MAX_BULK_USERS * (app::protocol::MAX_USER_LEN + 8);
    let limit = same_limit.max(MAX_BATCH_BYTES);
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await
        .map_err(|_| ApiError::TooLarge(limit))?
        .to_bytes();
    let invalid = |e: serde_json::Error| {
        ApiError::Invalid(ErrorCode::BadFrame, format!("invalid JSON body: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    let key = super::PublishHeaders::read(&headers)?.idempotency_key;
    let results = if value.get("notifications").is_some() {
        if value.get("users").is_some() {
            return Err(ApiError::Invalid(
                ErrorCode::BadField,
                "give either users (one notification for each) or notifications (each for its own user), not both".into(),
            ));
        }
        if key.is_some() {
            return Err(ApiError::Invalid(
                ErrorCode::BadField,
                "with notifications, give each its own idempotency_key instead of the Idempotency-Key header".into(),
            ));
        }
        let batch: Batch = serde_json::from_value(value).map_err(invalid)?;
        let items = checked_batch(&state, &who, batch)?;
        bulk_rate(&state, &who, peer(ip), items.len() as u32)?;
        crate::inbox::send_each(&state, items).await?
    } else {
        if bytes.len() > same_limit {
            return Err(ApiError::TooLarge(same_limit));
        }
        let bulk: Bulk = serde_json::from_value(value).map_err(invalid)?;
        bulk.message.validate(state.config.max_body_bytes)?;
        for user in &bulk.users {
            app::protocol::validate_user(user)?;
            state
                .auth
                .check(&who, Action::Publish, &inbox_topic(user))?;
        }
        // Every notification counts against the publish rates, not the request.
        bulk_rate(&state, &who, peer(ip), bulk.users.len() as u32)?;
        crate::inbox::send_many(&state, &bulk.users, &bulk.message, key.as_deref()).await?
    };
    let results = results
        .into_iter()
        .map(|(user, r)| match r {
            Ok(a) => BulkResult {
                user,
                notification: Some(a.stored.notification.clone()),
                duplicate: a.duplicate,
                error: None,
            },
            Err(e) => BulkResult {
                user,
                notification: None,
                duplicate: false,
                error: Some(app::protocol::ErrorDetail {
                    code: e.code(),
                    message: e.to_string(),
                }),
            },
        })
        .collect();
    Ok((StatusCode::OK, Json(BulkReply { results })).into_response())
}

/// A batch's items, every one valid and within the caller's grants (an error names the item),
/// before any of them is stored.
fn checked_batch(
    state: &AppState,
    who: &crate::auth::Identity,
    batch: Batch,
) -> Result<Vec<crate::inbox::Addressed>, ApiError> {
    // Before the items are looked at (and the rates charged for them).
    crate::inbox::check_batch_len(batch.notifications.len())?;
    let mut items = Vec::with_capacity(batch.notifications.len());
    for (i, item) in batch.notifications.into_iter().enumerate() {
        let at = |e: ApiError| match e {
            ApiError::Invalid(code, m) => {
                ApiError::Invalid(code, format!("notifications[{i}]: {m}"))
            }
            other => other,
        };
        app::protocol::validate_user(&item.user).map_err(|e| at(e.into()))?;
        item.message
            .validate(state.config.max_body_bytes)
            .map_err(|e| at(e.into()))?;
        if let Some(k) = &item.idempotency_key {
            super::check_idempotency_key("idempotency_key", k).map_err(at)?;
        }
        state
            .auth
            .check(who, Action::Publish, &inbox_topic(&item.user))?;
        items.push(crate::inbox::Addressed {
            user: item.user,
            new: item.message,
            key: item.idempotency_key,
        });
    }
    Ok(items)
}

/// The publish rates for a bulk send of `n`: each notification counts.
fn bulk_rate(
    state: &AppState,
    who: &crate::auth::Identity,
    peer: Option<std::net::IpAddr>,
    n: u32,
) -> Result<(), ApiError> {
    let refuse = |wait: Option<std::time::Duration>, whose: &'static str| {
        match wait {
        Some(wait) => ApiError::RateLimited(wait, whose),
        None => ApiError::Invalid(
            ErrorCode::RateLimited,
            format!("{whose}: {n} notifications in one request are more than one burst allows; send fewer per request"),
        ),
    }
    };
    if let Some(ip) = peer {
        state
            .limits
            .publish_per_ip
            .check_n(&ip, n)
            .map_err(|w| refuse(w, "too many publishes from this address"))?;
    }
    state
        .limits
        .publish_n(who, n)
        .map_err(|w| refuse(w, "too many publishes with these credentials"))
}

/// Query of `GET /api/users/{user}/inbox` (strings, so a bad value gets our JSON error).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `unread`, `all` (default) or `archived`.
    filter: Option<String>,
    category: Option<String>,
    /// The offset to list before (exclusive), from the previous page's `next`.
    #[param(value_type = Option<u64>)]
    before: Option<String>,
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

/// `GET /api/users/{user}/inbox?filter=unread|all|archived&category=&before=&limit=`.
#[utoipa::path(get, path = "/api/users/{user}/inbox", tag = "inbox", security(("bearer" = [])),
    params(("user" = String, Path), ListParams),
    responses((status = 200, body = InboxPage), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path(user): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Json<InboxPage>, ApiError> {
    app::protocol::validate_user(&user)?;
    let who = state.auth.from_request(&headers, uri.query())?;
    state.auth.check(&who, Action::Read, &inbox_topic(&user))?;
    let filter = match p.filter.as_deref() {
        None | Some("all") => InboxFilter::All,
        Some("unread") => InboxFilter::Unread,
        Some("archived") => InboxFilter::Archived,
        Some(_) => {
            return Err(ApiError::Invalid(
                ErrorCode::BadQuery,
                "filter must be unread, all or archived".into(),
            ))
        }
    };
    let query = InboxQuery {
        filter,
        category: p.category.filter(|c| !c.is_empty()),
        before: super::parse_param("before", p.before.as_deref())?,
        limit: super::parse_param("limit", p.limit.as_deref())?,
    };
    Ok(Json(crate::inbox::list(&state, &user, query).await?))
}

/// The answer to an inbox update.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Updated {
    pub changed: u64,
    pub unread: u64,
    pub seq: u64,
}

/// `POST /api/users/{user}/inbox` with an [`InboxUpdate`].
#[utoipa::path(post, path = "/api/users/{user}/inbox", tag = "inbox", security(("bearer" = [])),
    params(("user" = String, Path)), request_body = app::protocol::InboxUpdate,
    responses((status = 200, body = Updated), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(user): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Updated>, ApiError> {
    app::protocol::validate_user(&user)?;
    let who = state.auth.from_request(&headers, uri.query())?;
    state.auth.check(&who, Action::Read, &inbox_topic(&user))?;
    let update: InboxUpdate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid(ErrorCode::BadFrame, format!("invalid JSON body: {e}")))?;
    let change = crate::inbox::update(&state, &user, update).await?;
    Ok(Json(Updated {
        changed: change.changed,
        unread: change.count.unread,
        seq: change.count.seq,
    }))
}
