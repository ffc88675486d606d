//! TLS without a proxy: https publishes and a wss socket, with a certificate made in the test.

mod common;

use app::protocol::{ClientFrame, ServerFrame};
use common::*;
use futures::{SinkExt, StreamExt};
use herald::config::Config;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

struct Tls {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    connector: tokio_rustls::TlsConnector,
}

/// A self-signed certificate for localhost, and a client that trusts only it.
fn tls() -> Tls {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        _dir: dir,
        cert,
        key,
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
    }
}

/// A server that serves only TLS, with the test's certificate.
async fn tls_server(tls: &Tls) -> herald::RunningServer {
    server(Config {
        tls_cert: Some(tls.cert.clone()),
        tls_key: Some(tls.key.clone()),
        ..memory_config()
    })
    .await
}

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> ServerFrame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn connect(
    tls: &Tls,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tls.connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn https_publishes_and_wss_sockets_work_with_a_certificate() {
    let tls = tls();
    let srv = tls_server(&tls).await;

    // wss: the socket, authenticated in its first frame, subscribed.
    let stream = connect(&tls, srv.addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("wss upgrade");
    assert!(matches!(next(&mut ws).await, ServerFrame::Welcome { .. }));
    let auth = ClientFrame::Auth {
        token: TEST_KEY.into(),
    };
    ws.send(Message::text(serde_json::to_string(&auth).unwrap()))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        ServerFrame::Authenticated { .. }
    ));
    let sub = ClientFrame::Subscribe {
        topic: "secure".into(),
        since: None,
        id: None,
    };
    ws.send(Message::text(serde_json::to_string(&sub).unwrap()))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        ServerFrame::Subscribed { .. }
    ));

    // https: a publish with the key.
    let mut s = connect(&tls, srv.addr).await;
    let body = "over tls";
    let req = format!(
        "POST /api/topics/secure HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TEST_KEY}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");

    match next(&mut ws).await {
        ServerFrame::Notification(n) => assert_eq!(n.body, body),
        other => panic!("{other:?}"),
    }

    // Plain HTTP on the TLS port gets no HTTP answer (the handshake fails), and the server
    // carries on.
    let mut plain = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    plain
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(!buf.starts_with(b"HTTP/"));
    let stream = connect(&tls, srv.addr).await;
    let (mut again, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    assert!(matches!(
        next(&mut again).await,
        ServerFrame::Welcome { .. }
    ));
}

#[tokio::test]
async fn a_mismatched_or_missing_certificate_stops_the_start() {
    let tls = tls();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let wrong_key = tls.cert.with_file_name("other.pem");
    std::fs::write(&wrong_key, other.signing_key.serialize_pem()).unwrap();
    let start = |cert: std::path::PathBuf, key: std::path::PathBuf| {
        herald::start(Config {
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..memory_config()
        })
    };
    assert!(start(tls.cert.clone(), wrong_key).await.is_err());
    assert!(
        start(tls.cert.with_file_name("missing.pem"), tls.key.clone())
            .await
            .is_err()
    );
}

/// The command-line client over TLS: `herald publish` to https:// and `herald subscribe` to
/// wss://, trusting the test's certificate authority (`--ca-cert`), and refusing a server it
/// cannot verify.
#[tokio::test]
async fn the_cli_publishes_and_subscribes_over_tls() {
    let tls = tls();
    let srv = tls_server(&tls).await;
    let url = format!("https://localhost:{}", srv.addr.port());
    let herald = || {
        let mut c = herald_cli();
        c.env("HERALD_SERVER", &url);
        c
    };
    let mut sub = herald()
        .args(["subscribe", "secure", "--json", "--ca-cert"])
        .arg(&tls.cert)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sub.stdout.take().unwrap());
    // Published until the subscriber (connecting meanwhile) prints one.
    let mut line = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = herald()
            .args(["publish", "secure", "over tls", "--ca-cert"])
            .arg(&tls.cert)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line);
        if let Ok(r) = tokio::time::timeout(std::time::Duration::from_millis(500), read).await {
            r.unwrap();
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber printed nothing"
        );
    }
    let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["body"], "over tls");
    // Without the test's authority, the server's certificate is not trusted.
    let out = herald()
        .args(["publish", "secure", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.stop().await.unwrap();
}
