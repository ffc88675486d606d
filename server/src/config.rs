//! Runtime configuration: every bound Herald enforces, with its default and the reason for it.
//!
//! Every flag has an environment fallback (`HERALD_*`), so the same binary is configured by
//! flags in development and by the environment in deployment.

use crate::auth::TokenAlgorithm;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which store keeps notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded SQLite (WAL, group commit): survives restarts and crashes.
    Sqlite,
    /// In-process memory: fastest, everything is lost on exit.
    Memory,
    /// Redis (`--redis-url`): several nodes share offsets, history and live fan-out.
    Redis,
}

/// How hard SQLite syncs a commit before a publish is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// fsync the WAL on every group commit: an acknowledged publish survives power loss.
    Full,
    /// No fsync on commit: survives a process crash, not an OS crash or power loss.
    Normal,
}

/// Development or production: what happens when credentials are missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Zero configuration: a token secret and an admin key are created on first start (kept
    /// beside the database and printed), and the page offers a sign-in that picks a user name.
    Dev,
    /// Refuses to start without a token secret or public key, or while a development secret
    /// or key is in use. No sign-in endpoint.
    Production,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald, Loki, Elasticsearch and the like).
    Json,
}

/// Subcommands besides serving.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Manage API keys: in the database (`--db`), or with `--store redis` in Redis, shared by
    /// every node. Running servers see changes at once.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Publish a notification to a topic (the API key from HERALD_KEY).
    Publish(crate::cli::PublishArgs),
    /// Follow topics and print notifications as they arrive; resumes after a dropped
    /// connection (and, with --state, after a restart). Ctrl-C ends it.
    Subscribe(crate::cli::SubscribeArgs),
}

#[derive(Clone, Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (it is shown only this once).
    Add {
        /// A name that says who uses the key.
        #[arg(long)]
        name: String,
        /// A scope: publish:PATTERN, read:PATTERN or admin:* (repeat for more). A pattern is
        /// a topic, a prefix ending in '*', or '*'.
        #[arg(long = "allow", required = true)]
        allow: Vec<String>,
        /// Import the key read from standard input instead of creating one: the same key on
        /// hosts that do not share a database (never on the command line, where `ps` shows
        /// it). A revocation must then be made on each of them.
        #[arg(long)]
        from_stdin: bool,
    },
    /// List keys (ids, names, scopes; never the keys).
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; it stops working at once.
    Revoke { id: String },
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time notification hub"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// dev: zero configuration, credentials created on first start. production: explicit
    /// credentials required.
    #[arg(
        long,
        env = "HERALD_MODE",
        value_enum,
        default_value = "dev",
        global = true
    )]
    pub mode: Mode,

    /// HS256 secret for user tokens (at least 32 bytes). Herald can then also mint tokens
    /// (`POST /api/tokens`). In dev mode, created on first start when not given.
    #[arg(long, env = "HERALD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// PEM public key of an identity provider that signs user tokens (RS256 or ES256, see
    /// --token-algorithm). Used instead of --token-secret.
    #[arg(long, env = "HERALD_TOKEN_PUBLIC_KEY")]
    pub token_public_key: Option<PathBuf>,

    /// Algorithm of user tokens; tokens signed with any other one are refused.
    #[arg(
        long,
        env = "HERALD_TOKEN_ALGORITHM",
        value_enum,
        default_value = "hs256"
    )]
    pub token_algorithm: TokenAlgorithm,

    /// Required `aud` claim of user tokens (checked only when set).
    #[arg(long, env = "HERALD_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Required `iss` claim of user tokens (checked only when set).
    #[arg(long, env = "HERALD_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Clock skew allowed when checking a token's `exp`, in seconds.
    #[arg(long, env = "HERALD_TOKEN_LEEWAY_SECS", default_value_t = 30)]
    pub token_leeway_secs: u64,

    /// How long before a connection's token expires the server sends `token_expiring`.
    #[arg(long, env = "HERALD_TOKEN_WARNING_SECS", default_value_t = 60)]
    pub token_warning_secs: u64,

    /// Longest lifetime of a token Herald mints, in seconds.
    #[arg(long, env = "HERALD_MAX_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub max_token_ttl_secs: u64,

    /// Allow connections and requests without credentials; they may read only the public
    /// topics.
    #[arg(long, env = "HERALD_ANONYMOUS")]
    pub anonymous: bool,

    /// Topic patterns anyone may read when --anonymous is on (comma separated; `news`,
    /// `status-*`).
    #[arg(long, env = "HERALD_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Vec<String>,

    /// Topic patterns that are rooms with presence (who is in them, by user) and typing
    /// indicators (comma separated).
    #[arg(
        long,
        env = "HERALD_PRESENCE_TOPICS",
        value_delimiter = ',',
        default_value = "chat-*"
    )]
    pub presence_topics: Vec<String>,

    /// A room with more members than this tells a joiner only how many.
    #[arg(long, env = "HERALD_PRESENCE_LIST_MAX", default_value_t = 100)]
    pub presence_list_max: usize,

    /// Publishes per second per API key or user (HTTP and socket), bursts of twice that;
    /// beyond it 429 with Retry-After. 0: no limit.
    #[arg(
        long,
        env = "HERALD_PUBLISH_PER_SEC_PER_CREDENTIAL",
        default_value_t = 1000
    )]
    pub publish_per_sec_per_credential: u32,

    /// HTTP publishes per second per client address (0: no limit). Off by default: behind a
    /// load balancer every client has the balancer's address.
    #[arg(long, env = "HERALD_PUBLISH_PER_SEC_PER_IP", default_value_t = 0)]
    pub publish_per_sec_per_ip: u32,

    /// New WebSocket connections per second per client address (0: no limit; see above).
    #[arg(long, env = "HERALD_CONNECTS_PER_SEC_PER_IP", default_value_t = 0)]
    pub connects_per_sec_per_ip: u32,

    /// Open WebSockets per client address (0: no limit; see above).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Addresses of trusted proxies (comma separated, exact IPs): for connections from them,
    /// per-address limits use the client address in `X-Forwarded-For`.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Open WebSockets per signed-in user (their tabs and devices); 0: no limit. API keys
    /// are not counted (a backend may hold many).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 64)]
    pub max_connections_per_user: u32,

    /// Milliseconds a new socket has to send its first frame (`auth`) before it is closed
    /// with 4004.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,

    /// Address to listen on. Falls back to LEPTOS_SITE_ADDR (set by cargo-leptos).
    #[arg(long, env = "HERALD_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Store backend. With `redis`, API keys live in Redis too (shared by every node).
    #[arg(
        long,
        env = "HERALD_STORE",
        value_enum,
        default_value = "sqlite",
        global = true
    )]
    pub store: StoreKind,

    /// Redis for `--store redis`.
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key and channel (several deployments can share one Redis).
    #[arg(
        long,
        env = "HERALD_REDIS_PREFIX",
        default_value = "herald",
        global = true
    )]
    pub redis_prefix: String,

    /// SQLite database file; created with its directory on first run. API keys live here
    /// unless `--store redis` (`:memory:` keeps them in the process only). Development mode
    /// keeps its secret and key files beside it whatever the store.
    #[arg(
        long,
        env = "HERALD_DB",
        default_value = "data/herald.db",
        global = true
    )]
    pub db: PathBuf,

    /// SQLite durability of an acknowledged publish.
    #[arg(long, env = "HERALD_SQLITE_SYNC", value_enum, default_value = "full")]
    pub sqlite_sync: SyncMode,

    /// Most publishes committed in one SQLite transaction (group commit).
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 1024)]
    pub max_batch: usize,

    /// Retain at most this many notifications per topic (older ones are pruned).
    #[arg(long, env = "HERALD_RETAIN_COUNT", default_value_t = 1000)]
    pub retain_count: u64,

    /// Retain notifications for at most this many seconds.
    #[arg(long, env = "HERALD_RETAIN_SECS", default_value_t = 7 * 24 * 3600)]
    pub retain_secs: u64,

    /// How often the retention pruner runs, in seconds.
    #[arg(long, env = "HERALD_PRUNE_INTERVAL_SECS", default_value_t = 30)]
    pub prune_interval_secs: u64,

    /// How long an Idempotency-Key is remembered, in seconds.
    #[arg(long, env = "HERALD_IDEMPOTENCY_SECS", default_value_t = 24 * 3600)]
    pub idempotency_secs: u64,

    /// SQLite reader connections: at most this many history reads run at once (each on a
    /// blocking thread), so a burst of resuming clients cannot spawn a thread each.
    #[arg(long, env = "HERALD_SQLITE_READERS", default_value_t = 4)]
    pub sqlite_readers: usize,

    /// Topics whose position (epoch, last offset) the SQLite store keeps in memory, so that a
    /// plain subscribe needs no disk read. Least recently used topics are forgotten first.
    #[arg(long, env = "HERALD_CACHED_TOPICS", default_value_t = 65_536)]
    pub cached_topics: usize,

    /// Rows deleted per retention transaction: publishes wait at most one chunk behind a prune.
    #[arg(long, env = "HERALD_PRUNE_CHUNK", default_value_t = 1000)]
    pub prune_chunk: usize,

    /// Memory store only: most topics it holds. A publish that would create one more gets
    /// 503: a topic cannot be forgotten without reusing its offsets.
    #[arg(long, env = "HERALD_MEMORY_MAX_TOPICS", default_value_t = 10_000)]
    pub memory_max_topics: usize,

    /// Memory store only: most remembered Idempotency-Keys (the oldest is forgotten first).
    #[arg(
        long,
        env = "HERALD_MEMORY_MAX_IDEMPOTENCY_KEYS",
        default_value_t = 100_000
    )]
    pub memory_max_idempotency_keys: usize,

    /// Most concurrent WebSocket connections; beyond it the upgrade is refused with 503.
    /// Clamped below the process's open-file limit so accept() never hits EMFILE.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// TCP connections allowed beyond the WebSocket cap, for plain HTTP requests and upgrades
    /// in progress. A connection beyond both gets a 503 and is closed at once.
    #[arg(long, env = "HERALD_MAX_HTTP_CONNECTIONS", default_value_t = 1024)]
    pub max_http_connections: usize,

    /// Milliseconds a client has to send a complete HTTP request head (the WebSocket upgrade
    /// request included), and the longest a keep-alive connection may sit idle.
    #[arg(long, env = "HERALD_REQUEST_HEAD_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_head_timeout_ms: u64,

    /// Milliseconds an HTTP request may take from its head to its response (a slow body
    /// included); beyond it the answer is 408.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Milliseconds a write to a client may make no progress (the client does not read)
    /// before the connection is dropped, HTTP and WebSocket alike.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// Frames queued for one connection before it is closed as a slow consumer (4000).
    #[arg(long, env = "HERALD_QUEUE_FRAMES", default_value_t = 512)]
    pub queue_frames: usize,

    /// Largest inbound text frame answered normally; larger ones get a `too_large` error frame.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Hard inbound message limit: beyond it the socket is closed with 1009. Must be >= max_frame_bytes.
    #[arg(long, env = "HERALD_HARD_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub hard_frame_bytes: usize,

    /// Largest notification body (HTTP and socket), in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Per-connection WebSocket read buffer. tungstenite's default (128 KiB) is preallocated and
    /// zero-filled per read: far too much for idle connections. Larger frames still work.
    #[arg(long, env = "HERALD_READ_BUFFER_BYTES", default_value_t = 512)]
    pub read_buffer_bytes: usize,

    /// Outbound bytes buffered before tungstenite writes to the socket. Frames fed in one batch
    /// up to this size leave in one write.
    #[arg(long, env = "HERALD_WRITE_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub write_buffer_bytes: usize,

    /// Most subscriptions one connection may hold.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,

    /// Inbound frames per second allowed per connection (token bucket, burst of twice this).
    #[arg(long, env = "HERALD_FRAMES_PER_SEC", default_value_t = 50)]
    pub frames_per_sec: u32,

    /// Heartbeat ping interval, in milliseconds. A connection silent for twice this is closed (4001).
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,

    /// Extra allowed browser origins (comma separated), besides the server's own host.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// PEM certificate chain: serve TLS (https, wss) with --tls-key.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log lines as text or as JSON lines. Levels come from RUST_LOG (default
    /// `info,tower_http=warn`).
    #[arg(
        long,
        env = "HERALD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// On SIGTERM, the window (seconds) over which connected clients are told to reconnect
    /// (close 1001), spread evenly, so that they do not all land on the other nodes in the
    /// same second. Readiness answers 503 from the start of the drain.
    #[arg(long, env = "HERALD_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,

    /// A key that may read `GET /metrics` (besides admin keys), for a Prometheus scraper
    /// that should hold no other power. At least 16 characters.
    #[arg(long, env = "HERALD_METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<String>,

    /// Also serve `GET /metrics`, without credentials, on this address (a private
    /// interface or loopback that only the scraper reaches).
    #[arg(long, env = "HERALD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,

    /// Directory with the built site (wasm, js, css). Falls back to LEPTOS_SITE_ROOT.
    #[arg(long, env = "HERALD_SITE_ROOT")]
    pub site_root: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["herald"])
    }
}

impl Config {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }
    pub fn request_head_timeout(&self) -> Duration {
        Duration::from_millis(self.request_head_timeout_ms.max(1))
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.max(1))
    }
    pub fn retain_age(&self) -> Duration {
        Duration::from_secs(self.retain_secs)
    }
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_secs)
    }
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms.max(1))
    }
    /// The token secret tests sign with (see [`Config::for_tests`]).
    pub const TEST_TOKEN_SECRET: &'static str = "herald-test-secret-0123456789abcdef";
    /// A throwaway configuration for tests: memory store, keys in memory, production rules
    /// with a known token secret; everything else default.
    pub fn for_tests() -> Self {
        Self {
            store: StoreKind::Memory,
            db: PathBuf::from(":memory:"),
            mode: Mode::Production,
            token_secret: Some(Self::TEST_TOKEN_SECRET.into()),
            drain_secs: 0,
            ..Self::default()
        }
    }
}
