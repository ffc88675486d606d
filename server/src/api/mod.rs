//! The HTTP API: publish, history, health and stats, and the WebSocket upgrade.
//!
//! | route                                   | what                                          |
//! |-----------------------------------------|-----------------------------------------------|
//! | `POST /api/topics/{topic}`              | publish; 201 + the stored notification        |
//! | `GET /api/topics/{topic}/notifications` | history page (`since`, `before`, `limit`, `order`) |
//! | `GET /api/health`                       | liveness (no credentials)                     |
//! | `GET /api/stats`                        | connections and delivery counters (admin key) |
//! | `POST /api/tokens`                      | mint a user token (key holding those grants)  |
//! | `POST /api/dev/token`                   | development mode only: a token for a user name |
//! | `GET`/`POST /api/keys`, `DELETE /api/keys/{id}` | list, create, revoke API keys (admin key) |
//! | `GET /ws`                               | the WebSocket (see `app::protocol`)           |
//! | inbox routes                            | see [`inbox`]                                 |
//!
//! Every route but health takes `Authorization: Bearer <API key or user token>`; what each
//! identity may do is decided by [`crate::auth::Authority::check`], the same check the socket
//! and the rendered page use.

pub mod inbox;
pub mod ops;

use utoipa::OpenApi as _;

use crate::auth::{Action, Grants, Pattern};
use crate::error::ApiError;
use crate::session::Session;
use crate::AppState;
use app::protocol::{validate_topic, ErrorCode, HistoryPage, NewNotification, Notification};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// The API description: every route below is registered through [`router`], which adds it to
/// both the router and this document, so the two cannot disagree.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A real-time notification hub: publish over HTTP, receive over a \
WebSocket, resume from an offset. Credentials: `Authorization: Bearer <API key or user token>`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "topics", description = "publish and read a topic's history"),
        (name = "inbox", description = "notifications to a person, with read state"),
        (name = "identity", description = "API keys and user tokens"),
        (name = "realtime", description = "the WebSocket"),
        (name = "operations", description = "health, readiness, metrics, the admin overview"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every API route, and the OpenAPI document that describes exactly those routes.
pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(websocket))
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::overview))
        .routes(routes!(stats))
        .routes(routes!(publish))
        .routes(routes!(history))
        .routes(routes!(inbox::send))
        .routes(routes!(inbox::send_many))
        .routes(routes!(inbox::list, inbox::update))
        .routes(routes!(mint_token))
        .routes(routes!(dev_token))
        .routes(routes!(list_keys, add_key))
        .routes(routes!(revoke_key))
        .routes(routes!(openapi_json))
        .split_for_parts()
}

/// `GET /api/openapi.json`: this API's OpenAPI 3 document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        let (_, doc) = router();
        doc.to_pretty_json().unwrap_or_default()
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.as_str(),
    )
        .into_response()
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Default and largest history page.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// `POST /api/topics/{topic}`.
///
/// A `Content-Type: application/json` body is a [`NewNotification`] (`title`, `body`,
/// `priority` 1-5, `tags`, `link`); any other body is the plain-text notification body, with
/// optional `Title`, `Priority`, `Tags` (comma separated) and `Link` headers (ntfy style).
#[utoipa::path(post, path = "/api/topics/{topic}", tag = "topics",
    security(("bearer" = [])),
    params(("topic" = String, Path, description = "1 to 64 letters, digits, '_' or '-'"),
        ("Title" = Option<String>, Header, description = "plain-text bodies: the title"),
        ("Priority" = Option<u8>, Header, description = "plain-text bodies: 1 (min) to 5 (max)"),
        ("Tags" = Option<String>, Header, description = "plain-text bodies: comma separated"),
        ("Link" = Option<String>, Header, description = "plain-text bodies: an http(s) link"),
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key is stored once")),
    request_body(content((NewNotification = "application/json"), (String = "text/plain"))),
    responses((status = 201, description = "stored (header idempotent-replayed: true for a retry)", body = Notification),
        (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody), (status = 413, body = app::protocol::ErrorBody), (status = 429, body = app::protocol::ErrorBody),
        (status = 503, description = "the store cannot take it now; Retry-After", body = app::protocol::ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    uri: axum::http::Uri,
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    publish_to(&state, &topic, uri.query(), peer(ip), &headers, body)
        .await
        .inspect_err(publish_failed)
}

/// Counts a refused or failed HTTP publish (the stored ones are counted in `publish_to`).
fn publish_failed(e: &ApiError) {
    crate::metrics::publish(
        crate::metrics::Route::Http,
        crate::metrics::failed_outcome(e.code()),
    );
}

/// The client address the front door put on a routed request.
pub(crate) fn peer(
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
) -> Option<std::net::IpAddr> {
    ip.map(|axum::Extension(crate::listener::ClientIp(ip))| ip)
}

/// A request the front door in [`crate::listener`] serves straight to its handler, without
/// the router: the two routes every notification takes, when their path segment is already
/// valid (no escapes to decode). Anything else goes through the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastRoute {
    /// `POST /api/topics/{topic}`.
    Publish,
    /// `POST /api/users/{user}/notifications`.
    SendToUser,
}

impl FastRoute {
    pub fn of(method: &Method, path: &str) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        if path.starts_with("/api/topics/") {
            let topic = Self::Publish.segment(path)?;
            return validate_topic(topic).ok().map(|()| Self::Publish);
        }
        let user = Self::SendToUser.segment(path)?;
        // A user id may hold almost any character: one with an escape (`%40`) is the router's
        // to decode, and one with a `/` is not this route at all.
        if user.contains(['%', '/']) {
            return None;
        }
        app::protocol::validate_user(user)
            .ok()
            .map(|()| Self::SendToUser)
    }

    /// The topic or the user in `path`, if it is this route's path.
    pub fn segment(self, path: &str) -> Option<&str> {
        // `strip_prefix`, not `trim_start_matches`: the latter builds a substring searcher,
        // 780 instructions per publish (callgrind), 3% of the whole.
        match self {
            Self::Publish => path.strip_prefix("/api/topics/"),
            Self::SendToUser => path
                .strip_prefix("/api/users/")?
                .strip_suffix("/notifications"),
        }
    }
}

/// Serves a request that [`FastRoute::of`] recognised as `route`, exactly as the routed handler
/// would (same checks, same answers and headers, same request timeout), minus the router's
/// per-request work: matching, percent-decoding into a parameter map, cloning the headers and
/// the URI for the extractors, the extensions it inserts and the layers' futures.
pub async fn serve_direct<B>(
    state: AppState,
    req: http::Request<B>,
    route: FastRoute,
    peer: Option<std::net::IpAddr>,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (parts, body) = req.into_parts();
    let limit = state.config.request_timeout();
    let query = parts.uri.query();
    // The segment `FastRoute::of` found (the handlers validate it, as the routed ones do).
    let segment = route.segment(parts.uri.path()).unwrap_or_default();
    let mut resp = match route {
        FastRoute::Publish => {
            let publish = publish_to(&state, segment, query, peer, &parts.headers, body);
            match tokio::time::timeout(limit, publish).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    publish_failed(&e);
                    e.into_response()
                }
                Err(_) => ApiError::Timeout(limit).into_response(),
            }
        }
        FastRoute::SendToUser => {
            let send = inbox::send_to(&state, segment, query, peer, &parts.headers, body);
            match tokio::time::timeout(limit, send).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => e.into_response(),
                Err(_) => ApiError::Timeout(limit).into_response(),
            }
        }
    };
    crate::site::add_security_headers(resp.headers_mut());
    resp
}

/// Middleware: every routed request must be answered within the request timeout (a body that
/// trickles in holds a connection and a task); beyond it, 408 with the JSON error body.
pub async fn request_deadline(
    State(limit): State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// Publishes the request's notification to `topic`; what both routes run.
async fn publish_to<B>(
    state: &AppState,
    topic: &str,
    query: Option<&str>,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: B,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    validate_topic(topic)?;
    // Before the body is read: an unauthorized client gets its answer without sending it.
    #[cfg(not(feature = "bench-unchecked-publish"))]
    let who = state.auth.from_request(headers, query)?;
    #[cfg(not(feature = "bench-unchecked-publish"))]
    state.auth.check(&who, Action::Publish, topic)?;
    // The benchmark's comparison build: no credential read, no scope check (see Cargo.toml).
    #[cfg(feature = "bench-unchecked-publish")]
    let who = {
        let _ = query;
        crate::auth::Identity::Anonymous
    };
    publish_rate(state, &who, peer)?;
    // Not held across the awaits below: the future stays smaller, and the key record's count
    // goes down now, while its cache line is still warm from the checks.
    drop(who);
    let (new, key) = read_notification(state, headers, body).await?;
    let appended = state.store.append(topic, new, key).await?;
    // Counted here when stored; a refusal or failure by the caller (`publish_failed`): no
    // wrapper future around the whole publish (it cost ~430 instructions per publish,
    // callgrind).
    let outcome = if appended.duplicate {
        crate::metrics::Outcome::Duplicate
    } else {
        crate::metrics::Outcome::Stored
    };
    crate::metrics::publish(crate::metrics::Route::Http, outcome);
    tracing::debug!(
        topic,
        offset = appended.stored.notification.offset,
        duplicate = appended.duplicate,
        "published"
    );
    Ok(created(&appended))
}

/// The per-address and per-credential publish rates, for every route that stores.
pub(crate) fn publish_rate(
    state: &AppState,
    who: &crate::auth::Identity,
    peer: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    if let Some(ip) = peer {
        state
            .limits
            .publish_per_ip
            .check(&ip)
            .map_err(|wait| ApiError::RateLimited(wait, "too many publishes from this address"))?;
    }
    state
        .limits
        .publish(who)
        .map_err(|wait| ApiError::RateLimited(wait, "too many publishes with these credentials"))
}

/// Reads and validates a publish body: JSON ([`NewNotification`]) or plain text with the
/// ntfy-style headers; with the request's `Idempotency-Key`.
pub(crate) async fn read_notification<B>(
    state: &AppState,
    headers: &HeaderMap,
    body: B,
) -> Result<(NewNotification, Option<String>), ApiError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let max = state.config.max_body_bytes;
    // A JSON envelope around a maximal body is allowed some room for the other fields.
    let limit = max + 8 * 1024;
    let mut fields = PublishHeaders::read(headers)?;
    let key = fields.idempotency_key.take();
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await
        .map_err(|_| ApiError::TooLarge(limit))?
        .to_bytes();
    let new = if fields.json {
        serde_json::from_slice::<NewNotification>(&bytes).map_err(|e| {
            ApiError::Invalid(ErrorCode::BadFrame, format!("invalid JSON body: {e}"))
        })?
    } else {
        let body = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::Invalid(ErrorCode::BadField, "body must be UTF-8 text".into()))?
            .to_owned();
        fields.into_notification(body)?
    };
    new.validate(max)?;
    Ok((new, key))
}

/// `201 Created` with the stored notification's JSON (encoded once, when it was stored), and
/// `Idempotent-Replayed: true` for a repeated idempotency key.
pub(crate) fn created(appended: &crate::store::Appended) -> Response {
    let mut resp = (
        StatusCode::CREATED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        appended.stored.json.clone(),
    )
        .into_response();
    if appended.duplicate {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// The request headers a publish reads, found in one pass over the headers (a lookup by a
/// string name parses and hashes the name, and a publish would make ten of them).
#[derive(Default)]
pub(crate) struct PublishHeaders<'a> {
    json: bool,
    title: Option<&'a str>,
    priority: Option<&'a str>,
    tags: Option<&'a str>,
    link: Option<&'a str>,
    category: Option<&'a str>,
    idempotency_key: Option<String>,
}

impl<'a> PublishHeaders<'a> {
    pub(crate) fn read(headers: &'a HeaderMap) -> Result<Self, ApiError> {
        let mut h = Self::default();
        for (name, value) in headers {
            // Header names arrive lowercased.
            let name = name.as_str();
            let slot = match name {
                "content-type" => {
                    h.json = value.as_bytes().starts_with(b"application/json");
                    continue;
                }
                "title" | "x-title" => &mut h.title,
                "priority" | "x-priority" => &mut h.priority,
                "tags" | "x-tags" => &mut h.tags,
                "link" | "x-link" => &mut h.link,
                "category" | "x-category" => &mut h.category,
                "idempotency-key" => {
                    let key = visible(name, value)?;
                    check_idempotency_key("Idempotency-Key", key)?;
                    h.idempotency_key = Some(key.to_owned());
                    continue;
                }
                _ => continue,
            };
            // The unprefixed name wins over the `x-` one, whichever comes first.
            if slot.is_none() || !name.starts_with("x-") {
                *slot = Some(visible(name, value)?);
            }
        }
        Ok(h)
    }

    /// The notification a plain-text publish describes (ntfy style).
    pub(crate) fn into_notification(self, body: String) -> Result<NewNotification, ApiError> {
        let priority = match self.priority {
            None => None,
            Some(p) => Some(p.parse::<u8>().map_err(|_| {
                ApiError::Invalid(
                    ErrorCode::BadField,
                    "priority must be a number from 1 to 5".into(),
                )
            })?),
        };
        let tags = self
            .tags
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(NewNotification {
            title: self.title.map(str::to_owned),
            body,
            priority,
            tags,
            link: self.link.map(str::to_owned),
            category: self.category.map(str::to_owned),
            author: None,
        })
    }
}

/// An idempotency key (from the header, or a batch item's `idempotency_key`): 1 to
/// [`MAX_IDEMPOTENCY_KEY`] characters of visible ASCII.
pub(crate) fn check_idempotency_key(what: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            format!("{what} must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            format!("{what} must be visible ASCII"),
        ));
    }
    Ok(())
}

fn visible<'a>(name: &str, value: &'a HeaderValue) -> Result<&'a str, ApiError> {
    value.to_str().map(str::trim).map_err(|_| {
        ApiError::Invalid(
            ErrorCode::BadField,
            format!("header {name} must be visible ASCII"),
        )
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Oldest first: the offset to start after (exclusive).
    #[param(value_type = Option<u64>)]
    since: Option<String>,
    /// Newest first: the offset to stop before (exclusive).
    #[param(value_type = Option<u64>)]
    before: Option<String>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// `desc` (default) or `asc`.
    order: Option<String>,
}

pub(crate) fn parse_param<T: std::str::FromStr>(
    name: &str,
    v: Option<&str>,
) -> Result<Option<T>, ApiError> {
    v.map(|s| {
        s.parse::<T>().map_err(|_| {
            ApiError::Invalid(
                ErrorCode::BadQuery,
                format!("{name} must be a non-negative integer"),
            )
        })
    })
    .transpose()
}

/// `GET /api/topics/{topic}/notifications?since=&before=&limit=&order=`.
///
/// `order=desc` (the default) pages newest first: follow `next` as `before`. `order=asc` pages
/// oldest first from `since` (exclusive): follow `next` as `since`. `limit` is 1 to 500.
#[utoipa::path(get, path = "/api/topics/{topic}/notifications", tag = "topics",
    security(("bearer" = [])), params(("topic" = String, Path), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(p): Query<HistoryParams>,
) -> Result<Json<HistoryPage>, ApiError> {
    app::protocol::validate_readable_topic(&topic)?;
    let who = state.auth.from_request(&headers, uri.query())?;
    state.auth.check(&who, Action::Read, &topic)?;
    let since = parse_param::<u64>("since", p.since.as_deref())?.unwrap_or(0);
    let before = parse_param::<u64>("before", p.before.as_deref())?.unwrap_or(u64::MAX);
    let limit = parse_param::<usize>("limit", p.limit.as_deref())?.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(
            ErrorCode::BadQuery,
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let newest_first = match p.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            return Err(ApiError::Invalid(
                ErrorCode::BadQuery,
                "order must be asc or desc".into(),
            ))
        }
    };
    let q = crate::store::ReadQuery {
        after: since,
        before,
        limit,
        newest_first,
    };
    Ok(Json(history_page(&state, &topic, q).await?))
}

/// One page of history; shared by the HTTP route and the server-rendered page.
pub async fn history_page(
    state: &AppState,
    topic: &str,
    q: crate::store::ReadQuery,
) -> Result<HistoryPage, ApiError> {
    let (pos, items) = state.store.read(topic, q).await?;
    let notifications: Vec<Notification> = items.iter().map(|s| s.notification.clone()).collect();
    let next = if notifications.len() == q.limit {
        notifications.last().map(|n| n.offset)
    } else {
        None
    };
    Ok(HistoryPage {
        topic: topic.to_owned(),
        epoch: pos.epoch,
        first_offset: pos.first,
        last_offset: pos.last,
        notifications,
        next,
    })
}

/// What `GET /api/stats` reports.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    #[serde(flatten)]
    pub hub: crate::hub::HubStats,
    pub store: crate::store::StoreStats,
}

#[utoipa::path(get, path = "/api/stats", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    let who = state.auth.from_request(&headers, uri.query())?;
    state.auth.check_admin(&who)?;
    Ok(Json(Stats {
        hub: state.hub.stats(),
        store: state.store.stats(),
    }))
}

/// Parses a JSON request body into `T`, with the protocol's error on failure.
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Invalid(ErrorCode::BadFrame, format!("invalid JSON body: {e}")))
}

/// `POST /api/tokens` and `POST /api/dev/token` answer this.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MintedToken {
    pub token: String,
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MintRequest {
    user: String,
    /// Topic patterns the user may read: a topic, a prefix ending in `*`, or `*`.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    read: Vec<Pattern>,
    /// Topic patterns the user may publish to.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    publish: Vec<Pattern>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /api/tokens` `{"user":"ana","read":["general"],"publish":["chat-*"],"ttl_secs":900}`:
/// a signed user token, for backends that would rather ask Herald than sign their own. The
/// key must hold every grant it hands out (`read:*` may mint `read:general`, not `publish:`).
#[utoipa::path(post, path = "/api/tokens", tag = "identity", security(("bearer" = [])),
    request_body = MintRequest,
    responses((status = 201, body = MintedToken), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody), (status = 501, description = "tokens are signed by an identity provider", body = app::protocol::ErrorBody)))]
pub async fn mint_token(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let who = state.auth.from_request(&headers, uri.query())?;
    let key = state.auth.active_key(&who)?;
    let req: MintRequest = json_body(&body)?;
    let grants = Grants {
        read: req.read,
        publish: req.publish,
        admin: Vec::new(),
    };
    if !key.grants.covers(&grants) {
        return Err(ApiError::Auth(crate::auth::AuthError::Forbidden {
            action: Action::Admin,
            topic: grants.scopes().join(" "),
        }));
    }
    let minted = mint(&state, &req.user, &grants, req.ttl_secs)?;
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

fn mint(
    state: &AppState,
    user: &str,
    grants: &Grants,
    ttl_secs: Option<u64>,
) -> Result<MintedToken, ApiError> {
    let max = state.config.max_token_ttl_secs.max(1);
    let ttl = ttl_secs.unwrap_or(max);
    if !(1..=max).contains(&ttl) {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            format!("ttl_secs must be 1 to {max}"),
        ));
    }
    if !state.auth.tokens.can_mint() {
        return Err(ApiError::NotConfigured(
            "tokens are verified with an identity provider's public key; it mints them".into(),
        ));
    }
    let claims = state
        .auth
        .tokens
        .mint(user, grants, ttl)
        .map_err(|e| ApiError::Invalid(ErrorCode::BadField, e))?;
    let token = state
        .auth
        .tokens
        .sign(&claims)
        .map_err(ApiError::NotConfigured)?;
    Ok(MintedToken {
        token,
        user: claims.sub,
        expires_at: claims.exp,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DevTokenRequest {
    user: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /api/dev/token` `{"user":"ana"}`: development mode's sign-in, a token that may read
/// and publish every topic. 404 in production mode.
#[utoipa::path(post, path = "/api/dev/token", tag = "identity", request_body = DevTokenRequest,
    responses((status = 201, body = MintedToken), (status = 400, body = app::protocol::ErrorBody),
        (status = 404, description = "production mode", body = app::protocol::ErrorBody)))]
pub async fn dev_token(
    State(state): State<AppState>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    if state.config.mode != crate::config::Mode::Dev {
        return Err(ApiError::NotFound(
            "sign-in by user name exists only in development mode".into(),
        ));
    }
    let req: DevTokenRequest = json_body(&body)?;
    if validate_topic(&req.user).is_err() {
        return Err(ApiError::Invalid(
            ErrorCode::BadField,
            "user must be 1 to 64 letters, digits, '_' or '-'".into(),
        ));
    }
    let all = Grants::from_scopes(&["read:*", "publish:*"]).unwrap_or_default();
    let minted = mint(&state, &req.user, &all, req.ttl_secs)?;
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

/// `GET /api/keys` (admin): every key's id, name, scopes, times; never a key.
#[utoipa::path(get, path = "/api/keys", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = Vec<crate::auth::KeyRecord>), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::auth::KeyRecord>>, ApiError> {
    let who = state.auth.from_request(&headers, None)?;
    state.auth.check_admin(&who)?;
    Ok(Json(state.auth.keys.list()))
}

/// `POST /api/keys` `{"name":"ci","allow":["publish:ops-*"]}` (admin): 201 with the key,
/// shown this once.
#[utoipa::path(post, path = "/api/keys", tag = "identity", security(("bearer" = [])),
    request_body = app::protocol::AddKey,
    responses((status = 201, description = "the key (shown this once), its id, name and scopes", body = app::protocol::NewKey), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody)))]
pub async fn add_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let who = state.auth.from_request(&headers, None)?;
    state.auth.check_admin(&who)?;
    let req: app::protocol::AddKey = json_body(&body)?;
    let grants =
        Grants::from_scopes(&req.allow).map_err(|e| ApiError::Invalid(ErrorCode::BadField, e))?;
    let (rec, key) = on_keys(&state, move |keys| keys.add(&req.name, grants, false)).await?;
    let body = app::protocol::NewKey {
        key,
        id: rec.id.clone(),
        name: rec.name.clone(),
        scopes: rec.grants.scopes(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /api/keys/{id}` (admin): 204; 404 if there is no such active key.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "revoked; it stops working at once"), (status = 400, description = "bad input", body = app::protocol::ErrorBody), (status = 401, description = "no or bad credentials", body = app::protocol::ErrorBody), (status = 403, description = "not allowed", body = app::protocol::ErrorBody),
        (status = 404, body = app::protocol::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = state.auth.from_request(&headers, None)?;
    state.auth.check_admin(&who)?;
    let revoked = on_keys(&state, move |keys| keys.revoke(&id)).await?;
    if revoked {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound("no active key with that id".into()))
    }
}

/// Runs a change to the key table on a blocking thread (it writes to SQLite).
async fn on_keys<T: Send + 'static>(
    state: &AppState,
    change: impl FnOnce(&crate::auth::Keys) -> Result<T, crate::auth::keys::KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    let keys = state.auth.keys.clone();
    tokio::task::spawn_blocking(move || change(&keys))
        .await
        .map_err(|_| ApiError::Unavailable("key store busy".into()))?
        .map_err(key_error)
}

fn key_error(e: crate::auth::keys::KeyError) -> ApiError {
    match e {
        crate::auth::keys::KeyError::Invalid(m) => ApiError::Invalid(ErrorCode::BadField, m),
        other => {
            tracing::error!(error = %other, "key store failed");
            ApiError::Unavailable("the key store failed".into())
        }
    }
}

/// `GET /ws`: checks the Origin and the connection cap *before* upgrading, so a refused
/// client gets a clear HTTP error instead of a socket that closes at once.
#[utoipa::path(get, path = "/ws", tag = "realtime",
    description = "The WebSocket upgrade. The first frame is `auth` with a user token or API key \
(never in the URL); then `subscribe` (with `since` to resume), `publish`, inbox and presence \
frames. The frames and close codes are defined in the `app::protocol` module.",
    responses((status = 101, description = "switching protocols"),
        (status = 403, description = "origin not allowed", body = app::protocol::ErrorBody),
        (status = 429, body = app::protocol::ErrorBody),
        (status = 503, description = "connection cap reached, or the node is draining", body = app::protocol::ErrorBody)))]
pub async fn websocket(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    ip: Option<axum::Extension<crate::listener::ClientIp>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state.config.allowed_origins)?;
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::Unavailable(
            "this node is shutting down; connect to another".into(),
        ));
    }
    // The token goes in the first frame; one in the URL would be in every access log.
    if let Some(q) = uri.query() {
        crate::auth::refuse_credentials_in(q)?;
    }
    let ip_slot = match ip {
        Some(axum::Extension(crate::listener::ClientIp(ip))) => {
            state.limits.connects_per_ip.check(&ip).map_err(|wait| {
                ApiError::RateLimited(wait, "too many new connections from this address")
            })?;
            let slot = state.limits.conns_per_ip.acquire(ip).map_err(|()| {
                ApiError::TooManyConnections("too many connections from this address".into())
            })?;
            slot.map(Box::new)
        }
        None => None,
    };
    let Some((reg, rx)) = state.hub.register() else {
        return Err(ApiError::Unavailable(
            "connection limit reached; retry later".into(),
        ));
    };
    let cfg = &state.config;
    let ws = ws
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(cfg.write_buffer_bytes)
        .max_message_size(cfg.hard_frame_bytes)
        .max_frame_size(cfg.hard_frame_bytes);
    let tracker = state.tracker.clone();
    Ok(ws
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            tracker.track_future(Session::new(state, reg, socket).holding(ip_slot).run(rx))
        }))
}

/// Browsers always send `Origin` on a WebSocket handshake; a page from another site must not
/// be able to open a socket with the user's cookies. Allowed: no Origin (not a browser), the
/// server's own host, and the configured allowlist.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| ApiError::ForbiddenOrigin("<invalid>".into()))?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if (!host.is_empty() && origin_host.eq_ignore_ascii_case(host))
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(ApiError::ForbiddenOrigin(origin.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::ops::{health, ready};
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_front_door_takes_only_paths_the_router_would_route_there_unchanged() {
        let post = |path| FastRoute::of(&Method::POST, path);
        assert_eq!(post("/api/topics/ops"), Some(FastRoute::Publish));
        assert_eq!(FastRoute::Publish.segment("/api/topics/ops"), Some("ops"));
        let path = "/api/users/ana@example.com/notifications";
        assert_eq!(post(path), Some(FastRoute::SendToUser));
        assert_eq!(FastRoute::SendToUser.segment(path), Some("ana@example.com"));
        // Escapes are the router's to decode; a `/` makes it another path; an invalid name
        // gets the router's (and the handler's) answer.
        assert_eq!(post("/api/topics/%6Fps"), None);
        assert_eq!(post("/api/users/ana%40example.com/notifications"), None);
        assert_eq!(post("/api/users/a/b/notifications"), None);
        assert_eq!(post("/api/users//notifications"), None);
        assert_eq!(post("/api/topics/no.dots"), None);
        assert_eq!(post("/api/users/ana/inbox"), None);
        assert_eq!(FastRoute::of(&Method::GET, "/api/topics/ops"), None);
        assert_eq!(
            FastRoute::of(&Method::GET, "/api/users/ana/notifications"),
            None
        );
    }

    #[test]
    fn origin_rules() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(check_origin(&headers(&[]), &allowed).is_ok());
        assert!(check_origin(
            &headers(&[
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:3000")
            ]),
            &allowed
        )
        .is_ok());
        assert!(check_origin(
            &headers(&[("origin", "https://app.example.com"), ("host", "x")]),
            &allowed
        )
        .is_ok());
        assert!(check_origin(
            &headers(&[
                ("origin", "https://evil.example"),
                ("host", "127.0.0.1:3000")
            ]),
            &allowed
        )
        .is_err());
    }

    #[tokio::test]
    async fn health_and_readiness_fail_once_the_store_writer_is_gone() {
        use crate::hooks::Hooks;
        use crate::store::{Retention, SqliteOptions, SqliteStore, Store};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let die = Arc::new(AtomicBool::new(false));
        let hooks = Hooks::writer_dies_when(die.clone());
        let (feed, _rx) = tokio::sync::mpsc::channel(16);
        let retention = Retention {
            max_count: 10,
            max_age: std::time::Duration::from_secs(60),
            idempotency_window: std::time::Duration::from_secs(60),
        };
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &dir.path().join("h.db"),
                SqliteOptions::default(),
                retention,
                feed,
                hooks,
            )
            .unwrap(),
        );
        let config = crate::config::Config::for_tests();
        let hub = crate::hub::Hub::new(1, 1);
        let state = AppState(Arc::new(crate::Shared {
            presence: crate::presence::Presence::from_config(&config).unwrap(),
            broker: Arc::new(crate::broker::Local::new(hub.clone())),
            limits: crate::limits::EdgeLimits::new(&config),
            hub,
            store: store.clone(),
            leptos_options: leptos::config::LeptosOptions::builder()
                .output_name("herald")
                .build(),
            tracker: tokio_util::task::TaskTracker::new(),
            auth: Arc::new(
                crate::auth::setup::authority(&config, "127.0.0.1:0".parse().unwrap()).unwrap(),
            ),
            config,
            draining: Default::default(),
        }));
        assert_eq!(health(State(state.clone())).await.status(), StatusCode::OK);
        assert_eq!(ready(State(state.clone())).await.status(), StatusCode::OK);
        die.store(true, Ordering::SeqCst);
        let new = NewNotification {
            body: "x".into(),
            ..Default::default()
        };
        assert!(store.append("t", new, None).await.is_err());
        store.failed().await;
        let not_ready = ready(State(state.clone())).await;
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(not_ready.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], "unavailable");
        let resp = health(State(state)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], "failing");
        assert!(json["error"]
            .as_str()
            .unwrap()
            .contains("injected writer failure"));
    }

    #[test]
    fn plain_text_headers_become_fields() {
        let from = |h: &HeaderMap| {
            PublishHeaders::read(h).and_then(|f| f.into_notification("done".into()))
        };
        let h = headers(&[
            ("x-title", "ignored"),
            ("title", "Deploy"),
            ("x-priority", "5"),
            ("tags", "a, b"),
        ]);
        let n = from(&h).unwrap();
        assert_eq!(n.title.as_deref(), Some("Deploy"));
        assert_eq!(n.priority, Some(5));
        assert_eq!(n.tags, vec!["a", "b"]);
        assert!(from(&headers(&[("priority", "high")])).is_err());
        let h = headers(&[("idempotency-key", "k1")]);
        let key = PublishHeaders::read(&h).unwrap();
        assert_eq!(key.idempotency_key.as_deref(), Some("k1"));
        assert!(PublishHeaders::read(&headers(&[("idempotency-key", &"k".repeat(129))])).is_err());
        let h = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert!(PublishHeaders::read(&h).unwrap().json);
    }
}
