//! Several Herald nodes on one Redis (`--store redis`): a publish on any node reaches every
//! node's subscribers in offset order; resume works on any node; a lost Pub/Sub connection, a
//! lost message, a Redis restart and a killed node lose nothing (or say `gap`/`reset`). Each
//! test starts its own `redis-server` on a free port.

mod common;

use app::protocol::{ClientFrame, Notification, Position, ServerFrame};
use common::*;
use herald::config::{Config, StoreKind};
use herald::store::redis::testing::RedisServer;
use herald::RunningServer;
use std::collections::HashMap;
use std::time::Duration;

fn redis_config(redis: &RedisServer, prefix: &str) -> Config {
    Config {
        store: StoreKind::Redis,
        redis_url: redis.url(),
        redis_prefix: prefix.to_owned(),
        ..Config::for_tests()
    }
}

/// A Redis and `n` nodes on it.
async fn cluster(n: usize) -> (RedisServer, String, Vec<RunningServer>) {
    let redis = RedisServer::start().expect("redis-server (scripts/setup.sh installs it)");
    let prefix = herald::store::redis::unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(server(redis_config(&redis, &prefix)).await);
    }
    (redis, prefix, nodes)
}

/// A node as its own process (the real binary, to be SIGKILLed), keys in `db`.
async fn spawn_node(
    redis: &RedisServer,
    prefix: &str,
    db: &std::path::Path,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let url = redis.url();
    let args = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--redis-prefix",
        prefix,
    ];
    spawn_binary_with(db, &args).await
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Records every notification each client receives and checks the invariants: per client
/// and topic, offsets without holes or repeats within an epoch; and every client saw the same
/// id at the same (epoch, offset).
#[derive(Default)]
struct Checker {
    seen: HashMap<(String, String, u64), String>,
}

impl Checker {
    fn check(&mut self, client: &str, got: &[Notification]) {
        let mut last: HashMap<(&str, &str), u64> = HashMap::new();
        for n in got {
            let prev = last.insert((&n.topic, &n.epoch), n.offset);
            if let Some(prev) = prev {
                assert_eq!(n.offset, prev + 1, "{client}: a hole or repeat at {n:?}");
            }
            let id = self
                .seen
                .entry((n.topic.clone(), n.epoch.clone(), n.offset))
                .or_insert_with(|| n.id.clone());
            assert_eq!(
                *id, n.id,
                "{client}: another notification at the same position"
            );
        }
    }
}

/// The next `count` notifications (skipping nothing else: a `gap`/`reset` fails the test).
async fn take(c: &mut Client, count: usize) -> Vec<Notification> {
    let mut out = Vec::new();
    while out.len() < count {
        out.push(c.notification().await);
    }
    out
}

/// Publishes, retrying while Redis is unreachable (503).
async fn publish_retrying(node: &RunningServer, topic: &str, body: &str) -> Notification {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http(
            node.addr,
            "POST",
            &format!("/api/topics/{topic}"),
            &[],
            body.as_bytes(),
        )
        .await;
        if r.status == 201 {
            return r.notification();
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_the_others_in_offset_order() {
    let (_redis, _, nodes) = cluster(3).await;
    let mut b = Client::connect(&nodes[1]).await;
    let mut c = Client::connect(&nodes[2]).await;
    b.subscribe("ops", None).await;
    c.subscribe("ops", None).await;
    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(publish(nodes[0].addr, "ops", &format!("m{i}")).await);
    }
    assert_eq!(sent.last().unwrap().offset, 50);
    let mut checker = Checker::default();
    for (name, client) in [("b", &mut b), ("c", &mut c)] {
        let got = take(client, 50).await;
        checker.check(name, &got);
        assert_eq!(got, sent, "{name}: every notification, as published");
    }
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_give_one_order_everywhere() {
    let (_redis, _, nodes) = cluster(3).await;
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(node).await;
        c.subscribe("race", None).await;
        clients.push(c);
    }
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let pa = tokio::spawn(async move {
        for i in 0..100 {
            publish(a, "race", &format!("a{i}")).await;
        }
    });
    let pb = tokio::spawn(async move {
        for i in 0..100 {
            publish(b, "race", &format!("b{i}")).await;
        }
    });
    pa.await.unwrap();
    pb.await.unwrap();
    let mut checker = Checker::default();
    for (i, c) in clients.iter_mut().enumerate() {
        let got = take(c, 200).await;
        assert_eq!(got.first().unwrap().offset, 1);
        checker.check(&format!("node {i}"), &got);
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_node_exactly_where_it_left_off() {
    let (_redis, _, nodes) = cluster(3).await;
    let mut on_a = Client::connect(&nodes[0]).await;
    on_a.subscribe("jobs", None).await;
    for i in 0..10 {
        publish(nodes[2].addr, "jobs", &format!("first {i}")).await;
    }
    let first = take(&mut on_a, 10).await;
    drop(on_a);
    for i in 0..10 {
        publish(nodes[0].addr, "jobs", &format!("missed {i}")).await;
    }
    let last = first.last().unwrap();
    let mut on_b = Client::connect(&nodes[1]).await;
    on_b.subscribe(
        "jobs",
        Some(Position {
            epoch: last.epoch.clone(),
            offset: last.offset,
        }),
    )
    .await;
    let mut got = take(&mut on_b, 10).await;
    publish(nodes[2].addr, "jobs", "live").await;
    got.extend(take(&mut on_b, 1).await);
    let mut all = first;
    all.extend(got);
    Checker::default().check("resumed", &all);
    assert_eq!(all.len(), 21);
    assert_eq!(all.last().unwrap().body, "live");
}

#[tokio::test]
async fn resuming_past_retention_on_another_node_gets_the_exact_gap() {
    let redis = RedisServer::start().unwrap();
    let prefix = herald::store::redis::unique_prefix();
    let config = || Config {
        retain_count: 5,
        ..redis_config(&redis, &prefix)
    };
    let a = server(config()).await;
    let b = server(config()).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(publish(a.addr, "logs", &format!("n{i}")).await);
    }
    let mut c = Client::connect(&b).await;
    c.subscribe(
        "logs",
        Some(Position {
            epoch: sent[0].epoch.clone(),
            offset: 2,
        }),
    )
    .await;
    match c.next().await {
        ServerFrame::Gap {
            requested,
            first_available,
            ..
        } => assert_eq!((requested, first_available), (2, 16)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(take(&mut c, 5).await, sent[15..]);
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_repaired_with_nothing_lost() {
    let (redis, _, nodes) = cluster(2).await;
    let mut b = Client::connect(&nodes[1]).await;
    b.subscribe("feed", None).await;
    let a = nodes[0].addr;
    let publisher = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..300 {
            sent.push(publish(a, "feed", &format!("n{i}")).await);
        }
        sent
    });
    let mut got = take(&mut b, 50).await;
    // Every node's Pub/Sub connection, mid-stream.
    let mut conn = redis_conn(&redis).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        killed >= 2,
        "both nodes' connections were killed ({killed})"
    );
    got.extend(take(&mut b, 250).await);
    let sent = publisher.await.unwrap();
    Checker::default().check("b", &got);
    assert_eq!(got, sent);
}

#[tokio::test]
async fn a_lost_last_message_is_delivered_by_the_position_check() {
    let (redis, prefix, nodes) = cluster(1).await;
    let mut c = Client::connect(&nodes[0]).await;
    c.subscribe("quiet", None).await;
    let first = publish(nodes[0].addr, "quiet", "one").await;
    assert_eq!(c.notification().await, first);
    // A second notification is appended as the script would, but its Pub/Sub message is lost.
    let mut conn = redis_conn(&redis).await;
    let entry = serde_json::json!({
        "id": "lostlostlost", "time": first.time, "body": "two", "priority": 3
    });
    let _: () = redis::pipe()
        .cmd("XADD")
        .arg(format!("{prefix}:{{quiet}}:l"))
        .arg("2-0")
        .arg("t")
        .arg(first.time)
        .arg("d")
        .arg(entry.to_string())
        .cmd("HSET")
        .arg(format!("{prefix}:{{quiet}}:m"))
        .arg("s")
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Within a check period (2 s; WAIT is 10 s).
    let n = c.notification().await;
    assert_eq!(
        (n.offset, n.body.as_str(), n.epoch),
        (2, "two", first.epoch)
    );
}

#[tokio::test]
async fn a_retried_publish_on_another_node_uses_one_offset() {
    let (_redis, _, nodes) = cluster(2).await;
    let body = r#"{"body":"charge card"}"#;
    let key = [("Idempotency-Key", "order-9")];
    let a = publish_json(nodes[0].addr, "pay", body, &key).await;
    let b = publish_json(nodes[1].addr, "pay", body, &key).await;
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.body, b.body);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    let (a, b) = (a.notification(), b.notification());
    assert_eq!((a.offset, &a.id), (b.offset, &b.id));
    let next = publish(nodes[1].addr, "pay", "next").await;
    assert_eq!(next.offset, 2);
}

#[tokio::test]
async fn a_redis_restart_without_persistence_gives_a_reset_never_a_reused_offset() {
    let (mut redis, _, nodes) = cluster(2).await;
    let mut c = Client::connect(&nodes[0]).await;
    c.subscribe("ops", None).await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(publish(nodes[1].addr, "ops", &format!("old {i}")).await);
    }
    assert_eq!(take(&mut c, 3).await, before);
    redis.restart().unwrap();
    let after = publish_retrying(&nodes[1], "ops", "new").await;
    assert_ne!(after.epoch, before[0].epoch, "a new epoch");
    // The client learns that the old offsets mean nothing, then gets the new history.
    match c.next().await {
        ServerFrame::Reset {
            epoch,
            first_available,
            ..
        } => assert_eq!((epoch.as_str(), first_available), (after.epoch.as_str(), 1)),
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!(c.notification().await, after);
}

/// A publish to `ops` on `node` with `key`.
async fn publish_with(node: &RunningServer, key: &str) -> HttpResponse {
    let auth = format!("Bearer {key}");
    http(
        node.addr,
        "POST",
        "/api/topics/ops",
        &[("authorization", &auth)],
        b"x",
    )
    .await
}

/// `herald keys …` against the cluster's Redis, as an operator runs it.
fn keys_cli(redis: &RedisServer, prefix: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys"])
        .args(args)
        .args(["--store", "redis", "--redis-url", &redis.url()])
        .args(["--redis-prefix", prefix])
        .output()
        .unwrap()
}

#[tokio::test]
async fn one_key_table_in_redis_serves_every_node_and_outlives_a_redis_restart() {
    let (mut redis, prefix, nodes) = cluster(2).await;
    // Made through node A's admin API: node B takes it.
    let r = http(
        nodes[0].addr,
        "POST",
        "/api/keys",
        &[("content-type", "application/json")],
        br#"{"name":"ci","allow":["publish:ops"]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let made: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let (key, id) = (made["key"].as_str().unwrap(), made["id"].as_str().unwrap());
    let accepted = || async { publish_with(&nodes[1], key).await.status == 201 };
    eventually("node B takes the key", WAIT, accepted).await;
    // Redis restarts without persistence: the nodes keep the key and write it back, so a
    // `keys list` against Redis shows it again.
    redis.restart().unwrap();
    eventually("node B still takes the key", WAIT, accepted).await;
    eventually("the key is written back to redis", WAIT, || async {
        let out = keys_cli(&redis, &prefix, &["list", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains(id)
    })
    .await;
    // Revoked once from the command line: every node refuses it.
    let out = keys_cli(&redis, &prefix, &["revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in &nodes {
        eventually("the revocation reaches every node", WAIT, || async {
            let r = publish_with(node, key).await;
            (r.status, r.error_code()) == (401, "key_revoked".to_owned())
        })
        .await;
    }
}

#[tokio::test]
async fn while_redis_is_down_publishes_get_503_and_clients_stay_connected() {
    let (mut redis, _, nodes) = cluster(2).await;
    let mut c = Client::connect(&nodes[1]).await;
    c.subscribe("ops", None).await;
    publish(nodes[0].addr, "ops", "before").await;
    c.notification().await;
    redis.kill();
    let r = http(nodes[0].addr, "POST", "/api/topics/ops", &[], b"during").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error_code(), "unavailable");
    assert!(r.header("retry-after").is_some());
    // Still connected: a ping is answered.
    c.send(&ClientFrame::Ping { id: Some(5) }).await;
    assert!(matches!(c.next().await, ServerFrame::Pong { id: Some(5) }));
    // A new subscription cannot start: a typed answer, not a hang.
    let mut d = Client::connect(&nodes[1]).await;
    d.send(&ClientFrame::Subscribe {
        topic: "elsewhere".into(),
        since: None,
        id: Some(9),
    })
    .await;
    match d.next().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code.as_str(), id), ("unavailable", Some(9)))
        }
        other => panic!("expected an error, got {other:?}"),
    }
    redis.restart().unwrap();
    let after = publish_retrying(&nodes[0], "ops", "after").await;
    // A restarted Redis without persistence is a new epoch: reset, then the new history.
    assert!(matches!(c.next().await, ServerFrame::Reset { .. }));
    assert_eq!(c.notification().await, after);
}

#[tokio::test]
async fn a_killed_node_s_client_resumes_on_another_node_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let prefix = herald::store::redis::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, a_addr) = spawn_node(&redis, &prefix, &dir.path().join("a.db")).await;
    let (_b, b_addr) = spawn_node(&redis, &prefix, &dir.path().join("b.db")).await;
    let mut c = Client::connect_at(a_addr, TEST_KEY).await;
    c.subscribe("ops", None).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(publish(b_addr, "ops", &format!("n{i}")).await);
    }
    let mut got = take(&mut c, 10).await;
    a.kill().await.unwrap(); // SIGKILL
    let last = got.last().unwrap().clone();
    let mut c = Client::connect_at(b_addr, TEST_KEY).await;
    c.subscribe(
        "ops",
        Some(Position {
            epoch: last.epoch,
            offset: last.offset,
        }),
    )
    .await;
    got.extend(take(&mut c, 10).await);
    sent.push(publish(b_addr, "ops", "after").await);
    got.extend(take(&mut c, 1).await);
    Checker::default().check("moved", &got);
    assert_eq!(got, sent);
}

/// The next frame that is not a notification (skipping those).
async fn next_other(c: &mut Client) -> ServerFrame {
    loop {
        match c.next().await {
            ServerFrame::Notification(_) => continue,
            f => return f,
        }
    }
}

#[tokio::test]
async fn a_user_s_tabs_on_two_nodes_share_the_inbox_and_its_changes() {
    let (_redis, _, nodes) = cluster(2).await;
    let token = user_token(&nodes[0], "ana", &[], &[], 3600);
    let mut tab_a = Client::connect_with(&nodes[0], &token).await;
    let mut tab_b = Client::connect_with(&nodes[1], &token).await;
    tab_a.subscribe("@ana", None).await;
    tab_b.subscribe("@ana", None).await;
    let auth = format!("Bearer {}", key_with(&nodes[0], &["admin:@*"]));
    let r = http(
        nodes[0].addr,
        "POST",
        "/api/users/ana/notifications",
        &[("Authorization", &auth)],
        b"your order shipped",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    for tab in [&mut tab_a, &mut tab_b] {
        assert_eq!(tab.notification().await.body, "your order shipped");
        assert!(matches!(
            tab.next().await,
            ServerFrame::InboxCount { unread: 1, .. }
        ));
    }
    // Read on node A's tab: node B's tab follows.
    tab_a
        .send(&ClientFrame::InboxUpdate {
            update: app::protocol::InboxUpdate::Read { offsets: vec![1] },
            id: Some(7),
        })
        .await;
    match next_other(&mut tab_b).await {
        ServerFrame::InboxChanged { unread, .. } => assert_eq!(unread, 0),
        other => panic!("expected inbox_changed, got {other:?}"),
    }
}

#[tokio::test]
async fn typing_on_one_node_reaches_a_room_member_on_another() {
    let (_redis, _, nodes) = cluster(2).await;
    let join = |node: usize, user: &'static str| {
        let token = user_token(&nodes[node], user, &["chat-*"], &["chat-*"], 3600);
        let server = &nodes[node];
        async move {
            let mut c = Client::connect_with(server, &token).await;
            c.subscribe("chat-x", None).await;
            c
        }
    };
    let mut ana = join(0, "ana").await;
    let mut bo = join(1, "bo").await;
    ana.send(&ClientFrame::Typing {
        topic: "chat-x".into(),
    })
    .await;
    loop {
        match bo.next().await {
            ServerFrame::Typing { user, .. } => {
                assert_eq!(user, "ana");
                break;
            }
            ServerFrame::Presence { .. } => continue,
            other => panic!("expected typing, got {other:?}"),
        }
    }
    drop(ana);
}

/// Presence frames that reached `c` before the answer to a ping.
async fn presence_seen(c: &mut Client) -> Vec<(app::protocol::PresenceAction, String)> {
    c.send(&ClientFrame::Ping { id: Some(77) }).await;
    let mut out = Vec::new();
    loop {
        match c.next().await {
            ServerFrame::Pong { id: Some(77) } => return out,
            ServerFrame::Presence { action, user, .. } => out.push((action, user)),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_user_with_tabs_on_two_nodes_is_in_the_room_once() {
    use app::protocol::PresenceAction::{Join, Leave};
    let (_redis, _, nodes) = cluster(3).await;
    let (mut bo, members) = join_room(&nodes[2], "bo", "chat-x").await;
    assert_eq!(members, ["bo"]);
    let (tab_a, members) = join_room(&nodes[0], "ana", "chat-x").await;
    assert_eq!(members, ["ana", "bo"], "the list spans the nodes");
    let (tab_b, members) = join_room(&nodes[1], "ana", "chat-x").await;
    assert_eq!(members, ["ana", "bo"], "two tabs on two nodes, one member");
    // bo's node hears the cluster's announcements on its Pub/Sub connection; give them a
    // moment, then exactly one join.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presence_seen(&mut bo).await, [(Join, "ana".to_owned())]);
    drop(tab_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        presence_seen(&mut bo).await.is_empty(),
        "ana is still here on node B"
    );
    drop(tab_b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = presence_seen(&mut bo).await;
        if !seen.is_empty() {
            assert_eq!(seen, [(Leave, "ana".to_owned())]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ana never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_cy, members) = join_room(&nodes[0], "cy", "chat-x").await;
    assert_eq!(members, ["bo", "cy"]);
}

#[tokio::test]
async fn a_killed_node_s_users_leave_the_room_on_the_other_nodes() {
    use app::protocol::PresenceAction::Leave;
    let redis = RedisServer::start().unwrap();
    let prefix = herald::store::redis::unique_prefix();
    let watcher_node = server(redis_config(&redis, &prefix)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut doomed, doomed_addr) = spawn_node(&redis, &prefix, &dir.path().join("a.db")).await;
    let (mut bo, _) = join_room(&watcher_node, "bo", "chat-y").await;
    // ana joins through the other process.
    let token = user_token(&watcher_node, "ana", &["chat-*"], &[], 3600);
    let mut ana = Client::connect_at(doomed_addr, &token).await;
    ana.subscribe("chat-y", None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while presence_seen(&mut bo).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "ana never arrived");
    }
    doomed.kill().await.unwrap(); // SIGKILL: no leave is ever sent
    let killed = tokio::time::Instant::now();
    let limit = herald::presence::cluster::NODE_TTL + herald::presence::cluster::BEAT * 3;
    loop {
        let seen = presence_seen(&mut bo).await;
        if !seen.is_empty() {
            assert_eq!(seen, [(Leave, "ana".to_owned())]);
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "ana is still present {limit:?} after the crash"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn after_a_redis_restart_the_nodes_put_their_members_back() {
    let (mut redis, _, nodes) = cluster(2).await;
    let (mut bo, _) = join_room(&nodes[1], "bo", "chat-z").await;
    let (_ana, members) = join_room(&nodes[0], "ana", "chat-z").await;
    assert_eq!(members, ["ana", "bo"]);
    let mut bo_list: std::collections::BTreeSet<String> =
        ["ana", "bo"].into_iter().map(String::from).collect();
    redis.restart().unwrap(); // no persistence: every room is empty in Redis
                              // Within a few beats both nodes notice the new Redis and join their members again: a
                              // newcomer sees everyone.
    let deadline = tokio::time::Instant::now() + WAIT;
    let _cy = loop {
        tokio::time::sleep(herald::presence::cluster::BEAT).await;
        let token = user_token(&nodes[0], "cy", &["chat-*"], &[], 3600);
        let mut cy = Client::connect_with(&nodes[0], &token).await;
        cy.send(&ClientFrame::Subscribe {
            topic: "chat-z".into(),
            since: None,
            id: None,
        })
        .await;
        let members = loop {
            match cy.try_next().await {
                Ok(ServerFrame::Subscribed { members, .. }) => break members,
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        if members.as_deref() == Some(&["ana".to_owned(), "bo".to_owned(), "cy".to_owned()][..]) {
            break cy;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members never came back: {members:?}"
        );
    };
    // And bo's list follows (by announcements, or a fresh list if its node's Pub/Sub
    // connection was still coming back when they were made).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bo_list.contains("cy") {
        bo.send(&ClientFrame::Ping { id: Some(78) }).await;
        loop {
            match bo.next().await {
                ServerFrame::Pong { id: Some(78) } => break,
                ServerFrame::Presence { action, user, .. } => {
                    if action == app::protocol::PresenceAction::Join {
                        bo_list.insert(user);
                    } else {
                        bo_list.remove(&user);
                    }
                }
                ServerFrame::PresenceSync { members, .. } => {
                    bo_list = members.unwrap_or_default().into_iter().collect();
                }
                _ => {}
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bo's list never heard of cy: {bo_list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bo_list.into_iter().collect::<Vec<_>>(), ["ana", "bo", "cy"]);
}

#[tokio::test]
async fn subscribers_joining_a_node_during_a_fast_publish_miss_nothing_after_their_start() {
    let (_redis, _, nodes) = cluster(2).await;
    let a = nodes[0].addr;
    let publisher = tokio::spawn(async move {
        for i in 0..300 {
            publish(a, "busy", &format!("n{i}")).await;
        }
    });
    // Twenty subscribers join node B while it runs (the later ones start from the node's own
    // last fed position, not Redis's).
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(&nodes[1]).await;
        let start = c.subscribe("busy", None).await;
        subs.push((c, start.offset));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.await.unwrap();
    let mut checker = Checker::default();
    for (i, (c, start)) in subs.iter_mut().enumerate() {
        let got = take(c, (300 - *start) as usize).await;
        if let Some(first) = got.first() {
            assert_eq!(
                first.offset,
                *start + 1,
                "subscriber {i} starts right after its head"
            );
            assert_eq!(got.last().unwrap().offset, 300);
        }
        checker.check(&format!("subscriber {i}"), &got);
    }
}

/// A TCP proxy in front of Redis that can black-hole the Pub/Sub connections open at a given
/// moment (they stay open and silent, as behind a dead middlebox), leaving command
/// connections and later connections alone.
struct Proxy {
    addr: std::net::SocketAddr,
    /// Pub/Sub connections numbered below this are frozen.
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let (fb, nx) = (frozen_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // Numbered when it subscribes (a Pub/Sub connection).
                let id = Arc::new(AtomicU64::new(0));
                let pubsub = Arc::new(AtomicBool::new(false));
                let frozen = {
                    let (id, fb) = (id.clone(), fb.clone());
                    move || {
                        let id = id.load(Ordering::SeqCst);
                        id != 0 && id < fb.load(Ordering::SeqCst)
                    }
                };
                let (frozen_up, frozen_down) = (frozen.clone(), frozen);
                let (id_up, nx_up, pubsub_up) = (id.clone(), nx.clone(), pubsub.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !pubsub_up.load(Ordering::SeqCst)
                            && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE")
                        {
                            pubsub_up.store(true, Ordering::SeqCst);
                            id_up.store(nx_up.fetch_add(1, Ordering::SeqCst), Ordering::SeqCst);
                        }
                        while frozen_up() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while frozen_down() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            frozen_below,
            next,
        }
    }

    /// Black-holes every Pub/Sub connection open now.
    fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// The ids of Redis's Pub/Sub clients.
async fn pubsub_clients(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis_conn(redis).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_silent_pubsub_connection_is_caught_and_what_retention_dropped_is_an_exact_gap() {
    let redis = RedisServer::start().unwrap();
    let prefix = herald::store::redis::unique_prefix();
    let proxy = Proxy::start(redis.port).await;
    let direct = server(Config {
        retain_count: 5,
        ..redis_config(&redis, &prefix)
    })
    .await;
    let behind_proxy = server(Config {
        retain_count: 5,
        redis_url: format!("redis://{}/", proxy.addr),
        ..redis_config(&redis, &prefix)
    })
    .await;
    let mut c = Client::connect(&behind_proxy).await;
    c.subscribe("cut", None).await;
    let first = publish(direct.addr, "cut", "first").await;
    assert_eq!(c.notification().await, first);
    let before = pubsub_clients(&redis).await;
    proxy.freeze_existing();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(publish(direct.addr, "cut", &format!("n{i}")).await);
    }
    // The position check (through the command connection) finds what the silent Pub/Sub
    // connection missed: what retention kept, after an exact gap.
    match c.next().await {
        ServerFrame::Gap {
            requested,
            first_available,
            ..
        } => assert_eq!((requested, first_available), (1, 17)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(take(&mut c, 5).await, sent[15..]);
    // And the probe finds the connection silent: the node drops it and subscribes on a new
    // one (a Pub/Sub client Redis had not seen before the freeze).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = pubsub_clients(&redis).await;
        if now.iter().any(|id| !before.contains(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent connection was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live = publish(direct.addr, "cut", "live again").await;
    assert_eq!(c.notification().await, live);
}

/// The addresses of the nodes that are up and not draining: where clients (re)connect and
/// publishers send.
type Live = std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>;

fn pick(live: &Live, not: Option<std::net::SocketAddr>, i: usize) -> std::net::SocketAddr {
    let live = live.lock().unwrap();
    let choices: Vec<_> = live.iter().copied().filter(|a| Some(*a) != not).collect();
    choices[i % choices.len()]
}

/// A subscriber that, told to go (1001) or cut off, reconnects to another live node and
/// resumes from the last offset it has; until `stop` and `want` notifications.
async fn resuming_subscriber(
    live: Live,
    n: usize,
    stop: tokio_util::sync::CancellationToken,
    want: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (Vec<Notification>, usize) {
    let mut got: Vec<Notification> = Vec::new();
    let mut start: Option<Position> = None;
    let mut reconnects = 0;
    let mut node = None;
    let mut ready = Some(ready);
    'connect: loop {
        let addr = pick(&live, node, n + reconnects);
        let Some(mut c) = Client::try_connect_at(addr, TEST_KEY).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        node = Some(addr);
        let since = got.last().map(|n| n.position()).or(start.clone());
        c.send(&ClientFrame::Subscribe {
            topic: "ops".into(),
            since,
            id: None,
        })
        .await;
        loop {
            let frame = tokio::select! {
                f = c.try_next() => f,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    let enough = got.len() >= want.load(std::sync::atomic::Ordering::SeqCst);
                    if stop.is_cancelled() && enough {
                        return (got, reconnects);
                    }
                    continue;
                }
            };
            match frame {
                Ok(ServerFrame::Subscribed { position, .. }) => {
                    start.get_or_insert(position);
                    if let Some(r) = ready.take() {
                        r.send(()).await.unwrap();
                    }
                }
                Ok(ServerFrame::Notification(n)) => got.push(n),
                Ok(ServerFrame::Gap { .. } | ServerFrame::Reset { .. }) => {
                    panic!("nothing may be lost in a rolling restart")
                }
                Ok(_) => {}
                Err(_) => {
                    reconnects += 1;
                    continue 'connect;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_under_publish_load_delivers_everything_exactly_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let redis = RedisServer::start().unwrap();
    let prefix = herald::store::redis::unique_prefix();
    let config = || Config {
        drain_secs: 1,
        ..redis_config(&redis, &prefix)
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(server(config()).await);
    }
    let live: Live = Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.addr).collect(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let want = Arc::new(AtomicUsize::new(usize::MAX));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(12);
    let subscribers: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(resuming_subscriber(
                live.clone(),
                i,
                stop.clone(),
                want.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..12 {
        ready_rx.recv().await.unwrap();
    }
    // A steady publisher: one every 5 ms to the live nodes in turn; a node that refuses
    // (it is gone) is retried on another. Every acknowledged publish is recorded.
    let publisher = {
        let (live, stop) = (live.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked: Vec<Notification> = Vec::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let addr = pick(&live, None, i);
                let body = format!("n{i}");
                let bearer = format!("Bearer {TEST_KEY}");
                let auth = [("Authorization", bearer.as_str())];
                match try_http_as(addr, "POST", "/api/topics/ops", &auth, body.as_bytes()).await {
                    Ok(r) if r.status == 201 => acked.push(r.notification()),
                    Ok(r) => assert_eq!(r.status, 503, "{}", r.body),
                    Err(_) => {} // the node went away between the pick and the request
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    // Restart each node in turn: out of the live set, drain (SIGTERM's path), a new one in.
    for node in nodes.iter_mut() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = std::mem::replace(node, server(config()).await);
        live.lock().unwrap().retain(|a| *a != old.addr);
        live.lock().unwrap().push(node.addr);
        tokio::time::timeout(WAIT, old.stop())
            .await
            .expect("the node drains in time")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let acked = publisher.await.unwrap();
    assert!(acked.len() > 100, "{} publishes", acked.len());
    let last = acked.iter().map(|n| n.offset).max().unwrap();
    want.store(last as usize, Ordering::SeqCst);
    let mut checker = Checker::default();
    let mut first: Option<Vec<Notification>> = None;
    let mut moved = 0;
    for (i, s) in subscribers.into_iter().enumerate() {
        let (got, reconnects) = tokio::time::timeout(WAIT * 3, s)
            .await
            .expect("every subscriber catches up")
            .unwrap();
        moved += reconnects;
        checker.check(&format!("subscriber {i}"), &got);
        let ids: std::collections::HashSet<_> = got.iter().map(|n| &n.id).collect();
        for n in &acked {
            assert!(ids.contains(&n.id), "subscriber {i} missed {n:?}");
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "subscriber {i} saw another sequence"),
        }
    }
    // Every subscriber was on a restarted node at least once.
    assert!(moved >= 12, "{moved} reconnects");
}

/// Scripts Redis has run (appends and reads are scripts), from `INFO commandstats`.
async fn scripts_run(redis: &RedisServer) -> u64 {
    let mut conn = redis_conn(redis).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `n` clients of `node`, connected and authenticated, nothing subscribed yet.
async fn connect_many(node: &RunningServer, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::connect(node).await);
    }
    clients
}

/// Every client sends its subscribe to `topic` before any answer is read (all at once, as a
/// burst), then each must be subscribed at `at`.
async fn subscribe_together(clients: &mut [Client], topic: &str, at: &Position) {
    for c in clients.iter_mut() {
        c.send(&ClientFrame::Subscribe {
            topic: topic.into(),
            since: None,
            id: None,
        })
        .await;
    }
    for c in clients.iter_mut() {
        match c.next().await {
            ServerFrame::Subscribed { position, .. } => assert_eq!(&position, at),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_burst_of_subscribes_to_one_topic_reads_its_top_from_redis_once_per_node() {
    let (redis, _prefix, nodes) = cluster(1).await;
    let node = &nodes[0];
    let first = publish(node.addr, "burst", "before").await;
    let mut clients = connect_many(node, 200).await;
    let before = scripts_run(&redis).await;
    // All at once: the first subscribe makes the node read the top while the others arrive.
    subscribe_together(&mut clients, "burst", &first.position()).await;
    let reads = scripts_run(&redis).await - before;
    assert!(reads <= 2, "{reads} reads of the top for 200 subscribes");
    // And they are all live from there.
    let n = publish(node.addr, "burst", "after").await;
    for c in &mut clients {
        assert_eq!(c.notification().await.id, n.id);
    }
}

#[tokio::test]
async fn when_reading_the_top_fails_the_node_reads_again_instead_of_each_subscriber() {
    let (redis, _prefix, nodes) = cluster(1).await;
    let node = &nodes[0];
    let first = publish(node.addr, "stalled", "before").await;
    // The read script is loaded now, so that the first read below is not counted twice (a
    // call that answers NOSCRIPT, then the call again).
    let r = http(
        node.addr,
        "GET",
        "/api/topics/stalled/notifications",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut clients = connect_many(node, 100).await;
    // Scripts (the read of the top is one) wait in Redis for 3 s: the node's first read
    // times out (2 s) while 100 subscribes wait on it.
    let mut conn = redis_conn(&redis).await;
    let before = scripts_run(&redis).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    subscribe_together(&mut clients, "stalled", &first.position()).await;
    let reads = scripts_run(&redis).await - before;
    // A read, and one more after each that timed out (2 s, then 100 ms apart) while Redis
    // stood still: two or three, a few more on a machine slowed down by other tests. One per
    // subscriber would be 100.
    assert!(reads <= 10, "{reads} reads of the top for 100 subscribes");
}
