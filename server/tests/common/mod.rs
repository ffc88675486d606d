//! Helpers shared by the integration tests: a server on 127.0.0.1:0, a raw HTTP/1.1 client and
//! a WebSocket client that speaks the typed protocol.
#![allow(dead_code)]

use app::protocol::{ClientFrame, Notification, Position, ServerFrame};
use futures::{SinkExt, StreamExt};
use herald::config::{Config, StoreKind};
use herald::RunningServer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

pub async fn server(config: Config) -> RunningServer {
    herald::start(config).await.expect("server starts")
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

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("complete response");
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
    HttpResponse {
        status,
        headers,
        body,
    }
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
    /// Connects and consumes the `welcome` frame.
    pub async fn connect(server: &RunningServer) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
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

    /// Whether a frame arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
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
