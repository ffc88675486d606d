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

/// `herald keys add --from-stdin`: the same key on a host with its own database (a node of a
/// cluster without a shared file), read from standard input, stored hashed; a malformed or
/// already present key is refused and adds nothing.
#[tokio::test]
async fn a_key_made_on_one_host_is_imported_on_another_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let db = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let made = herald()
        .args(["keys", "add", "--db", &db(&a), "--name", "ci"])
        .args(["--allow", "publish:ops-*"])
        .output()
        .await
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let key = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let import = |input: String| {
        let b = db(&b);
        async move {
            let mut child = herald()
                .args(["keys", "add", "--db", &b, "--name", "ci", "--from-stdin"])
                .args(["--allow", "publish:ops-*"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).await.unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap()
        }
    };
    let out = import(format!("{key}\n")).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the key is not printed again");
    let keys = herald::auth::Keys::open(&b).unwrap();
    let rec = keys.verify(&key).expect("the imported key verifies on b");
    assert_eq!(rec.grants.scopes(), vec!["publish:ops-*".to_owned()]);
    let secret = key.rsplit('_').next().unwrap();
    let raw = std::fs::read(&b).unwrap();
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    // Twice: refused, with the reason.
    let again = import(key.clone()).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
    // Not a key: refused, nothing added.
    let bad = import("hk_short_secret\n".into()).await;
    assert!(!bad.status.success());
    assert_eq!(herald::auth::Keys::open(&b).unwrap().list().len(), 1);
}
