//! The store contract (see `store/mod.rs`) as tests, run against every store implementation.
//! A new store (Redis) adds one line to `every_store!` and inherits them all.
//!
//! Store-specific properties (SQLite's chunked prune, reader pool and writer failure; the
//! memory store's bounds) follow at the end.

use super::*;
use crate::config::SyncMode;
use crate::hooks::Hooks;
use app::protocol::NewNotification;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Harness {
    store: Arc<dyn Store>,
    feed: mpsc::Receiver<Arc<Stored>>,
    _dir: Option<tempfile::TempDir>,
    /// Redis mode: the server (killed when the test ends) and the fan-out's end.
    _redis: Option<(
        redis::testing::RedisServer,
        tokio_util::sync::DropGuard,
        Arc<redis::pubsub::Fanout>,
    )>,
}

fn retention() -> Retention {
    Retention {
        max_count: 1000,
        max_age: Duration::from_secs(3600),
        idempotency_window: Duration::from_secs(3600),
    }
}

fn memory(retention: Retention) -> Harness {
    let (tx, feed) = mpsc::channel(100_000);
    Harness {
        store: Arc::new(MemoryStore::new(tx, retention)),
        feed,
        _dir: None,
        _redis: None,
    }
}

/// A Redis of its own, and a fan-out that follows every topic's channel (the feed the tests
/// read), subscribed before the harness is handed over.
async fn redis(retention: Retention) -> Harness {
    let server = redis::testing::RedisServer::start().expect("redis-server");
    let store =
        Arc::new(RedisStore::new(&server.url(), &redis::unique_prefix(), retention).unwrap());
    let (tx, feed) = mpsc::channel(100_000);
    let cancel = tokio_util::sync::CancellationToken::new();
    let fanout = redis::pubsub::Fanout::start(
        store.clone(),
        tx,
        None,
        redis::pubsub::Scope::All,
        cancel.clone(),
    );
    // Resolves once the connection is subscribed (pattern included).
    fanout.watch("_ready").await.expect("pub/sub connected");
    Harness {
        store,
        feed,
        _dir: None,
        _redis: Some((server, cancel.drop_guard(), fanout)),
    }
}

/// A SQLite store on `path` (opened again on the same path: a restart, nothing cached).
fn sqlite_on(
    path: &std::path::Path,
    retention: Retention,
    options: SqliteOptions,
    hooks: Hooks,
) -> Harness {
    let (tx, feed) = mpsc::channel(100_000);
    let store = SqliteStore::open(path, options, retention, tx, hooks).unwrap();
    Harness {
        store: Arc::new(store),
        feed,
        _dir: None,
        _redis: None,
    }
}

fn sqlite_with(retention: Retention, options: SqliteOptions, hooks: Hooks) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sqlite_on(&dir.path().join("t.db"), retention, options, hooks);
    h._dir = Some(dir);
    h
}

/// Without fsyncs: the tests are about what is stored, not about surviving power loss.
fn unsynced() -> SqliteOptions {
    SqliteOptions {
        sync: SyncMode::Normal,
        ..SqliteOptions::default()
    }
}

fn sqlite(retention: Retention) -> Harness {
    sqlite_with(retention, unsynced(), Hooks::default())
}

fn note(body: &str) -> NewNotification {
    NewNotification {
        body: body.into(),
        ..Default::default()
    }
}

async fn append(h: &Harness, topic: &str, body: &str) -> Arc<Stored> {
    h.store
        .append(topic, note(body), None)
        .await
        .unwrap()
        .stored
}

/// The feed's next notification; a failure instead of a hang when it never comes (an append
/// that failed in a spawned task, say).
async fn fed(feed: &mut mpsc::Receiver<Arc<Stored>>) -> Arc<Stored> {
    tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("a notification on the feed within 10 s")
        .expect("the feed is open")
}

async fn read_all(h: &Harness, topic: &str) -> (TopicPosition, Vec<u64>) {
    let (pos, items) = h
        .store
        .read(topic, ReadQuery::after(0, 100_000))
        .await
        .unwrap();
    (pos, items.iter().map(|s| s.notification.offset).collect())
}

macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(|r| Box::pin(async move { super::memory(r) })).await;
                }
            )*
        }
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(|r| Box::pin(async move { super::sqlite(r) })).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(|r| Box::pin(super::redis(r))).await;
                }
            )*
        }
    };
}

every_store!(
    offsets_are_contiguous_per_topic_and_topics_are_independent,
    the_feed_carries_each_append_once_in_offset_order_after_it_is_readable,
    head_is_never_behind_the_feed_and_starts_at_zero,
    reads_page_both_ways_and_report_the_position,
    bounds_beyond_any_offset_get_an_ordinary_answer,
    idempotency_returns_the_original_and_appends_nothing,
    retention_by_count_keeps_the_newest_and_never_reuses_offsets,
    retention_by_age_drops_what_is_older,
    the_epoch_is_the_same_for_every_topic_of_one_store,
    an_inbox_counts_arrivals_and_every_state_change_exactly,
    read_all_up_to_an_offset_leaves_a_newer_arrival_unread,
    an_inbox_lists_newest_first_by_filter_and_category,
    pruned_unread_notifications_leave_the_count,
    concurrent_changes_and_arrivals_keep_the_count_exact,
    append_many_appends_each_item_as_append_would,
);

type Make = fn(Retention) -> futures::future::BoxFuture<'static, Harness>;

async fn offsets_are_contiguous_per_topic_and_topics_are_independent(make: Make) {
    let h = make(retention()).await;
    for i in 1..=5u64 {
        assert_eq!(append(&h, "a", "x").await.notification.offset, i);
        if i % 2 == 0 {
            append(&h, "b", "y").await;
        }
    }
    assert_eq!(read_all(&h, "a").await.1, vec![1, 2, 3, 4, 5]);
    assert_eq!(read_all(&h, "b").await.1, vec![1, 2]);
    // Concurrent appends still get every offset exactly once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = h.store.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    store.append("c", note("z"), None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(read_all(&h, "c").await.1, (1..=200).collect::<Vec<_>>());
}

async fn the_feed_carries_each_append_once_in_offset_order_after_it_is_readable(make: Make) {
    let mut h = make(retention()).await;
    let appender = {
        let store = h.store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                store
                    .append(if i % 3 == 0 { "x" } else { "y" }, note("n"), None)
                    .await
                    .unwrap();
            }
        })
    };
    let mut last = std::collections::HashMap::new();
    for _ in 0..100 {
        let s = fed(&mut h.feed).await;
        let n = &s.notification;
        let prev = last.insert(n.topic.clone(), n.offset).unwrap_or(0);
        assert_eq!(n.offset, prev + 1, "per-topic offset order on the feed");
        // Readable by the time it is on the feed.
        let (_, items) = h
            .store
            .read(&n.topic, ReadQuery::after(n.offset - 1, 1))
            .await
            .unwrap();
        assert_eq!(items[0].notification.id, n.id);
    }
    appender.await.unwrap();
    assert!(h.feed.try_recv().is_err(), "each append once");
}

async fn head_is_never_behind_the_feed_and_starts_at_zero(make: Make) {
    let mut h = make(retention()).await;
    let head = h.store.head("never").await.unwrap();
    assert_eq!(head.last, 0);
    let (pos, _) = read_all(&h, "never").await;
    assert_eq!((pos.first, pos.last), (1, 0));
    assert_eq!(pos.epoch, head.epoch);
    for i in 1..=20u64 {
        append(&h, "t", "x").await;
        let fed = fed(&mut h.feed).await;
        assert_eq!(fed.notification.offset, i);
        assert!(h.store.head("t").await.unwrap().last >= i);
    }
    assert_eq!(h.store.head("t").await.unwrap().last, 20);
}

async fn reads_page_both_ways_and_report_the_position(make: Make) {
    let h = make(retention()).await;
    for _ in 0..10 {
        append(&h, "t", "x").await;
    }
    let q = |after, before, limit, newest_first| ReadQuery {
        after,
        before,
        limit,
        newest_first,
    };
    let offs = |v: Vec<Arc<Stored>>| v.iter().map(|s| s.notification.offset).collect::<Vec<_>>();
    let (pos, page) = h.store.read("t", q(3, u64::MAX, 4, false)).await.unwrap();
    assert_eq!((pos.first, pos.last), (1, 10));
    assert_eq!(offs(page), vec![4, 5, 6, 7]);
    let (_, page) = h.store.read("t", q(0, 8, 3, true)).await.unwrap();
    assert_eq!(offs(page), vec![7, 6, 5]);
    let (_, page) = h.store.read("t", q(2, 6, 100, false)).await.unwrap();
    assert_eq!(offs(page), vec![3, 4, 5]);
}

async fn bounds_beyond_any_offset_get_an_ordinary_answer(make: Make) {
    let h = make(retention()).await;
    for _ in 0..3 {
        append(&h, "t", "x").await;
    }
    let cases = [
        (u64::MAX, u64::MAX, false, vec![]),
        (u64::MAX - 1, u64::MAX, true, vec![]),
        (i64::MAX as u64, u64::MAX, false, vec![]),
        (i64::MAX as u64 + 1, u64::MAX, false, vec![]),
        (0, 0, true, vec![]),
        (0, u64::MAX, true, vec![3, 2, 1]),
        (0, i64::MAX as u64 + 7, false, vec![1, 2, 3]),
    ];
    for (after, before, newest_first, expected) in cases {
        let q = ReadQuery {
            after,
            before,
            limit: usize::MAX,
            newest_first,
        };
        let (pos, page) = h
            .store
            .read("t", q)
            .await
            .unwrap_or_else(|e| panic!("after={after} before={before}: {e}"));
        assert_eq!(pos.last, 3);
        let got: Vec<u64> = page.iter().map(|s| s.notification.offset).collect();
        assert_eq!(got, expected, "after={after} before={before}");
    }
}

async fn idempotency_returns_the_original_and_appends_nothing(make: Make) {
    let h = make(retention()).await;
    let key = || Some("k-1".to_owned());
    let first = h.store.append("t", note("one"), key()).await.unwrap();
    assert!(!first.duplicate);
    let again = h.store.append("t", note("two"), key()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.stored.notification, first.stored.notification);
    // The same key on another topic is another key.
    let other = h.store.append("u", note("three"), key()).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(read_all(&h, "t").await.1, vec![1]);
}

async fn append_many_appends_each_item_as_append_would(make: Make) {
    let mut h = make(retention()).await;
    let key = |k: &str| Some(k.to_owned());
    let seen = h
        .store
        .append("@b", note("before"), key("k"))
        .await
        .unwrap();
    let item = |topic: &str, body: &str, key: Option<String>| AppendItem {
        topic: topic.into(),
        new: note(body),
        key,
    };
    let results = h
        .store
        .append_many(vec![
            item("@a", "a1", None),
            item("@b", "b-again", key("k")),
            item("@c", "c1", key("k")),
            item("@a", "a2", None),
            item("@c", "c-again", key("k")),
        ])
        .await;
    let got: Vec<(String, u64, bool, String)> = results
        .into_iter()
        .map(|r| {
            let a = r.unwrap();
            let n = &a.stored.notification;
            (n.topic.clone(), n.offset, a.duplicate, n.body.clone())
        })
        .collect();
    let want = |t: &str, o: u64, d: bool, b: &str| (t.to_owned(), o, d, b.to_owned());
    assert_eq!(
        got,
        vec![
            want("@a", 1, false, "a1"),
            want("@b", 1, true, "before"),
            want("@c", 1, false, "c1"),
            want("@a", 2, false, "a2"),
            want("@c", 1, true, "c1"),
        ],
        "one result per item, in order, each as its own append (keys included)"
    );
    assert_eq!(seen.stored.notification.offset, 1);
    // The feed has each new one once (the first append's included), in offset order per topic.
    let mut fed_items = Vec::new();
    for _ in 0..4 {
        let s = fed(&mut h.feed).await;
        fed_items.push((s.notification.topic.clone(), s.notification.offset));
    }
    for topic in ["@a", "@b", "@c"] {
        let offsets: Vec<u64> = fed_items
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, o)| *o)
            .collect();
        let want: Vec<u64> = if topic == "@a" { vec![1, 2] } else { vec![1] };
        assert_eq!(offsets, want, "{topic} on the feed");
    }
    assert_eq!(read_all(&h, "@a").await.1, vec![1, 2]);
    assert_eq!(
        h.store
            .inbox_list("@a", Default::default(), 10)
            .await
            .unwrap()
            .1
            .unread,
        2
    );
}

async fn retention_by_count_keeps_the_newest_and_never_reuses_offsets(make: Make) {
    let h = make(Retention {
        max_count: 5,
        ..retention()
    })
    .await;
    for _ in 0..12 {
        append(&h, "t", "x").await;
    }
    h.store.prune().await.unwrap();
    let (pos, offs) = read_all(&h, "t").await;
    assert_eq!(offs, vec![8, 9, 10, 11, 12]);
    assert_eq!((pos.first, pos.last), (8, 12));
    assert_eq!(append(&h, "t", "x").await.notification.offset, 13);
}

async fn retention_by_age_drops_what_is_older(make: Make) {
    let h = make(Retention {
        max_age: Duration::from_millis(50),
        ..retention()
    })
    .await;
    for _ in 0..3 {
        append(&h, "t", "old").await;
    }
    // Wall-clock time: notification times are Unix milliseconds. No timing is asserted, only
    // that what is older than the age is dropped and what is younger is kept.
    tokio::time::sleep(Duration::from_millis(120)).await;
    append(&h, "t", "new").await;
    assert_eq!(h.store.prune().await.unwrap(), 3);
    let (pos, offs) = read_all(&h, "t").await;
    assert_eq!(offs, vec![4]);
    assert_eq!((pos.first, pos.last), (4, 4));
}

async fn the_epoch_is_the_same_for_every_topic_of_one_store(make: Make) {
    let h = make(retention()).await;
    let a = append(&h, "a", "x").await;
    let b = append(&h, "b", "x").await;
    assert_eq!(a.notification.epoch, b.notification.epoch);
    assert_eq!(
        h.store.head("never").await.unwrap().epoch,
        a.notification.epoch
    );
    assert!(!a.notification.epoch.is_empty());
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test]
async fn sqlite_prune_works_in_chunks_and_lets_appends_through_between_them() {
    // The writer logs what it commits. After the first prune chunk a hook parks it until the
    // test has an append waiting in its queue; a prune done in one transaction could only let
    // that append commit after all of it.
    let log = Arc::new(std::sync::Mutex::new(Vec::<(&str, u64)>::new()));
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate_rx = std::sync::Mutex::new(gate_rx);
    let armed = Arc::new(AtomicBool::new(false));
    let (log_p, log_c, armed_p) = (log.clone(), log.clone(), armed.clone());
    let hooks = Hooks {
        after_prune_chunk: Some(Arc::new(move |dropped| {
            let first = {
                let mut log = log_p.lock().unwrap();
                log.push(("chunk", dropped));
                log.iter().filter(|e| e.0 == "chunk").count() == 1
            };
            if first && armed_p.load(Ordering::SeqCst) {
                let _ = gate_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
        })),
        before_commit: Some(Arc::new(move || log_c.lock().unwrap().push(("append", 0)))),
        ..Hooks::default()
    };
    let options = SqliteOptions {
        sync: SyncMode::Normal,
        prune_chunk: 100,
        ..SqliteOptions::default()
    };
    let h = sqlite_with(
        Retention {
            max_count: 10,
            ..retention()
        },
        options,
        hooks,
    );
    // 2,000 in one topic and 10 topics of 100, over a limit of 10: 2,890 rows to drop.
    for _ in 0..2000 {
        append(&h, "big", "x").await;
    }
    for t in 0..10 {
        for _ in 0..100 {
            append(&h, &format!("small-{t}"), "x").await;
        }
    }
    log.lock().unwrap().clear();
    armed.store(true, Ordering::SeqCst);
    let prune = {
        let store = h.store.clone();
        tokio::spawn(async move { store.prune().await.unwrap() })
    };
    while log.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The writer is parked after chunk 1: queue an append, and release it once it is queued.
    let appended = {
        let store = h.store.clone();
        tokio::spawn(async move { store.append("other", note("during"), None).await })
    };
    while h.store.stats().queued_writes == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate_tx.send(()).unwrap();
    appended.await.unwrap().unwrap();
    assert_eq!(prune.await.unwrap(), 1990 + 10 * 90);

    let log = log.lock().unwrap().clone();
    let kinds: Vec<&str> = log.iter().map(|e| e.0).collect();
    assert_eq!(kinds[..2], ["chunk", "append"], "{kinds:?}");
    assert!(
        kinds[2..].iter().all(|k| *k == "chunk") && kinds.len() > 30,
        "{kinds:?}"
    );
    let mut previous = 0;
    for (kind, dropped) in &log {
        if *kind == "chunk" {
            assert!(
                dropped - previous <= 100,
                "a chunk dropped more than 100 rows"
            );
            previous = *dropped;
        }
    }
    assert_eq!(
        read_all(&h, "big").await.1,
        (1991..=2000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn sqlite_heads_come_from_memory_and_reads_from_a_bounded_pool() {
    let options = SqliteOptions {
        sync: SyncMode::Normal,
        readers: 2,
        cached_topics: 50,
        ..SqliteOptions::default()
    };
    let h = sqlite_with(retention(), options, Hooks::default());
    append(&h, "hot", "x").await;
    let before = h.store.stats().disk_reads;
    for _ in 0..100 {
        assert_eq!(h.store.head("hot").await.unwrap().last, 1);
    }
    assert_eq!(
        h.store.stats().disk_reads,
        before,
        "no disk read for a cached head"
    );
    // 64 reads at once run at most two at a time.
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = h.store.clone();
            tokio::spawn(async move { store.read("hot", ReadQuery::after(0, 10)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = h.store.stats();
    assert!(stats.concurrent_reads_max <= 2, "{stats:?}");
    // A flood of topic names leaves the cache at its bound.
    for i in 0..200 {
        h.store.head(&format!("flood-{i}")).await.unwrap();
    }
    assert!(h.store.stats().cached_topics <= 50);
    // Evicted or not, heads stay right.
    assert_eq!(h.store.head("hot").await.unwrap().last, 1);
}

#[tokio::test]
async fn sqlite_writer_death_is_reported_and_nothing_more_is_acknowledged() {
    let die = Arc::new(AtomicBool::new(false));
    let hooks = Hooks::writer_dies_when(die.clone());
    let options = SqliteOptions {
        sync: SyncMode::Normal,
        ..SqliteOptions::default()
    };
    let h = sqlite_with(retention(), options, hooks);
    append(&h, "t", "ok").await;
    assert!(h.store.fatal().is_none());
    die.store(true, Ordering::SeqCst);
    let failed = h.store.append("t", note("lost"), None).await;
    assert!(matches!(failed, Err(StoreError::Closed)), "{failed:?}");
    let why = tokio::time::timeout(Duration::from_secs(10), h.store.failed())
        .await
        .expect("failure reported");
    assert!(why.contains("injected writer failure"), "{why}");
    assert!(h.store.fatal().is_some());
    assert!(matches!(
        h.store.append("t", note("later"), None).await,
        Err(StoreError::Closed)
    ));
    // What was acknowledged is still there, and what was refused is not.
    assert_eq!(read_all(&h, "t").await.1, vec![1]);
}

/// The SQLite writer's first group commit, held (in its `before_commit` hook) until the test
/// releases it, so that what the test queues meanwhile is all waiting for the next batch; and
/// the number of commits made.
struct HeldCommit {
    held: Option<std::sync::mpsc::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
    commits: Arc<std::sync::atomic::AtomicUsize>,
}

fn hold_first_commit() -> (Hooks, HeldCommit) {
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = commits.clone();
    let hooks = Hooks {
        before_commit: Some(Arc::new(move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = held_tx.send(());
                let _ = release_rx.lock().unwrap().recv();
            }
        })),
        ..Hooks::default()
    };
    let held = HeldCommit {
        held: Some(held_rx),
        release: release_tx,
        commits,
    };
    (hooks, held)
}

impl HeldCommit {
    /// Resolves once the writer is inside its first commit.
    async fn held(&mut self) {
        let rx = self.held.take().expect("held once");
        tokio::task::spawn_blocking(move || rx.recv())
            .await
            .unwrap()
            .unwrap();
    }

    fn release(&self) {
        self.release.send(()).unwrap();
    }

    fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

/// A group of appends larger than the retention is trimmed to it by the script that appends
/// it (once, after the group): no prune has to come by. Forced: Redis holds writes while the
/// first append is in flight, so the others queue and go as one group.
#[tokio::test]
async fn redis_a_group_larger_than_the_retention_keeps_the_newest() {
    let h = redis(Retention {
        max_count: 5,
        ..retention()
    })
    .await;
    let url = h._redis.as_ref().unwrap().0.url();
    let mut admin = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let client = |args: &[&str]| {
        let mut cmd = ::redis::cmd("CLIENT");
        for a in args {
            cmd.arg(*a);
        }
        cmd
    };
    let _: () = client(&["PAUSE", "10000", "WRITE"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let appends: Vec<_> = (0..12)
        .map(|i| {
            let store = h.store.clone();
            tokio::spawn(async move { store.append("t", note(&format!("{i}")), None).await })
        })
        .collect();
    // One turn of this (single-threaded) runtime: every task has queued its append.
    tokio::task::yield_now().await;
    let _: () = client(&["UNPAUSE"]).query_async(&mut admin).await.unwrap();
    for a in appends {
        a.await.unwrap().unwrap();
    }
    let (pos, offs) = read_all(&h, "t").await;
    assert_eq!(offs, vec![8, 9, 10, 11, 12]);
    assert_eq!((pos.first, pos.last), (8, 12));
}

/// An arrival and a change to the same inbox committed in one group transaction: the change
/// sees the arrival, and the count written at the end of the batch keeps the change. Forced:
/// the first commit is held until both are queued behind it.
#[tokio::test]
async fn sqlite_an_inbox_change_in_the_same_batch_as_an_arrival_keeps_the_count() {
    let (hooks, mut held) = hold_first_commit();
    let options = SqliteOptions {
        sync: SyncMode::Normal,
        ..SqliteOptions::default()
    };
    let h = sqlite_with(retention(), options, hooks);
    let store = h.store.clone();
    let first_append = tokio::spawn(async move { store.append("@ana", note("1"), None).await });
    held.held().await;
    // The writer is inside its first commit: these two queue up for the next batch together.
    let store = h.store.clone();
    let second = tokio::spawn(async move { store.append("@ana", note("2"), None).await });
    let store = h.store.clone();
    let change = tokio::spawn(async move {
        // Queued after the append (the writer takes commands in order).
        tokio::task::yield_now().await;
        store
            .inbox_update("@ana", InboxUpdate::Read { offsets: vec![2] })
            .await
    });
    while h.store.stats().queued_writes < 2 {
        tokio::task::yield_now().await;
    }
    held.release();
    first_append.await.unwrap().unwrap();
    assert_eq!(
        second.await.unwrap().unwrap().stored.inbox.unwrap().unread,
        2
    );
    let c = change.await.unwrap().unwrap();
    assert_eq!(
        (c.changed, c.count.unread),
        (1, 1),
        "the change saw the arrival"
    );
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!(
        (listed, count.unread),
        (1, 1),
        "the batch's end kept the change"
    );
}

/// A bulk (`append_many`) is one group commit, never split between two, even when it is
/// larger than `max_batch`. Forced: the first commit is held until the bulk is queued behind
/// it, so the writer finds it all waiting (one by one, 1,000 appends would be taken 600 and
/// 400).
#[tokio::test]
async fn sqlite_a_bulk_is_one_group_commit() {
    let (hooks, mut held) = hold_first_commit();
    let options = SqliteOptions {
        sync: SyncMode::Normal,
        max_batch: 600,
        ..SqliteOptions::default()
    };
    let mut h = sqlite_with(retention(), options, hooks);
    let store = h.store.clone();
    let first = tokio::spawn(async move { store.append("t", note("first"), None).await });
    held.held().await;
    let items = (0..1000)
        .map(|i| AppendItem {
            topic: format!("@user-{i}"),
            new: note("bulk"),
            key: None,
        })
        .collect();
    let store = h.store.clone();
    let bulk = tokio::spawn(async move { store.append_many(items).await });
    while h.store.stats().queued_writes < 1 {
        tokio::task::yield_now().await;
    }
    held.release();
    first.await.unwrap().unwrap();
    let results = bulk.await.unwrap();
    assert_eq!(results.len(), 1000);
    for (i, r) in results.into_iter().enumerate() {
        let n = &r.unwrap().stored.notification;
        assert_eq!(
            (n.topic.as_str(), n.offset),
            (format!("@user-{i}").as_str(), 1)
        );
    }
    assert_eq!(
        held.commits(),
        2,
        "the held append's commit and one for the whole bulk"
    );
    for _ in 0..1001 {
        fed(&mut h.feed).await;
    }
}

/// Retention that removes every notification of a topic (its newest included) leaves its head
/// and its count where they were. Checked after a restart, where nothing is cached: offsets
/// are not reused, and the count's counter has gone up past every count seen before.
#[tokio::test]
async fn sqlite_retention_that_removes_the_newest_keeps_the_head_and_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let aging = Retention {
        max_age: Duration::from_millis(50),
        ..retention()
    };
    let h = sqlite_on(&path, aging, unsynced(), Hooks::default());
    for _ in 0..3 {
        append(&h, "t", "old").await;
    }
    append(&h, "@ana", "1").await;
    append(&h, "@ana", "2").await;
    h.store
        .inbox_update("@ana", InboxUpdate::Read { offsets: vec![1] })
        .await
        .unwrap();
    let newest = append(&h, "@ana", "3").await.inbox.unwrap();
    assert_eq!(newest, InboxCount { unread: 2, seq: 4 });
    // Wall-clock time: notification times are Unix milliseconds (no timing asserted).
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(h.store.prune().await.unwrap(), 6);
    drop(h);

    let h = sqlite_on(&path, aging, unsynced(), Hooks::default());
    assert_eq!(h.store.head("t").await.unwrap().last, 3);
    assert_eq!(h.store.head("@ana").await.unwrap().last, 3);
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!(
        (listed, count.unread),
        (0, 0),
        "both unread notifications were removed"
    );
    assert!(count.seq > newest.seq, "{count:?} after {newest:?}");
    assert_eq!(append(&h, "t", "new").await.notification.offset, 4);
    let next = append(&h, "@ana", "4").await;
    assert_eq!(next.notification.offset, 4);
    assert_eq!(
        next.inbox.unwrap(),
        InboxCount {
            unread: 1,
            seq: count.seq + 1
        }
    );
}

/// A database of a newer Herald (a schema this one does not know) is not opened: its rows may
/// mean what this version would get wrong.
#[tokio::test]
async fn sqlite_a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let newer = sqlite::MIGRATIONS.len() + 1;
    sqlite::connect(&path)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let (tx, _feed) = mpsc::channel(1);
    let err = SqliteStore::open(
        &path,
        SqliteOptions::default(),
        retention(),
        tx,
        Hooks::default(),
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains(&format!("schema version {newer}")),
        "{err}"
    );
}

/// The WAL is copied back into the database by the checkpoint thread, not only by the
/// writer's own (backstop) checkpoint, which these appends (a few thousand WAL pages) do not
/// reach.
#[tokio::test]
async fn sqlite_checkpoints_run_beside_the_writer() {
    let h = sqlite(retention());
    let db = h._dir.as_ref().unwrap().path().join("t.db");
    let before = std::fs::metadata(&db).unwrap().len();
    let body = "x".repeat(10_000);
    for i in 0..300 {
        h.store
            .append(&format!("t{}", i % 10), note(&body), None)
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&db).unwrap().len() < before + 2_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Memory

#[tokio::test]
async fn memory_store_bounds_topics_and_idempotency_keys() {
    let (tx, _feed) = mpsc::channel(100_000);
    let store = MemoryStore::with_limits(
        tx,
        retention(),
        MemoryLimits {
            max_topics: 3,
            max_idempotency_keys: 2,
        },
    );
    for t in ["a", "b", "c"] {
        store.append(t, note("x"), None).await.unwrap();
    }
    assert!(matches!(
        store.append("d", note("x"), None).await,
        Err(StoreError::Full(_))
    ));
    // Existing topics keep working.
    store.append("a", note("x"), None).await.unwrap();
    // Three keys with room for two: the oldest is forgotten, the newer two are remembered.
    for k in ["k1", "k2", "k3"] {
        store.append("a", note(k), Some(k.into())).await.unwrap();
    }
    assert!(
        store
            .append("a", note("again"), Some("k3".into()))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        store
            .append("a", note("again"), Some("k2".into()))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        !store
            .append("a", note("again"), Some("k1".into()))
            .await
            .unwrap()
            .duplicate
    );
}

// ---------------------------------------------------------------------------------------------
// Inboxes.

use app::protocol::{InboxFilter, InboxQuery, InboxUpdate};

/// What the inbox really holds unread (listed), to hold the kept count against.
async fn listed_unread(h: &Harness, topic: &str) -> (u64, InboxCount) {
    let q = InboxQuery {
        filter: InboxFilter::Unread,
        ..Default::default()
    };
    let (items, count) = h.store.inbox_list(topic, q, 100_000).await.unwrap();
    assert!(items.iter().all(|i| !i.read && !i.archived));
    (items.len() as u64, count)
}

fn offsets(o: &[u64]) -> Vec<u64> {
    o.to_vec()
}

async fn an_inbox_counts_arrivals_and_every_state_change_exactly(make: Make) {
    let h = make(retention()).await;
    let mut seqs = Vec::new();
    for i in 1..=5u64 {
        let s = append(&h, "@ana", "hi").await;
        let count = s
            .inbox
            .expect("an inbox arrival carries the count after it");
        assert_eq!(count.unread, i);
        seqs.push(count.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq rises: {seqs:?}");
    assert!(
        append(&h, "ops", "x").await.inbox.is_none(),
        "topics have no count"
    );
    let up = |u: InboxUpdate| {
        let store = h.store.clone();
        async move { store.inbox_update("@ana", u).await.unwrap() }
    };
    let c = up(InboxUpdate::Read {
        offsets: offsets(&[1, 2, 2, 99]),
    })
    .await;
    assert_eq!(
        (c.changed, c.count.unread),
        (2, 3),
        "a repeat and an unknown offset change nothing"
    );
    assert!(c.count.seq > seqs[4]);
    let again = up(InboxUpdate::Read {
        offsets: offsets(&[1]),
    })
    .await;
    assert_eq!(
        (again.changed, again.count),
        (0, c.count),
        "no change, no new seq"
    );
    assert_eq!(
        up(InboxUpdate::Archive {
            offsets: offsets(&[1, 3])
        })
        .await
        .count
        .unread,
        2
    );
    assert_eq!(
        up(InboxUpdate::Unread {
            offsets: offsets(&[1])
        })
        .await
        .count
        .unread,
        2,
        "archived: not counted"
    );
    assert_eq!(
        up(InboxUpdate::Unarchive {
            offsets: offsets(&[1])
        })
        .await
        .count
        .unread,
        3
    );
    assert_eq!(
        up(InboxUpdate::Unread {
            offsets: offsets(&[2])
        })
        .await
        .count
        .unread,
        4
    );
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!((listed, count.unread), (4, 4));
    // Another user's inbox is separate.
    append(&h, "@bo", "x").await;
    assert_eq!(listed_unread(&h, "@bo").await.1.unread, 1);
    assert_eq!(listed_unread(&h, "@ana").await.1.unread, 4);
    // Changes to a topic that is not an inbox, or an inbox never written to, change nothing.
    assert_eq!(
        h.store
            .inbox_update("@nobody", InboxUpdate::ReadAll { up_to: 9 })
            .await
            .unwrap()
            .changed,
        0
    );
}

async fn read_all_up_to_an_offset_leaves_a_newer_arrival_unread(make: Make) {
    let h = make(retention()).await;
    for _ in 0..3 {
        append(&h, "@ana", "seen").await;
    }
    // The client saw up to 3 and clicks "mark all read" while offset 4 arrives.
    append(&h, "@ana", "new").await;
    let c = h
        .store
        .inbox_update("@ana", InboxUpdate::ReadAll { up_to: 3 })
        .await
        .unwrap();
    assert_eq!((c.changed, c.count.unread), (3, 1));
    let (items, _) = h
        .store
        .inbox_list(
            "@ana",
            InboxQuery {
                filter: InboxFilter::Unread,
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| i.notification.offset)
            .collect::<Vec<_>>(),
        vec![4]
    );
    let huge = h
        .store
        .inbox_update("@ana", InboxUpdate::ReadAll { up_to: u64::MAX })
        .await
        .unwrap();
    assert_eq!((huge.changed, huge.count.unread), (1, 0));
}

async fn an_inbox_lists_newest_first_by_filter_and_category(make: Make) {
    let h = make(retention()).await;
    for i in 1..=6u64 {
        let category = i.is_multiple_of(2).then(|| "mention".to_owned());
        let new = NewNotification {
            body: format!("n{i}"),
            category,
            ..Default::default()
        };
        h.store.append("@ana", new, None).await.unwrap();
    }
    h.store
        .inbox_update(
            "@ana",
            InboxUpdate::Read {
                offsets: vec![1, 2],
            },
        )
        .await
        .unwrap();
    h.store
        .inbox_update("@ana", InboxUpdate::Archive { offsets: vec![6] })
        .await
        .unwrap();
    let list = |filter, category: Option<&str>, before, limit| {
        let store = h.store.clone();
        let q = InboxQuery {
            filter,
            category: category.map(str::to_owned),
            before,
            limit: None,
        };
        async move {
            let (items, count) = store.inbox_list("@ana", q, limit).await.unwrap();
            (
                items
                    .iter()
                    .map(|i| (i.notification.offset, i.read, i.archived))
                    .collect::<Vec<_>>(),
                count.unread,
            )
        }
    };
    assert_eq!(
        list(InboxFilter::All, None, None, 10).await,
        (
            vec![
                (5, false, false),
                (4, false, false),
                (3, false, false),
                (2, true, false),
                (1, true, false)
            ],
            3
        )
    );
    assert_eq!(
        list(InboxFilter::Unread, None, None, 10)
            .await
            .0
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    assert_eq!(
        list(InboxFilter::Archived, None, None, 10).await.0,
        vec![(6, false, true)]
    );
    assert_eq!(
        list(InboxFilter::All, Some("mention"), None, 10)
            .await
            .0
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        vec![4, 2]
    );
    // Paging: `before` is exclusive.
    assert_eq!(
        list(InboxFilter::All, None, None, 2)
            .await
            .0
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        vec![5, 4]
    );
    assert_eq!(
        list(InboxFilter::All, None, Some(4), 2)
            .await
            .0
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    let (items, _) = h
        .store
        .inbox_list("@ana", InboxQuery::default(), 1)
        .await
        .unwrap();
    assert_eq!(items[0].notification.category, None);
    assert_eq!(items[0].notification.body, "n5");
}

async fn pruned_unread_notifications_leave_the_count(make: Make) {
    let h = make(Retention {
        max_count: 3,
        ..retention()
    })
    .await;
    for _ in 0..5 {
        append(&h, "@ana", "x").await;
    }
    h.store
        .inbox_update("@ana", InboxUpdate::Read { offsets: vec![4] })
        .await
        .unwrap();
    h.store.prune().await.unwrap();
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!(
        (listed, count.unread),
        (2, 2),
        "3, 5 were left unread; 1, 2 were pruned"
    );
    // The next arrival counts from what the prune left, not from before it (a store that
    // trims on append may drop offset 3 with it: what counts is that all three agree).
    let next = append(&h, "@ana", "after the prune").await;
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!(
        (next.inbox.unwrap().unread, count.unread),
        (listed, listed),
        "the arrival's count, the stored count and the unread items listed"
    );
}

async fn concurrent_changes_and_arrivals_keep_the_count_exact(make: Make) {
    let h = make(retention()).await;
    for _ in 0..20 {
        append(&h, "@ana", "x").await;
    }
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let o = i % 20 + 1;
            let u = match i % 5 {
                0 => InboxUpdate::Read {
                    offsets: vec![o, o + 1],
                },
                1 => InboxUpdate::Unread { offsets: vec![o] },
                2 => InboxUpdate::Archive { offsets: vec![o] },
                3 => InboxUpdate::ReadAll { up_to: o },
                _ => InboxUpdate::Unarchive {
                    offsets: vec![o, 1],
                },
            };
            store.inbox_update("@ana", u).await.unwrap();
        }));
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            store.append("@ana", note("racing"), None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (listed, count) = listed_unread(&h, "@ana").await;
    assert_eq!(
        count.unread, listed,
        "the kept count is what the inbox holds unread"
    );
}

/// Every connection plans a statement once: a read of a range of offsets in a topic (the plan
/// SQLite built with STAT4 would otherwise make again for every new value bound) is not parsed
/// and planned again from one page of history to the next.
#[tokio::test]
async fn sqlite_statements_are_planned_once_whatever_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.db");
    // The store's schema, then a connection as the store opens its own.
    drop(sqlite_on(&path, retention(), unsynced(), Hooks::default()));
    let conn = sqlite::connect(&path).unwrap();
    let mut st = conn
        .prepare(
            "SELECT offset FROM notifications
             WHERE topic = ?1 AND offset > ?2 AND offset < ?3 ORDER BY offset LIMIT ?4",
        )
        .unwrap();
    for (topic, after, before) in [("a", 0, 10), ("b", 5, 100), ("c", 1, 2)] {
        let _: Vec<u64> = st
            .query_map(rusqlite::params![topic, after, before, 50], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    }
    assert_eq!(
        st.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "planned again for new values"
    );
}
