//! `herald publish` and `herald subscribe`: the command-line client, in the server's binary so
//! nothing else needs installing.
//!
//! - `publish` sends one notification over HTTP with the API key from `HERALD_KEY` (or
//!   `--key`) and prints the stored notification's offset, or the server's error.
//! - `subscribe` follows topics over the WebSocket, authenticating with `HERALD_KEY` or
//!   `HERALD_TOKEN` in the first frame, and prints each notification as a line (`--json`: the
//!   notification's JSON). It keeps the last position per topic and, after a dropped
//!   connection, reconnects (backoff with jitter, up to 10 s) and resumes from it: nothing is
//!   printed twice or skipped, or a `gap`/`reset` is reported on stderr. With `--state FILE`
//!   the positions are written after every printed notification, so a restarted subscriber
//!   resumes too. Ctrl-C closes the socket and exits 0 with the state saved; a subscriber
//!   killed between printing a notification and saving its position prints it again when
//!   restarted (at least once, never a gap).
//!
//! `http://`/`ws://` and `https://`/`wss://` servers; TLS trusts the system's roots, or
//! `--ca-cert`.

use anyhow::{bail, Context};
use app::protocol::{ClientFrame, NewNotification, Notification, Position, ServerFrame};
use clap::Args;
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;

/// Where the server is and how to reach it.
#[derive(Clone, Debug, Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:3000")]
    pub server: String,
    /// An API key (or set HERALD_KEY).
    #[arg(long, env = "HERALD_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// A PEM file of the certificate authority to trust for https/wss, instead of the
    /// system's roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct PublishArgs {
    pub topic: String,
    pub message: String,
    #[arg(long)]
    pub title: Option<String>,
    /// 1 (min) to 5 (urgent); 3 when not given.
    #[arg(long)]
    pub priority: Option<u8>,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub link: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Clone, Debug, Args)]
pub struct SubscribeArgs {
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// One JSON object per line (the notification as the server sent it).
    #[arg(long)]
    pub json: bool,
    /// Keep the last position per topic in this file, so a restarted subscriber resumes.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// A user token instead of an API key (or set HERALD_TOKEN).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A stream to the server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The server's URL, taken apart.
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => bail!("{url:?}: the server is http(s):// or ws(s)://"),
        };
        let host = uri
            .host()
            .with_context(|| format!("{url:?} names no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn connect(&self, ca_cert: Option<&Path>) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .with_context(|| format!("connecting to {}: timed out", self.authority()))?
        .with_context(|| format!("connecting to {}", self.authority()))?;
        tcp.set_nodelay(true)?;
        if !self.tls {
            return Ok(Box::new(tcp));
        }
        let connector = tls_connector(ca_cert)?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone())
            .with_context(|| format!("{:?} is not a TLS server name", self.host))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {}", self.authority()))?;
        Ok(Box::new(tls))
    }
}

fn tls_connector(ca_cert: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// `herald publish TOPIC MESSAGE`.
pub async fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let new = NewNotification {
        title: args.title.clone(),
        body: args.message.clone(),
        priority: args.priority,
        tags: args.tags.clone(),
        link: args.link.clone(),
        category: None,
        author: None,
    };
    // The server checks these too; checking here gives the same message without a round trip.
    app::protocol::validate_topic(&args.topic).map_err(|e| anyhow::anyhow!(e.message))?;
    new.validate(usize::MAX)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let Some(key) = &args.server.key else {
        bail!("no API key: set HERALD_KEY (or pass --key)");
    };
    let target = Target::parse(&args.server.server)?;
    let stream = target.connect(args.server.ca_cert.as_deref()).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&new)?;
    let req = http::Request::post(format!("/api/topics/{}", args.topic))
        .header(http::header::HOST, target.authority())
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .context("no answer within 30 s")??;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    if status.is_success() {
        let n: Notification = serde_json::from_slice(&bytes).context("the server's answer")?;
        println!("published to {} at offset {}", n.topic, n.offset);
        return Ok(());
    }
    match serde_json::from_slice::<app::protocol::ErrorBody>(&bytes) {
        Ok(e) => bail!("{status}: {} ({})", e.error.message, e.error.code),
        Err(_) => bail!("{status}: {}", String::from_utf8_lossy(&bytes)),
    }
}

/// Positions per topic, as kept in `--state`.
type Positions = BTreeMap<String, Position>;

fn load_state(path: &Path) -> anyhow::Result<Positions> {
    match std::fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .with_context(|| format!("{} is not a state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Positions::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the positions beside the file and renames it over: a crash leaves the old or the
/// new state, never half of one.
fn save_state(path: &Path, positions: &Positions) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(positions)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// How one connection ended.
enum End {
    /// Ctrl-C: done.
    Interrupted,
    /// The connection dropped or the server closed it: reconnect, resume.
    Dropped(String),
}

/// `herald subscribe TOPIC...`.
pub async fn subscribe(args: &SubscribeArgs) -> anyhow::Result<()> {
    for t in &args.topics {
        app::protocol::validate_readable_topic(t).map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let credential = args
        .token
        .clone()
        .or_else(|| args.server.key.clone())
        .context("no credentials: set HERALD_KEY (an API key) or HERALD_TOKEN (a user token)")?;
    let target = Target::parse(&args.server.server)?;
    let mut positions = match &args.state {
        Some(path) => load_state(path)?,
        None => Positions::new(),
    };
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut failures = 0u32;
    loop {
        let attempt = connection(args, &target, &credential, &mut positions, &mut interrupt);
        match attempt.await {
            Ok(End::Interrupted) => return Ok(()),
            Ok(End::Dropped(why)) => {
                eprintln!("herald: connection lost ({why}); reconnecting");
                failures = 0;
            }
            Err(e) => {
                // Refused credentials or topics will not get better by retrying.
                if let Some(fatal) = e.downcast_ref::<Fatal>() {
                    bail!("{}", fatal.0);
                }
                failures = failures.saturating_add(1);
                eprintln!("herald: {e:#}; retrying");
            }
        }
        let base = 250u64 << failures.min(6);
        let delay = base.min(10_000) / 2 + fastrand::u64(0..=base.min(10_000) / 2);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = &mut interrupt => return Ok(()),
        }
    }
}

/// An error retrying cannot fix.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// One connection: authenticate, subscribe to every topic from its position, print until
/// the connection ends or Ctrl-C.
async fn connection(
    args: &SubscribeArgs,
    target: &Target,
    credential: &str,
    positions: &mut Positions,
    interrupt: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
) -> anyhow::Result<End> {
    let stream = target.connect(args.server.ca_cert.as_deref()).await?;
    let scheme = if target.tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/ws", target.authority());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let send = |f: &ClientFrame| Message::text(serde_json::to_string(f).unwrap_or_default());
    ws.send(send(&ClientFrame::Auth {
        token: credential.to_owned(),
    }))
    .await?;
    for topic in &args.topics {
        let since = positions.get(topic).cloned();
        let frame = ClientFrame::Subscribe {
            topic: topic.clone(),
            since,
            id: None,
        };
        ws.send(send(&frame)).await?;
    }
    let mut out = std::io::stdout();
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = &mut *interrupt => {
                let _ = ws.close(None).await;
                return Ok(End::Interrupted);
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let why = c.map_or_else(|| "closed".to_owned(), |c| format!("closed {}", c.code));
                return Ok(End::Dropped(why));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ok(End::Dropped(e.to_string())),
            None => return Ok(End::Dropped("closed".into())),
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str()) else {
            continue;
        };
        match frame {
            ServerFrame::Notification(n) => {
                let seen = positions
                    .get(&n.topic)
                    .is_some_and(|p| p.epoch == n.epoch && p.offset >= n.offset);
                if seen {
                    continue;
                }
                print_notification(&mut out, &n, args.json, text.as_str())?;
                positions.insert(n.topic.clone(), n.position());
                if let Some(path) = &args.state {
                    save_state(path, positions)?;
                }
            }
            ServerFrame::Subscribed {
                topic, position, ..
            } => {
                // A first subscription (or a new epoch) starts at the topic's current end.
                let known = positions
                    .get(&topic)
                    .is_some_and(|p| p.epoch == position.epoch);
                if !known {
                    positions.insert(topic, position);
                    if let Some(path) = &args.state {
                        save_state(path, positions)?;
                    }
                }
            }
            ServerFrame::Gap {
                topic,
                requested,
                first_available,
                ..
            } => eprintln!(
                "herald: {topic}: notifications {} to {} are no longer kept",
                requested + 1,
                first_available.saturating_sub(1)
            ),
            ServerFrame::Reset {
                topic,
                epoch,
                first_available,
            } => {
                eprintln!("herald: {topic}: the server started a new history; following it");
                positions.insert(
                    topic,
                    Position {
                        epoch,
                        offset: first_available.saturating_sub(1),
                    },
                );
            }
            ServerFrame::Error { code, message, .. } => {
                use app::protocol::ErrorCode as C;
                match code {
                    C::Unauthorized
                    | C::InvalidToken
                    | C::TokenExpired
                    | C::KeyRevoked
                    | C::Forbidden
                    | C::BadTopic => return Err(Fatal(format!("{message} ({code})")).into()),
                    _ => eprintln!("herald: {message} ({code})"),
                }
            }
            _ => {}
        }
    }
}

fn print_notification(
    out: &mut impl std::io::Write,
    n: &Notification,
    json: bool,
    raw: &str,
) -> anyhow::Result<()> {
    if json {
        // The notification's own fields, without the frame's "type".
        let mut v: serde_json::Value = serde_json::from_str(raw)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("type");
        }
        writeln!(out, "{v}")?;
    } else {
        let mut line = format!(
            "{} [{}] #{}",
            app::time::format_utc(n.time),
            n.topic,
            n.offset
        );
        if n.priority != app::protocol::DEFAULT_PRIORITY {
            line.push_str(&format!(" P{}", n.priority));
        }
        if let Some(t) = &n.title {
            line.push_str(&format!(" {t}:"));
        }
        line.push(' ');
        line.push_str(&n.body);
        if !n.tags.is_empty() {
            line.push_str(&format!(" ({})", n.tags.join(", ")));
        }
        if let Some(l) = &n.link {
            line.push_str(&format!(" <{l}>"));
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
