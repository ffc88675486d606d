//! A chat room under load: `members` users in one room (presence on), each sending a message
//! from its own socket every `interval` seconds (staggered), every member receiving every
//! message. Measures send-to-receive latency, loss, duplicates and order at each member.
//!
//! ```text
//! herald-bench --token-secret S chat --members 1000 --interval-secs 10 --seconds 30
//! ```
//! Each member has two sockets: one only reads (the cheap raw reader of the fan-out
//! benchmark), one only sends. Both are the same user, so presence counts them once.

use super::{histogram, percentiles, raw_ws, source_for, spawn_progress, Cli, Percentiles};
use anyhow::{bail, Context};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Clone)]
pub struct ChatArgs {
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Seconds between two messages of one member.
    #[arg(long, default_value_t = 10.0)]
    interval_secs: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Members joining per second while the room fills (each join is announced to everyone
    /// already in it: joining all at once is a presence storm of its own).
    #[arg(long, default_value_t = 200.0)]
    join_rate: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct ChatReport {
    members: usize,
    messages_per_sec_in: f64,
    deliveries_per_sec_offered: f64,
    sent: u64,
    expected_deliveries: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    deliveries_per_sec: f64,
    latency: Percentiles,
    server_cpu_secs: Option<f64>,
    setup_seconds: f64,
}

pub async fn run(cli: &Cli, a: &ChatArgs) -> anyhow::Result<ChatReport> {
    if cli.token_secret.is_none() {
        bail!("chat needs --token-secret: each member signs in as its own user");
    }
    let room = format!("chat-bench-{}", std::process::id());
    let n = a.members.max(1);
    let per_member = (a.seconds / a.interval_secs).floor().max(1.0) as u64;
    let expected = per_member * n as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let progress = spawn_progress("chat", {
        let (ready, delivered) = (ready.clone(), delivered.clone());
        move || {
            format!(
                "ready {} delivered {}",
                ready.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed)
            )
        }
    });
    let setup = Instant::now();
    let scopes = ["read:chat-*", "publish:chat-*"];
    let offset_key = memchr::memmem::Finder::new(b"\"offset\":").into_owned();
    let body_key = memchr::memmem::Finder::new(b"\"body\":\"").into_owned();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each member reads from the moment it is in the room, as a chat client does (the
    // others' presence arrives meanwhile).
    let mut receiving = Vec::with_capacity(n);
    for i in 0..n {
        let token = cli.token_with(&format!("member-{i}"), &scopes)?;
        let (addr, room, ready) = (cli.addr, room.clone(), ready.clone());
        let (delivered, last_delivery, stop) =
            (delivered.clone(), last_delivery.clone(), stop_rx.clone());
        let keys = (offset_key.clone(), body_key.clone());
        receiving.push(tokio::spawn(async move {
            let ws = raw_ws::RawWs::join(addr, source_for(i), Some(&token), &room).await?;
            ready.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(super::receive(ws, expected, stop, keys, delivered, last_delivery).await)
        }));
        tokio::time::sleep_until(
            (setup + Duration::from_secs_f64((i + 1) as f64 / a.join_rate.max(1.0))).into(),
        )
        .await;
    }
    while ready.load(Ordering::Relaxed) < n {
        if receiving.iter().any(|r| r.is_finished()) {
            bail!("a member could not join the room");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let token = cli.token_with(&format!("member-{i}"), &scopes)?;
        let ws = super::open_ws(cli.addr, source_for(i + 7), Some(token)).await?;
        senders.push(ws);
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!("[chat] {n} members in {room} in {setup_seconds:.1}s");
    let cpu_before = cli.cpu_secs();
    let start = Instant::now();
    let start_us = super::now_micros();
    let sent = Arc::new(AtomicU64::new(0));
    let mut sending = Vec::with_capacity(n);
    for (i, ws) in senders.into_iter().enumerate() {
        let (room, sent, a) = (room.clone(), sent.clone(), a.clone());
        sending.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            // Answers the server's pings (and drops everything else).
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let offset = a.interval_secs * i as f64 / n as f64;
            for k in 0..per_member {
                let at = start + Duration::from_secs_f64(offset + k as f64 * a.interval_secs);
                tokio::time::sleep_until(at.into()).await;
                let mut body = format!("{:020}", super::now_micros());
                body.extend(std::iter::repeat_n('.', a.body_bytes.saturating_sub(20)));
                let frame = serde_json::json!({"type": "publish", "topic": room, "body": body});
                tx.send(Message::text(frame.to_string())).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            drain.abort();
            anyhow::Ok(())
        }));
    }
    for s in sending {
        s.await??;
    }
    let total_sent = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(a.drain);
    while delivered.load(Ordering::Relaxed) < total_sent * n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let cpu_after = cli.cpu_secs();
    progress.abort();
    let mut report = ChatReport {
        members: n,
        messages_per_sec_in: n as f64 / a.interval_secs,
        deliveries_per_sec_offered: (n * n) as f64 / a.interval_secs,
        sent: total_sent,
        expected_deliveries: total_sent * n as u64,
        server_cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
        setup_seconds,
        ..Default::default()
    };
    let mut h = histogram();
    for r in receiving {
        // The sockets close only now, after the stop: see `receive`.
        let (r, _ws) = r.await??;
        report.delivered += r.delivered;
        report.duplicated += r.duplicated;
        report.out_of_order += r.out_of_order;
        for &l in &r.latencies {
            let _ = h.record(u64::from(l).max(1));
        }
    }
    report.lost = report.expected_deliveries.saturating_sub(report.delivered);
    let end = last_delivery.load(Ordering::Relaxed).max(start_us + 1);
    report.deliveries_per_sec = report.delivered as f64 / ((end - start_us) as f64 / 1e6);
    report.latency = percentiles(&h);
    Ok(report)
}

#[derive(Args, Clone)]
pub struct StormArgs {
    /// Members who stay in the room and watch.
    #[arg(long, default_value_t = 100)]
    stable: usize,
    /// Users who join and leave during the storm.
    #[arg(long, default_value_t = 1000)]
    storm: usize,
    /// Seconds the storm's joins and leaves are spread over.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct StormReport {
    stable: usize,
    storm: usize,
    /// From the first storm join until the last storm socket was closed.
    storm_seconds: f64,
    /// From the last storm socket's close until every stable member's list was right again.
    settle_ms: f64,
    /// Stable members whose list was right at the end (all of them, or the run failed).
    right_at_end: usize,
    /// Stable members the server cut (slow consumers) during the storm.
    cut: usize,
    server_cpu_secs: Option<f64>,
}

/// A presence storm: `storm` users join a room and leave again within `seconds`, while
/// `stable` members watch; how long until every watcher's member list is right again.
pub async fn storm(cli: &Cli, a: &StormArgs) -> anyhow::Result<StormReport> {
    if cli.token_secret.is_none() {
        bail!("presence-storm needs --token-secret");
    }
    let room = format!("chat-storm-{}", std::process::id());
    let scopes = ["read:chat-*"];
    let right = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for i in 0..a.stable {
        let token = cli.token_with(&format!("stable-{i}"), &scopes)?;
        let (addr, room, right, cut, stable) =
            (cli.addr, room.clone(), right.clone(), cut.clone(), a.stable);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        watchers.push(tokio::spawn(async move {
            let mut ws = raw_ws::RawWs::connect(addr, source_for(i)).await?;
            ws.send_text(&super::auth_frame(&token)).await?;
            ws.send_text(&format!(r#"{{"type":"subscribe","topic":"{room}"}}"#))
                .await?;
            let mut roster = Roster::default();
            let mut was_right = false;
            let mut ready = Some(ready_tx);
            loop {
                let Some(f) = ws.next().await? else {
                    cut.fetch_add(1, Ordering::Relaxed);
                    if was_right {
                        right.fetch_sub(1, Ordering::Relaxed);
                    }
                    return anyhow::Ok(());
                };
                let v: serde_json::Value = match serde_json::from_slice(ws.bytes(&f)) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                match v["type"].as_str() {
                    Some("subscribed") => {
                        roster.list(&v);
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    // Frames were dropped while this watcher was behind: the list now.
                    Some("presence_sync") => roster.list(&v),
                    Some("presence") => roster.presence(
                        v["user"].as_str().unwrap_or_default(),
                        v["action"] == "join",
                    ),
                    _ => continue,
                }
                let is_right = roster.right(stable);
                if is_right != was_right {
                    if is_right {
                        right.fetch_add(1, Ordering::Relaxed);
                    } else {
                        right.fetch_sub(1, Ordering::Relaxed);
                    }
                    was_right = is_right;
                }
            }
        }));
        ready_rx.await.context("a watcher could not join")?;
    }
    // Every watcher knows every other before the storm.
    let deadline = Instant::now() + Duration::from_secs(30);
    while right.load(Ordering::Relaxed) < a.stable {
        if Instant::now() > deadline {
            bail!("the watchers never saw each other");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_before = cli.cpu_secs();
    let start = Instant::now();
    let mut stormers = Vec::with_capacity(a.storm);
    for i in 0..a.storm {
        let token = cli.token_with(&format!("storm-{i}"), &scopes)?;
        let (addr, room) = (cli.addr, room.clone());
        let at =
            start + Duration::from_secs_f64(a.seconds * i as f64 / a.storm.max(1) as f64 / 2.0);
        let leave_at = at + Duration::from_secs_f64(a.seconds / 2.0);
        stormers.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let source = source_for(a_index(i));
            let ws = raw_ws::RawWs::join(addr, source, Some(&token), &room).await?;
            tokio::time::sleep_until(leave_at.into()).await;
            drop(ws);
            anyhow::Ok(())
        }));
    }
    for s in stormers {
        s.await??;
    }
    let storm_seconds = start.elapsed().as_secs_f64();
    let closed = Instant::now();
    let deadline = closed + Duration::from_secs(30);
    while right.load(Ordering::Relaxed) + cut.load(Ordering::Relaxed) < a.stable
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let settle_ms = closed.elapsed().as_secs_f64() * 1000.0;
    let cpu_after = cli.cpu_secs();
    let report = StormReport {
        stable: a.stable,
        storm: a.storm,
        storm_seconds,
        settle_ms,
        right_at_end: right.load(Ordering::Relaxed),
        cut: cut.load(Ordering::Relaxed),
        server_cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
    };
    for w in watchers {
        w.abort();
    }
    Ok(report)
}

/// What one watcher believes about the room: who, while the server lists the members; how
/// many, once the room is larger than the server lists (`--presence-list-max`).
#[derive(Default)]
struct Roster {
    stables: std::collections::HashSet<String>,
    storms: i64,
    count: Option<i64>,
}

impl Roster {
    /// A `subscribed` or `presence_sync` frame: the room as it is.
    fn list(&mut self, v: &serde_json::Value) {
        match v["members"].as_array() {
            Some(list) => {
                self.count = None;
                self.stables.clear();
                self.storms = 0;
                for u in list.iter().filter_map(|u| u.as_str()) {
                    self.presence(u, true);
                }
            }
            None => self.count = Some(v["member_count"].as_i64().unwrap_or(0)),
        }
    }

    fn presence(&mut self, user: &str, join: bool) {
        let d = if join { 1 } else { -1 };
        if let Some(c) = &mut self.count {
            *c += d;
        }
        if user.starts_with("stable-") {
            if join {
                self.stables.insert(user.to_owned());
            } else {
                self.stables.remove(user);
            }
        } else {
            self.storms += d;
        }
    }

    /// Exactly the watchers are in the room.
    fn right(&self, stable: usize) -> bool {
        match self.count {
            Some(c) => c == stable as i64,
            None => self.storms == 0 && self.stables.len() == stable,
        }
    }
}

/// Storm sockets use other source addresses than the watchers'.
fn a_index(i: usize) -> usize {
    i + 3
}
