//! Sessions driven over channels instead of a network, on tokio's paused clock: a client that
//! stops reading is a sink that stops accepting, and time only moves when the test (or tokio's
//! auto-advance, when every task is idle) moves it.

use super::*;
use crate::config::Config;
use crate::hub::Hub;
use crate::store::{MemoryStore, Retention, Store, Stored};
use app::protocol::{close_code, ClientFrame, ErrorCode, NewNotification, Position};
use futures::channel::mpsc as fmpsc;
use futures::{Sink, Stream, StreamExt};
use leptos::config::LeptosOptions;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The server's side of a fake socket.
struct FakeSocket {
    inbound: fmpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outbound: fmpsc::Sender<Message>,
}

impl Stream for FakeSocket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_next_unpin(cx)
    }
}

impl Sink<Message> for FakeSocket {
    type Error = axum::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound.poll_ready(cx).map_err(axum::Error::new)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outbound.start_send(item).map_err(axum::Error::new)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound)
            .poll_flush(cx)
            .map_err(axum::Error::new)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound)
            .poll_close(cx)
            .map_err(axum::Error::new)
    }
}

/// The client's side: what it sends, and what it reads (or, by not reading, stalls).
struct FakeClient {
    tx: fmpsc::UnboundedSender<Result<Message, axum::Error>>,
    rx: fmpsc::Receiver<Message>,
}

impl FakeClient {
    fn send(&self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).unwrap();
        self.send_msg(Message::Text(text.into()));
    }

    fn send_msg(&self, msg: Message) {
        let _ = self.tx.unbounded_send(Ok(msg));
    }

    /// The next message, or `None` once the session has ended. A minute of tokio time (which
    /// auto-advances while everything waits) without one fails the test instead of hanging it.
    async fn next_msg(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.next())
            .await
            .expect("a message or the end of the session within a minute")
    }

    /// The next protocol frame, skipping pings.
    async fn frame(&mut self) -> ServerFrame {
        loop {
            match self.next_msg().await {
                Some(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Message::Ping(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn notification_offset(&mut self) -> u64 {
        match self.frame().await {
            ServerFrame::Notification(n) => n.offset,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    /// Reads until the close frame; returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_msg().await {
                Some(Message::Close(c)) => return c.map(|c| c.code),
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

struct Fixture {
    state: AppState,
    store: Arc<MemoryStore>,
    /// The store's feed; tests that broadcast by hand read it themselves.
    feed: mpsc::Receiver<Arc<Stored>>,
}

fn fixture(config: Config) -> Fixture {
    let (feed_tx, feed) = mpsc::channel(100_000);
    let store = Arc::new(MemoryStore::new(
        feed_tx,
        Retention {
            max_count: config.retain_count,
            max_age: config.retain_age(),
            idempotency_window: config.idempotency_window(),
        },
    ));
    let hub = Hub::new(config.max_connections, config.queue_frames);
    let auth =
        Arc::new(crate::auth::setup::authority(&config, "127.0.0.1:0".parse().unwrap()).unwrap());
    let limits = crate::limits::EdgeLimits::new(&config);
    let state = AppState(Arc::new(crate::Shared {
        presence: crate::presence::Presence::from_config(&config).unwrap(),
        broker: Arc::new(crate::broker::Local::new(hub.clone())),
        limits,
        config,
        hub,
        store: store.clone(),
        auth,
        leptos_options: LeptosOptions::builder().output_name("herald").build(),
        tracker: TaskTracker::new(),
        draining: Default::default(),
    }));
    Fixture { state, store, feed }
}

impl Fixture {
    /// Starts a session; the client's outbound buffer holds `room` messages before it stalls.
    fn connect(
        &self,
        room: usize,
    ) -> (
        FakeClient,
        tokio::task::JoinHandle<()>,
        Arc<crate::hub::Conn>,
    ) {
        let (in_tx, in_rx) = fmpsc::unbounded();
        let (out_tx, out_rx) = fmpsc::channel(room);
        let (reg, queue) = self.state.hub.register().expect("a free slot");
        let conn = reg.conn.clone();
        let socket = FakeSocket {
            inbound: in_rx,
            outbound: out_tx,
        };
        let task = tokio::spawn(Session::new(self.state.clone(), reg, socket).run(queue));
        (
            FakeClient {
                tx: in_tx,
                rx: out_rx,
            },
            task,
            conn,
        )
    }

    /// Starts the hub's heartbeat sweep, as the server does; cancel the token to stop it.
    fn heartbeat(&self, every: Duration) -> CancellationToken {
        let cancel = CancellationToken::new();
        tokio::spawn(crate::hub::heartbeat(
            self.state.hub.clone(),
            every,
            cancel.clone(),
        ));
        cancel
    }

    /// Appends `n` notifications to `topic` and fans them out, as the dispatcher would.
    async fn publish(&mut self, topic: &str, n: usize, body_bytes: usize) -> Vec<Arc<Stored>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let new = NewNotification {
                body: "x".repeat(body_bytes.max(1)),
                ..Default::default()
            };
            self.store.append(topic, new, None).await.unwrap();
            let stored = self.feed.recv().await.unwrap();
            self.state.hub.broadcast(&stored);
            out.push(stored);
        }
        out
    }
}

/// Anonymous readers of every topic: these tests are about the session's writer and limits;
/// authentication has its own tests.
fn config() -> Config {
    Config {
        anonymous: true,
        public_topics: vec!["*".into()],
        ..Config::for_tests()
    }
}

async fn welcomed(client: &mut FakeClient) {
    assert!(matches!(client.frame().await, ServerFrame::Welcome { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_close_request_wins_while_a_replay_is_blocked_on_a_client_that_stopped_reading() {
    let mut f = fixture(config());
    let stored = f.publish("t", 1000, 100).await;
    let epoch = stored[0].notification.epoch.clone();
    // Room for the welcome, `subscribed` and a few notifications; then the client reads no more.
    let (mut client, task, conn) = f.connect(8);
    client.send(&ClientFrame::Subscribe {
        topic: "t".into(),
        since: Some(Position { epoch, offset: 0 }),
        id: None,
    });
    // Let the session fill the buffer and block on the next write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!task.is_finished(), "the session is blocked on the write");
    conn.close(close_code::HEARTBEAT_TIMEOUT);
    // The close request wins at once, and the close frame may take CLOSE_TIMEOUT to give up.
    tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_millis(1), task)
        .await
        .expect("the session ends within the close timeout")
        .unwrap();
    assert_eq!(f.state.hub.connections(), 0, "its slot is free");
    // What was written before the stall arrived in order; then nothing more.
    welcomed(&mut client).await;
    assert!(matches!(
        client.frame().await,
        ServerFrame::Subscribed { .. }
    ));
    let mut expected = 1;
    while let Some(msg) = client.next_msg().await {
        match msg {
            Message::Text(t) => {
                let ServerFrame::Notification(n) = serde_json::from_str(t.as_str()).unwrap() else {
                    panic!("unexpected {t}");
                };
                assert_eq!(n.offset, expected);
                expected += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_floods_bad_frames_and_never_reads_is_closed_by_the_heartbeat() {
    let f = fixture(Config {
        heartbeat_ms: 1000,
        frames_per_sec: 1_000_000,
        ..config()
    });
    let cancel = f.heartbeat(Duration::from_secs(1));
    let (client, task, _conn) = f.connect(4);
    for _ in 0..100 {
        client.send_msg(Message::Text("not json".into()));
    }
    // Every bad frame earns an error frame; the client reads none, so the session blocks.
    // Its inbound side goes quiet too: the sweep at 3 s finds it silent for more than twice
    // the interval, and the close frame gets CLOSE_TIMEOUT to leave a full buffer.
    tokio::time::timeout(
        Duration::from_secs(3) + CLOSE_TIMEOUT + Duration::from_millis(1),
        task,
    )
    .await
    .expect("closed within the heartbeat timeout plus the close timeout")
    .unwrap();
    assert_eq!(f.state.hub.connections(), 0);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_by_the_heartbeat_and_one_that_answers_is_not() {
    let f = fixture(Config {
        heartbeat_ms: 1000,
        ..config()
    });
    let cancel = f.heartbeat(Duration::from_secs(1));
    let (mut silent, silent_task, _) = f.connect(64);
    let (mut alive, alive_task, _) = f.connect(64);
    welcomed(&mut silent).await;
    welcomed(&mut alive).await;
    // `alive` answers every ping, as a browser does.
    let answering = tokio::spawn(async move {
        for _ in 0..10 {
            match alive.next_msg().await {
                Some(Message::Ping(p)) => alive.send_msg(Message::Pong(p)),
                other => panic!("unexpected {other:?}"),
            }
        }
        alive
    });
    // Silent for more than twice the interval: 4001, on the sweep after 2 s.
    assert_eq!(
        silent.close_code().await,
        Some(close_code::HEARTBEAT_TIMEOUT)
    );
    silent_task.await.unwrap();
    let _alive = answering.await.unwrap();
    assert!(
        !alive_task.is_finished(),
        "ten pings later, still connected"
    );
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn every_frame_counts_against_the_rate_limit_pings_and_binary_included() {
    for flood in [
        Message::Ping(Default::default()),
        Message::Pong(Default::default()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        let f = fixture(Config {
            frames_per_sec: 5,
            ..config()
        });
        let (mut client, task, _) = f.connect(1000);
        welcomed(&mut client).await;
        for _ in 0..100 {
            client.send_msg(flood.clone());
        }
        // 10 in the burst, 20 refusals tolerated, then 4002.
        assert_eq!(
            client.close_code().await,
            Some(close_code::RATE_LIMITED),
            "{flood:?}"
        );
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_streak_gets_one_rate_limited_error_not_one_per_frame() {
    let f = fixture(Config {
        frames_per_sec: 5,
        ..config()
    });
    let (mut client, _task, _) = f.connect(1000);
    welcomed(&mut client).await;
    for _ in 0..15 {
        client.send(&ClientFrame::Ping { id: Some(1) });
    }
    for _ in 0..10 {
        assert_eq!(client.frame().await, ServerFrame::Pong { id: Some(1) });
    }
    match client.frame().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::RateLimited),
        other => panic!("{other:?}"),
    }
    // The other four refused frames got nothing; after a pause the client is served again.
    tokio::time::advance(Duration::from_secs(1)).await;
    client.send(&ClientFrame::Ping { id: Some(2) });
    assert_eq!(client.frame().await, ServerFrame::Pong { id: Some(2) });
}

#[tokio::test(start_paused = true)]
async fn a_hole_in_live_delivery_is_repaired_from_the_store() {
    let mut f = fixture(config());
    let (mut client, _task, _) = f.connect(1000);
    welcomed(&mut client).await;
    client.send(&ClientFrame::Subscribe {
        topic: "t".into(),
        since: None,
        id: None,
    });
    assert!(matches!(
        client.frame().await,
        ServerFrame::Subscribed { .. }
    ));
    // Five are stored, but live delivery (as a lossy broker might) brings only 1 and 5.
    let mut stored = Vec::new();
    for _ in 0..5 {
        let new = NewNotification {
            body: "b".into(),
            ..Default::default()
        };
        f.store.append("t", new, None).await.unwrap();
        stored.push(f.feed.recv().await.unwrap());
    }
    f.state.hub.broadcast(&stored[0]);
    f.state.hub.broadcast(&stored[4]);
    for expected in 1..=5 {
        assert_eq!(client.notification_offset().await, expected);
    }
    // And the stream stays live and in step.
    f.publish("t", 1, 1).await;
    assert_eq!(client.notification_offset().await, 6);
}

#[tokio::test(start_paused = true)]
async fn live_frames_queued_during_a_long_replay_do_not_cut_the_resuming_client() {
    // A queue of 8 and 1,000 to replay: frames queued while the replay ran would overflow it
    // many times over if the subscription were registered from the start.
    let mut f = fixture(Config {
        queue_frames: 8,
        ..config()
    });
    let stored = f.publish("t", 1000, 10).await;
    let epoch = stored[0].notification.epoch.clone();
    let (mut client, _task, conn) = f.connect(16);
    welcomed(&mut client).await;
    client.send(&ClientFrame::Subscribe {
        topic: "t".into(),
        since: Some(Position { epoch, offset: 0 }),
        id: None,
    });
    assert!(matches!(
        client.frame().await,
        ServerFrame::Subscribed { .. }
    ));
    // Read the replay slowly, publishing live between reads.
    let mut next = 1;
    while next <= 1500 {
        assert_eq!(client.notification_offset().await, next);
        next += 1;
        if next % 2 == 0 && f.store.head("t").await.unwrap().last < 1500 {
            f.publish("t", 1, 10).await;
        }
    }
    assert_eq!(conn.close_code(), None, "never cut as a slow consumer");
}

#[tokio::test(start_paused = true)]
async fn a_resume_already_at_the_head_reads_no_history() {
    let mut f = fixture(config());
    let stored = f.publish("t", 3, 10).await;
    let head = stored[2].notification.position();
    let (mut client, _task, _) = f.connect(64);
    welcomed(&mut client).await;
    client.send(&ClientFrame::Subscribe {
        topic: "t".into(),
        since: Some(head.clone()),
        id: None,
    });
    match client.frame().await {
        ServerFrame::Subscribed { position, .. } => assert_eq!(position, head),
        other => panic!("{other:?}"),
    }
    f.publish("t", 1, 10).await;
    assert_eq!(client.notification_offset().await, 4);
}

/// Starts the hub's deadline sweep, as the server does.
fn deadlines(f: &Fixture) -> CancellationToken {
    let cancel = CancellationToken::new();
    tokio::spawn(crate::hub::deadlines(f.state.hub.clone(), cancel.clone()));
    cancel
}

fn token(f: &Fixture, user: &str, ttl_secs: u64) -> String {
    let tokens = &f.state.auth.tokens;
    let grants = crate::auth::Grants::from_scopes(&["read:*"]).unwrap();
    tokens
        .sign(&tokens.mint(user, &grants, ttl_secs).unwrap())
        .unwrap()
}

/// Takes the welcome, authenticates as ana with a token valid for `ttl_secs`.
async fn sign_in(f: &Fixture, client: &mut FakeClient, ttl_secs: u64) {
    welcomed(client).await;
    client.send(&ClientFrame::Auth {
        token: token(f, "ana", ttl_secs),
    });
    assert!(matches!(
        client.frame().await,
        ServerFrame::Authenticated { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_token_is_warned_before_it_expires_and_a_refresh_moves_the_deadline() {
    let f = fixture(Config {
        anonymous: false,
        token_leeway_secs: 0,
        token_warning_secs: 10,
        ..config()
    });
    let _sweep = deadlines(&f);
    let (mut client, _task, _conn) = f.connect(64);
    sign_in(&f, &mut client, 30).await;
    let start = tokio::time::Instant::now();
    assert!(matches!(
        client.frame().await,
        ServerFrame::TokenExpiring { .. }
    ));
    let warned = start.elapsed();
    assert!(
        warned >= Duration::from_secs(19) && warned <= Duration::from_secs(21),
        "warned after {warned:?}, expected 10 s before the 30 s expiry"
    );
    // A fresh token: the old expiry (30 s) passes without a close...
    client.send(&ClientFrame::Auth {
        token: token(&f, "ana", 30),
    });
    assert!(matches!(
        client.frame().await,
        ServerFrame::Authenticated { .. }
    ));
    let refreshed = tokio::time::Instant::now();
    assert!(matches!(
        client.frame().await,
        ServerFrame::TokenExpiring { .. }
    ));
    assert!(refreshed.elapsed() >= Duration::from_secs(19));
    // ...and without another refresh the new one ends the connection with 4005.
    assert_eq!(client.close_code().await, Some(close_code::TOKEN_EXPIRED));
    let closed = refreshed.elapsed();
    assert!(
        closed >= Duration::from_secs(29) && closed <= Duration::from_secs(31),
        "closed after {closed:?}, expected at the 30 s expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_never_authenticates_is_closed_at_the_handshake_timeout() {
    let f = fixture(Config {
        anonymous: false,
        auth_timeout_ms: 5_000,
        ..config()
    });
    let _sweep = deadlines(&f);
    let (mut client, task, _conn) = f.connect(64);
    let start = tokio::time::Instant::now();
    welcomed(&mut client).await;
    assert_eq!(client.close_code().await, Some(close_code::AUTH_TIMEOUT));
    let closed = start.elapsed();
    assert!(
        closed >= Duration::from_secs(5) && closed <= Duration::from_secs(6),
        "{closed:?}"
    );
    task.await.unwrap();
    assert_eq!(f.state.hub.connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_authenticated_socket_is_not_closed_by_the_handshake_timeout() {
    let f = fixture(Config {
        anonymous: false,
        auth_timeout_ms: 5_000,
        ..config()
    });
    let _sweep = deadlines(&f);
    let (mut client, task, _conn) = f.connect(64);
    sign_in(&f, &mut client, 3600).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!task.is_finished());
}

/// Every idle connection carries its session's future: keep it small. 640 bytes in a debug
/// build with the fake socket; an awaited rare path left inline (the revoked-key close) made
/// it 1,240 and cost 0.6 KiB per connection in the 10k benchmark, and `run` as an `async fn`
/// (the session stored twice, as its argument and as a local) 920. Deterministic for a given
/// compiler.
#[tokio::test]
async fn the_session_future_stays_small() {
    let f = fixture(config());
    let (in_tx, in_rx) = fmpsc::unbounded::<Result<Message, axum::Error>>();
    let (out_tx, _out_rx) = fmpsc::channel(1);
    let (reg, queue) = f.state.hub.register().unwrap();
    let socket = FakeSocket {
        inbound: in_rx,
        outbound: out_tx,
    };
    let fut = Session::new(f.state.clone(), reg, socket).run(queue);
    let size = std::mem::size_of_val(&fut);
    println!("session future: {size} bytes");
    drop(in_tx);
    assert!(size <= 720, "the session future grew to {size} bytes");
}

#[test]
fn what_every_connection_carries_stays_small() {
    // An identity is a shared key, a boxed user or nothing: 16 bytes in every session.
    assert_eq!(std::mem::size_of::<crate::auth::Identity>(), 16);
    assert!(std::mem::size_of::<crate::hub::Conn>() <= 80);
}

/// Everything the session writes until it has been quiet for a while (tokio's paused clock
/// jumps ahead once every task waits).
async fn drain(client: &mut FakeClient) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), client.rx.next()).await {
        if let Message::Text(t) = msg {
            out.push(serde_json::from_str(t.as_str()).unwrap());
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_presence_storm_behind_a_stalled_client_costs_a_list_never_the_connection_or_its_order() {
    let mut f = fixture(Config {
        queue_frames: 8,
        ..config()
    });
    let room: Arc<str> = Arc::from("chat-a");
    // Room in the client's buffer for four frames; it reads them, then stops.
    let (mut client, task, conn) = f.connect(4);
    sign_in(&f, &mut client, 3600).await;
    client.send(&ClientFrame::Subscribe {
        topic: room.to_string(),
        since: None,
        id: None,
    });
    let ServerFrame::Subscribed { members, .. } = client.frame().await else {
        panic!("expected subscribed");
    };
    let mut list: std::collections::BTreeSet<String> = members.unwrap().into_iter().collect();
    // Eight messages: four fill the client's buffer, the session blocks writing the fifth
    // with the rest of its batch in hand and its queue empty.
    f.publish(&room, 4, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.publish(&room, 4, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The storm: ten joins (four fit in the presence half of the queue, the rest are dropped),
    // then five of them leave again (all dropped).
    let mut guards = Vec::new();
    for i in 0..10 {
        let presence = &f.state.presence;
        let user = format!("u{i}");
        guards.push(presence.join(&f.state.hub, &room, &user, 9000 + i).await.0);
    }
    guards.drain(..5);
    assert_eq!(conn.close_code(), None, "presence never cuts");
    // The client reads again.
    let mut offsets = Vec::new();
    let mut synced = false;
    for frame in drain(&mut client).await {
        match frame {
            ServerFrame::Notification(n) => offsets.push(n.offset),
            ServerFrame::Presence { user, action, .. } => {
                if action == app::protocol::PresenceAction::Join {
                    list.insert(user);
                } else {
                    list.remove(&user);
                }
            }
            ServerFrame::PresenceSync { members, .. } => {
                synced = true;
                list = members.unwrap().into_iter().collect();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        offsets,
        (1..=8).collect::<Vec<_>>(),
        "every message, in order"
    );
    assert!(synced, "the dropped frames were replaced by a list");
    let expected: std::collections::BTreeSet<String> = ["ana", "u5", "u6", "u7", "u8", "u9"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(list, expected, "the client's list is the room's");
    assert_eq!(f.state.hub.stats().slow_closed, 0);
    assert!(!task.is_finished());
}
