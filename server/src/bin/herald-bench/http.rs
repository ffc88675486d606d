//! A minimal keep-alive HTTP/1.1 client: just enough to publish fast without a client library
//! doing more work than the server it measures.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct HttpConn {
    addr: SocketAddr,
    /// `Authorization: Bearer ...\r\n`, or nothing.
    auth: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Whether the next response's body is kept (in `last_body`).
    keep_body: bool,
    last_body: Vec<u8>,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr, key: Option<&str>) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            auth: key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n")),
            stream,
            buf: Vec::with_capacity(4096),
            keep_body: false,
            last_body: Vec::new(),
        })
    }

    /// POSTs `body` to `path` and returns the status code (the response body is discarded).
    pub async fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        self.send(path, "text/plain", body).await?;
        self.read_response().await
    }

    /// POSTs a JSON `body`; returns the status code and the response body.
    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.send(path, "application/json", body).await?;
        self.keep_body = true;
        let status = self.read_response().await;
        self.keep_body = false;
        Ok((status?, std::mem::take(&mut self.last_body)))
    }

    async fn send(&mut self, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<()> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.auth,
            body.len()
        );
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(body);
        self.stream.write_all(&req).await
    }

    async fn read_response(&mut self) -> std::io::Result<u16> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(std::io::Error::other)?;
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad status line"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                if self.keep_body {
                    self.last_body = self.buf[end + 4..total].to_vec();
                }
                self.buf.drain(..total);
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
