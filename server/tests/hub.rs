//! The live path over real sockets: subscribe, publish over HTTP, receive; isolation, order,
//! slow consumers, limits, bad input, origin and connection caps, heartbeat and shutdown.

mod common;

use app::protocol::{close_code, ClientFrame, ErrorCode, Position, ServerFrame};
use common::*;
use futures::SinkExt;
use herald::config::Config;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscriber_receives_a_notification_published_over_http() {
    let srv = server(memory_config()).await;
    let mut c = Client::connect(&srv).await;
    let pos = c.subscribe("ops", None).await;
    assert_eq!(pos.offset, 0);
    let stored = publish(srv.addr, "ops", "Deploy finished").await;
    assert_eq!(
        (stored.topic.as_str(), stored.offset, stored.body.as_str()),
        ("ops", 1, "Deploy finished")
    );
    let got = c.notification().await;
    assert_eq!(got, stored);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn json_publish_carries_all_fields() {
    let srv = server(memory_config()).await;
    let mut c = Client::connect(&srv).await;
    c.subscribe("ops", None).await;
    let r = publish_json(
        srv.addr,
        "ops",
        r#"{"title":"Deploy","body":"v2 is live","priority":5,"tags":["prod","deploy"],"link":"https://example.com/d/2"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let n = c.notification().await;
    assert_eq!(n.title.as_deref(), Some("Deploy"));
    assert_eq!(n.priority, 5);
    assert_eq!(n.tags, ["prod", "deploy"]);
    assert_eq!(n.link.as_deref(), Some("https://example.com/d/2"));
    assert_eq!(n, r.notification());
}

#[tokio::test]
async fn topics_are_isolated() {
    let srv = server(memory_config()).await;
    let mut a = Client::connect(&srv).await;
    let mut b = Client::connect(&srv).await;
    a.subscribe("alpha", None).await;
    b.subscribe("beta", None).await;
    publish(srv.addr, "alpha", "for a").await;
    assert_eq!(a.notification().await.body, "for a");
    publish(srv.addr, "beta", "for b").await;
    // b's first frame is beta's: alpha's never reached it.
    let n = b.notification().await;
    assert_eq!((n.topic.as_str(), n.body.as_str()), ("beta", "for b"));
    // And beta's never reached a: its next frame is the sentinel published after it.
    let sentinel = publish(srv.addr, "alpha", "sentinel").await;
    assert_eq!(a.notification().await, sentinel, "a must not see beta");
}

#[tokio::test]
async fn publish_order_is_preserved_for_every_subscriber() {
    let srv = server(memory_config()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&srv).await;
        c.subscribe("seq", None).await;
        clients.push(c);
    }
    // Several publishers at once: offsets decide the order, and everybody sees the same one.
    let mut tasks = Vec::new();
    for p in 0..4 {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                publish(addr, "seq", &format!("p{p}-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in &mut clients {
        for expected in 1..=200u64 {
            assert_eq!(c.notification().await.offset, expected);
        }
    }
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_delay_others_and_is_closed_as_slow() {
    let config = Config {
        queue_frames: 16,
        ..memory_config()
    };
    let srv = server(config).await;
    let mut stalled = Client::connect(&srv).await;
    stalled.subscribe("firehose", None).await;
    let mut fast = Client::connect(&srv).await;
    fast.subscribe("firehose", None).await;

    let body = "x".repeat(8 * 1024);
    let total = 1500u64;
    let addr = srv.addr;
    let publisher = tokio::spawn(async move {
        for _ in 0..total {
            publish(addr, "firehose", &body).await;
        }
    });
    // The fast subscriber keeps up the whole time while the stalled one reads nothing.
    for expected in 1..=total {
        assert_eq!(fast.notification().await.offset, expected);
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publishing never blocked")
        .unwrap();

    // The stalled one gets what fit in its buffers, in order, then the slow-consumer close.
    let mut last = 0;
    let code = loop {
        match stalled.try_next().await {
            Ok(ServerFrame::Notification(n)) => {
                assert_eq!(n.offset, last + 1, "no gaps before the cut");
                last = n.offset;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(End::Closed(code)) => break code,
            Err(End::Error(_)) => break None,
        }
    };
    assert!(last < total, "the stalled client was cut off");
    // The close frame gets through when the socket has room; a reset is also acceptable.
    assert!(
        matches!(code, Some(close_code::SLOW_CONSUMER) | None),
        "{code:?}"
    );
    let stats = http(srv.addr, "GET", "/api/stats", &[], b"").await.json();
    assert_eq!(stats["slow_closed"], 1);
    // Deliveries are counted when written: everything the fast one got, and at most what
    // reached the stalled one; never the frames left in its queue when it was cut.
    let delivered = stats["delivered"].as_u64().unwrap();
    assert!(
        (total..=total + last).contains(&delivered),
        "delivered {delivered}, fast {total}, stalled got {last}"
    );
}

#[tokio::test]
async fn bad_frames_get_typed_errors_and_the_connection_stays_up() {
    let config = Config {
        max_frame_bytes: 1024,
        hard_frame_bytes: 64 * 1024,
        ..memory_config()
    };
    let srv = server(config).await;
    let mut c = Client::connect(&srv).await;

    let cases: &[(&str, ErrorCode)] = &[
        ("{", ErrorCode::BadFrame),
        ("[1,2]", ErrorCode::BadFrame),
        (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
        (r#"{"type":"subscribe"}"#, ErrorCode::BadFrame),
        (
            r#"{"type":"subscribe","topic":"no spaces"}"#,
            ErrorCode::BadTopic,
        ),
        (
            r#"{"type":"unsubscribe","topic":"never"}"#,
            ErrorCode::NotSubscribed,
        ),
        (
            r#"{"type":"publish","topic":"t","body":""}"#,
            ErrorCode::BadField,
        ),
        // A refresh with a bad token is refused and changes nothing.
        (r#"{"type":"auth","token":"late"}"#, ErrorCode::InvalidToken),
    ];
    for (text, code) in cases {
        c.send_text(text).await;
        match c.next().await {
            ServerFrame::Error { code: got, .. } => assert_eq!(got, *code, "for {text}"),
            other => panic!("expected error for {text}, got {other:?}"),
        }
    }
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    c.send_text(&big).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::TooLarge,
            ..
        }
    ));
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::BadFrame,
            ..
        }
    ));

    // Still up and still working.
    c.send(&ClientFrame::Ping { id: Some(42) }).await;
    assert_eq!(c.next().await, ServerFrame::Pong { id: Some(42) });
    c.subscribe("t", None).await;
    publish(srv.addr, "t", "still here").await;
    assert_eq!(c.notification().await.body, "still here");
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let config = Config {
        max_frame_bytes: 1024,
        hard_frame_bytes: 4096,
        ..memory_config()
    };
    let srv = server(config).await;
    let mut c = Client::connect(&srv).await;
    c.send_text(&"x".repeat(10_000)).await;
    assert_eq!(c.closed_with().await, Some(close_code::TOO_BIG));
}

#[tokio::test]
async fn socket_publish_is_acknowledged_and_delivered() {
    let srv = server(memory_config()).await;
    let mut listener = Client::connect(&srv).await;
    listener.subscribe("chat", None).await;
    let mut talker = Client::connect(&srv).await;
    talker
        .send_text(r#"{"type":"publish","topic":"chat","body":"hello room","id":7}"#)
        .await;
    match talker.next().await {
        ServerFrame::Ack { id, position } => assert_eq!((id, position.offset), (7, 1)),
        other => panic!("expected ack, got {other:?}"),
    }
    assert_eq!(listener.notification().await.body, "hello room");
}

#[tokio::test]
async fn bad_publish_requests_get_documented_errors() {
    let config = Config {
        max_body_bytes: 100,
        ..memory_config()
    };
    let srv = server(config).await;
    let a = srv.addr;
    let cases: Vec<(HttpResponse, u16, &str)> = vec![
        (
            http(a, "POST", "/api/topics/bad%20name", &[], b"x").await,
            400,
            "bad_topic",
        ),
        (
            http(
                a,
                "POST",
                &format!("/api/topics/{}", "t".repeat(65)),
                &[],
                b"x",
            )
            .await,
            400,
            "bad_topic",
        ),
        (
            http(a, "POST", "/api/topics/ok", &[], b"").await,
            400,
            "bad_field",
        ),
        (
            http(a, "POST", "/api/topics/ok", &[], &[b'x'; 101]).await,
            413,
            "too_large",
        ),
        (
            http(a, "POST", "/api/topics/ok", &[], &[b'x'; 20_000]).await,
            413,
            "too_large",
        ),
        (
            http(a, "POST", "/api/topics/ok", &[], &[0xff, 0xfe]).await,
            400,
            "bad_field",
        ),
        (
            publish_json(a, "ok", "{not json", &[]).await,
            400,
            "bad_frame",
        ),
        (
            publish_json(a, "ok", r#"{"body":"x","priority":9}"#, &[]).await,
            400,
            "bad_field",
        ),
        (
            publish_json(a, "ok", r#"{"body":"x","link":"javascript:alert(1)"}"#, &[]).await,
            400,
            "bad_field",
        ),
        (
            http(a, "POST", "/api/topics/ok", &[("Priority", "loud")], b"x").await,
            400,
            "bad_field",
        ),
        (
            http(a, "GET", "/api/topics/ok/notifications?limit=0", &[], b"").await,
            400,
            "bad_query",
        ),
        (
            http(a, "GET", "/api/topics/ok/notifications?since=-1", &[], b"").await,
            400,
            "bad_query",
        ),
        (
            http(a, "GET", "/api/topics/ok/notifications?order=up", &[], b"").await,
            400,
            "bad_query",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert_eq!(r.error_code(), *code, "case {i}: {}", r.body);
        assert!(r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // ntfy-style headers become fields.
    let r = http(
        a,
        "POST",
        "/api/topics/ok",
        &[("Title", "T"), ("Priority", "2"), ("Tags", "a,b")],
        b"hi",
    )
    .await;
    assert_eq!(r.status, 201);
    let n = r.notification();
    assert_eq!(
        (n.title.as_deref(), n.priority, n.tags.len()),
        (Some("T"), 2, 2)
    );
}

#[tokio::test]
async fn foreign_origins_are_refused_before_the_upgrade() {
    let srv = server(memory_config()).await;
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "forbidden_origin");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    // Same origin is fine.
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", format!("http://{}", srv.addr).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503() {
    let srv = server(Config {
        max_connections: 2,
        ..memory_config()
    })
    .await;
    let _a = Client::connect(&srv).await;
    let _b = Client::connect(&srv).await;
    match tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap_err()
    {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other}"),
    }
    drop(_a);
    // The slot frees once the server notices the close.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokio_tungstenite::connect_async(srv.ws_url()).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "a freed slot is reusable");
}

/// The heartbeat wiring over a real socket; the timing rules themselves are tested on tokio's
/// paused clock in `session::tests` (no margins to lose on a loaded machine).
#[tokio::test]
async fn silent_clients_are_closed_by_the_heartbeat() {
    let srv = server(Config {
        heartbeat_ms: 100,
        ..memory_config()
    })
    .await;
    // A client that never writes: a library client would answer the queued pings while it
    // reads, and a pong that reaches the closed server socket draws a reset that discards
    // the close frame still unread on this side.
    let mut silent = RawWs::connect(srv.addr).await;
    assert_eq!(
        silent.close_code().await,
        Some(close_code::HEARTBEAT_TIMEOUT)
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let srv = server(memory_config()).await;
    let mut c = Client::connect(&srv).await;
    c.subscribe("t", None).await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(c.closed_with().await, Some(close_code::GOING_AWAY));
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let srv = server(Config {
        max_subscriptions: 2,
        ..memory_config()
    })
    .await;
    let mut c = Client::connect(&srv).await;
    c.subscribe("a", None).await;
    c.subscribe("b", None).await;
    c.send(&ClientFrame::Subscribe {
        topic: "c".into(),
        since: None,
        id: Some(3),
    })
    .await;
    match c.next().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code, id), (ErrorCode::TooManySubscriptions, Some(3)))
        }
        other => panic!("{other:?}"),
    }
    c.send(&ClientFrame::Unsubscribe {
        topic: "a".into(),
        id: None,
    })
    .await;
    assert!(matches!(c.next().await, ServerFrame::Unsubscribed { .. }));
    publish(srv.addr, "a", "not for c").await;
    publish(srv.addr, "b", "for c").await;
    assert_eq!(c.notification().await.body, "for c");
}

#[tokio::test]
async fn subscribing_twice_reports_the_position_without_replaying() {
    let srv = server(memory_config()).await;
    let first = publish(srv.addr, "twice", "one").await;
    let mut c = Client::connect(&srv).await;
    c.subscribe(
        "twice",
        Some(Position {
            epoch: first.epoch.clone(),
            offset: 0,
        }),
    )
    .await;
    assert_eq!(c.notification().await.offset, 1);
    publish(srv.addr, "twice", "two").await;
    assert_eq!(c.notification().await.offset, 2);
    // Again, even from an older position: the live subscription stands, nothing is replayed.
    let pos = c
        .subscribe(
            "twice",
            Some(Position {
                epoch: first.epoch.clone(),
                offset: 0,
            }),
        )
        .await;
    assert_eq!(
        pos,
        Position {
            epoch: first.epoch,
            offset: 2
        }
    );
    publish(srv.addr, "twice", "three").await;
    assert_eq!(c.notification().await.offset, 3);
}
