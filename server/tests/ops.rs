//! Running Herald in production: `/metrics`, health and readiness, the drain on shutdown, the
//! admin overview and the OpenAPI document.

mod common;

use app::protocol::close_code;
use common::*;
use herald::config::Config;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Scrapes `/metrics` (with the admin test key) and parses it as Prometheus text.
async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let r = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    parse(&r.body)
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

/// The value of the sample `name` whose labels include `labels` (0 when absent: a counter
/// not yet incremented).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(sqlite_config(&dir)).await;
    let before = scrape(srv.addr).await;
    let mut c = Client::connect(&srv).await;
    c.subscribe("ops", None).await;
    for i in 0..3 {
        publish(srv.addr, "ops", &format!("n{i}")).await;
    }
    for _ in 0..3 {
        c.notification().await;
    }
    // A refused publish (no credentials) and one with a bad body.
    let r = http_as(srv.addr, "POST", "/api/topics/ops", &[], b"x").await;
    assert_eq!(r.status, 401);
    let after = scrape(srv.addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    // Other tests in this process share the recorder: at least what this one did.
    let stored = [("route", "http"), ("result", "stored")];
    assert!(delta("herald_publishes_total", &stored) >= 3.0);
    let rejected = [("route", "http"), ("result", "rejected")];
    assert!(delta("herald_publishes_total", &rejected) >= 1.0);
    assert!(delta("herald_deliveries_written_total", &[]) >= 3.0);
    assert!(delta("herald_sent_bytes_total", &[]) > 0.0);
    assert!(delta("herald_write_batch_frames_count", &[]) >= 1.0);
    assert!(delta("herald_connections_opened_total", &[]) >= 1.0);
    assert!(delta("herald_auth_failures_total", &[("reason", "missing")]) >= 1.0);
    let sqlite = [("store", "sqlite")];
    assert!(delta("herald_store_commit_seconds_count", &sqlite) >= 3.0);
    assert!(delta("herald_store_commit_group_size_count", &sqlite) >= 3.0);
    // Levels are this server's, read at scrape time.
    assert_eq!(value(&after, "herald_connections", &[]), 1.0);
    assert!(value(&after, "herald_subscriptions", &[]) >= 1.0);
    assert_eq!(value(&after, "herald_ready", &[]), 1.0);
    // Label values stay bounded: never a topic.
    assert!(after
        .samples
        .iter()
        .all(|s| s.labels.values().all(|v| v != "ops")));
    drop(c);
    eventually("the close is counted", WAIT, || async {
        let s = scrape(srv.addr).await;
        value(&s, "herald_connections_closed_total", &[("code", "gone")])
            + value(&s, "herald_connections_closed_total", &[("code", "normal")])
            > value(
                &before,
                "herald_connections_closed_total",
                &[("code", "gone")],
            ) + value(
                &before,
                "herald_connections_closed_total",
                &[("code", "normal")],
            )
    })
    .await;
}

#[tokio::test]
async fn metrics_need_an_admin_key_or_the_metrics_key_or_the_private_address() {
    let metrics_addr = free_addr();
    let srv = server(Config {
        metrics_key: Some("scraper-secret-0123456789".into()),
        metrics_addr: Some(metrics_addr),
        ..memory_config()
    })
    .await;
    let none = http_as(srv.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (401, "unauthorized")
    );
    let reader = key_with(&srv, &["read:*"]);
    let bearer = format!("Bearer {reader}");
    let weak = http_as(
        srv.addr,
        "GET",
        "/metrics",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(
        (weak.status, weak.error_code().as_str()),
        (403, "forbidden")
    );
    let wrong = [("Authorization", "Bearer scraper-secret-0123456780")];
    assert_eq!(
        http_as(srv.addr, "GET", "/metrics", &wrong, b"")
            .await
            .status,
        401
    );
    let right = [("Authorization", "Bearer scraper-secret-0123456789")];
    let r = http_as(srv.addr, "GET", "/metrics", &right, b"").await;
    assert_eq!(r.status, 200);
    parse(&r.body);
    // The private address needs nothing, and serves only /metrics.
    let r = http_as(metrics_addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("herald_connections"), "{}", r.body);
    let r = http_as(metrics_addr, "GET", "/api/stats", &[], b"").await;
    assert_eq!(r.status, 404);
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn health_and_readiness_answer_without_credentials() {
    let srv = server(memory_config()).await;
    let r = http_as(srv.addr, "GET", "/api/health", &[], b"").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = http_as(srv.addr, "GET", "/api/ready", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
}

#[tokio::test]
async fn the_drain_fails_readiness_refuses_upgrades_keeps_publishing_and_spreads_the_closes() {
    let srv = server(Config {
        drain_secs: 2,
        ..memory_config()
    })
    .await;
    let addr = srv.addr;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&srv).await;
        c.subscribe("ops", None).await;
        clients.push(c);
    }
    let stopping = tokio::spawn(srv.stop());
    // The first client is told at once; the others over the window.
    let first = clients.remove(0).closed_with().await;
    assert_eq!(first, Some(close_code::GOING_AWAY));
    let r = http_as(addr, "GET", "/api/ready", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // New sockets go elsewhere...
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
        }
        other => panic!("an upgrade while draining: {:?}", other.map(|_| ())),
    }
    // ...while publishes are still taken, and reach the clients not yet told.
    let n = publish(addr, "ops", "during the drain").await;
    let mut still_open = 0;
    for c in &mut clients {
        match c.try_next().await {
            Ok(app::protocol::ServerFrame::Notification(got)) => {
                assert_eq!(got.id, n.id);
                still_open += 1;
            }
            Ok(other) => panic!("{other:?}"),
            Err(End::Closed(code)) => assert_eq!(code, Some(close_code::GOING_AWAY)),
            Err(End::Error(e)) => panic!("{e}"),
        }
    }
    assert!(
        still_open >= 2,
        "the closes were not spread: {still_open} open"
    );
    for mut c in clients {
        assert_eq!(c.closed_with().await, Some(close_code::GOING_AWAY));
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_publish_in_flight_at_shutdown_is_acknowledged_before_the_server_exits() {
    let (hooks, mut pauses) = common::pausing::hooks_for("ops", 1, common::pausing::Pause::Appends);
    let srv = herald::start_with(memory_config(), hooks).await.unwrap();
    add_test_key(&srv);
    let addr = srv.addr;
    let publishing = tokio::spawn(async move { publish(addr, "ops", "in flight").await });
    let release = pauses.recv().await.expect("the append is parked");
    let stopping = tokio::spawn(srv.stop());
    // The server is shutting down with the publish inside the store; let it through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "the server exited with a publish in flight"
    );
    release.send(()).unwrap();
    let n = tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.topic.as_str(), n.offset), ("ops", 1));
    tokio::time::timeout(WAIT, stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_admin_overview_counts_connections_topics_and_publishes() {
    let srv = server(memory_config()).await;
    let none = http_as(srv.addr, "GET", "/api/admin/overview", &[], b"").await;
    assert_eq!(none.status, 401);
    let mut a = Client::connect(&srv).await;
    a.subscribe("busy", None).await;
    a.subscribe("quiet", None).await;
    let mut b = Client::connect(&srv).await;
    b.subscribe("busy", None).await;
    let before = http(srv.addr, "GET", "/api/admin/overview", &[], b"")
        .await
        .json();
    publish(srv.addr, "busy", "x").await;
    let o = http(srv.addr, "GET", "/api/admin/overview", &[], b"")
        .await
        .json();
    assert_eq!(o["connections"], 2);
    assert_eq!(o["subscriptions"], 3);
    assert_eq!(o["topics"], 2);
    assert_eq!(o["busiest"][0]["topic"], "busy");
    assert_eq!(o["busiest"][0]["subscribers"], 2);
    assert_eq!(o["ready"], true);
    assert_eq!(o["store"], "memory");
    let published = o["published"].as_u64().unwrap() - before["published"].as_u64().unwrap();
    assert!(published >= 1);
}

/// Every route the server has, as (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/ws"),
    ("get", "/api/health"),
    ("get", "/api/ready"),
    ("get", "/metrics"),
    ("get", "/api/admin/overview"),
    ("get", "/api/stats"),
    ("get", "/api/openapi.json"),
    ("post", "/api/topics/{topic}"),
    ("get", "/api/topics/{topic}/notifications"),
    ("post", "/api/users/{user}/notifications"),
    ("post", "/api/notifications"),
    ("get", "/api/users/{user}/inbox"),
    ("post", "/api/users/{user}/inbox"),
    ("post", "/api/tokens"),
    ("post", "/api/dev/token"),
    ("get", "/api/keys"),
    ("post", "/api/keys"),
    ("delete", "/api/keys/{id}"),
];

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_listed_route_is_served() {
    let srv = server(memory_config()).await;
    let r = http_as(srv.addr, "GET", "/api/openapi.json", &[], b"").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                listed.insert((method.clone(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, expected);
    // Each documented route is served: the router answers with the route's own status or
    // error body, never its "no such route" fallback (which renders the app's 404 page).
    let params: HashMap<&str, &str> = [("{topic}", "t"), ("{user}", "ana"), ("{id}", "nope")]
        .into_iter()
        .collect();
    for (method, path) in &expected {
        let mut concrete = path.clone();
        for (k, v) in &params {
            concrete = concrete.replace(k, v);
        }
        let r = http(srv.addr, &method.to_uppercase(), &concrete, &[], b"").await;
        assert_ne!(r.status, 405, "{method} {concrete}");
        let html = r
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"));
        assert!(
            !html,
            "{method} {concrete} fell through to the page: {}",
            r.status
        );
    }
    // Schemas are generated from the types (not written by hand): a notification's fields.
    let notification = &doc["components"]["schemas"]["Notification"]["properties"];
    for field in ["id", "topic", "epoch", "offset", "time", "body"] {
        assert!(notification.get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn the_binary_reports_its_version_and_logs_json_lines_when_asked() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--log-format",
            "json",
        ])
        .arg("--db")
        .arg(dir.path().join("h.db"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(WAIT, async {
        let mut seen = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            // Development mode prints the key and a curl line for people; every log line
            // is one JSON object.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            seen += 1;
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
            if v["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening"))
            {
                return (v, seen);
            }
        }
        panic!("the server exited");
    })
    .await
    .unwrap();
    // Fields are top-level: `addr` beside the message.
    assert!(listening.0["addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    child.kill().await.unwrap();
}
