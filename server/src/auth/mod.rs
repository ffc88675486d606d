//! Who may do what: the one place every permission check is made.
//!
//! An [`Identity`] is an API key (backends: `Authorization: Bearer hk_...`), a user with a
//! signed token (browsers: the `auth` frame, or the same header), or anonymous. The
//! [`Authority`] turns a credential into an identity and answers [`Authority::check`] for an
//! action on a topic; the HTTP API, the socket session and the server-rendered page all call
//! it, so a rule holds everywhere a topic is touched or nowhere.
//!
//! The rules:
//! - A key may do what its scopes say (`read:`, `publish:`, `admin:` + pattern); a revoked key
//!   can do nothing, from the moment the revocation is seen (see [`keys`]).
//! - A user may do what the token's `read` and `publish` claims say, until `exp`.
//! - Anyone, when anonymous access is configured, may read the configured public topics;
//!   without it, an anonymous caller is asked for credentials (401) for everything.
//! - A missing credential is 401 `unauthorized`; a bad one 401 `invalid_token`, `token_expired`
//!   or `key_revoked`; a good one without the grant 403 `forbidden`.
//!
//! Credentials never go in URLs (they end up in logs and browser history): a `token`,
//! `access_token` or `key` query parameter is refused with `token_in_url`. Nothing here logs a
//! key, a token or a notification body.

pub mod cli;
pub mod keys;
pub mod scope;
pub mod setup;
pub mod token;

pub use keys::{KeyRecord, Keys};
pub use scope::{Action, Grants, Pattern};
pub use token::{Claims, TokenAlgorithm, Tokens};

use app::protocol::ErrorCode;
use axum::http::{header, HeaderMap};
use keys::KeyRefusal;
use std::sync::Arc;
use token::TokenRefusal;

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Identity {
    Key(Arc<KeyRecord>),
    /// Boxed: every socket carries its identity, and most are keys or anonymous.
    User(Box<User>),
    Anonymous,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub grants: Grants,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Identity {
    /// What the `authenticated` frame calls this identity.
    pub fn name(&self) -> String {
        match self {
            Identity::Key(k) => format!("key:{}", k.id),
            Identity::User(u) => u.id.clone(),
            Identity::Anonymous => "anonymous".into(),
        }
    }

    /// The key publishes are rate-limited by.
    pub fn rate_key(&self) -> String {
        match self {
            Identity::Key(k) => k.id.clone(),
            Identity::User(u) => format!("user:{}", u.id),
            Identity::Anonymous => "anonymous".into(),
        }
    }

    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Identity::User(u) => Some(u.expires_at),
            _ => None,
        }
    }
}

/// Why a request or frame was refused; each maps to one code of the protocol's table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials required: send Authorization: Bearer <API key or token> (sockets: an auth frame first)")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    #[error("the token has expired; get a new one")]
    Expired,
    #[error("the API key was revoked")]
    Revoked,
    #[error("not allowed to {action} topic {topic:?}")]
    Forbidden { action: Action, topic: String },
    #[error("this needs a key with admin:*")]
    AdminOnly,
    #[error("credentials are not accepted in the URL; send them in the Authorization header or the auth frame")]
    InUrl,
    #[error("a refreshed token must be for the same user ({0})")]
    SubjectMismatch(String),
}

impl AuthError {
    /// A short stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::Revoked => "revoked",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::AdminOnly => "admin_only",
            AuthError::InUrl => "in_url",
            AuthError::SubjectMismatch(_) => "subject_mismatch",
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::Unauthorized,
            AuthError::Invalid(_) => ErrorCode::InvalidToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Revoked => ErrorCode::KeyRevoked,
            AuthError::Forbidden { .. } | AuthError::AdminOnly => ErrorCode::Forbidden,
            AuthError::InUrl => ErrorCode::TokenInUrl,
            AuthError::SubjectMismatch(_) => ErrorCode::SubjectMismatch,
        }
    }
}

/// Credentials, the permission rules, and what anonymous callers may read.
pub struct Authority {
    pub keys: Arc<Keys>,
    pub tokens: Tokens,
    /// Topics anyone may read when `allow_anonymous`.
    pub public: Vec<Pattern>,
    pub allow_anonymous: bool,
}

impl Authority {
    /// An API key or a signed token, whichever `credential` is.
    pub fn authenticate(&self, credential: &str) -> Result<Identity, AuthError> {
        if keys::looks_like_key(credential) {
            return match self.keys.verify(credential) {
                Ok(rec) => Ok(Identity::Key(rec)),
                Err(KeyRefusal::Revoked) => Err(AuthError::Revoked),
                Err(KeyRefusal::Unknown) => Err(AuthError::Invalid("unknown API key")),
            };
        }
        match self.tokens.verify(credential) {
            Ok(claims) => Ok(Identity::User(Box::new(User {
                grants: claims.grants(),
                id: claims.sub,
                expires_at: claims.exp,
            }))),
            Err(TokenRefusal::Expired) => Err(AuthError::Expired),
            Err(TokenRefusal::Invalid(why)) => Err(AuthError::Invalid(why)),
        }
    }

    /// The identity an HTTP request carries: `Authorization: Bearer ...`, or anonymous when
    /// it carries none (what an anonymous caller may do is for [`Authority::check`]).
    pub fn from_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(q) = query {
            refuse_credentials_in(q)?;
        }
        match bearer(headers)? {
            Some(credential) => self.authenticate(credential),
            None => Ok(Identity::Anonymous),
        }
    }

    /// May `who` do `action` to `topic`?
    ///
    /// A user's inbox (`@<user>`) is readable by that user (subscribe, resume, history, list
    /// and change read state), and otherwise only through grants on `@` patterns, which
    /// `*` does not include; it is never public.
    pub fn check(&self, who: &Identity, action: Action, topic: &str) -> Result<(), AuthError> {
        let inbox = app::protocol::inbox_owner(topic);
        if let (Some(owner), Identity::User(u), Action::Read) = (inbox, who, action) {
            if u.id == owner {
                return Ok(());
            }
        }
        let public = || {
            self.allow_anonymous
                && action == Action::Read
                && inbox.is_none()
                && self.public.iter().any(|p| p.matches(topic))
        };
        let granted = match who {
            Identity::Anonymous => {
                return if public() {
                    Ok(())
                } else {
                    Err(AuthError::Missing)
                }
            }
            Identity::Key(k) => {
                if !self.keys.still_active(k) {
                    return Err(AuthError::Revoked);
                }
                k.grants.allows(action, topic)
            }
            Identity::User(u) => u.grants.allows(action, topic),
        };
        if granted || public() {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                action,
                topic: topic.to_owned(),
            })
        }
    }

    /// Key management, stats and minting need a key with `admin:*`.
    pub fn check_admin(&self, who: &Identity) -> Result<Arc<KeyRecord>, AuthError> {
        let key = self.active_key(who)?;
        if key.grants.is_admin() {
            Ok(key)
        } else {
            Err(AuthError::AdminOnly)
        }
    }

    /// The still-active API key `who` is (minting and key management are for keys only).
    pub fn active_key(&self, who: &Identity) -> Result<Arc<KeyRecord>, AuthError> {
        match who {
            Identity::Anonymous => Err(AuthError::Missing),
            Identity::Key(k) if !self.keys.still_active(k) => Err(AuthError::Revoked),
            Identity::Key(k) => Ok(k.clone()),
            Identity::User(_) => Err(AuthError::AdminOnly),
        }
    }

    /// Whether `who` still stands (a revoked key does not).
    pub fn still_valid(&self, who: &Identity) -> bool {
        match who {
            Identity::Key(k) => self.keys.still_active(k),
            _ => true,
        }
    }
}

/// The credential of an `Authorization: Bearer ...` header; `None` without the header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    // On bytes, checked a word at a time: `HeaderValue::to_str` tests byte by byte for
    // visible ASCII, and with `str::trim` that was 270 instructions per publish (callgrind),
    // a third of the whole credential check. Control bytes other than tab never get here
    // (hyper refuses them); tabs around the credential are trimmed, and one inside it
    // matches no key and makes no token.
    let value = value.as_bytes();
    let not_ascii = || AuthError::Invalid("Authorization must be visible ASCII");
    if !value.is_ascii() {
        return Err(not_ascii());
    }
    let credential = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .ok_or(AuthError::Invalid(
            "Authorization must be: Bearer <API key or token>",
        ))?;
    std::str::from_utf8(credential.trim_ascii())
        .map(Some)
        .map_err(|_| not_ascii())
}

/// Refuses a query string that carries something that looks like a credential.
pub fn refuse_credentials_in(query: &str) -> Result<(), AuthError> {
    let carries = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        matches!(
            name.to_ascii_lowercase().as_str(),
            "token" | "access_token" | "key" | "api_key" | "apikey" | "jwt" | "auth"
        )
    });
    if carries {
        Err(AuthError::InUrl)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::path::Path;

    fn authority(anonymous: bool) -> Authority {
        Authority {
            keys: Arc::new(Keys::open(Path::new(":memory:")).unwrap()),
            tokens: Tokens::hs256(&[7u8; 32], None, None, 0).unwrap(),
            public: vec![Pattern::parse("news").unwrap()],
            allow_anonymous: anonymous,
        }
    }

    #[test]
    fn bearer_takes_the_credential_and_names_what_is_wrong() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            h
        };
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
        assert_eq!(bearer(&with(b"Bearer hk_abc")), Ok(Some("hk_abc")));
        assert_eq!(bearer(&with(b"bearer hk_abc")), Ok(Some("hk_abc")));
        assert_eq!(
            bearer(&with(b"Bearer \t hk_abc \t")),
            Ok(Some("hk_abc")),
            "spaces and tabs around the credential are not part of it"
        );
        assert_eq!(
            bearer(&with(b"Basic aGk6aGk=")),
            Err(AuthError::Invalid(
                "Authorization must be: Bearer <API key or token>"
            ))
        );
        for not_ascii in [&b"Bearer hk_\xff"[..], "Bearer hk_é".as_bytes()] {
            assert_eq!(
                bearer(&with(not_ascii)),
                Err(AuthError::Invalid("Authorization must be visible ASCII")),
                "{not_ascii:?}"
            );
        }
    }

    #[test]
    fn keys_users_and_anonymous_get_what_they_were_granted() {
        let a = authority(true);
        let (_, key) = a
            .keys
            .add(
                "ci",
                Grants::from_scopes(&["publish:ops-*"]).unwrap(),
                false,
            )
            .unwrap();
        let k = a.authenticate(&key).unwrap();
        assert_eq!(a.check(&k, Action::Publish, "ops-1"), Ok(()));
        assert!(matches!(
            a.check(&k, Action::Publish, "general"),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(matches!(
            a.check(&k, Action::Read, "ops-1"),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(
            a.check(&k, Action::Read, "news"),
            Ok(()),
            "public topics are public"
        );
        assert_eq!(a.check_admin(&k).unwrap_err(), AuthError::AdminOnly);

        let claims = a
            .tokens
            .mint("ana", &Grants::from_scopes(&["read:team-*"]).unwrap(), 60)
            .unwrap();
        let u = a.authenticate(&a.tokens.sign(&claims).unwrap()).unwrap();
        assert_eq!(a.check(&u, Action::Read, "team-a"), Ok(()));
        assert!(a.check(&u, Action::Publish, "team-a").is_err());

        assert_eq!(a.check(&Identity::Anonymous, Action::Read, "news"), Ok(()));
        assert_eq!(
            a.check(&Identity::Anonymous, Action::Read, "team-a"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            a.check(&Identity::Anonymous, Action::Publish, "news"),
            Err(AuthError::Missing)
        );
        let closed = authority(false);
        assert_eq!(
            closed.check(&Identity::Anonymous, Action::Read, "news"),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn a_revoked_key_stops_at_once() {
        let a = authority(false);
        let (rec, key) = a
            .keys
            .add("ci", Grants::from_scopes(&["admin:*"]).unwrap(), false)
            .unwrap();
        let k = a.authenticate(&key).unwrap();
        assert!(a.check_admin(&k).is_ok());
        a.keys.revoke(&rec.id).unwrap();
        // An identity authenticated before the revocation is refused too.
        assert_eq!(a.check(&k, Action::Read, "x"), Err(AuthError::Revoked));
        assert_eq!(a.check_admin(&k).unwrap_err(), AuthError::Revoked);
        assert!(!a.still_valid(&k));
        assert_eq!(a.authenticate(&key).unwrap_err(), AuthError::Revoked);
    }

    #[test]
    fn credentials_in_the_url_and_bad_headers_are_refused() {
        let a = authority(false);
        let h = HeaderMap::new();
        assert!(matches!(a.from_request(&h, None), Ok(Identity::Anonymous)));
        assert_eq!(
            a.from_request(&h, Some("since=3&token=abc")).unwrap_err(),
            AuthError::InUrl
        );
        assert_eq!(
            a.from_request(&h, Some("access_token=abc")).unwrap_err(),
            AuthError::InUrl
        );
        assert!(a.from_request(&h, Some("since=3&limit=2")).is_ok());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert!(matches!(
            a.from_request(&h, None),
            Err(AuthError::Invalid(_))
        ));
        h.insert(header::AUTHORIZATION, "Bearer hk_nope".parse().unwrap());
        assert!(matches!(
            a.from_request(&h, None),
            Err(AuthError::Invalid(_))
        ));
    }
}
