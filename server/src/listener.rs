//! The accept loop: every TCP connection Herald holds is counted, timed out and shut down here.
//!
//! `axum::serve` has no timeouts and no connection cap, so a client could hold a descriptor
//! forever by sending nothing, half a request head, or by not reading a response. This loop
//! (mini-redis's `Listener`) closes those doors:
//!
//! - **A cap on TCP connections** (WebSockets plus `max_http_connections`, kept below the
//!   open-file limit): a connection beyond it gets a canned 503 and is closed at once, so
//!   `accept()` never reaches EMFILE (where axum would sleep a second between accepts).
//! - **A request-head deadline** (hyper's `header_read_timeout`): a request head, the
//!   WebSocket upgrade included, must arrive in time; it also ends idle keep-alive connections.
//! - **A write deadline** on every socket ([`Io`]): a write that makes no progress for the
//!   write timeout fails, HTTP responses and WebSocket frames alike.
//! - **Graceful shutdown**: on cancel, accepting stops and every HTTP connection finishes its
//!   in-flight request (so an accepted publish is still acknowledged) and closes.
//!
//! - **Optional TLS** (rustls): with a certificate and key, every connection is TLS (https and
//!   wss without a proxy); the handshake runs in the connection's task under the request-head
//!   deadline, so a client that stalls it only holds its own slot.
//!
//! Only HTTP/1.1 is served: browsers, curl and load balancers speak it to a backend, and it is
//! what WebSockets upgrade from.

use crate::{api, AppState};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use futures::future::Either as FutEither;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The answer to a connection beyond the cap, written without waiting before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 80\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections; retry later\"}}";

/// How long to pause accepting when the process is out of descriptors anyway.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(10);

/// The listen backlog asked for; the kernel clamps it to `net.core.somaxconn` (4096 here).
/// tokio's `TcpListener::bind` asks for 1024, which a burst of 5,000 connects a second
/// overflows: the dropped SYNs are retried by the client a second later (a 1 s connect p99).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` for [`Listener`] with `SO_REUSEADDR` (a restarted server can bind while old
/// connections linger in TIME_WAIT) and the largest backlog the kernel allows.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A TLS acceptor for the PEM certificate chain and private key at these paths.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub struct Listener {
    pub listener: TcpListener,
    pub service: Front,
    /// TLS for every connection, when configured.
    pub tls: Option<TlsAcceptor>,
    /// One permit per TCP connection; held by the connection's [`Io`] until it closes.
    pub permits: Arc<Semaphore>,
    pub head_timeout: Duration,
    pub write_timeout: Duration,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl Listener {
    /// Accepts until `cancel`, then lets every HTTP connection finish gracefully (tracked by
    /// `tracker`).
    pub async fn run(self) {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.head_timeout)
            .keep_alive(true);
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => (stream, peer),
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                tracing::debug!("connection cap reached: refusing");
                let _ = stream.try_write(REFUSED);
                continue;
            };
            // Notifications are small and latency matters more than packet count; coalescing
            // happens in the session, not in Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let io = Io::new(stream, permit, self.write_timeout);
            let mut front = self.service.clone();
            front.peer = Some(peer.ip());
            let service = TowerToHyperService::new(front);
            let (cancel, http, tls) = (self.cancel.clone(), http.clone(), self.tls.clone());
            let head_timeout = self.head_timeout;
            self.tracker.spawn(async move {
                // The TLS stream (rustls's state and buffers) and its handshake are boxed:
                // inline, every plain connection's task and upgraded socket would carry
                // their size (measured: 1.3 KiB per idle WebSocket).
                let io = match tls {
                    None => Either::Left(io),
                    Some(tls) => {
                        match Box::pin(tokio::time::timeout(head_timeout, tls.accept(io))).await {
                            Ok(Ok(stream)) => Either::Right(Box::new(stream)),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake too slow: closing");
                                return;
                            }
                        }
                    }
                };
                let conn = http
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            });
        }
    }
}

/// What every HTTP connection is served by: the router, behind a front door that serves the
/// two routes every notification takes, `POST /api/topics/{topic}` and `POST
/// /api/users/{user}/notifications`, straight to their handlers ([`api::FastRoute`]). Measured
/// with callgrind, the router's matching, parameter map, extractors and layers were about a
/// tenth of the instructions of a topic publish and a fifth of an inbox send's; the handlers
/// and their answers are the same either way.
#[derive(Clone)]
pub struct Front {
    pub router: Router,
    pub state: AppState,
    /// The connection's client address (for per-address limits).
    pub peer: Option<std::net::IpAddr>,
}

/// The client address of a routed request (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub std::net::IpAddr);

type Direct = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl tower::Service<Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = FutEither<Direct, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let peer = self
            .peer
            .map(|ip| client_ip(ip, req.headers(), &self.state.config.trusted_proxies));
        if let Some(route) = api::FastRoute::of(req.method(), req.uri().path()) {
            let state = self.state.clone();
            FutEither::Left(Box::pin(async move {
                Ok(api::serve_direct(state, req, route, peer).await)
            }))
        } else {
            if let Some(ip) = peer {
                req.extensions_mut().insert(ClientIp(ip));
            }
            FutEither::Right(tower::Service::call(&mut self.router, req))
        }
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not a trusted proxy itself (entries further left were
/// written by the client and prove nothing).
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    if trusted.is_empty() || !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if trusted.contains(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

async fn accept_error(e: io::Error) {
    // EMFILE/ENFILE: out of descriptors (the cap should prevent it); back off briefly.
    if matches!(e.raw_os_error(), Some(23) | Some(24)) {
        tracing::warn!(error = %e, "accept failed: out of file descriptors");
        tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

/// A socket with a write deadline that holds its connection permit.
///
/// The deadline is armed only when a write cannot proceed and disarmed by the next write that
/// does: the fast path costs nothing, and an idle connection carries one empty `Option`. It
/// measures lack of progress, so a client that reads slowly but steadily is not cut; one
/// that stops reading is, after `write_timeout`.
pub struct Io<T> {
    inner: T,
    _permit: Option<OwnedSemaphorePermit>,
    write_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Io<T> {
    pub fn new(inner: T, permit: OwnedSemaphorePermit, write_timeout: Duration) -> Self {
        Self {
            inner,
            _permit: Some(permit),
            write_timeout,
            deadline: None,
        }
    }

    /// For tests: a socket with a deadline and no permit.
    pub fn unlimited(inner: T, write_timeout: Duration) -> Self {
        Self {
            inner,
            _permit: None,
            write_timeout,
            deadline: None,
        }
    }

    /// Called when a write is pending: arms the deadline, or fails once it has passed.
    fn blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.write_timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write made no progress before the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.blocked(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(r, cx)
    }
}

/// The socket type the listener hands to hyper.
pub type ServerIo = Io<TcpStream>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let lb = ip("10.0.0.1");
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        // Not trusted: the peer, whatever the header says.
        assert_eq!(client_ip(lb, &h, &[]), lb);
        assert_eq!(client_ip(ip("9.9.9.9"), &h, &[lb]), ip("9.9.9.9"));
        // Trusted: the rightmost hop (the one the proxy saw), not the client's own claim.
        assert_eq!(client_ip(lb, &h, &[lb]), ip("2.2.2.2"));
        // Chained proxies are skipped.
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.2".parse().unwrap(),
        );
        assert_eq!(client_ip(lb, &h, &[lb, ip("10.0.0.2")]), ip("2.2.2.2"));
        // Garbage stops the walk at the last trusted hop; no header means the peer.
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_ip(lb, &h, &[lb]), lb);
        assert_eq!(client_ip(lb, &http::HeaderMap::new(), &[lb]), lb);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_at_the_deadline() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Io::unlimited(a, Duration::from_secs(10));
        io.write_all(&[0; 64]).await.unwrap();
        // The peer reads nothing: the next write blocks, and fails when the deadline passes.
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Nothing was lost before the deadline: the peer still reads what fit.
        let mut buf = [0u8; 64];
        b.read_exact(&mut buf).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Io::unlimited(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 64 * 20 {
                // 64 bytes every 6 s: each wait is under the 10 s deadline, the total is not.
                tokio::time::sleep(Duration::from_secs(6)).await;
                total += b.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..20 {
            io.write_all(&[1; 64]).await.unwrap();
        }
        reader.await.unwrap();
    }
}
