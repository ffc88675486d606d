//! Inbox benchmarks: targeted delivery to many distinct online users, bulk sends, and
//! mark-all-read on full inboxes.
//!
//! ```text
//! herald-bench --key K --token-secret S inbox --users 10000 --rate 30000 --messages 300000
//! herald-bench --key K inbox-ops --bulk-requests 200 --bulk-users 1000 --mark-users 200
//! ```
//! The key needs `publish:@*` (and `read:@*` for inbox-ops' mark-all-read); sockets sign in
//! as `bench-<n>` with tokens signed here (`--token-secret`) and follow their own inbox.

use super::{histogram, http, percentiles, raw_ws, source_for, spawn_progress, Cli, Percentiles};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct TargetedArgs {
    /// Distinct online users, one socket each, each following its own inbox.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Notifications to send in all; notification k goes to user k mod users.
    #[arg(long, default_value_t = 300_000)]
    messages: u64,
    /// Sends per second (0: as fast as the publishers go).
    #[arg(long, default_value_t = 30_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Notifications per request: 1 sends each with `POST /api/users/{user}/notifications`,
    /// more send them as one batch (`POST /api/notifications` with `notifications`), each
    /// still for its own user.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A prefix for the user names, so runs do not share inboxes.
    #[arg(long, default_value = "bench")]
    prefix: String,
    #[arg(long, default_value_t = 15)]
    drain: u64,
}

/// A notification body carrying its send time (what the receivers measure latency from),
/// padded with dots to `len` bytes (at least 24).
fn stamped(len: usize) -> String {
    let mut body = format!("{:020}", super::now_micros());
    body.extend(std::iter::repeat_n('.', len.max(24) - 20));
    body
}

#[derive(Debug, Default, Serialize)]
pub struct TargetedReport {
    users: usize,
    rate: f64,
    sent: u64,
    send_errors: u64,
    send_seconds: f64,
    /// Stored (fsynced, with SQLite) and answered per second.
    sends_per_sec: f64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Delivered per second, first send to last delivery.
    deliveries_per_sec: f64,
    /// Publish-to-receive.
    latency: Percentiles,
    /// Request latency of the sends.
    send_latency: Percentiles,
    /// With an offered rate: how late each send left against its place in the schedule (the
    /// senders were all busy, or the generator's core was). Large values mean the load
    /// offered was less than `rate`.
    behind_schedule: Option<Percentiles>,
    server_cpu_secs: Option<f64>,
    server_rss_kib: Option<u64>,
}

/// `users` sockets, each on its own inbox; sends spread round-robin over them at `rate`.
pub async fn targeted(cli: &Cli, a: &TargetedArgs) -> anyhow::Result<TargetedReport> {
    if cli.token_secret.is_none() {
        bail!("inbox needs --token-secret: each socket signs in as its own user");
    }
    let users = a.users.max(1);
    let per_user = a.messages.div_ceil(users as u64);
    let ready = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("inbox", {
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
    let mut connecting = Vec::with_capacity(users);
    for i in 0..users {
        let addr = cli.addr;
        let user = format!("{}-{i}", a.prefix);
        let token = cli.token_for(&user)?;
        connecting.push(tokio::spawn(async move {
            let inbox = format!("@{user}");
            raw_ws::RawWs::join(addr, source_for(i), Some(&token), &inbox).await
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let mut sockets = Vec::with_capacity(users);
    for c in connecting {
        sockets.push(c.await?.context("an inbox socket")?);
        ready.fetch_add(1, Ordering::Relaxed);
    }
    eprintln!(
        "[inbox] {} users online in {:.1}s",
        sockets.len(),
        setup.elapsed().as_secs_f64()
    );
    let offset_key = memchr::memmem::Finder::new(b"\"offset\":").into_owned();
    let body_key = memchr::memmem::Finder::new(b"\"body\":\"").into_owned();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(users);
    for ws in sockets {
        let (delivered, last_delivery) = (delivered.clone(), last_delivery.clone());
        let keys = (offset_key.clone(), body_key.clone());
        let stop = stop_rx.clone();
        readers.push(tokio::spawn(super::receive(
            ws,
            per_user,
            stop,
            keys,
            delivered,
            last_delivery,
        )));
    }

    // The senders' connections are open before the clock starts: the schedule of an offered
    // load begins with every sender ready, not with a burst to catch up with their set-up.
    let mut conns = Vec::with_capacity(a.publishers.max(1));
    for _ in 0..a.publishers.max(1) {
        conns.push(http::HttpConn::connect(cli.addr, cli.key.as_deref()).await?);
    }
    let cpu_before = cli.cpu_secs();
    let start_us = super::now_micros();
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for mut conn in conns {
        let (next, errors, a) = (next.clone(), errors.clone(), a.clone());
        pubs.push(tokio::spawn(async move {
            let (mut lat, mut late) = (Vec::new(), Vec::new());
            let (total, batch) = (per_user * users as u64, a.batch.max(1) as u64);
            loop {
                let k = next.fetch_add(batch, Ordering::Relaxed);
                if k >= total {
                    return anyhow::Ok((lat, late));
                }
                if a.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(k as f64 / a.rate);
                    tokio::time::sleep_until(due.into()).await;
                    late.push(due.elapsed().as_micros() as u64);
                }
                if batch > 1 {
                    let items: Vec<_> = (k..(k + batch).min(total))
                        .map(|k| {
                            serde_json::json!({
                                "user": format!("{}-{}", a.prefix, k % users as u64),
                                "body": stamped(a.body_bytes),
                            })
                        })
                        .collect();
                    let n = items.len() as u64;
                    let body = serde_json::json!({ "notifications": items }).to_string();
                    let t0 = Instant::now();
                    let (status, reply) = conn
                        .post_json("/api/notifications", body.as_bytes())
                        .await?;
                    let failed = if status == 200 {
                        memchr::memmem::find_iter(&reply, b"\"error\"").count() as u64
                    } else {
                        n
                    };
                    errors.fetch_add(failed, Ordering::Relaxed);
                    lat.push(t0.elapsed().as_micros() as u64);
                    continue;
                }
                let path = format!("/api/users/{}-{}/notifications", a.prefix, k % users as u64);
                let body = stamped(a.body_bytes);
                let t0 = Instant::now();
                if conn.post(&path, body.as_bytes()).await? != 201 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t0.elapsed().as_micros() as u64);
            }
        }));
    }
    let (mut send_h, mut late_h) = (histogram(), histogram());
    for p in pubs {
        let (lat, late) = p.await??;
        for l in lat {
            let _ = send_h.record(l.max(1));
        }
        for l in late {
            let _ = late_h.record(l.max(1));
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let sent = per_user * users as u64 - errors.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(a.drain);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let cpu_after = cli.cpu_secs();
    progress.abort();
    let mut report = TargetedReport {
        users,
        rate: a.rate,
        sent,
        send_errors: errors.load(Ordering::Relaxed),
        send_seconds,
        sends_per_sec: sent as f64 / send_seconds,
        send_latency: percentiles(&send_h),
        behind_schedule: (a.rate > 0.0).then(|| percentiles(&late_h)),
        server_cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
        server_rss_kib: cli.rss_kib(),
        ..Default::default()
    };
    let mut h = histogram();
    for r in readers {
        // A user's socket closes only now: the first users get all of theirs while the
        // senders still go (the last 10,000 sends each complete one user), and 10,000 closes
        // in the last half second of a run were a load of their own on the server.
        let (r, _ws) = r.await?;
        report.delivered += r.delivered;
        report.duplicated += r.duplicated;
        report.out_of_order += r.out_of_order;
        for &l in &r.latencies {
            let _ = h.record(u64::from(l).max(1));
        }
    }
    report.lost = sent.saturating_sub(report.delivered);
    let end = last_delivery.load(Ordering::Relaxed).max(start_us + 1);
    report.deliveries_per_sec = report.delivered as f64 / ((end - start_us) as f64 / 1e6);
    report.latency = percentiles(&h);
    Ok(report)
}

#[derive(Args, Clone)]
pub struct OpsArgs {
    /// Bulk requests, one after another (each to --bulk-users users).
    #[arg(long, default_value_t = 100)]
    bulk_requests: usize,
    #[arg(long, default_value_t = 1000)]
    bulk_users: usize,
    /// Then mark-all-read on this many of those inboxes (each holds --bulk-requests unread).
    #[arg(long, default_value_t = 200)]
    mark_users: usize,
    #[arg(long, default_value = "bulk")]
    prefix: String,
}

#[derive(Debug, Default, Serialize)]
pub struct OpsReport {
    bulk_users: usize,
    bulk_requests: usize,
    bulk_errors: u64,
    /// Per request of `bulk_users` users.
    bulk_latency: Percentiles,
    /// Notifications stored per second by bulk requests.
    bulk_notifications_per_sec: f64,
    unread_per_inbox: usize,
    mark_all_errors: u64,
    /// Per mark-all-read request on an inbox of `unread_per_inbox` unread.
    mark_all_latency: Percentiles,
    marked_per_request: f64,
}

/// Bulk sends (latency per request), then mark-all-read on the inboxes they filled.
pub async fn ops(cli: &Cli, a: &OpsArgs) -> anyhow::Result<OpsReport> {
    let users: Vec<String> = (0..a.bulk_users)
        .map(|i| format!("{}-{}-{i}", a.prefix, std::process::id()))
        .collect();
    let mut conn = http::HttpConn::connect(cli.addr, cli.key.as_deref()).await?;
    let mut report = OpsReport {
        bulk_users: a.bulk_users,
        bulk_requests: a.bulk_requests,
        unread_per_inbox: a.bulk_requests,
        ..Default::default()
    };
    let mut h = histogram();
    let start = Instant::now();
    for r in 0..a.bulk_requests {
        let body =
            serde_json::json!({"users": users, "body": format!("bulk {r}"), "category": "bench"});
        let t0 = Instant::now();
        let (status, _) = conn
            .post_json("/api/notifications", body.to_string().as_bytes())
            .await?;
        let _ = h.record((t0.elapsed().as_micros() as u64).max(1));
        if status != 200 {
            report.bulk_errors += 1;
        }
        if r % 20 == 19 {
            eprintln!("[inbox-ops] {} bulk requests", r + 1);
        }
    }
    report.bulk_notifications_per_sec =
        (a.bulk_requests * a.bulk_users) as f64 / start.elapsed().as_secs_f64();
    report.bulk_latency = percentiles(&h);
    let mut h = histogram();
    let mut marked = 0u64;
    for user in users.iter().take(a.mark_users) {
        let path = format!("/api/users/{user}/inbox");
        let body = format!(r#"{{"op":"read_all","up_to":{}}}"#, a.bulk_requests);
        let t0 = Instant::now();
        let (status, reply) = conn.post_json(&path, body.as_bytes()).await?;
        let _ = h.record((t0.elapsed().as_micros() as u64).max(1));
        if status != 200 {
            report.mark_all_errors += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        marked += v["changed"].as_u64().unwrap_or(0);
    }
    report.mark_all_latency = percentiles(&h);
    report.marked_per_request = marked as f64 / a.mark_users.max(1) as f64;
    Ok(report)
}
