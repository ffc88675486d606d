//! `herald-bench`: Herald's load generator. It talks Herald's real protocol over loopback and
//! prints progress while it runs and a summary at the end (`--json` for machines).
//!
//! ```text
//! herald-bench connections --count 10000 --server-pid $PID   # hold N sockets, RSS per socket
//! herald-bench fanout --subscribers 1000 --rate 20 --messages 400 --server-pid $PID
//! herald-bench publish --concurrency 32 --requests 200000 --server-pid $PID
//! herald-bench capacity --subscribers 1000 --server-pid $PID  # highest clean publish rate
//! herald-bench inbox --users 10000 --rate 30000 --server-pid $PID  # targeted delivery
//! herald-bench inbox-ops --bulk-requests 100 --bulk-users 1000   # bulk sends, mark-all-read
//! herald-bench chat --members 1000 --interval-secs 10 --seconds 30  # one busy chat room
//! ```
//!
//! It also measures the reference peers (`bench/peers/`): they speak the same benchmark
//! protocol, and the Go hub's frames may carry several notifications joined by newlines, so
//! every notification in a frame is counted.
//!
//! The client is kept cheaper than the server it measures: frames are scanned for the two
//! numbers it needs (offset and send time), never decoded as JSON; publishes go over raw
//! keep-alive HTTP/1.1. Pin it to another core than the server (`taskset -c 1`).

mod chat;
mod http;
mod inbox;
mod raw_ws;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the summary as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Herald's address.
    #[arg(long, global = true, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The server's pid (comma separated for several nodes, summed), to read memory and CPU
    /// time from /proc.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Redis's pid (Redis mode), to report its CPU time beside the server's.
    #[arg(long, global = true)]
    redis_pid: Option<u32>,
    /// Where subscribers connect, round-robin (comma separated; default: --addr). Publishes
    /// go to --addr: with several nodes, most deliveries cross nodes.
    #[arg(long, global = true, value_delimiter = ',')]
    subscribe_addrs: Vec<SocketAddr>,
    /// An API key: sent with every publish, and in the `auth` frame of every socket (unless
    /// --token-secret is given).
    #[arg(long, global = true, env = "HERALD_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Herald's HS256 token secret: every socket authenticates with its own user token
    /// (`bench-<n>`, read:*), signed here, as a customer's backend would.
    #[arg(long, global = true, hide_env_values = true)]
    token_secret: Option<String>,
    /// The signer for --token-secret, made once (not per socket).
    #[arg(skip)]
    signer: std::sync::OnceLock<herald::auth::Tokens>,
}

impl Cli {
    /// The servers' CPU seconds so far (all pids summed).
    pub(crate) fn cpu_secs(&self) -> Option<f64> {
        if self.server_pid.is_empty() {
            return None;
        }
        self.server_pid
            .iter()
            .map(|p| proc_stats::cpu_secs(*p))
            .sum::<Option<f64>>()
    }

    pub(crate) fn rss_kib(&self) -> Option<u64> {
        if self.server_pid.is_empty() {
            return None;
        }
        self.server_pid
            .iter()
            .map(|p| proc_stats::rss_kib(*p))
            .sum::<Option<u64>>()
    }

    fn redis_cpu_secs(&self) -> Option<f64> {
        self.redis_pid.and_then(proc_stats::cpu_secs)
    }

    /// Where subscriber `i` connects.
    fn sub_addr(&self, i: usize) -> SocketAddr {
        match self.subscribe_addrs.len() {
            0 => self.addr,
            n => self.subscribe_addrs[i % n],
        }
    }

    /// What socket `i` sends in its `auth` frame, if anything.
    fn credential(&self, i: usize) -> anyhow::Result<Option<String>> {
        if self.token_secret.is_some() {
            return self.token_for(&format!("bench-{i}")).map(Some);
        }
        Ok(self.key.clone())
    }

    /// A token for `user` (read:*), signed with --token-secret.
    fn token_for(&self, user: &str) -> anyhow::Result<String> {
        self.token_with(user, &["read:*"])
    }

    /// A token for `user` with these scopes, signed with --token-secret.
    fn token_with(&self, user: &str, scopes: &[&str]) -> anyhow::Result<String> {
        let Some(secret) = &self.token_secret else {
            bail!("no --token-secret");
        };
        let tokens = match self.signer.get() {
            Some(t) => t,
            None => {
                let t = herald::auth::Tokens::hs256(secret.as_bytes(), None, None, 30)
                    .map_err(anyhow::Error::msg)?;
                self.signer.get_or_init(|| t)
            }
        };
        let grants = herald::auth::Grants::from_scopes(scopes).map_err(anyhow::Error::msg)?;
        let claims = tokens
            .mint(user, &grants, 24 * 3600)
            .map_err(anyhow::Error::msg)?;
        tokens.sign(&claims).map_err(anyhow::Error::msg)
    }

    /// Global flags a child load generator needs too.
    fn auth_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(k) = &self.key {
            out.extend(["--key".to_owned(), k.clone()]);
        }
        if let Some(s) = &self.token_secret {
            out.extend(["--token-secret".to_owned(), s.clone()]);
        }
        out
    }
}

/// The `auth` frame for `credential`.
fn auth_frame(credential: &str) -> String {
    serde_json::json!({ "type": "auth", "token": credential }).to_string()
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N WebSocket connections at a given rate and hold them.
    Connections(ConnArgs),
    /// N subscribers on one topic; publish M notifications at rate R over HTTP.
    Fanout(FanoutArgs),
    /// HTTP publish throughput and latency with C concurrent publishers.
    Publish(PublishArgs),
    /// The highest publish rate a fan-out sustains with zero loss and p99 under a limit.
    Capacity(CapacityArgs),
    /// Targeted delivery: many distinct online users, each sent its own notifications.
    Inbox(inbox::TargetedArgs),
    /// Bulk sends to many users, then mark-all-read on the inboxes they filled.
    InboxOps(inbox::OpsArgs),
    /// A chat room: every member sends a message every few seconds, everyone receives all.
    Chat(chat::ChatArgs),
    /// A presence storm: many users join a room and leave within a second, members watch.
    PresenceStorm(chat::StormArgs),
}

#[derive(Args, Clone)]
struct CapacityArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Seconds of publishing per trial.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// First rate tried, in publishes per second; doubled until a trial fails.
    #[arg(long, default_value_t = 50.0)]
    start_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 20_000.0)]
    max_rate: f64,
    /// A trial passes only with p99 publish-to-receive at or under this.
    #[arg(long, default_value_t = 100.0)]
    p99_ms: f64,
    /// Stop when the bracket is this close (fraction of the best passing rate).
    #[arg(long, default_value_t = 0.1)]
    precision: f64,
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
}

#[derive(Args, Clone)]
struct ConnArgs {
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds to hold the connections after the last one is up.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Connections per load-generator process (each process has its own open-file limit).
    #[arg(long, default_value_t = 9000)]
    per_process: usize,
    /// Internal: this process is a child of a larger run; its index picks source addresses.
    #[arg(long, hide = true)]
    child: Option<usize>,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Notifications to publish.
    #[arg(long, default_value_t = 400)]
    messages: u64,
    /// Publishes per second (0: as fast as the publishers go).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Concurrent HTTP publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Body size in bytes (at least 24: the send time is in it).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Publish nothing: once subscribed, print `ready` on stdout and wait (up to --drain
    /// seconds) for --messages published by someone else (several generator processes
    /// sharing one publish, for more sockets than one process may open).
    #[arg(long)]
    external_publisher: bool,
}

#[derive(Args, Clone)]
struct PublishArgs {
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    #[arg(long, default_value = "bench-publish")]
    topic: String,
}

/// /proc readings of the server process.
mod proc_stats {
    /// Resident set size in KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// User + system CPU seconds of this load generator.
    pub fn own_cpu_secs() -> Option<f64> {
        cpu_secs_of("self")
    }

    /// User + system CPU seconds. /proc reports clock ticks of USER_HZ, which is 100 on Linux.
    pub fn cpu_secs(pid: u32) -> Option<f64> {
        cpu_secs_of(&pid.to_string())
    }

    fn cpu_secs_of(pid: &str) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    samples: u64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        samples: h.len(),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn ws_config() -> WebSocketConfig {
    // A modest read buffer: tungstenite zero-fills it on every read.
    WebSocketConfig::default().read_buffer_size(32 * 1024)
}

/// Opens a WebSocket from `source`, waits for the welcome frame, and with a credential
/// authenticates and waits for `authenticated`.
async fn open_ws(
    addr: SocketAddr,
    source: Ipv4Addr,
    credential: Option<String>,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"welcome\"") => {}
        other => bail!("no welcome: {other:?}"),
    }
    let Some(credential) = credential else {
        return Ok(ws);
    };
    ws.send(Message::text(auth_frame(&credential))).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"authenticated\"") => Ok(ws),
        other => bail!("not authenticated: {other:?}"),
    }
}

/// Source address for connection `i`: loopback has ~28k ephemeral ports per source address
/// (and closed ones linger in TIME_WAIT between runs), so spread connections over 127.0.0.1-16.
fn source_for(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8)
}

// ---------------------------------------------------------------------------------------------
// connections

#[derive(Debug, Default, Serialize, serde::Deserialize, Clone)]
struct ConnReport {
    requested: usize,
    held: usize,
    handshake_failures: usize,
    failure_examples: Vec<String>,
    connect_p50_ms: f64,
    connect_p99_ms: f64,
    connect_max_ms: f64,
    seconds_to_connect_all: f64,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_rss_per_conn_kib: Option<f64>,
}

async fn connections(cli: &Cli, args: &ConnArgs) -> anyhow::Result<ConnReport> {
    if args.child.is_none() && args.count > args.per_process {
        return connections_multi(cli, args).await;
    }
    let base = args.child.unwrap_or(0) * args.per_process;
    let rss_before = cli.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let times = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let mut tasks = Vec::with_capacity(args.count);
    let progress = spawn_progress("connections", {
        let (held, failures) = (held.clone(), failures.clone());
        move || {
            format!(
                "held {} failed {}",
                held.load(Ordering::Relaxed),
                failures.lock().unwrap().len()
            )
        }
    });
    for i in 0..args.count {
        // Signed before its slot in the schedule: the client's signing is not the server's cost.
        let credential = cli.credential(base + i)?;
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let (addr, stop, held, failures, times) = (
            cli.addr,
            stop.clone(),
            held.clone(),
            failures.clone(),
            times.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match open_ws(addr, source_for(base + i), credential).await {
                Ok(mut ws) => {
                    let _ = times
                        .lock()
                        .unwrap()
                        .record(t0.elapsed().as_micros() as u64);
                    held.fetch_add(1, Ordering::Relaxed);
                    // Hold: read (tungstenite answers the server's pings) until told to stop.
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                            Ok(Some(Ok(_))) | Err(_) => {}
                            Ok(_) => {
                                held.fetch_sub(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                    let _ = ws.close(None).await;
                }
                Err(e) => failures.lock().unwrap().push(e.to_string()),
            }
        }));
    }
    // Wait for every attempt to finish its handshake (or fail).
    while held.load(Ordering::Relaxed) + failures.lock().unwrap().len() < args.count {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let connect_all = started.elapsed().as_secs_f64();
    if let Some(child) = args.child {
        // Tell the parent we are up, then hold.
        println!("READY {child} {}", held.load(Ordering::Relaxed));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = cli.rss_kib();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    progress.abort();
    let report = {
        let h = times.lock().unwrap();
        let f = failures.lock().unwrap();
        let held_now = held.load(Ordering::Relaxed);
        ConnReport {
            requested: args.count,
            held: held_now,
            handshake_failures: f.len(),
            failure_examples: f.iter().take(3).cloned().collect(),
            connect_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            connect_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            connect_max_ms: h.max() as f64 / 1000.0,
            seconds_to_connect_all: connect_all,
            server_rss_before_kib: rss_before,
            server_rss_after_kib: rss_after,
            server_rss_per_conn_kib: per_conn(rss_before, rss_after, held_now),
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(report)
}

fn per_conn(before: Option<u64>, after: Option<u64>, n: usize) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some(a.saturating_sub(b) as f64 / n as f64),
        _ => None,
    }
}

/// Splits a large run over child processes (each has its own open-file limit), measures the
/// server once every child holds its share, and merges their reports.
async fn connections_multi(cli: &Cli, args: &ConnArgs) -> anyhow::Result<ConnReport> {
    let procs = args.count.div_ceil(args.per_process);
    let rss_before = cli.rss_kib();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut ready_rx = Vec::new();
    for p in 0..procs {
        let n = args.per_process.min(args.count - p * args.per_process);
        let mut child = Command::new(&exe)
            .args(["--addr", &cli.addr.to_string(), "--json"])
            .args(cli.auth_args())
            .arg("connections")
            .args([
                "--count",
                &n.to_string(),
                "--rate",
                &(args.rate / procs as f64).to_string(),
            ])
            .args([
                "--hold",
                &(args.hold + 5).to_string(),
                "--per-process",
                &args.per_process.to_string(),
            ])
            .args(["--child", &p.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning a load-generator child")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        children.push(child);
        ready_rx.push(rx);
    }
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); procs];
    for (i, rx) in ready_rx.iter().enumerate() {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(900))
                .context("child never became ready")?;
            let ready = line.starts_with("READY");
            lines[i].push(line);
            if ready {
                break;
            }
        }
    }
    eprintln!("[connections] all {procs} generators ready; measuring");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = cli.rss_kib();
    let mut merged = ConnReport {
        requested: args.count,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        ..Default::default()
    };
    for (i, (mut child, rx)) in children.into_iter().zip(ready_rx).enumerate() {
        child.wait()?;
        lines[i].extend(rx.try_iter());
        let json = lines[i]
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("child printed no report")?;
        let r: ConnReport = serde_json::from_str(json)?;
        merged.held += r.held;
        merged.handshake_failures += r.handshake_failures;
        merged.failure_examples.extend(r.failure_examples);
        merged.connect_p50_ms = merged.connect_p50_ms.max(r.connect_p50_ms);
        merged.connect_p99_ms = merged.connect_p99_ms.max(r.connect_p99_ms);
        merged.connect_max_ms = merged.connect_max_ms.max(r.connect_max_ms);
        merged.seconds_to_connect_all = merged.seconds_to_connect_all.max(r.seconds_to_connect_all);
    }
    merged.failure_examples.truncate(3);
    merged.server_rss_per_conn_kib = per_conn(rss_before, rss_after, merged.held);
    Ok(merged)
}

// ---------------------------------------------------------------------------------------------
// fanout

#[derive(Debug, Default, Serialize)]
struct FanoutReport {
    subscribers: usize,
    /// Publishes per second asked for (0: as fast as possible).
    rate: f64,
    /// Deliveries per second offered: rate x subscribers. `deliveries_per_sec` can only
    /// approach it: a sustained offered load, not a capacity (see `capacity`).
    offered_deliveries_per_sec: f64,
    /// Seconds from the first publish to the last reply; with a rate, the schedule took
    /// messages / rate, and a server that cannot keep up makes this longer.
    publish_seconds: f64,
    published: u64,
    publish_errors: u64,
    expected_deliveries: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    seconds: f64,
    deliveries_per_sec: f64,
    latency: Percentiles,
    server_cpu_secs: Option<f64>,
    server_cpu_secs_per_million: Option<f64>,
    /// Redis mode: Redis's own CPU per million deliveries.
    redis_cpu_secs_per_million: Option<f64>,
    /// The load generator's own CPU per million deliveries: it must stay well below the server's.
    client_cpu_secs_per_million: Option<f64>,
    server_rss_kib: Option<u64>,
}

/// What one subscriber saw.
#[derive(Default)]
pub(crate) struct SubResult {
    delivered: u64,
    duplicated: u64,
    out_of_order: u64,
    last: u64,
    first: u64,
    latencies: Vec<u32>,
}

/// Finds the key in `hay` and parses the unsigned integer right after it; returns it and
/// where it ends.
fn number_after(hay: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<(u64, usize)> {
    let at = key.find(hay)? + key.needle().len();
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in &hay[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some((n, at + digits))
}

/// The next notification in `hay`: its offset, its send time (the body starts with it), and
/// how many bytes it used. Every server puts `offset` before `body`.
fn next_message(
    hay: &[u8],
    offset_key: &memchr::memmem::Finder<'_>,
    body_key: &memchr::memmem::Finder<'_>,
) -> Option<(u64, u64, usize)> {
    let (offset, after_offset) = number_after(hay, offset_key)?;
    let (sent, after_body) = number_after(&hay[after_offset..], body_key)?;
    Some((offset, sent, after_offset + after_body))
}

/// Reads one subscriber's deliveries until it has `expected` of them or `stop` is set:
/// offsets must arrive 1 apart (anything else is counted as duplicated or out of order),
/// latency is now minus the send time in the body. Frames without a notification (an inbox's
/// `inbox_count`) are skipped; a frame may carry several (the Go peer joins queued ones).
/// Returns the socket too, still open: a caller whose senders are still going keeps it until
/// they are done, so that closing it does not load the server during the measurement.
async fn receive(
    mut ws: raw_ws::RawWs,
    expected: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
    (offset_key, body_key): (
        memchr::memmem::Finder<'static>,
        memchr::memmem::Finder<'static>,
    ),
    delivered: Arc<AtomicU64>,
    last_delivery: Arc<AtomicU64>,
) -> (SubResult, raw_ws::RawWs) {
    let mut r = SubResult {
        latencies: Vec::with_capacity(expected as usize),
        ..Default::default()
    };
    while r.delivered < expected {
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            next = ws.next() => next,
        };
        let Ok(Some(frame)) = next else {
            break;
        };
        if frame.opcode != 0x1 {
            continue;
        }
        let mut hay = ws.bytes(&frame);
        let now = now_micros();
        while let Some((offset, sent, used)) = next_message(hay, &offset_key, &body_key) {
            hay = &hay[used..];
            if r.first == 0 {
                r.first = offset;
            } else if offset <= r.last {
                if offset == r.last {
                    r.duplicated += 1
                } else {
                    r.out_of_order += 1
                }
                continue;
            }
            r.last = offset;
            r.delivered += 1;
            r.latencies
                .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            delivered.fetch_add(1, Ordering::Relaxed);
            last_delivery.fetch_max(now, Ordering::Relaxed);
        }
    }
    (r, ws)
}

async fn fanout(cli: &Cli, a: &FanoutArgs) -> anyhow::Result<FanoutReport> {
    let delivered = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let subscribed = Arc::new(AtomicUsize::new(0));
    let expected = a.messages;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<SubResult>();
    let setup = Instant::now();
    let mut failures = 0usize;
    let progress = spawn_progress("fanout", {
        let (delivered, subscribed) = (delivered.clone(), subscribed.clone());
        move || {
            format!(
                "subscribed {} delivered {}",
                subscribed.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed)
            )
        }
    });
    let mut connecting = Vec::new();
    for i in 0..a.subscribers {
        let (addr, topic) = (cli.sub_addr(i), a.topic.clone());
        let credential = cli.credential(i)?;
        connecting.push(tokio::spawn(async move {
            raw_ws::RawWs::join(addr, source_for(i), credential.as_deref(), &topic).await
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let mut sockets = Vec::new();
    for c in connecting {
        match c.await? {
            Ok(ws) => {
                subscribed.fetch_add(1, Ordering::Relaxed);
                sockets.push(ws);
            }
            Err(e) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("[fanout] subscriber failed: {e}");
                }
            }
        }
    }
    eprintln!(
        "[fanout] {} subscribers ready in {:.1}s",
        sockets.len(),
        setup.elapsed().as_secs_f64()
    );
    let n_subs = sockets.len();
    // Searchers built once: each delivery costs two SIMD substring searches.
    let offset_key = memchr::memmem::Finder::new(b"\"offset\":").into_owned();
    let body_key = memchr::memmem::Finder::new(b"\"body\":\"").into_owned();
    // When the drain ends, subscribers still waiting hand in what they got.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(sockets.len());
    for ws in sockets {
        let (delivered, last_delivery, done_tx) =
            (delivered.clone(), last_delivery.clone(), done_tx.clone());
        let keys = (offset_key.clone(), body_key.clone());
        let stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            // Every subscriber gets the same messages, so all finish at the end: closing at
            // once is fine here.
            let (r, _ws) = receive(ws, expected, stop, keys, delivered, last_delivery).await;
            let _ = done_tx.send(r);
        }));
    }
    drop(done_tx);

    // Publish on a fixed schedule: message k leaves at start + k / rate.
    let cpu_before = cli.cpu_secs();
    let redis_before = cli.redis_cpu_secs();
    let own_before = proc_stats::own_cpu_secs();
    let start_us = now_micros();
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    if a.external_publisher {
        println!("ready");
    }
    let publishers = if a.external_publisher {
        0
    } else {
        a.publishers.max(1)
    };
    for _ in 0..publishers {
        let (addr, next, errors, a) = (cli.addr, next.clone(), errors.clone(), a.clone());
        let key = cli.key.clone();
        pubs.push(tokio::spawn(async move {
            let mut conn = http::HttpConn::connect(addr, key.as_deref()).await?;
            let path = format!("/api/topics/{}", a.topic);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= a.messages {
                    return anyhow::Ok(());
                }
                if a.rate > 0.0 {
                    tokio::time::sleep_until(
                        (start + Duration::from_secs_f64(k as f64 / a.rate)).into(),
                    )
                    .await;
                }
                let mut body = format!("{:020}", now_micros()).into_bytes();
                body.resize(a.body_bytes.max(24), b'.');
                if conn.post(&path, &body).await? != 201 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for p in pubs {
        p.await??;
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let published = a.messages - errors.load(Ordering::Relaxed);
    if a.external_publisher {
        // The clock starts at the external publish: each subscriber's latency is measured
        // from the send time in the body; `seconds` is not meaningful here.
        eprintln!("[fanout] waiting for {} external publishes", a.messages);
    }
    let drain_deadline = Instant::now() + Duration::from_secs(a.drain);
    let mut results = Vec::with_capacity(n_subs);
    while results.len() < n_subs {
        match tokio::time::timeout_at(drain_deadline.into(), done_rx.recv()).await {
            Ok(Some(r)) => results.push(r),
            _ => break,
        }
    }
    let _ = stop_tx.send(true);
    let grace = Instant::now() + Duration::from_secs(5);
    while results.len() < n_subs {
        match tokio::time::timeout_at(grace.into(), done_rx.recv()).await {
            Ok(Some(r)) => results.push(r),
            _ => break,
        }
    }
    let cpu_after = cli.cpu_secs();
    let redis_after = cli.redis_cpu_secs();
    let own_after = proc_stats::own_cpu_secs();
    progress.abort();
    let mut h = histogram();
    // Any reader that did not answer the stop is cut off, so its socket closes now.
    for r in readers {
        r.abort();
    }
    let mut report = FanoutReport {
        subscribers: n_subs,
        rate: a.rate,
        offered_deliveries_per_sec: a.rate * n_subs as f64,
        publish_seconds,
        published,
        publish_errors: errors.load(Ordering::Relaxed),
        expected_deliveries: published * n_subs as u64,
        ..Default::default()
    };
    for r in &results {
        report.delivered += r.delivered;
        report.duplicated += r.duplicated;
        report.out_of_order += r.out_of_order;
        // Offsets are contiguous: anything between first and last not delivered is lost.
        if r.delivered > 0 {
            report.lost += (r.last - r.first + 1) - r.delivered;
        }
        for &l in &r.latencies {
            let _ = h.record(u64::from(l).max(1));
        }
    }
    // Subscribers that never finished count everything they did not get as lost.
    report.lost = report
        .expected_deliveries
        .saturating_sub(report.delivered)
        .max(report.lost);
    let end = last_delivery.load(Ordering::Relaxed).max(start_us + 1);
    report.seconds = (end - start_us) as f64 / 1e6;
    report.deliveries_per_sec = report.delivered as f64 / report.seconds;
    report.latency = percentiles(&h);
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        report.server_cpu_secs = Some(a - b);
        if report.delivered > 0 {
            report.server_cpu_secs_per_million = Some((a - b) / (report.delivered as f64 / 1e6));
        }
    }
    if let (Some(b), Some(a)) = (own_before, own_after) {
        if report.delivered > 0 {
            report.client_cpu_secs_per_million = Some((a - b) / (report.delivered as f64 / 1e6));
        }
    }
    if let (Some(b), Some(a)) = (redis_before, redis_after) {
        if report.delivered > 0 {
            report.redis_cpu_secs_per_million = Some((a - b) / (report.delivered as f64 / 1e6));
        }
    }
    report.server_rss_kib = cli.rss_kib();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// capacity

#[derive(Debug, Serialize)]
struct Trial {
    rate: f64,
    passed: bool,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    p99_ms: f64,
    publish_seconds: f64,
    why: String,
}

#[derive(Debug, Serialize)]
struct CapacityReport {
    subscribers: usize,
    p99_limit_ms: f64,
    /// The highest publish rate that passed: every notification delivered once and in order
    /// to every subscriber, p99 under the limit, and the publishers kept their schedule.
    sustained_publishes_per_sec: f64,
    /// sustained_publishes_per_sec x subscribers.
    sustained_deliveries_per_sec: f64,
    /// The lowest rate that failed (none if the search hit max_rate).
    failed_at: Option<f64>,
    trials: Vec<Trial>,
}

/// Doubles the rate until a trial fails, then bisects between the best pass and the first
/// failure. Each trial is a fresh fan-out on a fresh topic, so offsets start at 1.
async fn capacity(cli: &Cli, a: &CapacityArgs) -> anyhow::Result<CapacityReport> {
    let mut best = 0.0f64;
    let mut failed: Option<f64> = None;
    let mut rate = a.start_rate.max(1.0);
    let mut trials = Vec::new();
    for trial in 0..16 {
        let messages = (rate * a.seconds).ceil().max(10.0) as u64;
        let args = FanoutArgs {
            subscribers: a.subscribers,
            messages,
            rate,
            publishers: a.publishers,
            body_bytes: a.body_bytes,
            topic: format!("capacity-{}-{trial}", std::process::id()),
            drain: 5,
            external_publisher: false,
        };
        let r = match fanout(cli, &args).await {
            Ok(r) => r,
            // A server that breaks under the load (refused publishes, resets) fails the trial.
            Err(e) => FanoutReport {
                publish_errors: 1,
                latency: Percentiles {
                    p99_ms: f64::INFINITY,
                    ..Default::default()
                },
                publish_seconds: f64::INFINITY,
                subscribers: a.subscribers,
                lost: messages * a.subscribers as u64,
                ..{
                    eprintln!("[capacity] trial at {rate:.0}/s failed: {e}");
                    FanoutReport::default()
                }
            },
        };
        let schedule = messages as f64 / rate;
        let mut why = Vec::new();
        if r.subscribers < a.subscribers {
            why.push(format!("{} subscribers connected", r.subscribers));
        }
        if r.lost + r.duplicated + r.out_of_order + r.publish_errors > 0 {
            why.push(format!(
                "lost {} dup {} ooo {} errors {}",
                r.lost, r.duplicated, r.out_of_order, r.publish_errors
            ));
        }
        if r.latency.p99_ms > a.p99_ms {
            why.push(format!("p99 {:.1} ms", r.latency.p99_ms));
        }
        if r.publish_seconds > schedule * 1.1 + 0.2 {
            why.push(format!(
                "publishing took {:.2} s for a {:.2} s schedule",
                r.publish_seconds, schedule
            ));
        }
        let passed = why.is_empty();
        eprintln!(
            "[capacity] {rate:.0}/s x {} -> {}",
            a.subscribers,
            if passed {
                "pass".to_owned()
            } else {
                why.join(", ")
            }
        );
        trials.push(Trial {
            rate,
            passed,
            delivered: r.delivered,
            lost: r.lost,
            duplicated: r.duplicated,
            out_of_order: r.out_of_order,
            p99_ms: r.latency.p99_ms,
            publish_seconds: r.publish_seconds,
            why: why.join(", "),
        });
        if passed {
            best = best.max(rate);
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match failed {
            None if rate >= a.max_rate => break,
            None => (rate * 2.0).min(a.max_rate),
            Some(f) => {
                if best > 0.0 && f - best <= best * a.precision {
                    break;
                }
                if best == 0.0 && f <= a.start_rate / 16.0 {
                    break;
                }
                (best + f) / 2.0
            }
        };
        // Let the server settle (closed sockets, queues drained) between trials.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(CapacityReport {
        subscribers: a.subscribers,
        p99_limit_ms: a.p99_ms,
        sustained_publishes_per_sec: best,
        sustained_deliveries_per_sec: best * a.subscribers as f64,
        failed_at: failed,
        trials,
    })
}

// ---------------------------------------------------------------------------------------------
// publish

#[derive(Debug, Default, Serialize)]
struct PublishReport {
    concurrency: usize,
    requests: u64,
    ok: u64,
    errors: u64,
    seconds: f64,
    publishes_per_sec: f64,
    latency: Percentiles,
    server_cpu_secs: Option<f64>,
    /// Redis mode: Redis's CPU seconds over the run.
    redis_cpu_secs: Option<f64>,
}

async fn publish(cli: &Cli, a: &PublishArgs) -> anyhow::Result<PublishReport> {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cli.cpu_secs();
    let redis_before = cli.redis_cpu_secs();
    let progress = spawn_progress("publish", {
        let ok = ok.clone();
        move || format!("ok {}", ok.load(Ordering::Relaxed))
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (addr, next, ok, errors, a) = (
            cli.addr,
            next.clone(),
            ok.clone(),
            errors.clone(),
            a.clone(),
        );
        let key = cli.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = http::HttpConn::connect(addr, key.as_deref()).await?;
            let path = format!("/api/topics/{}", a.topic);
            let body = vec![b'x'; a.body_bytes.max(1)];
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < a.requests {
                let t0 = Instant::now();
                let status = conn.post(&path, &body).await?;
                lat.push(t0.elapsed().as_micros() as u64);
                if status == 201 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    errors.fetch_add(1, Ordering::Relaxed)
                };
            }
            anyhow::Ok(lat)
        }));
    }
    let mut h = histogram();
    for t in tasks {
        for l in t.await?? {
            let _ = h.record(l.max(1));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.abort();
    let cpu_after = cli.cpu_secs();
    let redis_after = cli.redis_cpu_secs();
    let okn = ok.load(Ordering::Relaxed);
    Ok(PublishReport {
        concurrency: a.concurrency,
        requests: a.requests,
        ok: okn,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        publishes_per_sec: okn as f64 / seconds,
        latency: percentiles(&h),
        server_cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
        redis_cpu_secs: redis_before.zip(redis_after).map(|(b, a)| a - b),
    })
}

// ---------------------------------------------------------------------------------------------

fn spawn_progress(
    name: &'static str,
    line: impl Fn() -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!(
                "[{name}] {:>5.1}s {}",
                start.elapsed().as_secs_f64(),
                line()
            );
        }
    })
}

fn print<T: Serialize + std::fmt::Debug>(
    json: bool,
    title: &str,
    report: &T,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("== {title}");
        let v = serde_json::to_value(report)?;
        if let Some(map) = v.as_object() {
            for (k, v) in map {
                println!("  {k:<30} {v}");
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One runtime thread: the load generator should use one core (pin it with taskset).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match &cli.cmd {
            Cmd::Connections(a) => {
                let r = connections(&cli, a).await?;
                print(cli.json, "connections", &r)
            }
            Cmd::Fanout(a) => {
                let r = fanout(&cli, a).await?;
                print(cli.json, "fanout", &r)
            }
            Cmd::Publish(a) => {
                let r = publish(&cli, a).await?;
                print(cli.json, "publish", &r)
            }
            Cmd::Capacity(a) => {
                let r = capacity(&cli, a).await?;
                print(cli.json, "capacity", &r)
            }
            Cmd::Inbox(a) => {
                let r = inbox::targeted(&cli, a).await?;
                print(cli.json, "inbox", &r)
            }
            Cmd::InboxOps(a) => {
                let r = inbox::ops(&cli, a).await?;
                print(cli.json, "inbox-ops", &r)
            }
            Cmd::Chat(a) => {
                let r = chat::run(&cli, a).await?;
                print(cli.json, "chat", &r)
            }
            Cmd::PresenceStorm(a) => {
                let r = chat::storm(&cli, a).await?;
                print(cli.json, "presence-storm", &r)
            }
        }
    })
}
