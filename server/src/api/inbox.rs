//! The inbox routes: send to people, list an inbox, change its read state.
//!
//! | route                                   | what                                             |
//! |-----------------------------------------|--------------------------------------------------|
//! | `POST /api/users/{user}/notifications`  | send to one user; body as a topic publish (+ `category`) |
//! | `POST /api/notifications`               | send to up to 1,000 `users` (JSON); per-user results |
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
    app::protocol::validate_user(&user)?;
    let who = state.auth.from_request(&headers, uri.query())?;
    state
        .auth
        .check(&who, Action::Publish, &inbox_topic(&user))?;
    publish_rate(&state, &who, peer(ip))?;
    let (new, key) = read_notification(&state, &headers, body).await?;
    let appended = crate::inbox::send(&state, &user, new, key).await?;
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

/// What happened for one user of a bulk send.
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

/// `POST /api/notifications` with `{"users": [...], "body": ..., ...}`: stored for each user
/// (all at once, so they share group commits). Every user must be within the caller's grants
/// before anything is stored; the reply lists, per user, the stored notification or the error.
#[utoipa::path(post, path = "/api/notifications", tag = "inbox", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)), request_body = Bulk,
    responses((status = 200, body = BulkReply), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody), (status = 429, body = app::protocol::ErrorBody)))]
pub async fn send_many(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = state.auth.from_request(&headers, uri.query())?;
    // Room for 1,000 user ids beside the largest notification.
    let limit = state.config.max_body_bytes
        + 8 * 1024
        + app::protocol::MAX_BULK_USERS * (app::protocol::MAX_USER_LEN + 8);
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await
        .map_err(|_| ApiError::TooLarge(limit))?
        .to_bytes();
    let bulk: Bulk = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Invalid(ErrorCode::BadFrame, format!("invalid JSON body: {e}")))?;
    bulk.message.validate(state.config.max_body_bytes)?;
    for user in &bulk.users {
        app::protocol::validate_user(user)?;
        state
            .auth
            .check(&who, Action::Publish, &inbox_topic(user))?;
    }
    // Every notification counts against the publish rates, not the request.
    bulk_rate(&state, &who, peer(ip), bulk.users.len() as u32)?;
    let key = super::PublishHeaders::read(&headers)?.idempotency_key;
    let results = crate::inbox::send_many(&state, &bulk.users, &bulk.message, key.as_deref())
        .await?
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
