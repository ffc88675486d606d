//! A bare WebSocket subscriber for the fan-out benchmark: handshake by hand, then parse frame
//! headers straight out of a large read buffer. No per-message allocation, no UTF-8 pass, no
//! JSON: the load generator has to cost much less per delivery than the server it measures.

use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const READ_CHUNK: usize = 64 * 1024;
/// Any key works for a client that does not check `Sec-WebSocket-Accept` strictly.
const KEY: &str = "aGVyYWxkLWJlbmNoLWtleQ==";
const MASK: [u8; 4] = [0x1b, 0x2c, 0x3d, 0x4e];

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One frame: its opcode and where its payload is in the buffer.
pub struct Frame {
    pub opcode: u8,
    pub payload: std::ops::Range<usize>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, source: Ipv4Addr) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut ws = Self {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        };
        let head_end = loop {
            if let Some(i) = ws.buf[..ws.end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ws.fill().await.context("reading the handshake")?;
        };
        let head = String::from_utf8_lossy(&ws.buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!(
                "handshake refused: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        ws.start = head_end;
        Ok(ws)
    }

    /// Sends a masked text frame (clients must mask).
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send(0x1, text.as_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(0x80 | opcode);
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&f).await
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// The next data frame; pings are answered, a close or EOF ends the stream (`None`).
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some((opcode, payload)) = self.parse() {
                match opcode {
                    0x8 => return Ok(None),
                    0x9 => {
                        let data = self.buf[payload].to_vec();
                        self.send(0xA, &data).await?;
                    }
                    0xA => {}
                    _ => return Ok(Some(Frame { opcode, payload })),
                }
                continue;
            }
            if let Err(e) = self.fill().await {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(None);
                }
                return Err(e.into());
            }
        }
    }

    /// Connects from `source`, authenticates with `credential` (if any), subscribes to
    /// `topic` and waits for `subscribed`; an `error` frame before it is the error.
    pub async fn join(
        addr: SocketAddr,
        source: Ipv4Addr,
        credential: Option<&str>,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let mut ws = Self::connect(addr, source).await?;
        if let Some(c) = credential {
            let auth = serde_json::json!({ "type": "auth", "token": c });
            ws.send_text(&auth.to_string()).await?;
        }
        let subscribe = serde_json::json!({ "type": "subscribe", "topic": topic });
        ws.send_text(&subscribe.to_string()).await?;
        while let Some(f) = ws.next().await? {
            let frame = ws.bytes(&f);
            if memchr::memmem::find(frame, b"\"subscribed\"").is_some() {
                return Ok(ws);
            }
            if memchr::memmem::find(frame, b"\"type\":\"error\"").is_some() {
                bail!("{}", String::from_utf8_lossy(frame));
            }
        }
        bail!("closed before subscribed")
    }

    pub fn bytes(&self, f: &Frame) -> &[u8] {
        &self.buf[f.payload.clone()]
    }

    /// Parses one complete frame at `start` (server frames are unmasked), consuming it.
    fn parse(&mut self) -> Option<(u8, std::ops::Range<usize>)> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < header + len {
            if self.start + header + len > self.buf.len() {
                // Make room for a frame larger than what is left of the buffer.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if header + len > self.buf.len() {
                    self.buf.resize((header + len).next_power_of_two(), 0);
                }
            }
            return None;
        }
        let payload = self.start + header..self.start + header + len;
        self.start += header + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // The payload range stays valid: nothing is read before the caller is done with it.
        }
        Some((opcode, payload))
    }
}
