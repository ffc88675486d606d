//! Property tests over what clients control: frames, publish headers and bodies, credentials
//! and patterns. Each runs a bounded number of random cases (`PROPTEST_CASES`, default 512),
//! so CI spends seconds on them; a failure prints the minimal input that breaks the rule.

use crate::auth::{Action, Grants, Keys, Pattern, Tokens};
use app::protocol::{ClientFrame, NewNotification, Position};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig::with_cases(n)
}

fn topic() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let since = proptest::option::of(
        ("[a-z0-9]{0,16}", any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset }),
    );
    let message = (
        proptest::option::of(".{0,40}"),
        ".{0,200}",
        proptest::option::of(any::<u8>()),
        proptest::collection::vec("[a-z]{0,8}", 0..4),
        proptest::option::of(".{0,40}"),
        proptest::option::of("[a-z-]{0,40}"),
    )
        .prop_map(
            |(title, body, priority, tags, link, category)| NewNotification {
                title,
                body,
                priority,
                tags,
                link,
                category,
                author: None,
            },
        );
    prop_oneof![
        ".{0,300}".prop_map(|token| ClientFrame::Auth { token }),
        (topic(), since, proptest::option::of(any::<u64>()))
            .prop_map(|(topic, since, id)| ClientFrame::Subscribe { topic, since, id }),
        (topic(), proptest::option::of(any::<u64>()))
            .prop_map(|(topic, id)| ClientFrame::Unsubscribe { topic, id }),
        (
            topic(),
            message,
            proptest::option::of(".{0,70}"),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(topic, message, client_id, id)| ClientFrame::Publish {
                topic,
                message,
                client_id,
                id
            }),
        topic().prop_map(|topic| ClientFrame::Typing { topic }),
        proptest::option::of(any::<u64>()).prop_map(|id| ClientFrame::Ping { id }),
    ]
}

proptest! {
    #![proptest_config(cases())]

    /// Any text a client sends parses or is classified: never a panic.
    #[test]
    fn any_text_frame_parses_or_gets_a_typed_error(text in ".{0,400}") {
        if let Err(e) = serde_json::from_str::<ClientFrame>(&text) {
            let (_code, msg) = crate::session::classify_parse_error(&text, &e);
            prop_assert!(!msg.is_empty());
        }
    }

    /// JSON that looks almost right (a real frame with a field mangled) is handled too.
    #[test]
    fn every_frame_round_trips_and_survives_mangling(frame in client_frame(), cut in 0usize..400) {
        let json = serde_json::to_string(&frame).unwrap();
        prop_assert_eq!(serde_json::from_str::<ClientFrame>(&json).unwrap(), frame);
        let mangled: String = json.chars().take(cut).collect();
        if let Err(e) = serde_json::from_str::<ClientFrame>(&mangled) {
            let _ = crate::session::classify_parse_error(&mangled, &e);
        }
    }

    /// Whatever a publish carries, validation answers (it never panics) and what it accepts
    /// is within the documented limits.
    #[test]
    fn notification_validation_is_total(title in proptest::option::of(".{0,300}"), body in ".{0,100}",
                                        priority in proptest::option::of(any::<u8>()),
                                        tags in proptest::collection::vec(".{0,40}", 0..12),
                                        link in proptest::option::of(".{0,60}"),
                                        category in proptest::option::of(".{0,40}")) {
        let n = NewNotification { title, body, priority, tags, link, category, author: None };
        if n.validate(64).is_ok() {
            prop_assert!(!n.body.trim().is_empty() && n.body.len() <= 64);
            prop_assert!(n.priority.is_none_or(|p| (1..=5).contains(&p)));
            prop_assert!(n.tags.len() <= 10);
            prop_assert!(n.category.as_ref().is_none_or(|c| !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
        }
    }

    /// A JSON publish body of any bytes is a notification or a typed refusal.
    #[test]
    fn any_publish_body_parses_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                             frame in client_frame()) {
        if let Ok(n) = serde_json::from_slice::<NewNotification>(&bytes) {
            let _ = n.validate(1024);
        }
        // A real notification with a byte flipped.
        if let ClientFrame::Publish { message, .. } = frame {
            let mut json = serde_json::to_vec(&message).unwrap();
            if !json.is_empty() {
                let i = bytes.first().map_or(0, |b| *b as usize % json.len());
                json[i] ^= 0x20;
            }
            if let Ok(n) = serde_json::from_slice::<NewNotification>(&json) {
                let _ = n.validate(1024);
            }
        }
    }

    /// Random strings are never a valid token or key, and checking them never panics.
    #[test]
    fn random_credentials_are_refused(s in ".{0,400}", dotted in "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}") {
        let tokens = Tokens::hs256(&[9u8; 32], None, None, 0).unwrap();
        prop_assert!(tokens.verify(&s).is_err());
        prop_assert!(tokens.verify(&dotted).is_err());
        let keys = Keys::open(std::path::Path::new(":memory:")).unwrap();
        prop_assert!(keys.verify(&s).is_err());
        let prefixed = ["hk_", s.as_str()].concat();
        prop_assert!(keys.verify(&prefixed).is_err());
    }

    /// Publish headers with any bytes a client can send: parsed into a notification or
    /// refused with a typed error, never a panic.
    #[test]
    fn publish_headers_parse_or_are_refused(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 6)) {
        let names = ["title", "priority", "tags", "link", "idempotency-key", "x-priority"];
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in names.iter().zip(&values) {
            if let Ok(v) = axum::http::HeaderValue::from_bytes(value) {
                headers.insert(*name, v);
            }
        }
        match crate::api::PublishHeaders::read(&headers) {
            Ok(h) => {
                if let Ok(n) = h.into_notification("body".into()) {
                    let _ = n.validate(1024);
                }
            }
            Err(e) => prop_assert!(e.status().is_client_error()),
        }
    }

    /// A pattern either parses (and prints back as itself) or is refused; never a panic.
    #[test]
    fn patterns_parse_or_are_refused(s in ".{0,80}") {
        if let Ok(p) = Pattern::parse(&s) {
            prop_assert_eq!(p.to_string(), s);
        }
    }

    /// `covers` is sound: grants minted within a key's grants never allow the holder more
    /// than the key allows.
    #[test]
    fn covered_grants_never_allow_more(mine in proptest::collection::vec("(read|publish):[a-c]{0,2}\\*?", 1..4),
                                       theirs in proptest::collection::vec("(read|publish):[a-c]{0,2}\\*?", 0..4),
                                       topics in proptest::collection::vec("[a-c]{1,3}", 1..8)) {
        let (Ok(mine), Ok(theirs)) = (Grants::from_scopes(&mine), Grants::from_scopes(&theirs)) else {
            return Ok(());
        };
        if mine.covers(&theirs) {
            for t in &topics {
                for action in [Action::Read, Action::Publish] {
                    prop_assert!(!theirs.allows(action, t) || mine.allows(action, t), "{action} {t}");
                }
            }
        }
    }
}
