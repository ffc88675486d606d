//! "Nothing lost": resume after reconnect, races between replay and live publishes, crash
//! durability, retention gaps, epoch resets, idempotent publish and the history API.

mod common;

use app::protocol::{ClientFrame, Position, ServerFrame};
use common::*;
use herald::config::Config;

async fn resume_gets_exactly_what_was_missed(config: Config) {
    let srv = server(config).await;
    publish(srv.addr, "ops", "before").await;
    let mut c = Client::connect(&srv).await;
    let start = c.subscribe("ops", None).await;
    assert_eq!(start.offset, 1);
    publish(srv.addr, "ops", "seen").await;
    let seen = c.notification().await;
    drop(c);

    for i in 0..50 {
        publish(srv.addr, "ops", &format!("missed {i}")).await;
    }
    let mut c = Client::connect(&srv).await;
    let pos = c.subscribe("ops", Some(seen.position())).await;
    assert_eq!(pos.offset, 52, "subscribed reports where the replay ends");
    for i in 0..50u64 {
        let n = c.notification().await;
        assert_eq!((n.offset, n.body.clone()), (3 + i, format!("missed {i}")));
    }
    publish(srv.addr, "ops", "live").await;
    let live = c.notification().await;
    assert_eq!((live.offset, live.body.as_str()), (53, "live"));
    // No duplicates after: the next frame is the sentinel published now.
    let sentinel = publish(srv.addr, "ops", "sentinel").await;
    assert_eq!(c.notification().await, sentinel);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn resume_gets_exactly_the_missed_notifications_memory() {
    resume_gets_exactly_what_was_missed(memory_config()).await;
}

#[tokio::test]
async fn resume_gets_exactly_the_missed_notifications_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    resume_gets_exactly_what_was_missed(sqlite_config(&dir)).await;
}

async fn resume_races_concurrent_publishers(config: Config) {
    let srv = server(config).await;
    let first = publish(srv.addr, "race", "zero").await;
    let per_task = 150u64;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let addr = srv.addr;
            tokio::spawn(async move {
                for i in 0..per_task {
                    publish(addr, "race", &format!("{t}-{i}")).await;
                }
            })
        })
        .collect();
    // Resume while the publishers are running, from the very first notification, at several
    // moments so that some replays overlap live publishes.
    let total = 1 + 4 * per_task;
    let mut readers = Vec::new();
    for k in 0..6u64 {
        tokio::time::sleep(std::time::Duration::from_millis(2 + 3 * k)).await;
        let mut c = Client::connect(&srv).await;
        c.subscribe("race", Some(first.position())).await;
        readers.push(tokio::spawn(async move {
            for expected in 2..=total {
                let n = c.notification().await;
                assert_eq!(
                    n.offset, expected,
                    "reader {k}: strictly increasing by one, no holes, no repeats"
                );
            }
            c
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Nothing after the last: each reader's next frame is the sentinel.
    let mut clients = Vec::new();
    for r in readers {
        clients.push(r.await.unwrap());
    }
    let sentinel = publish(srv.addr, "race", "sentinel").await;
    for c in &mut clients {
        assert_eq!(c.notification().await, sentinel);
    }
}

#[tokio::test]
async fn resume_while_publishing_has_no_holes_or_duplicates_memory() {
    resume_races_concurrent_publishers(memory_config()).await;
}

#[tokio::test]
async fn resume_while_publishing_has_no_holes_or_duplicates_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    resume_races_concurrent_publishers(sqlite_config(&dir)).await;
}

#[tokio::test]
async fn a_position_older_than_retention_gets_an_explicit_gap() {
    let srv = server(Config {
        retain_count: 10,
        ..memory_config()
    })
    .await;
    let first = publish(srv.addr, "g", "1").await;
    for i in 2..=30 {
        publish(srv.addr, "g", &i.to_string()).await;
    }
    let mut c = Client::connect(&srv).await;
    c.subscribe(
        "g",
        Some(Position {
            epoch: first.epoch.clone(),
            offset: 5,
        }),
    )
    .await;
    match c.next().await {
        ServerFrame::Gap {
            requested,
            first_available,
            ..
        } => assert_eq!((requested, first_available), (5, 21)),
        other => panic!("expected gap, got {other:?}"),
    }
    for off in 21..=30 {
        assert_eq!(c.notification().await.offset, off);
    }
}

#[tokio::test]
async fn sqlite_retention_prunes_and_reports_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        retain_count: 5,
        prune_interval_secs: 1,
        ..sqlite_config(&dir)
    };
    let srv = server(config).await;
    let first = publish(srv.addr, "g", "1").await;
    for i in 2..=20 {
        publish(srv.addr, "g", &i.to_string()).await;
    }
    // The pruner runs in the background; wait for it to act.
    let mut pruned = false;
    for _ in 0..60 {
        let page = http(
            srv.addr,
            "GET",
            "/api/topics/g/notifications?order=asc&limit=100",
            &[],
            b"",
        )
        .await
        .json();
        if page["first_offset"] == 16 {
            assert_eq!(page["notifications"].as_array().unwrap().len(), 5);
            pruned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(pruned, "retention pruned down to the last 5");
    let mut c = Client::connect(&srv).await;
    c.subscribe("g", Some(first.position())).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Gap {
            requested: 1,
            first_available: 16,
            ..
        }
    ));
    assert_eq!(c.notification().await.offset, 16);
}

#[tokio::test]
async fn a_different_epoch_gets_an_explicit_reset() {
    let srv = server(memory_config()).await;
    publish(srv.addr, "r", "a").await;
    publish(srv.addr, "r", "b").await;
    let mut c = Client::connect(&srv).await;
    c.subscribe(
        "r",
        Some(Position {
            epoch: "old-history".into(),
            offset: 1,
        }),
    )
    .await;
    match c.next().await {
        ServerFrame::Reset {
            first_available, ..
        } => assert_eq!(first_available, 1),
        other => panic!("expected reset, got {other:?}"),
    }
    assert_eq!(c.notification().await.offset, 1);
    assert_eq!(c.notification().await.offset, 2);
}

async fn idempotent(config: Config) {
    let srv = server(config).await;
    let body = r#"{"body":"charge card"}"#;
    let a = publish_json(srv.addr, "pay", body, &[("Idempotency-Key", "order-17")]).await;
    let b = publish_json(srv.addr, "pay", body, &[("Idempotency-Key", "order-17")]).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.notification(), b.notification());
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    let c = publish_json(srv.addr, "pay", body, &[("Idempotency-Key", "order-18")]).await;
    assert_eq!(c.notification().offset, 2);
    let page = http(srv.addr, "GET", "/api/topics/pay/notifications", &[], b"")
        .await
        .json();
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let bad = publish_json(
        srv.addr,
        "pay",
        body,
        &[("Idempotency-Key", &"k".repeat(200))],
    )
    .await;
    assert_eq!((bad.status, bad.error_code().as_str()), (400, "bad_field"));
}

#[tokio::test]
async fn idempotency_key_gives_one_notification_memory() {
    idempotent(memory_config()).await;
}

#[tokio::test]
async fn idempotency_key_gives_one_notification_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    idempotent(sqlite_config(&dir)).await;
}

#[tokio::test]
async fn history_pages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(sqlite_config(&dir)).await;
    for i in 1..=7 {
        publish(srv.addr, "h", &format!("n{i}")).await;
    }
    let get = |q: &'static str| {
        let addr = srv.addr;
        async move {
            http(
                addr,
                "GET",
                &format!("/api/topics/h/notifications{q}"),
                &[],
                b"",
            )
            .await
            .json()
        }
    };
    let offsets = |v: &serde_json::Value| -> Vec<u64> {
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["offset"].as_u64().unwrap())
            .collect()
    };
    let newest = get("?limit=3").await;
    assert_eq!(offsets(&newest), [7, 6, 5]);
    assert_eq!(newest["next"], 5);
    assert_eq!(
        (
            newest["first_offset"].as_u64(),
            newest["last_offset"].as_u64()
        ),
        (Some(1), Some(7))
    );
    assert_eq!(offsets(&get("?limit=3&before=5").await), [4, 3, 2]);
    let oldest = get("?order=asc&since=2&limit=3").await;
    assert_eq!(offsets(&oldest), [3, 4, 5]);
    assert_eq!(oldest["next"], 5);
    let tail = get("?order=asc&since=5&limit=3").await;
    assert_eq!(offsets(&tail), [6, 7]);
    assert!(tail.get("next").is_none());
    let empty = get("?since=100").await;
    assert_eq!(offsets(&empty), Vec::<u64>::new());
    let unknown = http(
        srv.addr,
        "GET",
        "/api/topics/nobody/notifications",
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(
        (
            unknown["last_offset"].as_u64(),
            unknown["first_offset"].as_u64()
        ),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn acknowledged_publishes_survive_sigkill_and_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let (mut child, addr) = spawn_binary(&db).await;
    let mut acked = Vec::new();
    // Concurrent publishers, so acknowledgements come from group commits of several.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..40 {
                    mine.push(publish(addr, "durable", &format!("{t}-{i}")).await);
                }
                mine
            })
        })
        .collect();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // SIGKILL right after the last acknowledgement: no chance to flush anything.
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = spawn_binary(&db).await;
    let srv_url = format!("ws://{addr}/ws");
    let (ws, _) = tokio_tungstenite::connect_async(&srv_url).await.unwrap();
    let mut c = Client { ws };
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    c.send(&ClientFrame::Auth {
        token: TEST_KEY.into(),
    })
    .await;
    assert!(matches!(c.next().await, ServerFrame::Authenticated { .. }));
    let epoch = acked[0].epoch.clone();
    let pos = c
        .subscribe("durable", Some(Position { epoch, offset: 0 }))
        .await;
    assert_eq!(pos.offset, acked.len() as u64);
    let mut got = Vec::new();
    for _ in 0..acked.len() {
        got.push(c.notification().await);
    }
    acked.sort_by_key(|n| n.offset);
    assert_eq!(
        got, acked,
        "every acknowledged notification, in offset order, identical"
    );
}

async fn resume_survives_publishes_around_every_read(config: Config) {
    // Two reads (before registering, after registering), each paused twice.
    let (hooks, mut pauses) = common::pausing::hooks("race", 4);
    let srv = herald::start_with(config, hooks).await.unwrap();
    add_test_key(&srv);
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(publish(srv.addr, "race", &format!("before {i}")).await);
    }
    let mut c = Client::connect(&srv).await;
    c.send(&ClientFrame::Subscribe {
        topic: "race".into(),
        since: Some(Position {
            epoch: published[0].epoch.clone(),
            offset: 0,
        }),
        id: None,
    })
    .await;
    // At each pause, three more publishes: before the first read (in it; not queued), after
    // it (in neither until the read after registering), before the second (in it and queued:
    // duplicates to drop), after it (queued only).
    let addr = srv.addr;
    let driver = tokio::spawn(async move {
        let mut n = 0;
        while let Some(release) = pauses.recv().await {
            for _ in 0..3 {
                publish(addr, "race", &format!("during {n}")).await;
                n += 1;
            }
            let _ = release.send(());
        }
    });
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
    for expected in 1..=22u64 {
        assert_eq!(
            c.notification().await.offset,
            expected,
            "no holes, no repeats"
        );
    }
    let sentinel = publish(srv.addr, "race", "sentinel").await;
    assert_eq!(c.notification().await, sentinel, "nothing after the last");
    srv.stop().await.unwrap();
    driver.await.unwrap();
}

#[tokio::test]
async fn resume_survives_publishes_around_every_history_read_memory() {
    resume_survives_publishes_around_every_read(memory_config()).await;
}

#[tokio::test]
async fn resume_survives_publishes_around_every_history_read_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    resume_survives_publishes_around_every_read(sqlite_config(&dir)).await;
}
