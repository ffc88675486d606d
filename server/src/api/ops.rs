//! The routes that operators and their tools call: liveness, readiness, metrics and the
//! overview the admin page draws.
//!
//! - `GET /api/health`: alive (the process serves HTTP and its store has not failed for
//!   good). No credentials; for a supervisor's liveness probe.
//! - `GET /api/ready`: can serve now: the store can take a write (its writer is alive, or its
//!   Redis connection is up) and the node is not draining. No credentials; for a load
//!   balancer's health check. Both read flags only: they answer at once and never wait
//!   behind the publish path.
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]); an admin key or the metrics
//!   key (`--metrics-key`). With `--metrics-addr`, also served without credentials on that
//!   separate address (meant for a private interface).
//! - `GET /api/admin/overview`: the admin page's figures (admin key).

use crate::error::ApiError;
use crate::AppState;
use app::protocol::{BusyTopic, Overview};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::atomic::Ordering;

/// How many topics the overview lists as busiest.
const BUSIEST: usize = 10;

/// `GET /api/health`.
#[utoipa::path(get, path = "/api/health", tag = "operations",
    responses((status = 200, description = "alive", body = Status),
              (status = 503, description = "the store failed for good; the process exits", body = Status)))]
pub async fn health(State(state): State<AppState>) -> Response {
    match state.store.fatal() {
        None => Json(Status::ok("ok")).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status::failing("failing", why)),
        )
            .into_response(),
    }
}

/// What health and readiness answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok`, `ready`, `draining`, `unavailable` or `failing`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    fn ok(status: &'static str) -> Self {
        Self {
            status,
            error: None,
        }
    }
    fn failing(status: &'static str, why: String) -> Self {
        Self {
            status,
            error: Some(why),
        }
    }
}

/// Why this node should not be sent new work, if it should not.
pub fn readiness(state: &crate::Shared) -> Result<(), Status> {
    if state.draining.load(Ordering::Acquire) {
        return Err(Status::failing(
            "draining",
            "shutting down; connect to another node".into(),
        ));
    }
    state
        .store
        .ready()
        .map_err(|why| Status::failing("unavailable", why))
}

/// `GET /api/ready`.
#[utoipa::path(get, path = "/api/ready", tag = "operations",
    responses((status = 200, description = "ready to serve", body = Status),
              (status = 503, description = "draining, or the store cannot take writes", body = Status)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    match readiness(&state) {
        Ok(()) => Json(Status::ok("ready")).into_response(),
        Err(status) => {
            let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(status)).into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
    }
}

/// The levels `/metrics` reports, read from this server now.
pub fn levels(state: &crate::Shared, census: &crate::hub::Census) -> crate::metrics::Levels {
    crate::metrics::Levels {
        connections: state.hub.connections(),
        max_connections: state.config.max_connections,
        subscriptions: census.subscriptions,
        topics: census.topics,
        queued_frames: census.queued_frames,
        queue_depth_max: census.queue_depth_max,
        ready: readiness(state).is_ok(),
        draining: state.draining.load(Ordering::Acquire),
        store_queued_writes: state.store.stats().queued_writes,
    }
}

/// The Prometheus page for this server.
pub fn render_metrics(state: &crate::Shared) -> Response {
    let census = state.hub.census(0);
    match crate::metrics::render(&levels(state, &census)) {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => ApiError::NotConfigured("metrics are not recorded in this process".into())
            .into_response(),
    }
}

/// `GET /metrics` on the main address: an admin key, or the metrics key.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
              (status = 401, body = app::protocol::ErrorBody), (status = 403, body = app::protocol::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !metrics_key_matches(&state, &headers) {
        let who = state.auth.from_request(&headers, uri.query())?;
        state.auth.check_admin(&who)?;
    }
    Ok(render_metrics(&state))
}

/// Whether the request carries the configured metrics key (compared in constant time).
fn metrics_key_matches(state: &crate::Shared, headers: &HeaderMap) -> bool {
    let Some(expected) = state.config.metrics_key.as_deref() else {
        return false;
    };
    let given = crate::auth::bearer(headers).ok().flatten().unwrap_or("");
    subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into()
}

/// `GET /api/admin/overview` (admin key): the figures `/metrics` has, as JSON, plus the
/// busiest topics (by local subscribers) that `/metrics` leaves out (topics are unbounded
/// and never labels).
#[utoipa::path(get, path = "/api/admin/overview", tag = "operations",
    security(("bearer" = [])),
    responses((status = 200, body = Overview),
              (status = 401, body = app::protocol::ErrorBody), (status = 403, body = app::protocol::ErrorBody)))]
pub async fn overview(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Json<Overview>, ApiError> {
    let who = state.auth.from_request(&headers, uri.query())?;
    state.auth.check_admin(&who)?;
    let census = state.hub.census(BUSIEST);
    let levels = levels(&state, &census);
    let not_ready = readiness(&state).err().and_then(|s| s.error);
    let hub = state.hub.stats();
    Ok(Json(Overview {
        version: env!("CARGO_PKG_VERSION").into(),
        store: format!("{:?}", state.config.store).to_lowercase(),
        ready: levels.ready,
        draining: levels.draining,
        not_ready,
        connections: levels.connections,
        max_connections: levels.max_connections,
        subscriptions: levels.subscriptions,
        topics: levels.topics,
        busiest: census
            .busiest
            .into_iter()
            .map(|(topic, subscribers)| BusyTopic {
                topic: topic.to_string(),
                subscribers,
            })
            .collect(),
        published: crate::metrics::stored_publishes(),
        delivered: hub.delivered,
        slow_consumer_cuts: hub.slow_closed,
        queued_frames: levels.queued_frames,
        queue_depth_max: levels.queue_depth_max,
        store_queued_writes: levels.store_queued_writes,
    }))
}
