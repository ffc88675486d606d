//! Who may do what, over real sockets: API keys on HTTP, tokens in the first frame, refresh,
//! revocation, anonymous readers, credentials in URLs, minting, development sign-in.

mod common;

use app::protocol::{close_code, ClientFrame, ErrorCode, ServerFrame};
use common::*;
use herald::config::{Config, Mode};
use std::time::Duration;

fn bearer(credential: &str) -> String {
    format!("Bearer {credential}")
}

#[tokio::test]
async fn publishing_needs_a_key_with_the_scope() {
    let srv = server(memory_config()).await;
    let ops = key_with(&srv, &["publish:ops-*"]);
    let path = "/api/topics/ops-db";
    let none = http_as(srv.addr, "POST", path, &[], b"x").await;
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let junk = http_as(
        srv.addr,
        "POST",
        path,
        &[("Authorization", "Bearer hk_nope")],
        b"x",
    )
    .await;
    assert_eq!(
        (junk.status, junk.error_code().as_str()),
        (401, "invalid_token")
    );
    let basic = http_as(
        srv.addr,
        "POST",
        path,
        &[("Authorization", "Basic eDp5")],
        b"x",
    )
    .await;
    assert_eq!(
        (basic.status, basic.error_code().as_str()),
        (401, "invalid_token")
    );
    let auth = bearer(&ops);
    let ok = http_as(srv.addr, "POST", path, &[("Authorization", &auth)], b"x").await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let other = http_as(
        srv.addr,
        "POST",
        "/api/topics/general",
        &[("Authorization", &auth)],
        b"x",
    )
    .await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (403, "forbidden")
    );
    // A publish key does not read.
    let read = http_as(
        srv.addr,
        "GET",
        "/api/topics/ops-db/notifications",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(
        (read.status, read.error_code().as_str()),
        (403, "forbidden")
    );
    // Stats and key management need admin:*.
    let stats = http_as(
        srv.addr,
        "GET",
        "/api/stats",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(
        (stats.status, stats.error_code().as_str()),
        (403, "forbidden")
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/stats", &[], b"").await.status,
        200
    );
    // Health needs nothing.
    assert_eq!(
        http_as(srv.addr, "GET", "/api/health", &[], b"")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_key_revoked_by_another_process_stops_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(&dir);
    let db = config.db.clone();
    let srv = server(config).await;
    // `herald keys add` and `herald keys revoke`, as another process on the same database.
    let cli = herald::auth::Keys::open(&db).unwrap();
    let grants = herald::auth::Grants::from_scopes(&["publish:*", "read:*"]).unwrap();
    let (rec, key) = cli.add("ci", grants, false).unwrap();
    let auth = bearer(&key);
    eventually("the server sees the new key", WAIT, || async {
        http_as(
            srv.addr,
            "POST",
            "/api/topics/t",
            &[("Authorization", &auth)],
            b"x",
        )
        .await
        .status
            == 201
    })
    .await;
    // A socket authenticated by the key, subscribed.
    let mut c = Client::connect_with(&srv, &key).await;
    c.subscribe("t", None).await;
    cli.revoke(&rec.id).unwrap();
    eventually("the revocation is seen", WAIT, || async {
        let r = http_as(
            srv.addr,
            "POST",
            "/api/topics/t",
            &[("Authorization", &auth)],
            b"x",
        )
        .await;
        r.status == 401 && r.error_code() == "key_revoked"
    })
    .await;
    // The socket is told why and closed at its next write.
    publish(srv.addr, "t", "after revocation").await;
    let mut saw_error = false;
    let code = loop {
        match c.try_next().await {
            Ok(ServerFrame::Error { code, .. }) => saw_error |= code == ErrorCode::KeyRevoked,
            Ok(_) => {}
            Err(End::Closed(code)) => break code,
            Err(End::Error(e)) => panic!("{e}"),
        }
    };
    assert!(saw_error);
    assert_eq!(code, Some(close_code::UNAUTHORIZED));
}

#[tokio::test]
async fn keys_are_managed_over_http_by_an_admin_key_and_revoked_at_once() {
    let srv = server(memory_config()).await;
    let created = http(
        srv.addr,
        "POST",
        "/api/keys",
        &[("Content-Type", "application/json")],
        br#"{"name":"deploy","allow":["publish:ops"]}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let listed = http(srv.addr, "GET", "/api/keys", &[], b"").await;
    assert!(
        listed.body.contains(&id) && !listed.body.contains(&key),
        "never the key itself"
    );
    let auth = bearer(&key);
    assert_eq!(
        http_as(
            srv.addr,
            "POST",
            "/api/topics/ops",
            &[("Authorization", &auth)],
            b"x"
        )
        .await
        .status,
        201
    );
    // A non-admin key cannot manage keys.
    let no = http_as(
        srv.addr,
        "DELETE",
        &format!("/api/keys/{id}"),
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(no.status, 403);
    assert_eq!(
        http(srv.addr, "DELETE", &format!("/api/keys/{id}"), &[], b"")
            .await
            .status,
        204
    );
    let r = http_as(
        srv.addr,
        "POST",
        "/api/topics/ops",
        &[("Authorization", &auth)],
        b"x",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "key_revoked"));
    assert_eq!(
        http(srv.addr, "DELETE", &format!("/api/keys/{id}"), &[], b"")
            .await
            .status,
        404
    );
    let bad = http(
        srv.addr,
        "POST",
        "/api/keys",
        &[],
        br#"{"name":"x","allow":["write:*"]}"#,
    )
    .await;
    assert_eq!((bad.status, bad.error_code().as_str()), (400, "bad_field"));
}

#[tokio::test]
async fn credentials_in_the_url_are_refused() {
    let srv = server(memory_config()).await;
    // The upgrade, before it happens.
    let url = format!("{}?token={TEST_KEY}", srv.ws_url());
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("token_in_url"), "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // The API, even with a valid key in the header as well.
    for (method, path) in [
        ("GET", "/api/topics/t/notifications?access_token=abc"),
        ("POST", "/api/topics/t?key=abc"),
    ] {
        let r = http(srv.addr, method, path, &[], b"x").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "token_in_url"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_socket_without_auth_is_refused_unless_anonymous_reading_is_configured() {
    let srv = server(memory_config()).await;
    let mut c = Client::connect_anonymous(&srv).await;
    c.send(&ClientFrame::Subscribe {
        topic: "news".into(),
        since: None,
        id: None,
    })
    .await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    assert_eq!(c.closed_with().await, Some(close_code::UNAUTHORIZED));

    let srv = server(Config {
        anonymous: true,
        public_topics: vec!["news".into()],
        ..memory_config()
    })
    .await;
    publish(srv.addr, "secret", "private history").await;
    let mut c = Client::connect_anonymous(&srv).await;
    c.subscribe("news", None).await;
    c.send(&ClientFrame::Subscribe {
        topic: "secret".into(),
        since: None,
        id: Some(7),
    })
    .await;
    match c.next().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code, id), (ErrorCode::Unauthorized, Some(7)))
        }
        other => panic!("{other:?}"),
    }
    c.send(&ClientFrame::Publish {
        topic: "news".into(),
        message: app::protocol::NewNotification {
            body: "x".into(),
            ..Default::default()
        },
        client_id: None,
        id: Some(8),
    })
    .await;
    match c.next().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code, id), (ErrorCode::Unauthorized, Some(8)))
        }
        other => panic!("{other:?}"),
    }
    // The history API and the rendered page: public yes, private no.
    assert_eq!(
        http_as(srv.addr, "GET", "/api/topics/news/notifications", &[], b"")
            .await
            .status,
        200
    );
    let private = http_as(
        srv.addr,
        "GET",
        "/api/topics/secret/notifications",
        &[],
        b"",
    )
    .await;
    assert_eq!(private.status, 401);
    let page = http_as(
        srv.addr,
        "GET",
        "/",
        &[("Cookie", "herald_topics=secret")],
        b"",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("private history"),
        "the page must not render a private topic"
    );
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let srv = server(Config {
        auth_timeout_ms: 500,
        ..memory_config()
    })
    .await;
    let mut c = Client::connect_anonymous(&srv).await;
    let code = tokio::time::timeout(Duration::from_secs(5), c.closed_with())
        .await
        .expect("closed in time");
    assert_eq!(code, Some(close_code::AUTH_TIMEOUT));
}

#[tokio::test]
async fn bad_tokens_in_the_first_frame_are_named_and_closed_with_4003() {
    let srv = server(memory_config()).await;
    let other =
        herald::auth::Tokens::hs256(b"not-the-server-secret-not-the-se", None, None, 0).unwrap();
    let forged = other
        .sign(&other.mint("ana", &Default::default(), 60).unwrap())
        .unwrap();
    let tokens = &srv.state.auth.tokens;
    let mut expired = tokens.mint("ana", &Default::default(), 60).unwrap();
    expired.exp -= 3600;
    let expired = tokens.sign(&expired).unwrap();
    for (token, code) in [
        (forged.as_str(), ErrorCode::InvalidToken),
        (expired.as_str(), ErrorCode::TokenExpired),
        ("garbage", ErrorCode::InvalidToken),
        (
            "hk_testkey00000_wrongwrongwrongwrongwrongwrong12",
            ErrorCode::InvalidToken,
        ),
    ] {
        let mut c = Client::connect_anonymous(&srv).await;
        c.send(&ClientFrame::Auth {
            token: token.into(),
        })
        .await;
        match c.next().await {
            ServerFrame::Error { code: got, .. } => assert_eq!(got, code, "{token}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.closed_with().await, Some(close_code::UNAUTHORIZED));
    }
}

#[tokio::test]
async fn a_token_grants_what_its_claims_say_and_a_refresh_keeps_the_socket() {
    let srv = server(memory_config()).await;
    let token = user_token(&srv, "ana", &["team-*"], &["team-a"], 60);
    let mut c = Client::connect_with(&srv, &token).await;
    c.subscribe("team-a", None).await;
    c.send(&ClientFrame::Subscribe {
        topic: "ops".into(),
        since: None,
        id: Some(1),
    })
    .await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::Forbidden,
            id: Some(1),
            ..
        }
    ));
    // Publishing from the socket: allowed on team-a only.
    c.send(&ClientFrame::Publish {
        topic: "team-b".into(),
        message: app::protocol::NewNotification {
            body: "x".into(),
            ..Default::default()
        },
        client_id: None,
        id: Some(2),
    })
    .await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::Forbidden,
            id: Some(2),
            ..
        }
    ));
    // Another user's token does not replace ana's, and changes nothing.
    let bob = user_token(&srv, "bob", &["*"], &["*"], 60);
    c.send(&ClientFrame::Auth { token: bob }).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::SubjectMismatch,
            ..
        }
    ));
    // A fresh token for ana: same socket, same subscription.
    let fresh = user_token(&srv, "ana", &["team-*"], &[], 600);
    c.send(&ClientFrame::Auth { token: fresh }).await;
    match c.next().await {
        ServerFrame::Authenticated { user, expires_at } => {
            assert_eq!(user, "ana");
            assert!(expires_at.unwrap() > herald_now() + 500);
        }
        other => panic!("{other:?}"),
    }
    let n = publish(srv.addr, "team-a", "still here").await;
    assert_eq!(c.notification().await.offset, n.offset);
    // A refresh that narrows the grants ends what it no longer covers.
    let narrow = user_token(&srv, "ana", &["other"], &[], 600);
    c.send(&ClientFrame::Auth { token: narrow }).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    assert!(matches!(c.next().await, ServerFrame::Unsubscribed { .. }));
    assert!(matches!(c.next().await, ServerFrame::Authenticated { .. }));
}

fn herald_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn tokens_are_minted_only_within_the_keys_grants() {
    let srv = server(memory_config()).await;
    let key = key_with(&srv, &["read:*", "publish:chat-*"]);
    let auth = bearer(&key);
    let ok = http_as(
        srv.addr,
        "POST",
        "/api/tokens",
        &[("Authorization", &auth)],
        br#"{"user":"ana","read":["general"],"publish":["chat-1"],"ttl_secs":300}"#,
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let token = ok.json()["token"].as_str().unwrap().to_owned();
    let mut c = Client::connect_with(&srv, &token).await;
    c.subscribe("general", None).await;
    let wider = http_as(
        srv.addr,
        "POST",
        "/api/tokens",
        &[("Authorization", &auth)],
        br#"{"user":"ana","publish":["*"]}"#,
    )
    .await;
    assert_eq!(
        (wider.status, wider.error_code().as_str()),
        (403, "forbidden")
    );
    let long = http_as(
        srv.addr,
        "POST",
        "/api/tokens",
        &[("Authorization", &auth)],
        br#"{"user":"ana","ttl_secs":999999}"#,
    )
    .await;
    assert_eq!(
        (long.status, long.error_code().as_str()),
        (400, "bad_field")
    );
    let anon = http_as(srv.addr, "POST", "/api/tokens", &[], br#"{"user":"ana"}"#).await;
    assert_eq!(anon.status, 401);
    // A user token cannot mint.
    let user = bearer(&token);
    let r = http_as(
        srv.addr,
        "POST",
        "/api/tokens",
        &[("Authorization", &user)],
        br#"{"user":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn development_sign_in_exists_only_in_development_mode() {
    let srv = server(memory_config()).await;
    let r = http_as(
        srv.addr,
        "POST",
        "/api/dev/token",
        &[],
        br#"{"user":"ana"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    let dev = server(Config {
        mode: Mode::Dev,
        ..memory_config()
    })
    .await;
    let r = http_as(
        dev.addr,
        "POST",
        "/api/dev/token",
        &[],
        br#"{"user":"ana"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let mut c = Client::connect_with(&dev, &token).await;
    c.subscribe("general", None).await;
    let bad = http_as(
        dev.addr,
        "POST",
        "/api/dev/token",
        &[],
        br#"{"user":"a b"}"#,
    )
    .await;
    assert_eq!((bad.status, bad.error_code().as_str()), (400, "bad_field"));
}

#[tokio::test]
async fn publishes_over_the_rate_get_429_with_retry_after() {
    let srv = server(Config {
        publish_per_sec_per_credential: 2,
        ..memory_config()
    })
    .await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(
                http(srv.addr, "POST", "/api/topics/t", &[], b"x")
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(&statuses[..4], &[201; 4], "a burst of twice the rate");
    let r = http(srv.addr, "POST", "/api/topics/t", &[], b"x").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another credential has its own budget; so does the socket path of this one.
    let other = key_with(&srv, &["publish:*"]);
    let auth = bearer(&other);
    assert_eq!(
        http_as(
            srv.addr,
            "POST",
            "/api/topics/t",
            &[("Authorization", &auth)],
            b"x"
        )
        .await
        .status,
        201
    );
    let mut c = Client::connect(&srv).await;
    c.send(&ClientFrame::Publish {
        topic: "t".into(),
        message: app::protocol::NewNotification {
            body: "x".into(),
            ..Default::default()
        },
        client_id: None,
        id: Some(9),
    })
    .await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            id: Some(9),
            ..
        }
    ));
}

#[tokio::test]
async fn connections_are_capped_per_address_and_per_user() {
    let srv = server(Config {
        max_connections_per_ip: 2,
        max_connections_per_user: 2,
        ..memory_config()
    })
    .await;
    let ana = user_token(&srv, "ana", &["*"], &[], 600);
    let a1 = Client::connect_with(&srv, &ana).await;
    let mut a2 = Client::connect_with(&srv, &ana).await;
    match tokio_tungstenite::connect_async(srv.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    drop(a1);
    eventually("the slot is freed", WAIT, || async {
        srv.state.hub.connections() == 1
    })
    .await;
    // Closing one frees its slots: the address and ana have room for one more.
    let _a3 = Client::connect_with(&srv, &ana).await;
    a2.subscribe("t", None).await;

    // Per user, on a server without the address cap.
    let srv = server(Config {
        max_connections_per_user: 2,
        ..memory_config()
    })
    .await;
    let bo = user_token(&srv, "bo", &["*"], &[], 600);
    let _b1 = Client::connect_with(&srv, &bo).await;
    let _b2 = Client::connect_with(&srv, &bo).await;
    let mut b3 = Client::connect_anonymous(&srv).await;
    b3.send(&ClientFrame::Auth { token: bo.clone() }).await;
    assert!(matches!(
        b3.next().await,
        ServerFrame::Error {
            code: ErrorCode::TooManyConnections,
            ..
        }
    ));
    assert_eq!(
        b3.closed_with().await,
        Some(close_code::TOO_MANY_CONNECTIONS)
    );
    // Keys are not counted.
    let _k: Vec<_> = futures::future::join_all((0..3).map(|_| Client::connect(&srv))).await;
}

#[tokio::test]
async fn new_connections_are_rate_limited_per_address() {
    let srv = server(Config {
        connects_per_sec_per_ip: 1,
        ..memory_config()
    })
    .await;
    let _c1 = Client::connect_anonymous(&srv).await;
    let _c2 = Client::connect_anonymous(&srv).await;
    match tokio_tungstenite::connect_async(srv.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_per_address_limits_count_the_forwarded_client() {
    let srv = server(Config {
        max_connections_per_ip: 1,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..memory_config()
    })
    .await;
    let open = |client: &'static str| {
        let url = srv.ws_url();
        async move {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                    .unwrap();
            req.headers_mut()
                .insert("X-Forwarded-For", client.parse().unwrap());
            tokio_tungstenite::connect_async(req)
                .await
                .map(|(ws, _)| ws)
        }
    };
    // Two clients behind the same proxy address: one socket each.
    let _a = open("203.0.113.1").await.expect("first client");
    let _b = open("203.0.113.2").await.expect("second client");
    match open("203.0.113.1").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}
