//! Herald's server, as a library: `main.rs` parses the config and calls [`run`]; tests call
//! [`start`] (or [`start_with`], with test [`hooks`]) on `127.0.0.1:0`.
//!
//! A publish flows one way: `api` (HTTP) or `session` (socket) -> `store` (assigns the offset,
//! makes it durable, emits it on the feed in order) -> `hub::dispatch` -> `hub` (fan-out into
//! bounded per-connection queues) -> each `session` (verified, coalesced writes).
//!
//! - [`config`]: every bound, with defaults and env fallbacks.
//! - [`listener`]: the accept loop: connection cap, request-head and write deadlines.
//! - [`store`]: the `Store` trait and its guarantees; SQLite (default) and memory.
//! - [`hub`]: local subscriptions, fan-out, slow-consumer policy, heartbeat sweep.
//! - [`session`]: one WebSocket connection: its writer, inbound dispatch, resume.
//! - [`limits`]: per-connection frame rate limiting on tokio's clock.
//! - [`auth`]: API keys, user tokens, and the one permission check every path calls.
//! - [`api`]: HTTP routes and the upgrade (origin check, connection cap).
//! - [`error`]: `ApiError` -> status + JSON body.
//! - [`hooks`]: test seams (no-ops in production).

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod drain;
pub mod error;
pub mod hooks;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod presence;
pub mod session;
pub mod site;
pub mod store;

#[cfg(test)]
mod fuzz;

use crate::config::{Config, StoreKind};
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::store::{MemoryStore, ReadQuery, Retention, SqliteOptions, SqliteStore, Store};
use anyhow::Context as _;
use app::protocol::close_code;
use app::{shell, App, HistoryLoader};
use axum::extract::FromRef;

use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;

/// Notifications committed but not yet fanned out; the store waits (backpressure) beyond it.
const FEED_CAPACITY: usize = 4096;
/// Open files kept free for the listener, the database, logs and the reader pool.
const FD_RESERVE: usize = 256;

/// What every handler shares.
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    /// Live fan-out between nodes (see [`broker`]).
    pub broker: Arc<dyn broker::Broker>,
    /// Keys, tokens and the permission rules: every topic access is checked here.
    pub auth: Arc<auth::Authority>,
    /// Rates and connection caps per credential, address and user.
    pub limits: limits::EdgeLimits,
    /// Who is in which room.
    pub presence: Arc<presence::Presence>,
    pub leptos_options: LeptosOptions,
    /// Every connection task and session; shutdown waits on it.
    pub tracker: TaskTracker,
    /// Set when the drain starts (see [`drain`]): readiness fails, upgrades are refused.
    pub draining: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(s: &AppState) -> Self {
        s.leptos_options.clone()
    }
}

/// Leptos options from the environment cargo-leptos sets, with defaults that work when the
/// binary is started directly from the repository root.
fn leptos_options(config: &Config, addr: SocketAddr) -> LeptosOptions {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let site_root = config
        .site_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(env("LEPTOS_SITE_ROOT", "target/site")));
    let hash_file = env("LEPTOS_HASH_FILE_NAME", "hash.txt");
    LeptosOptions::builder()
        .hash_files(site::hashed_names(&hash_file))
        .hash_file(std::sync::Arc::from(hash_file))
        .output_name(env("LEPTOS_OUTPUT_NAME", "herald"))
        .site_root(site_root.to_string_lossy().into_owned())
        .site_pkg_dir(env("LEPTOS_SITE_PKG_DIR", "pkg"))
        .site_addr(addr)
        .reload_port(
            env("LEPTOS_RELOAD_PORT", "3001")
                .parse::<u32>()
                .unwrap_or(3001),
        )
        .build()
}

/// The listen address: `--addr`, else cargo-leptos's LEPTOS_SITE_ADDR, else 127.0.0.1:3000.
pub fn listen_addr(config: &Config) -> SocketAddr {
    config
        .addr
        .or_else(|| {
            std::env::var("LEPTOS_SITE_ADDR")
                .ok()
                .and_then(|a| a.parse().ok())
        })
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)))
}

/// The soft open-file limit of this process, from /proc (Linux); `None` elsewhere.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// TCP connections always left for plain HTTP (health checks, publishes) beyond WebSockets.
const MIN_HTTP_CONNECTIONS: usize = 64;

/// Keeps the connection limits below the open-file limit; returns the TCP connection cap.
/// The WebSocket cap stays as configured when it fits; the HTTP headroom shrinks first.
fn clamp_connections(config: &mut Config) -> usize {
    let fd_cap = open_file_limit().map(|limit| limit.saturating_sub(FD_RESERVE).max(2));
    if let Some(cap) = fd_cap {
        let ws_cap = cap.saturating_sub(MIN_HTTP_CONNECTIONS).max(1);
        if config.max_connections > ws_cap {
            tracing::warn!(
                requested = config.max_connections,
                cap = ws_cap,
                "max_connections lowered below the open-file limit"
            );
            config.max_connections = ws_cap;
        }
    }
    let total = config
        .max_connections
        .saturating_add(config.max_http_connections.max(1));
    fd_cap.map_or(total, |cap| total.min(cap))
}

/// Opens the configured store and its broker, feeding `feed`.
fn open_store(
    config: &Config,
    feed: mpsc::Sender<Arc<store::Stored>>,
    hub: &Arc<Hub>,
    presence: &Arc<presence::Presence>,
    hooks: &Hooks,
    cancel: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn broker::Broker>)> {
    let retention = Retention {
        max_count: config.retain_count.max(1),
        max_age: config.retain_age(),
        idempotency_window: config.idempotency_window(),
    };
    let mut broker: Arc<dyn broker::Broker> = Arc::new(broker::Local::new(hub.clone()));
    let store: Arc<dyn Store> = match config.store {
        StoreKind::Redis => {
            let store = Arc::new(
                store::RedisStore::new(&config.redis_url, &config.redis_prefix, retention)
                    .context("redis store")?,
            );
            presence.set_cluster(presence::cluster::Cluster::start(
                store.clone(),
                presence.list_max(),
                Arc::downgrade(presence),
                cancel.clone(),
            ));
            broker = store::redis::pubsub::Fanout::start(
                store.clone(),
                feed,
                Some(hub.clone()),
                store::redis::pubsub::Scope::Watched,
                cancel.clone(),
            );
            store
        }
        StoreKind::Memory => Arc::new(MemoryStore::with_limits(
            feed,
            retention,
            store::MemoryLimits {
                max_topics: config.memory_max_topics.max(1),
                max_idempotency_keys: config.memory_max_idempotency_keys.max(1),
            },
        )),
        StoreKind::Sqlite => {
            let options = SqliteOptions {
                sync: config.sqlite_sync,
                max_batch: config.max_batch.max(1),
                readers: config.sqlite_readers.max(1),
                cached_topics: config.cached_topics.max(1),
                prune_chunk: config.prune_chunk.max(1),
            };
            Arc::new(
                SqliteStore::open(&config.db, options, retention, feed, hooks.clone())
                    .with_context(|| format!("opening database {}", config.db.display()))?,
            )
        }
    };
    let store = match &hooks.wrap_store {
        Some(wrap) => wrap(store),
        None => store,
    };
    Ok((store, broker))
}

/// The server's parts, built and not yet serving.
struct Built {
    router: Router,
    state: AppState,
    /// The TCP connection cap.
    permits: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Reads the API keys and sets up the token verifier, on a blocking thread: the key table is
/// read from disk or Redis (a single-threaded runtime must keep running meanwhile).
async fn authority(config: &Config, addr: SocketAddr) -> anyhow::Result<Arc<auth::Authority>> {
    let config = config.clone();
    let authority = tokio::task::spawn_blocking(move || auth::setup::authority(&config, addr))
        .await
        .context("setting up credentials")??;
    Ok(Arc::new(authority))
}

/// Builds the store, the hub and the router, and starts the background tasks (which stop on
/// `cancel`).
fn build(
    mut config: Config,
    addr: SocketAddr,
    authority: Arc<auth::Authority>,
    hooks: &Hooks,
    cancel: &CancellationToken,
) -> anyhow::Result<Built> {
    let permits = clamp_connections(&mut config);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(listener::tls_acceptor(cert, key)?),
        _ => None,
    };
    config.hard_frame_bytes = config.hard_frame_bytes.max(config.max_frame_bytes);
    if config.metrics_key.as_ref().is_some_and(|k| k.len() < 16) {
        anyhow::bail!("--metrics-key must be at least 16 characters");
    }
    metrics::install();
    tokio::spawn(metrics::upkeep(cancel.clone()));
    if authority.keys.watched() {
        tokio::spawn(auth::keys::watch(authority.keys.clone(), cancel.clone()));
    }
    let (feed_tx, feed_rx) = mpsc::channel(FEED_CAPACITY);
    let hub = Hub::new(config.max_connections, config.queue_frames);
    let presence = presence::Presence::from_config(&config)?;
    let (store, broker) = open_store(&config, feed_tx, &hub, &presence, hooks, cancel)?;
    let tracker = TaskTracker::new();
    tokio::spawn(hub::dispatch(hub.clone(), feed_rx));
    tokio::spawn(hub::heartbeat(
        hub.clone(),
        config.heartbeat(),
        cancel.clone(),
    ));
    tokio::spawn(hub::deadlines(hub.clone(), cancel.clone()));
    spawn_pruner(
        store.clone(),
        Duration::from_secs(config.prune_interval_secs.max(1)),
        cancel.clone(),
    );

    let leptos_options = leptos_options(&config, addr);
    let request_timeout = config.request_timeout();
    let limits = limits::EdgeLimits::new(&config);
    let state = AppState(Arc::new(Shared {
        presence,
        config,
        hub,
        store,
        broker,
        auth: authority,
        limits,
        leptos_options,
        tracker,
        draining: std::sync::atomic::AtomicBool::new(false),
    }));
    {
        // Rate tables hold only recent callers.
        let (state, cancel) = (state.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => state.limits.forget_idle(),
                }
            }
        });
    }
    let routes = generate_route_list(App);
    let loader = history_loader(state.clone());
    let opts = state.leptos_options.clone();
    let page_headers = site::page_headers(site::reload_origin(&opts));
    let (api_routes, _) = api::router();
    let router = api_routes
        .merge(site::bundle(&opts))
        .leptos_routes_with_context(
            &state,
            routes,
            {
                let page_headers = page_headers.clone();
                move || {
                    provide_context(loader.clone());
                    page_headers();
                }
            },
            move || shell(opts.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(page_headers, shell))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            api::request_deadline,
        ));
    // Request spans and timings cost a clock read and a span per request even when nothing
    // is logged: only when `RUST_LOG` asks for tower_http at debug.
    let router = if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        router.layer(TraceLayer::new_for_http())
    } else {
        router
    };
    let router = site::security_headers(router).with_state(state.clone());
    Ok(Built {
        router,
        state,
        permits,
        tls,
    })
}

/// Lets the server-rendered page read recent history straight from the store.
fn history_loader(state: AppState) -> HistoryLoader {
    Arc::new(move |topic: String| {
        let state = state.clone();
        Box::pin(async move {
            let q = ReadQuery {
                after: 0,
                before: u64::MAX,
                limit: app::HISTORY_PAGE,
                newest_first: true,
            };
            // The page is rendered before the browser authenticates (its token is not in a
            // cookie): only what an anonymous reader may see is rendered.
            let who = auth::Identity::Anonymous;
            if state.auth.check(&who, auth::Action::Read, &topic).is_err() {
                return None;
            }
            api::history_page(&state, &topic, q).await.ok()
        })
    })
}

fn spawn_pruner(store: Arc<dyn Store>, every: Duration, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let pruned = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => store.prune().await,
            };
            match pruned {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "retention pruned notifications"),
                Err(store::StoreError::Closed) => return,
                Err(e) => tracing::error!(error = %e, "retention pruning failed"),
            }
        }
    });
}

/// Serves on `listener` until `shutdown` resolves, then closes every socket with 1001 and
/// waits up to the configured grace for them to go. Returns an error, after the same
/// shutdown, if the store fails for good (so the process exits non-zero and a supervisor
/// restarts it).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, Hooks::default()).await
}

/// [`run`] with test hooks.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hooks: Hooks,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let authority = authority(&config, addr).await?;
    let built = build(config, addr, authority, &hooks, &cancel)?;
    serve(built, listener, shutdown, cancel).await
}

/// Serves a built server until `shutdown` (or a fatal store error), then drains.
async fn serve(
    built: Built,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Built {
        router,
        state,
        permits,
        tls,
    } = built;
    let addr = listener.local_addr()?;
    if let Some(metrics_addr) = state.config.metrics_addr {
        serve_metrics(metrics_addr, state.clone(), cancel.clone())?;
    }
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let accept = tokio::spawn(
        listener::Listener {
            listener,
            service: listener::Front {
                router,
                state: state.clone(),
                peer: None,
            },
            tls,
            permits: Arc::new(Semaphore::new(permits)),
            head_timeout: state.config.request_head_timeout(),
            write_timeout: state.config.write_timeout(),
            cancel: cancel.clone(),
            tracker: state.tracker.clone(),
        }
        .run(),
    );
    tracing::info!(%addr, "herald listening on {scheme}://{addr}");
    let outcome = tokio::select! {
        _ = shutdown => Ok(()),
        why = state.store.failed() => Err(anyhow::anyhow!("store failed: {why}")),
    };
    let outcome = match outcome {
        Ok(()) => {
            let window = Duration::from_secs(state.config.drain_secs);
            tokio::select! {
                () = drain::drain(&state, window) => {
                    tracing::info!("drained; closing what is left with 1001");
                    Ok(())
                }
                why = state.store.failed() => Err(anyhow::anyhow!("store failed: {why}")),
            }
        }
        Err(e) => Err(e),
    };
    cancel.cancel();
    let code = if outcome.is_ok() {
        close_code::GOING_AWAY
    } else {
        close_code::INTERNAL
    };
    state.hub.close_all(code);
    let _ = accept.await;
    state.tracker.close();
    if tokio::time::timeout(grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.hub.connections(),
            "connections still open after the grace period"
        );
    }
    outcome
}

/// `GET /metrics` without credentials on a separate address (`--metrics-addr`), until
/// `cancel`.
fn serve_metrics(
    addr: SocketAddr,
    state: AppState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener =
        listener::bind(addr).with_context(|| format!("binding --metrics-addr {addr}"))?;
    let app = Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    api::ops::render_metrics(&state)
                },
            ),
        )
        .with_state(state);
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// A server running in this process (for tests and the benchmark tool).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The server's shared state (tests create keys and mint tokens through `state.auth`).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }
    /// Waits for the server to end on its own (a fatal store error) and returns its result.
    pub async fn finished(mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }
}

/// Starts a server on `127.0.0.1:0` (or `config.addr`) in this process.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with(config, Hooks::default()).await
}

/// [`start`] with test hooks.
pub async fn start_with(config: Config, hooks: Hooks) -> anyhow::Result<RunningServer> {
    let bind = config
        .addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = listener::bind(bind)?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let authority = authority(&config, addr).await?;
    let built = build(config, addr, authority, &hooks, &cancel)?;
    let state = built.state.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        built,
        listener,
        async move {
            let _ = rx.await;
        },
        cancel,
    ));
    Ok(RunningServer {
        addr,
        state,
        stop: Some(tx),
        task,
    })
}

/// Resolves on SIGINT or SIGTERM (cargo-leptos stops the server with SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
