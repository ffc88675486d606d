//! Per-user inboxes end to end: delivery to every socket of one user and nobody else, read
//! state kept by the server across restarts, exact unread counts under racing changes and
//! arrivals, mark-all-read bounded by an offset, resume after being offline.

mod common;

use app::protocol::{ClientFrame, InboxQuery, InboxUpdate, Notification, ServerFrame};
use common::*;
use herald::RunningServer;

/// A user socket subscribed to its own inbox.
async fn inbox_socket(server: &RunningServer, user: &str) -> Client {
    let token = user_token(server, user, &[], &[], 3600);
    let mut c = Client::connect_with(server, &token).await;
    c.subscribe(&format!("@{user}"), None).await;
    c
}

/// Sends to a user over HTTP with a key allowed to reach every user.
async fn send(server: &RunningServer, key: &str, user: &str, body: &str) -> Notification {
    let auth = format!("Bearer {key}");
    let r = http(
        server.addr,
        "POST",
        &format!("/api/users/{user}/notifications"),
        &[("Authorization", &auth), ("Category", "mention")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.notification()
}

/// The next inbox arrival on `c`: the notification, then the count after it.
async fn arrival(c: &mut Client) -> (Notification, u64) {
    let n = c.notification().await;
    match c.next().await {
        ServerFrame::InboxCount { unread, .. } => (n, unread),
        other => panic!("expected inbox_count, got {other:?}"),
    }
}

async fn update(c: &mut Client, update: InboxUpdate) -> u64 {
    c.send(&ClientFrame::InboxUpdate {
        update,
        id: Some(7),
    })
    .await;
    loop {
        match c.next().await {
            ServerFrame::InboxUpdated { unread, id, .. } => {
                assert_eq!(id, Some(7));
                return unread;
            }
            // Its own change, pushed to every subscribed socket of the user, and arrivals.
            ServerFrame::InboxChanged { .. }
            | ServerFrame::Notification(_)
            | ServerFrame::InboxCount { .. } => continue,
            other => panic!("expected inbox_updated, got {other:?}"),
        }
    }
}

async fn list(c: &mut Client, query: InboxQuery) -> app::protocol::InboxPage {
    c.send(&ClientFrame::InboxList { query, id: Some(3) }).await;
    loop {
        match c.next().await {
            ServerFrame::InboxPage { page, id } => {
                assert_eq!(id, Some(3));
                return page;
            }
            ServerFrame::InboxChanged { .. } | ServerFrame::InboxCount { .. } => continue,
            other => panic!("expected inbox_page, got {other:?}"),
        }
    }
}

/// A ping round trip: everything queued for `c` before it has arrived.
async fn settle(c: &mut Client) -> Vec<ServerFrame> {
    c.send(&ClientFrame::Ping { id: Some(99) }).await;
    let mut before = Vec::new();
    loop {
        match c.next().await {
            ServerFrame::Pong { id: Some(99) } => return before,
            f => before.push(f),
        }
    }
}

#[tokio::test]
async fn a_users_notification_reaches_both_their_sockets_and_nobody_else() {
    let server = server(memory_config()).await;
    let key = key_with(&server, &["publish:@*"]);
    let (mut ana1, mut ana2) = (
        inbox_socket(&server, "ana").await,
        inbox_socket(&server, "ana").await,
    );
    let mut bo = inbox_socket(&server, "bo").await;
    // A key following every topic it may read (all of them) still gets no inbox.
    let mut admin = Client::connect(&server).await;
    admin.subscribe("general", None).await;

    let sent = send(&server, &key, "ana", "your order shipped").await;
    assert_eq!(sent.topic, "@ana");
    assert_eq!(sent.category.as_deref(), Some("mention"));
    for c in [&mut ana1, &mut ana2] {
        let (n, unread) = arrival(c).await;
        assert_eq!((n.id.as_str(), n.offset, unread), (sent.id.as_str(), 1, 1));
    }
    assert!(
        settle(&mut bo).await.is_empty(),
        "bo got something of ana's"
    );
    assert!(settle(&mut admin).await.is_empty());

    // Mark read in one tab: the other follows.
    assert_eq!(
        update(&mut ana1, InboxUpdate::Read { offsets: vec![1] }).await,
        0
    );
    match ana2.next().await {
        ServerFrame::InboxChanged { update, unread, .. } => {
            assert_eq!(update, InboxUpdate::Read { offsets: vec![1] });
            assert_eq!(unread, 0);
        }
        other => panic!("expected inbox_changed, got {other:?}"),
    }
    assert!(settle(&mut bo).await.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_user_sees_nothing_of_the_first_ones_inbox() {
    let server = server(memory_config()).await;
    let key = key_with(&server, &["publish:@*"]);
    send(&server, &key, "ana", "private").await;
    let bo_token = user_token(&server, "bo", &["*"], &["*"], 3600);
    // Socket: no subscription to another user's inbox, even with read:*.
    let mut bo = Client::connect_with(&server, &bo_token).await;
    bo.send(&ClientFrame::Subscribe {
        topic: "@ana".into(),
        since: None,
        id: Some(1),
    })
    .await;
    match bo.next().await {
        ServerFrame::Error { code, .. } => assert_eq!(code.as_str(), "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // The socket's inbox frames only ever reach the connection's own inbox.
    let page = list(&mut bo, InboxQuery::default()).await;
    assert_eq!((page.user.as_str(), page.items.len()), ("bo", 0));
    // API: the inbox, the topic history of @ana, and sending to her as a user.
    let auth = format!("Bearer {bo_token}");
    for (method, path) in [
        ("GET", "/api/users/ana/inbox"),
        ("GET", "/api/topics/@ana/notifications"),
        ("POST", "/api/users/ana/notifications"),
    ] {
        let r = http(server.addr, method, path, &[("Authorization", &auth)], b"x").await;
        assert_eq!(
            (r.status, r.error_code()),
            (403, "forbidden".into()),
            "{method} {path}"
        );
    }
    let r = http(
        server.addr,
        "POST",
        "/api/users/ana/inbox",
        &[("Authorization", &auth)],
        br#"{"op":"read_all","up_to":10}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    // The admin key (admin:*) does not reach people either; anonymous gets 401.
    let r = http(server.addr, "GET", "/api/users/ana/inbox", &[], b"").await;
    assert_eq!(r.status, 403);
    let r = http_as(server.addr, "GET", "/api/users/ana/inbox", &[], b"").await;
    assert_eq!(r.status, 401);
    // Ana herself can.
    let ana = user_token(&server, "ana", &[], &[], 3600);
    let auth = format!("Bearer {ana}");
    let r = http(
        server.addr,
        "GET",
        "/api/users/ana/inbox?filter=unread",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["unread"], 1);
    assert_eq!(r.json()["items"][0]["notification"]["body"], "private");
    // A topic publish cannot reach an inbox.
    let r = http(server.addr, "POST", "/api/topics/@ana", &[], b"x").await;
    assert_eq!((r.status, r.error_code()), (400, "bad_topic".into()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn read_state_and_the_count_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server1 = server(sqlite_config(&dir)).await;
    // The server's connections opened SQLite with its page cache wrapped (sqlite_pcache).
    assert_eq!(sqlite_pcache::install(), Ok(()));
    let key = key_with(&server1, &["publish:@*"]);
    for i in 0..5 {
        send(&server1, &key, "ana", &format!("n{i}")).await;
    }
    let mut ana = inbox_socket(&server1, "ana").await;
    assert_eq!(
        update(
            &mut ana,
            InboxUpdate::Read {
                offsets: vec![2, 4]
            }
        )
        .await,
        3
    );
    assert_eq!(
        update(&mut ana, InboxUpdate::Archive { offsets: vec![5] }).await,
        2
    );
    drop(ana);
    server1.stop().await.unwrap();

    // The test key is in the database already.
    let server2 = herald::start(sqlite_config(&dir)).await.unwrap();
    let mut ana = inbox_socket(&server2, "ana").await;
    let page = list(&mut ana, InboxQuery::default()).await;
    let state: Vec<_> = page
        .items
        .iter()
        .map(|i| (i.notification.offset, i.read))
        .collect();
    assert_eq!(state, vec![(4, true), (3, false), (2, true), (1, false)]);
    assert_eq!(page.unread, 2);
    server2.stop().await.unwrap();
}

#[tokio::test]
async fn the_count_is_exact_after_two_sockets_race_marks_against_arrivals() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(sqlite_config(&dir)).await;
    let key = key_with(&server, &["publish:@*"]);
    for i in 0..10 {
        send(&server, &key, "ana", &format!("n{i}")).await;
    }
    let token = user_token(&server, "ana", &[], &[], 3600);
    let mut marks = Vec::new();
    for tab in 0..2u64 {
        let token = token.clone();
        let srv = server.addr;
        let url = server.ws_url();
        marks.push(tokio::spawn(async move {
            let _ = srv;
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut c = Client { ws };
            c.next().await; // welcome
            c.send(&ClientFrame::Auth { token }).await;
            c.next().await; // authenticated
            for i in 0..30u64 {
                let o = (i * 7 + tab) % 25 + 1;
                let u = match (i + tab) % 4 {
                    0 => InboxUpdate::Read { offsets: vec![o] },
                    1 => InboxUpdate::Unread {
                        offsets: vec![o, o + 1],
                    },
                    2 => InboxUpdate::ReadAll { up_to: o },
                    _ => InboxUpdate::Archive { offsets: vec![o] },
                };
                update(&mut c, u).await;
            }
        }));
    }
    let arrivals = tokio::spawn({
        let key = key.clone();
        let addr = server.addr;
        async move {
            for i in 0..15 {
                let auth = format!("Bearer {key}");
                let r = http(
                    addr,
                    "POST",
                    "/api/users/ana/notifications",
                    &[("Authorization", &auth)],
                    format!("r{i}").as_bytes(),
                )
                .await;
                assert_eq!(r.status, 201);
            }
        }
    });
    for m in marks {
        m.await.unwrap();
    }
    arrivals.await.unwrap();
    let mut ana = inbox_socket(&server, "ana").await;
    let page = list(
        &mut ana,
        InboxQuery {
            filter: app::protocol::InboxFilter::Unread,
            limit: Some(200),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        page.unread,
        page.items.len() as u64,
        "the count is what is unread"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mark_all_read_up_to_an_offset_leaves_a_newer_arrival_unread() {
    let server = server(memory_config()).await;
    let key = key_with(&server, &["publish:@*"]);
    let mut ana = inbox_socket(&server, "ana").await;
    for i in 0..3 {
        send(&server, &key, "ana", &format!("n{i}")).await;
        arrival(&mut ana).await;
    }
    // Arrives after the client last looked, before its click lands.
    send(&server, &key, "ana", "late").await;
    assert_eq!(update(&mut ana, InboxUpdate::ReadAll { up_to: 3 }).await, 1);
    let page = list(
        &mut ana,
        InboxQuery {
            filter: app::protocol::InboxFilter::Unread,
            ..Default::default()
        },
    )
    .await;
    let unread: Vec<_> = page
        .items
        .iter()
        .map(|i| i.notification.body.as_str())
        .collect();
    assert_eq!(unread, ["late"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_resume_after_being_offline_delivers_the_missed_items_once_with_the_right_count() {
    let server = server(memory_config()).await;
    let key = key_with(&server, &["publish:@*"]);
    let mut ana = inbox_socket(&server, "ana").await;
    send(&server, &key, "ana", "seen").await;
    let (seen, _) = arrival(&mut ana).await;
    drop(ana);
    for i in 0..3 {
        send(&server, &key, "ana", &format!("missed{i}")).await;
    }
    let token = user_token(&server, "ana", &[], &[], 3600);
    let mut ana = Client::connect_with(&server, &token).await;
    ana.send(&ClientFrame::Subscribe {
        topic: "@ana".into(),
        since: Some(seen.position()),
        id: Some(1),
    })
    .await;
    let mut got = Vec::new();
    for f in settle(&mut ana).await {
        match f {
            ServerFrame::Notification(n) => got.push(n.body),
            ServerFrame::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["missed0", "missed1", "missed2"]);
    let page = list(&mut ana, InboxQuery::default()).await;
    assert_eq!(page.unread, 4);
    // Live again: the next one comes with its count.
    send(&server, &key, "ana", "live").await;
    let (n, unread) = arrival(&mut ana).await;
    assert_eq!((n.offset, unread), (5, 5));
    server.stop().await.unwrap();
}

/// `POST /api/notifications` with `key`, and an Idempotency-Key when given.
async fn bulk(
    server: &RunningServer,
    key: &str,
    body: serde_json::Value,
    idem: Option<&str>,
) -> HttpResponse {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(k) = idem {
        headers.push(("Idempotency-Key", k));
    }
    http(
        server.addr,
        "POST",
        "/api/notifications",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn bulk_sends_store_one_copy_per_user_and_say_what_happened() {
    let server = server(memory_config()).await;
    let key = key_with(&server, &["publish:@*"]);
    let mut bo = inbox_socket(&server, "bo").await;
    let users: Vec<String> = (0..50)
        .map(|i| format!("u{i}"))
        .chain(["bo".into(), "bo".into()])
        .collect();
    let body = serde_json::json!({"users": users, "title": "Maintenance", "body": "tonight", "category": "ops"});
    let r = bulk(&server, &key, body.clone(), Some("m-1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 51, "a user named twice gets one copy");
    assert!(results.iter().all(|x| x["notification"]["offset"] == 1));
    let (n, unread) = arrival(&mut bo).await;
    assert_eq!((n.title.as_deref(), unread), (Some("Maintenance"), 1));
    // A retry with the same key stores nothing new.
    let r = bulk(&server, &key, body, Some("m-1")).await;
    let results = r.json()["results"].as_array().unwrap().clone();
    assert!(results.iter().all(|x| x["duplicate"] == true));
    assert!(settle(&mut bo).await.is_empty());
    // Too many users, or a key that may not reach one of them: refused before storing.
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let r = bulk(
        &server,
        &key,
        serde_json::json!({"users": many, "body": "x"}),
        None,
    )
    .await;
    assert_eq!((r.status, r.error_code()), (400, "bad_field".into()));
    let narrow = key_with(&server, &["publish:@u*"]);
    let r = bulk(
        &server,
        &narrow,
        serde_json::json!({"users": ["u1", "bo"], "body": "x"}),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(settle(&mut bo).await.is_empty());
    server.stop().await.unwrap();
}

/// A batch gives every user a notification of its own: each reaches only its user, in the
/// order given, with the count after it; a retry stores nothing twice; a bad batch stores
/// nothing at all.
async fn batches_give_each_user_its_own(config: herald::config::Config) {
    let server = server(config).await;
    let key = key_with(&server, &["publish:@*"]);
    let mut ana = inbox_socket(&server, "ana").await;
    let mut bo = inbox_socket(&server, "bo").await;
    let batch = serde_json::json!({"notifications": [
        {"user": "ana", "title": "Order 1", "body": "order 1 shipped", "idempotency_key": "o-1"},
        {"user": "bo", "body": "order 2 shipped", "category": "orders", "idempotency_key": "o-2"},
        {"user": "ana", "body": "order 3 shipped", "idempotency_key": "o-3"},
    ]});
    let r = bulk(&server, &key, batch.clone(), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = |r: &HttpResponse| -> Vec<(String, u64, String, bool)> {
        r.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["user"].as_str().unwrap().to_owned(),
                    x["notification"]["offset"].as_u64().unwrap(),
                    x["notification"]["body"].as_str().unwrap().to_owned(),
                    x["duplicate"] == true,
                )
            })
            .collect()
    };
    let first = stored(&r);
    let expect = |dup| {
        vec![
            ("ana".to_owned(), 1, "order 1 shipped".to_owned(), dup),
            ("bo".to_owned(), 1, "order 2 shipped".to_owned(), dup),
            ("ana".to_owned(), 2, "order 3 shipped".to_owned(), dup),
        ]
    };
    assert_eq!(first, expect(false));
    let (n, unread) = arrival(&mut ana).await;
    assert_eq!(
        (n.body.as_str(), n.offset, n.title.as_deref(), unread),
        ("order 1 shipped", 1, Some("Order 1"), 1)
    );
    let (n, unread) = arrival(&mut ana).await;
    assert_eq!(
        (n.body.as_str(), n.offset, unread),
        ("order 3 shipped", 2, 2)
    );
    let (n, unread) = arrival(&mut bo).await;
    assert_eq!(
        (n.body.as_str(), n.category.as_deref(), unread),
        ("order 2 shipped", Some("orders"), 1)
    );
    assert!(settle(&mut ana).await.is_empty());
    assert!(settle(&mut bo).await.is_empty());

    // The same batch again: every item a duplicate of the first, nothing delivered.
    let r = bulk(&server, &key, batch, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stored(&r), expect(true));
    assert!(settle(&mut ana).await.is_empty());

    // Refused before anything is stored.
    let item = |user: &str, body: &str| serde_json::json!({"user": user, "body": body});
    let too_many: Vec<_> = (0..1001).map(|i| item(&format!("u{i}"), "x")).collect();
    let long_key = "k".repeat(129);
    let cases = [
        (
            serde_json::json!({"notifications": [item("ana", "fine"), item("ana", "")]}),
            None,
            400,
            "bad_field",
            Some("notifications[1]: body must not be empty"),
        ),
        (
            serde_json::json!({"notifications": [item("ana", "fine"), item("", "x")]}),
            None,
            400,
            "bad_field",
            Some("notifications[1]: a user id"),
        ),
        (
            serde_json::json!({"notifications": [{"user": "ana", "body": "x", "idempotency_key": long_key}]}),
            None,
            400,
            "bad_field",
            Some("notifications[0]: idempotency_key must be 1 to 128"),
        ),
        (
            serde_json::json!({"notifications": [item("ana", "x")]}),
            Some("k-1"),
            400,
            "bad_field",
            Some("idempotency_key instead of the Idempotency-Key header"),
        ),
        (
            serde_json::json!({"notifications": [item("ana", "x")], "users": ["ana"], "body": "x"}),
            None,
            400,
            "bad_field",
            Some("not both"),
        ),
        (
            serde_json::json!({"notifications": []}),
            None,
            400,
            "bad_field",
            Some("1 to 1000"),
        ),
        (
            serde_json::json!({"notifications": too_many}),
            None,
            400,
            "bad_field",
            Some("1 to 1000"),
        ),
        (
            serde_json::json!({"notifications": "ana"}),
            None,
            400,
            "bad_frame",
            None,
        ),
    ];
    for (body, idem, status, code, says) in cases {
        let r = bulk(&server, &key, body.clone(), idem).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_owned()),
            "{body}: {}",
            r.body
        );
        if let Some(says) = says {
            assert!(r.body.contains(says), "{}", r.body);
        }
    }
    // Larger than a batch may be (4 MiB), though every item is valid on its own (300 of
    // 15 KiB): 413.
    let fifteen = "x".repeat(15 * 1024);
    let big: Vec<_> = (0..300).map(|i| item(&format!("u{i}"), &fifteen)).collect();
    let r = bulk(
        &server,
        &key,
        serde_json::json!({"notifications": big}),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (413, "too_large".to_owned()),
        "{}",
        &r.body[..200.min(r.body.len())]
    );
    // One item for a user outside the key's grants: nothing stored, not even the others.
    let narrow = key_with(&server, &["publish:@a*"]);
    let r = bulk(
        &server,
        &narrow,
        serde_json::json!({"notifications": [item("ana", "x"), item("bo", "x")]}),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(settle(&mut ana).await.is_empty());
    assert!(settle(&mut bo).await.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn batches_give_each_user_its_own_in_memory() {
    batches_give_each_user_its_own(memory_config()).await;
}

#[tokio::test]
async fn batches_give_each_user_its_own_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    batches_give_each_user_its_own(sqlite_config(&dir)).await;
}

/// Sends and publishes whose path needs no decoding are served by the front door, the others
/// by the router: both must answer the same way, with the same headers.
#[tokio::test]
async fn the_front_door_and_the_router_answer_sends_and_publishes_alike() {
    let server = server(memory_config()).await;
    let mut ana = inbox_socket(&server, "ana@example.com").await;
    let only_bo = key_with(&server, &["publish:@bo"]);
    let only_bo = format!("Bearer {only_bo}");
    let every = key_with(&server, &["publish:@*", "publish:*"]);
    let every = format!("Bearer {every}");
    // (path, credentials, expected status, expected error code)
    let cases: [(&str, Option<&str>, u16, &str); 8] = [
        ("/api/users/ana@example.com/notifications", None, 201, ""),
        ("/api/users/ana%40example.com/notifications", None, 201, ""),
        (
            "/api/users/ana@example.com/notifications",
            Some(&only_bo),
            403,
            "forbidden",
        ),
        (
            "/api/users/ana%40example.com/notifications",
            Some(&only_bo),
            403,
            "forbidden",
        ),
        (
            "/api/users/ana@example.com/notifications",
            Some("Bearer hk_nope"),
            401,
            "invalid_token",
        ),
        (
            "/api/users/ana%40example.com/notifications",
            Some("Bearer hk_nope"),
            401,
            "invalid_token",
        ),
        ("/api/topics/ops", None, 201, ""),
        ("/api/topics/%6Fps", None, 201, ""),
    ];
    for (path, auth, status, code) in cases {
        let headers = [
            ("Content-Type", "text/plain"),
            ("Authorization", auth.unwrap_or(&every)),
        ];
        let r = http(server.addr, "POST", path, &headers, path.as_bytes()).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        if status != 201 {
            assert_eq!(r.error_code(), code, "{path}");
        }
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            r.header("referrer-policy"),
            Some("strict-origin-when-cross-origin"),
            "{path}"
        );
    }
    // Both sends reached the same inbox, in order; nothing else did.
    for (offset, path) in [
        (1, "/api/users/ana@example.com/notifications"),
        (2, "/api/users/ana%40example.com/notifications"),
    ] {
        let (n, unread) = arrival(&mut ana).await;
        assert_eq!((n.offset, n.body.as_str(), unread), (offset, path, offset));
    }
    assert!(settle(&mut ana).await.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_inbox_requests_get_typed_errors() {
    let server = server(memory_config()).await;
    let ana = user_token(&server, "ana", &[], &[], 3600);
    let auth = format!("Bearer {ana}");
    let cases: [(&str, &str, &[u8], u16, &str); 5] = [
        (
            "GET",
            "/api/users/ana/inbox?filter=new",
            b"",
            400,
            "bad_query",
        ),
        ("GET", "/api/users/ana/inbox?limit=0", b"", 400, "bad_query"),
        (
            "POST",
            "/api/users/ana/inbox",
            b"{\"op\":\"read\",\"offsets\":[]}",
            400,
            "bad_field",
        ),
        (
            "POST",
            "/api/users/ana/inbox",
            b"{\"op\":\"explode\"}",
            400,
            "bad_frame",
        ),
        (
            "GET",
            "/api/users/ana/inbox?category=a%20b",
            b"",
            400,
            "bad_query",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = http(server.addr, method, path, &[("Authorization", &auth)], body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.into()),
            "{method} {path}"
        );
    }
    // A key socket has no inbox.
    let mut key_socket = Client::connect(&server).await;
    key_socket
        .send(&ClientFrame::InboxList {
            query: InboxQuery::default(),
            id: Some(1),
        })
        .await;
    match key_socket.next().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code.as_str(), id), ("forbidden", Some(1)))
        }
        other => panic!("expected an error, got {other:?}"),
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_count_is_exact_after_a_crash_in_the_middle_of_arrivals_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let (mut child, addr) = spawn_binary(&db).await;
    let auth = format!("Bearer {TEST_KEY}");
    // Arrivals and changes racing each other, in several group commits.
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let auth = auth.clone();
            tokio::spawn(async move {
                for i in 0..10u64 {
                    let r = http(
                        addr,
                        "POST",
                        "/api/users/ana/notifications",
                        &[("Authorization", &auth)],
                        format!("{t}-{i}").as_bytes(),
                    )
                    .await;
                    assert_eq!(r.status, 201, "{}", r.body);
                    let change = match (t + i) % 3 {
                        0 => format!(r#"{{"op":"read","offsets":[{}]}}"#, t * 10 + i + 1),
                        1 => format!(r#"{{"op":"archive","offsets":[{}]}}"#, i + 1),
                        _ => format!(r#"{{"op":"read_all","up_to":{}}}"#, t * 5),
                    };
                    let r = http(
                        addr,
                        "POST",
                        "/api/users/ana/inbox",
                        &[("Authorization", &auth)],
                        change.as_bytes(),
                    )
                    .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let before = http(
        addr,
        "GET",
        "/api/users/ana/inbox?filter=unread&limit=200",
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .json();
    // SIGKILL: nothing flushed, nothing shut down.
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = spawn_binary(&db).await;
    let after = http(
        addr,
        "GET",
        "/api/users/ana/inbox?filter=unread&limit=200",
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .json();
    let listed = after["items"].as_array().unwrap().len() as u64;
    assert_eq!(
        after["unread"].as_u64(),
        Some(listed),
        "the kept count is what is unread"
    );
    assert_eq!(
        after["unread"], before["unread"],
        "every acknowledged change survived"
    );
    assert_eq!(after["items"], before["items"]);
    let all = http(
        addr,
        "GET",
        "/api/users/ana/inbox?filter=all&limit=200",
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .json();
    let archived = http(
        addr,
        "GET",
        "/api/users/ana/inbox?filter=archived&limit=200",
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .json();
    let total =
        all["items"].as_array().unwrap().len() + archived["items"].as_array().unwrap().len();
    assert_eq!(total, 80, "every acknowledged arrival survived");
}

#[tokio::test]
async fn a_bulk_send_counts_every_notification_against_the_publish_rate() {
    let mut config = memory_config();
    config.publish_per_sec_per_credential = 10; // bursts of 20
    let server = server(config).await;
    let key = key_with(&server, &["publish:@*"]);
    let users = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();
    let r = bulk(
        &server,
        &key,
        serde_json::json!({"users": users(15), "body": "x"}),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = bulk(
        &server,
        &key,
        serde_json::json!({"users": users(15), "body": "x"}),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (429, "rate_limited".into()),
        "15 of a burst of 20 spent"
    );
    assert!(r.header("retry-after").is_some());
    let r = bulk(
        &server,
        &key,
        serde_json::json!({"users": users(25), "body": "x"}),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "rate_limited".into()),
        "more than a burst: never"
    );
    server.stop().await.unwrap();
}
