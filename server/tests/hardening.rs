//! Hostile and unlucky clients over real sockets: each test reproduces a finding from probing
//! the release build (issue 7) and shows it handled: stalled resumers, idle and half-open
//! connections, a connection flood, out-of-range queries, protocol violations, a store that
//! dies, and a resume that must finish on a busy topic.

mod common;

use app::protocol::{close_code, ClientFrame, ErrorCode, Position, ServerFrame};
use common::*;
use futures::SinkExt;
use herald::config::Config;
use herald::hooks::Hooks;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Publishes `n` notifications of `bytes` each, `concurrency` at a time.
async fn fill(addr: std::net::SocketAddr, topic: &str, n: usize, bytes: usize) -> Position {
    let body = "x".repeat(bytes);
    let per = n.div_ceil(8);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (topic, body) = (topic.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut last = None;
                for _ in 0..per.min(n.saturating_sub(t * per)) {
                    last = Some(publish(addr, &topic, &body).await.position());
                }
                last
            })
        })
        .collect();
    let mut epoch = None;
    for t in tasks {
        if let Some(p) = t.await.unwrap() {
            epoch = Some(p.epoch);
        }
    }
    Position {
        epoch: epoch.expect("published"),
        offset: 0,
    }
}

#[tokio::test]
async fn resumers_that_stop_reading_are_closed_and_free_their_slots() {
    // The probe: 20 clients resume 1,000 notifications of 15 KB and stop reading. With a 1 s
    // heartbeat they used to stay connected for as long as they liked.
    let srv = server(Config {
        heartbeat_ms: 1000,
        write_timeout_ms: 2000,
        ..memory_config()
    })
    .await;
    let from = fill(srv.addr, "big", 1000, 15 * 1024).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(&srv).await;
        c.send(&ClientFrame::Subscribe {
            topic: "big".into(),
            since: Some(from.clone()),
            id: None,
        })
        .await;
        // ...and never read again.
        stalled.push(c);
    }
    assert_eq!(stats(srv.addr).await["connections"], 20);
    // Heartbeat timeout (2 s) or write timeout (2 s), plus 1 s for a close frame that cannot
    // leave; generous slack for a loaded machine.
    no_connections_left(srv.addr, Duration::from_secs(15)).await;
    drop(stalled);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_resume_of_a_long_history_on_a_busy_topic_completes_without_gaps() {
    // 1,000 retained, 500 publishes/s, a queue of 512, resume from offset 0 by a client that
    // reads the replay slowly: the live frames that pile up during the replay must not get it
    // cut as a slow consumer.
    let srv = server(Config {
        queue_frames: 512,
        retain_count: 100_000,
        ..memory_config()
    })
    .await;
    let from = fill(srv.addr, "busy", 1000, 15 * 1024).await;
    let addr = srv.addr;
    let publisher = tokio::spawn(async move {
        let body = "y".repeat(15 * 1024);
        let start = tokio::time::Instant::now();
        // 500/s for three seconds, on a fixed schedule.
        let mut tasks = Vec::new();
        for k in 0..1500u32 {
            tokio::time::sleep_until(start + Duration::from_millis(2) * k).await;
            let body = body.clone();
            tasks.push(tokio::spawn(
                async move { publish(addr, "busy", &body).await },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut c = Client::connect(&srv).await;
    c.subscribe("busy", Some(from)).await;
    let mut expected = 1u64;
    while expected <= 2500 {
        match c.try_next().await {
            Ok(ServerFrame::Notification(n)) => {
                assert_eq!(n.offset, expected, "gap-free, in order, once");
                expected += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(end) => panic!("cut at offset {expected}: {end:?}"),
        }
        if expected <= 1000 {
            // The slow part: 2 ms per frame, as fast as the topic grows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    publisher.await.unwrap();
    // Nothing after the last: the next frame is a sentinel published now.
    let sentinel = publish(srv.addr, "busy", "sentinel").await;
    assert_eq!(c.notification().await, sentinel);
    assert_eq!(stats(srv.addr).await["slow_closed"], 0);
}

#[tokio::test]
async fn connections_that_send_nothing_or_half_a_request_are_closed() {
    let srv = server(Config {
        request_head_timeout_ms: 300,
        ..memory_config()
    })
    .await;
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => s
                .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            // Half a WebSocket upgrade request.
            _ => s
                .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .await
                .unwrap(),
        }
        idle.push(s);
    }
    // A keep-alive connection that went idle after a complete request is closed too.
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    kept.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    idle.push(kept);
    for mut s in idle {
        let mut sink = Vec::new();
        // The server ends each one: EOF (or a reset) instead of waiting forever.
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink))
            .await
            .expect("the server closed the idle connection")
            .ok();
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_tcp_connections_beyond_the_cap_gets_503_and_is_closed() {
    let srv = server(Config {
        max_connections: 2,
        max_http_connections: 2,
        request_head_timeout_ms: 60_000,
        ..memory_config()
    })
    .await;
    // Four connections that say nothing take every permit.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
            .await
            .expect("refused at once")
            .ok();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains(r#""code":"unavailable""#), "{text}");
    }
    // A freed permit is usable again.
    held.pop();
    eventually("a freed connection slot is reused", WAIT, || async {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
        reply.starts_with(b"HTTP/1.1 200")
    })
    .await;
    drop(held);
    srv.stop().await.unwrap();
}

async fn bounds_beyond_any_offset(config: Config) {
    let srv = server(config).await;
    publish(srv.addr, "t", "one").await;
    for query in [
        "since=18446744073709551615",
        "since=18446744073709551615&order=asc",
        "before=18446744073709551615",
        "since=9223372036854775808&order=asc",
        "before=0",
    ] {
        let r = http(
            srv.addr,
            "GET",
            &format!("/api/topics/t/notifications?{query}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        assert_eq!(r.json()["last_offset"], 1, "{query}");
    }
    let r = http(
        srv.addr,
        "GET",
        "/api/topics/t/notifications?since=18446744073709551616",
        &[],
        b"",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn history_bounds_beyond_any_offset_get_the_same_answer_from_every_store() {
    bounds_beyond_any_offset(memory_config()).await;
    let dir = tempfile::tempdir().unwrap();
    bounds_beyond_any_offset(sqlite_config(&dir)).await;
}

#[tokio::test]
async fn protocol_violations_get_the_rfc_6455_close_codes() {
    let srv = server(memory_config()).await;
    // A text frame that is not UTF-8: 1007.
    let mut ws = RawWs::connect(srv.addr).await;
    ws.send_frame(0x1, &[0xff, 0xfe, 0xfd], true).await;
    assert_eq!(ws.close_code().await, Some(close_code::INVALID_PAYLOAD));
    // An unmasked frame from a client: 1002.
    let mut ws = RawWs::connect(srv.addr).await;
    ws.send_frame(0x1, br#"{"type":"ping"}"#, false).await;
    assert_eq!(ws.close_code().await, Some(close_code::PROTOCOL_ERROR));
    // A reserved data opcode and a reserved control opcode: 1002.
    for opcode in [0x3, 0xb] {
        let mut ws = RawWs::connect(srv.addr).await;
        ws.send_frame(opcode, b"?", true).await;
        assert_eq!(
            ws.close_code().await,
            Some(close_code::PROTOCOL_ERROR),
            "{opcode:#x}"
        );
    }
    no_connections_left(srv.addr, WAIT).await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frames_count_against_the_rate_limit() {
    let srv = server(Config {
        frames_per_sec: 5,
        ..memory_config()
    })
    .await;
    let mut c = Client::connect(&srv).await;
    for _ in 0..200 {
        c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
            0u8;
            4
        ]))
        .await
        .unwrap();
    }
    let mut codes = Vec::new();
    let close = loop {
        match c.try_next().await {
            Ok(ServerFrame::Error { code, .. }) => codes.push(code),
            Ok(other) => panic!("{other:?}"),
            Err(End::Closed(code)) => break code,
            Err(End::Error(e)) => panic!("{e}"),
        }
    };
    assert_eq!(close, Some(close_code::RATE_LIMITED));
    assert!(codes.contains(&ErrorCode::RateLimited), "{codes:?}");
    // Far fewer answers than frames: refused frames are not each answered.
    assert!(codes.len() < 20, "{}", codes.len());
}

#[tokio::test]
async fn a_dead_store_writer_fails_health_refuses_publishes_and_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let die = Arc::new(AtomicBool::new(false));
    let hooks = Hooks::writer_dies_when(die.clone());
    let srv = herald::start_with(sqlite_config(&dir), hooks)
        .await
        .unwrap();
    add_test_key(&srv);
    let kept = publish(srv.addr, "t", "kept").await;
    let mut c = Client::connect(&srv).await;
    c.subscribe("t", Some(kept.position())).await;
    assert_eq!(
        http(srv.addr, "GET", "/api/health", &[], b"").await.status,
        200
    );
    die.store(true, Ordering::SeqCst);
    let r = http(srv.addr, "POST", "/api/topics/t", &[], b"lost").await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "unavailable"));
    // The server shuts itself down: sockets get 1011, and `run` returns the failure (so the
    // binary exits non-zero and a supervisor restarts it).
    assert_eq!(c.closed_with().await, Some(close_code::INTERNAL));
    let result = tokio::time::timeout(WAIT, srv.finished())
        .await
        .expect("the server stops on its own");
    let err = result.expect_err("run reports the failure");
    assert!(err.to_string().contains("injected writer failure"), "{err}");
}

#[tokio::test]
async fn plain_subscribes_read_nothing_from_disk_and_resumes_share_a_small_reader_pool() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(Config {
        sqlite_readers: 2,
        ..sqlite_config(&dir)
    })
    .await;
    let first = publish(srv.addr, "burst", "one").await;
    publish(srv.addr, "burst", "two").await;
    let before = stats(srv.addr).await["store"]["disk_reads"]
        .as_u64()
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(&srv).await;
        c.send(&ClientFrame::Subscribe {
            topic: "burst".into(),
            since: None,
            id: None,
        })
        .await;
        clients.push(c);
    }
    for c in &mut clients {
        match c.next().await {
            ServerFrame::Subscribed { position, .. } => assert_eq!(position.offset, 2),
            other => panic!("{other:?}"),
        }
    }
    let after = stats(srv.addr).await["store"]["disk_reads"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before, "a plain subscribe reads no history");
    // 100 resumes at once: they all get their replay, two reads at a time.
    let mut resumers = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(&srv).await;
        c.send(&ClientFrame::Subscribe {
            topic: "burst".into(),
            since: Some(Position {
                epoch: first.epoch.clone(),
                offset: 0,
            }),
            id: None,
        })
        .await;
        resumers.push(c);
    }
    for c in &mut resumers {
        assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
        assert_eq!(c.notification().await.offset, 1);
        assert_eq!(c.notification().await.offset, 2);
    }
    let s = stats(srv.addr).await;
    assert!(
        s["store"]["concurrent_reads_max"].as_u64().unwrap() <= 2,
        "{s}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn deliveries_are_counted_when_written() {
    let srv = server(memory_config()).await;
    let mut a = Client::connect(&srv).await;
    let mut b = Client::connect(&srv).await;
    a.subscribe("count", None).await;
    b.subscribe("count", None).await;
    for i in 0..3 {
        publish(srv.addr, "count", &format!("n{i}")).await;
    }
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            c.notification().await;
        }
    }
    eventually("six deliveries counted", WAIT, || async {
        stats(srv.addr).await["delivered"] == 6
    })
    .await;
    srv.stop().await.unwrap();
}
