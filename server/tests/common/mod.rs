//! Helpers shared by the integration tests: a server on 127.0.0.1:0, a raw HTTP/1.1 client and
//! a WebSocket client that speaks the typed protocol.
#![allow(dead_code)]

pub mod pausing;

use app::protocol::{ClientFrame, Notification, Position, ServerFrame};
use futures::{SinkExt, StreamExt};
use herald::config::{Config, StoreKind};
use herald::RunningServer;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn memory_config() -> Config {
    Config {
        store: StoreKind::Memory,
        ..Config::for_tests()
    }
}

pub fn sqlite_config(dir: &tempfile::TempDir) -> Config {
    Config {
        store: StoreKind::Sqlite,
        db: dir.path().join("herald.db"),
        ..Config::for_tests()
    }
}

/// The admin key every test server knows (created in its key table at start).
pub const TEST_KEY: &str = "hk_testkey00000_0123456789abcdefABCDEF0123456789";

pub async fn server(config: Config) -> RunningServer {
    let server = herald::start(config).await.expect("server starts");
    add_test_key(&server);
    server
}

/// Puts [`TEST_KEY`] (admin:*) in the server's key table.
pub fn add_test_key(server: &RunningServer) {
    put_test_key(&server.state.auth.keys, &["admin:*"]);
}

/// Puts [`TEST_KEY`] with `scopes` in `keys`, unless it is there already (nodes on one Redis
/// share one table).
fn put_test_key(keys: &herald::auth::Keys, scopes: &[&str]) {
    let grants = herald::auth::Grants::from_scopes(scopes).unwrap();
    if let Err(e) = keys.add_existing("test", TEST_KEY, grants, false) {
        assert!(keys.verify(TEST_KEY).is_ok(), "test key: {e}");
    }
}

/// A key with exactly `scopes`, for permission tests.
pub fn key_with(server: &RunningServer, scopes: &[&str]) -> String {
    let grants = herald::auth::Grants::from_scopes(scopes).unwrap();
    server
        .state
        .auth
        .keys
        .add("scoped", grants, false)
        .unwrap()
        .1
}

/// A signed user token for `user` with read and publish patterns, valid for `ttl_secs`.
pub fn user_token(
    server: &RunningServer,
    user: &str,
    read: &[&str],
    publish: &[&str],
    ttl_secs: u64,
) -> String {
    let mut scopes: Vec<String> = read.iter().map(|p| format!("read:{p}")).collect();
    scopes.extend(publish.iter().map(|p| format!("publish:{p}")));
    let grants = herald::auth::Grants::from_scopes(&scopes).unwrap();
    let tokens = &server.state.auth.tokens;
    tokens
        .sign(&tokens.mint(user, &grants, ttl_secs).unwrap())
        .unwrap()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn notification(&self) -> Notification {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a notification ({e}): {}", self.body))
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, with the test key unless `headers` carry an
/// `Authorization` of their own.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let bearer = format!("Bearer {TEST_KEY}");
    let mut all = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        all.push(("Authorization", &bearer));
    }
    http_as(addr, method, path, &all, body).await
}

/// One HTTP/1.1 request with exactly `headers` (no credentials unless given).
pub async fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http_as(addr, method, path, headers, body)
        .await
        .expect("an HTTP answer")
}

/// [`http_as`] that reports a refused or broken connection instead of panicking (a node
/// that is going away).
pub async fn try_http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("incomplete response"));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub async fn publish(addr: SocketAddr, topic: &str, body: &str) -> Notification {
    let r = http(
        addr,
        "POST",
        &format!("/api/topics/{topic}"),
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.notification()
}

pub async fn publish_json(
    addr: SocketAddr,
    topic: &str,
    json: &str,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    http(
        addr,
        "POST",
        &format!("/api/topics/{topic}"),
        &headers,
        json.as_bytes(),
    )
    .await
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client.
pub struct Client {
    pub ws: Ws,
}

/// How a read ended when it did not yield a frame.
#[derive(Debug, PartialEq)]
pub enum End {
    Closed(Option<u16>),
    Error(String),
}

impl Client {
    /// Connects, authenticates with the test key and consumes `welcome` and `authenticated`.
    pub async fn connect(server: &RunningServer) -> Self {
        Self::connect_with(server, TEST_KEY).await
    }

    /// Connects and authenticates with `credential` (a key or a token), which must be valid.
    pub async fn connect_with(server: &RunningServer, credential: &str) -> Self {
        Self::connect_at(server.addr, credential).await
    }

    /// Connects and consumes the `welcome` frame; sends nothing.
    pub async fn connect_anonymous(server: &RunningServer) -> Self {
        Self::connect_anonymous_at(server.addr).await
    }

    /// [`Client::connect_with`] for a server at `addr` (another process).
    pub async fn connect_at(addr: SocketAddr, credential: &str) -> Self {
        let mut c = Self::connect_anonymous_at(addr).await;
        c.send(&ClientFrame::Auth {
            token: credential.to_owned(),
        })
        .await;
        match c.next().await {
            ServerFrame::Authenticated { .. } => c,
            other => panic!("expected authenticated, got {other:?}"),
        }
    }

    /// [`Client::connect_at`] that returns `None` when the node refuses or goes away.
    pub async fn try_connect_at(addr: SocketAddr, credential: &str) -> Option<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .ok()?;
        let mut c = Self { ws };
        let Ok(ServerFrame::Welcome { .. }) = c.try_next().await else {
            return None;
        };
        let auth = ClientFrame::Auth {
            token: credential.to_owned(),
        };
        c.ws.send(Message::text(serde_json::to_string(&auth).ok()?))
            .await
            .ok()?;
        match c.try_next().await {
            Ok(ServerFrame::Authenticated { .. }) => Some(c),
            _ => None,
        }
    }

    async fn connect_anonymous_at(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        let mut c = Self { ws };
        match c.next().await {
            ServerFrame::Welcome { .. } => c,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&serde_json::to_string(frame).unwrap()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next protocol frame (pings are answered by tungstenite and skipped).
    pub async fn try_next(&mut self) -> Result<ServerFrame, End> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("bad frame {e}: {t}")))
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(End::Closed(c.map(|c| u16::from(c.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(End::Error(e.to_string())),
                None => return Err(End::Closed(None)),
            }
        }
    }

    pub async fn next(&mut self) -> ServerFrame {
        self.try_next().await.expect("a frame")
    }

    pub async fn subscribe(&mut self, topic: &str, since: Option<Position>) -> Position {
        self.send(&ClientFrame::Subscribe {
            topic: topic.into(),
            since,
            id: Some(1),
        })
        .await;
        match self.next().await {
            ServerFrame::Subscribed { position, .. } => position,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    pub async fn notification(&mut self) -> Notification {
        match self.next().await {
            ServerFrame::Notification(n) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    /// Reads until the connection ends; returns the close code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        loop {
            match self.try_next().await {
                Ok(_) => continue,
                Err(End::Closed(code)) => return code,
                Err(End::Error(_)) => return None,
            }
        }
    }
}

/// Signs in as `user` (may read and write `chat-*`) and subscribes to `room`; returns the
/// socket and the member list it was given (presence frames before it are skipped).
pub async fn join_room(server: &RunningServer, user: &str, room: &str) -> (Client, Vec<String>) {
    let token = user_token(server, user, &["chat-*"], &["chat-*"], 3600);
    let mut c = Client::connect_with(server, &token).await;
    c.send(&ClientFrame::Subscribe {
        topic: room.into(),
        since: None,
        id: Some(1),
    })
    .await;
    loop {
        match c.next().await {
            ServerFrame::Subscribed { members, .. } => return (c, members.unwrap_or_default()),
            ServerFrame::Presence { .. } => continue,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }
}

/// `GET /api/stats` as JSON.
pub async fn stats(addr: SocketAddr) -> serde_json::Value {
    http(addr, "GET", "/api/stats", &[], b"").await.json()
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server holds no WebSocket connection.
pub async fn no_connections_left(addr: SocketAddr, limit: Duration) {
    eventually("every connection closed", limit, || async move {
        stats(addr).await["connections"] == 0
    })
    .await;
}

/// A WebSocket client written by hand, for what a conformant client library refuses to send:
/// unmasked frames, reserved opcodes, invalid UTF-8.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects, upgrades, and reads the welcome frame.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut ws = Self {
            stream,
            buf: Vec::new(),
        };
        loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                ws.buf.drain(..end + 4);
                break;
            }
            ws.fill().await;
        }
        let (opcode, payload) = ws.read_frame().await.expect("welcome");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&payload).contains("welcome"));
        ws
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Sends one frame (FIN set) with the given opcode, masked or not.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        assert!(payload.len() < 126);
        f.push(mask_bit | payload.len() as u8);
        if masked {
            let key = [1u8, 2, 3, 4];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.stream.write_all(&f).await.unwrap();
    }

    /// The next frame from the server (opcode, payload); `None` when the connection ends.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the server's close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// The `herald` binary as a command-line client, with the test key (`HERALD_KEY`) and no
/// token from the environment.
pub fn herald_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("HERALD_KEY", TEST_KEY).env_remove("HERALD_TOKEN");
    c
}

/// Starts the real binary on an ephemeral port; returns it and its address.
pub async fn spawn_binary(db: &std::path::Path) -> (Child, std::net::SocketAddr) {
    spawn_binary_with(db, &["--store", "sqlite"]).await
}

/// [`spawn_binary`] with other store arguments (`--store redis --redis-url …`).
pub async fn spawn_binary_with(
    db: &std::path::Path,
    store_args: &[&str],
) -> (Child, std::net::SocketAddr) {
    // The test key, put where the binary reads keys (the database, or Redis with `--store
    // redis`), as `herald keys add` would.
    let config = <herald::config::Config as clap::Parser>::try_parse_from(
        ["herald"]
            .into_iter()
            .chain(store_args.iter().copied())
            .chain(["--db", db.to_str().unwrap()]),
    )
    .unwrap();
    put_test_key(
        &herald::auth::Keys::for_config(&config).unwrap(),
        &["admin:*", "admin:@*"],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--addr", "127.0.0.1:0", "--mode", "production"])
        .args(store_args)
        .args([
            "--token-secret",
            herald::config::Config::TEST_TOKEN_SECRET,
            "--db",
        ])
        .arg(db)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("herald binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server announces its address");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}
