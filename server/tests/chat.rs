//! Chat rooms over the socket: order, idempotent retries, authorship from the token, presence
//! by user, typing that is never stored.

mod common;

use app::protocol::{ClientFrame, NewNotification, PresenceAction, ServerFrame};
use common::*;
use herald::RunningServer;

const ROOM: &str = "chat-lobby";

async fn member(server: &RunningServer, user: &str) -> (Client, Vec<String>) {
    join_room(server, user, ROOM).await
}

fn say(body: &str, client_id: Option<&str>, id: u64) -> ClientFrame {
    ClientFrame::Publish {
        topic: ROOM.into(),
        message: NewNotification {
            body: body.into(),
            ..Default::default()
        },
        client_id: client_id.map(str::to_owned),
        id: Some(id),
    }
}

/// The next frame that is not presence or typing.
async fn next_message(c: &mut Client) -> ServerFrame {
    loop {
        match c.next().await {
            ServerFrame::Presence { .. } | ServerFrame::Typing { .. } => continue,
            f => return f,
        }
    }
}

async fn ack(c: &mut Client) -> u64 {
    loop {
        match next_message(c).await {
            ServerFrame::Ack { position, .. } => return position.offset,
            ServerFrame::Notification(_) => continue,
            other => panic!("expected ack, got {other:?}"),
        }
    }
}

/// Everything queued for `c` before a ping's answer.
async fn settle(c: &mut Client) -> Vec<ServerFrame> {
    c.send(&ClientFrame::Ping { id: Some(99) }).await;
    let mut out = Vec::new();
    loop {
        match c.next().await {
            ServerFrame::Pong { id: Some(99) } => return out,
            f => out.push(f),
        }
    }
}

#[tokio::test]
async fn two_members_see_each_others_messages_in_the_same_order_with_their_authors() {
    let server = server(memory_config()).await;
    let (mut ana, _) = member(&server, "ana").await;
    let (mut bo, _) = member(&server, "bo").await;
    for i in 0..5 {
        ana.send(&say(&format!("ana {i}"), None, i)).await;
        bo.send(&say(&format!("bo {i}"), None, 100 + i)).await;
    }
    let mut seen = [Vec::new(), Vec::new()];
    for (k, c) in [&mut ana, &mut bo].into_iter().enumerate() {
        while seen[k].len() < 10 {
            if let ServerFrame::Notification(n) = next_message(c).await {
                seen[k].push((n.offset, n.author.clone().unwrap(), n.body.clone()));
            }
        }
    }
    assert_eq!(seen[0], seen[1], "the same messages in the same order");
    assert!(seen[0]
        .iter()
        .all(|(_, author, body)| body.starts_with(author.as_str())));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_retried_message_is_stored_once_and_the_author_cannot_be_forged() {
    let server = server(memory_config()).await;
    let (mut ana, _) = member(&server, "ana").await;
    ana.send(&say("hello", Some("m-1"), 1)).await;
    let first = ack(&mut ana).await;
    // A retry after a reconnect: same client id.
    drop(ana);
    let (mut ana, _) = member(&server, "ana").await;
    ana.send(&say("hello", Some("m-1"), 2)).await;
    assert_eq!(
        ack(&mut ana).await,
        first,
        "acknowledged with the original position"
    );
    // Another user's same client id is another message.
    let (mut bo, _) = member(&server, "bo").await;
    bo.send(&say("hello", Some("m-1"), 3)).await;
    assert_eq!(ack(&mut bo).await, first + 1);
    // A frame claiming another author.
    ana.send_text(&format!(
        r#"{{"type":"publish","topic":"{ROOM}","body":"I am bo","author":"bo","id":4}}"#
    ))
    .await;
    let forged = ack(&mut ana).await;
    let history = http(
        server.addr,
        "GET",
        &format!("/api/topics/{ROOM}/notifications?order=asc"),
        &[],
        b"",
    )
    .await
    .json();
    let notes = history["notifications"].as_array().unwrap();
    assert_eq!(notes.len(), 3, "the retry was not stored again");
    let last = &notes[2];
    assert_eq!(
        (last["offset"].as_u64(), last["author"].as_str()),
        (Some(forged), Some("ana"))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn presence_counts_a_user_once_and_sees_them_leave() {
    let server = server(memory_config()).await;
    let (mut bo, members) = member(&server, "bo").await;
    assert_eq!(members, ["bo"]);
    let (tab1, members) = member(&server, "ana").await;
    assert_eq!(members, ["ana", "bo"]);
    let (tab2, members) = member(&server, "ana").await;
    assert_eq!(members, ["ana", "bo"], "two tabs, one member");
    let joins: Vec<_> = settle(&mut bo)
        .await
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { action, user, .. } => Some((action, user)),
            _ => None,
        })
        .collect();
    assert_eq!(joins, [(PresenceAction::Join, "ana".to_owned())]);
    drop(tab1);
    assert_eq!(server.state.presence.count(ROOM), 2);
    drop(tab2);
    loop {
        if let ServerFrame::Presence { action, user, .. } = bo.next().await {
            assert_eq!((action, user.as_str()), (PresenceAction::Leave, "ana"));
            break;
        }
    }
    // Rooms without presence (the default is chat-*) list nobody.
    let token = user_token(&server, "cy", &["*"], &[], 3600);
    let mut cy = Client::connect_with(&server, &token).await;
    cy.send(&ClientFrame::Subscribe {
        topic: "news".into(),
        since: None,
        id: None,
    })
    .await;
    match cy.next().await {
        ServerFrame::Subscribed {
            members,
            member_count,
            ..
        } => assert_eq!((members, member_count), (None, None)),
        other => panic!("{other:?}"),
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_member_that_stops_answering_pings_leaves_within_the_heartbeat_timeout() {
    let mut config = memory_config();
    config.heartbeat_ms = 100;
    let server = server(config).await;
    let (mut bo, _) = member(&server, "bo").await;
    let (_silent, _) = member(&server, "ana").await; // never read again: no pongs
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "ana never left");
        if let ServerFrame::Presence {
            action: PresenceAction::Leave,
            user,
            ..
        } = bo.next().await
        {
            assert_eq!(user, "ana");
            break;
        }
    }
    assert_eq!(server.state.presence.count(ROOM), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn typing_reaches_the_room_rate_limited_and_is_never_stored() {
    let server = server(memory_config()).await;
    let (mut ana, _) = member(&server, "ana").await;
    let (mut bo, _) = member(&server, "bo").await;
    for _ in 0..5 {
        ana.send(&ClientFrame::Typing { topic: ROOM.into() }).await;
    }
    // The first reaches bo; after ana's ping is answered all five were handled, and after
    // bo's, whatever reached him has arrived: nothing more.
    match next_message_or_typing(&mut bo).await {
        ServerFrame::Typing {
            user, expires_ms, ..
        } => assert_eq!((user.as_str(), expires_ms), ("ana", 5000)),
        other => panic!("expected typing, got {other:?}"),
    }
    settle(&mut ana).await;
    let more = settle(&mut bo).await;
    assert!(more.is_empty(), "five in a burst pass on as one: {more:?}");
    let history = http(
        server.addr,
        "GET",
        &format!("/api/topics/{ROOM}/notifications"),
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(history["last_offset"], 0, "nothing stored, no offset used");
    // Typing in a room one does not follow, or in a room without presence, is refused.
    ana.send(&ClientFrame::Typing {
        topic: "chat-elsewhere".into(),
    })
    .await;
    match next_message(&mut ana).await {
        ServerFrame::Error { code, .. } => assert_eq!(code.as_str(), "not_subscribed"),
        other => panic!("{other:?}"),
    }
    server.stop().await.unwrap();
}

async fn next_message_or_typing(c: &mut Client) -> ServerFrame {
    loop {
        match c.next().await {
            ServerFrame::Presence { .. } => continue,
            f => return f,
        }
    }
}

#[tokio::test]
async fn a_member_resuming_its_room_gets_the_list_as_it_is_when_it_goes_live() {
    // The resuming member's history read pauses: people come and go meanwhile, while it is
    // not yet receiving the room's live frames.
    let (hooks, mut pauses) = common::pausing::hooks(ROOM, 2);
    let server = herald::start_with(memory_config(), hooks).await.unwrap();
    add_test_key(&server);
    let first = publish(server.addr, ROOM, "hello").await;
    let (bo, _) = member(&server, "bo").await;
    let token = user_token(&server, "ana", &["chat-*"], &["chat-*"], 3600);
    let mut ana = Client::connect_with(&server, &token).await;
    ana.send(&ClientFrame::Subscribe {
        topic: ROOM.into(),
        since: Some(app::protocol::Position {
            epoch: first.epoch.clone(),
            offset: 0,
        }),
        id: None,
    })
    .await;
    let release = pauses.recv().await.expect("the replay reads");
    let (_cy, _) = member(&server, "cy").await;
    drop(bo);
    while server.state.presence.count(ROOM) != 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = release.send(());
    let _ = pauses.recv().await.map(|r| r.send(()));
    let mut list = std::collections::BTreeSet::new();
    let mut frames = vec![ana.next().await];
    frames.extend(settle(&mut ana).await);
    for f in frames {
        match f {
            ServerFrame::Subscribed { members, .. } => {
                list = members.unwrap().into_iter().collect()
            }
            ServerFrame::PresenceSync { members, .. } => {
                list = members.unwrap().into_iter().collect()
            }
            ServerFrame::Presence { action, user, .. } => {
                if action == PresenceAction::Join {
                    list.insert(user);
                } else {
                    list.remove(&user);
                }
            }
            ServerFrame::Notification(n) => assert_eq!(n.offset, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        list.into_iter().collect::<Vec<_>>(),
        ["ana", "cy"],
        "bo left and cy came while ana replayed"
    );
    server.stop().await.unwrap();
}
