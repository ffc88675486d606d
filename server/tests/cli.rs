//! The command-line client against a real server: what `herald publish` sends, `herald
//! subscribe` prints, once and in order, across a server restart under it and a restart of the
//! subscriber itself (`--state`).

mod common;

use common::*;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use common::herald_cli as herald;

async fn cli_publish(addr: std::net::SocketAddr, topic: &str, message: &str) {
    let out = herald()
        .args(["publish", topic, message, "--title", "CLI", "--tag", "t1"])
        .args(["--server", &format!("http://{addr}")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("published to {topic}")));
}

/// A subscriber printing JSON lines; its lines come out of the returned receiver.
fn cli_subscribe(
    addr: std::net::SocketAddr,
    state: &std::path::Path,
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut child = herald()
        .args(["subscribe", "ops", "--json", "--state"])
        .arg(state)
        .args(["--server", &format!("http://{addr}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.send(serde_json::from_str(&l).expect("a JSON line"));
        }
    });
    (child, rx)
}

async fn bodies(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("a line in time")
            .expect("the subscriber is running");
        out.push(v["body"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn subscribe_prints_what_publish_sent_across_restarts_of_either() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("positions.json");
    let server1 = server(sqlite_config(&dir)).await;
    let addr = server1.addr;
    let (mut sub, mut rx) = cli_subscribe(addr, &state);
    // Subscribed once its state file holds the topic's position.
    eventually("the subscriber subscribed", WAIT, || async {
        state.exists()
    })
    .await;
    cli_publish(addr, "ops", "one").await;
    cli_publish(addr, "ops", "two").await;
    assert_eq!(bodies(&mut rx, 2).await, ["one", "two"]);

    // The server restarts under the subscriber; what is published before it is back in
    // reaches it by resume.
    server1.stop().await.unwrap();
    let mut config = sqlite_config(&dir);
    config.addr = Some(addr);
    let server2 = herald::start(config).await.unwrap();
    cli_publish(addr, "ops", "three").await;
    cli_publish(addr, "ops", "four").await;
    assert_eq!(bodies(&mut rx, 2).await, ["three", "four"]);

    // The subscriber itself is stopped with Ctrl-C (it exits cleanly) and started again: it
    // resumes from its state file.
    let pid = sub.id().unwrap().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "Ctrl-C ends it cleanly: {status:?}");
    cli_publish(addr, "ops", "five").await;
    let (_sub, mut rx) = cli_subscribe(addr, &state);
    assert_eq!(bodies(&mut rx, 1).await, ["five"]);
    cli_publish(addr, "ops", "six").await;
    let got = bodies(&mut rx, 1).await;
    assert_eq!(got, ["six"], "nothing printed twice");
    server2.stop().await.unwrap();
}

#[tokio::test]
async fn the_cli_reports_refusals_plainly() {
    let server = server(memory_config()).await;
    let out = herald()
        .env(
            "HERALD_KEY",
            "hk_nokey0000000_0123456789abcdefABCDEF0123456789",
        )
        .args([
            "publish",
            "ops",
            "x",
            "--server",
            &format!("http://{}", server.addr),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herald()
        .args([
            "publish",
            "bad topic",
            "x",
            "--server",
            &format!("http://{}", server.addr),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let out = herald()
        .env(
            "HERALD_KEY",
            "hk_nokey0000000_0123456789abcdefABCDEF0123456789",
        )
        .args([
            "subscribe",
            "ops",
            "--server",
            &format!("http://{}", server.addr),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a refused key ends the subscriber");
    server.stop().await.unwrap();
}
