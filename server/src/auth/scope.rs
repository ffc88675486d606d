//! Topic patterns and grants: what an API key or a user token may do to which topics.
//!
//! A pattern is a topic name (`ops`), a prefix ending in `*` (`ops-*`), or `*` (every topic).
//! Users' inboxes (`@ana`) are matched only by patterns that start with `@` (`@ana`, `@*`):
//! `publish:*` does not let a key write to people, nor `read:*` a token read their inboxes.
//! A scope pairs an action with a pattern: `publish:ops-*`, `read:*`, `admin:*`. `admin`
//! implies `read` and `publish` on the same pattern, and `admin:*` alone lets a key manage
//! keys, read the server's stats and mint user tokens.

use app::protocol::MAX_TOPIC_LEN;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What is being done to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Subscribe, resume, read history.
    Read,
    /// Publish over HTTP or the socket.
    Publish,
    /// Manage keys, mint tokens, read stats; implies read and publish.
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Publish => "publish",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic pattern, checked against the topic grammar when parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// The topic, or the prefix before the `*`.
    stem: String,
    wildcard: bool,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (stem, wildcard) = match s.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (s, false),
        };
        let grammar = match stem.strip_prefix('@') {
            // An inbox: `@`, then a user id (or its prefix).
            Some(user) => {
                user.len() <= app::protocol::MAX_USER_LEN
                    && !user.chars().any(|c| c.is_control() || c == '*')
                    && (wildcard || !user.is_empty())
            }
            None => {
                stem.len() <= MAX_TOPIC_LEN
                    && stem
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }
        };
        if !grammar || (stem.is_empty() && !wildcard) {
            return Err(format!(
                "{s:?} is not a topic pattern (a topic, a prefix ending in '*', or '*')"
            ));
        }
        Ok(Self {
            stem: stem.to_owned(),
            wildcard,
        })
    }

    /// A configured list (`--public-topics`, `--presence-topics`): blanks skipped, each
    /// entry trimmed and parsed.
    pub fn parse_list(list: &[String]) -> Result<Vec<Self>, String> {
        list.iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| Self::parse(p.trim()))
            .collect()
    }

    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('@') != self.stem.starts_with('@') {
            return false;
        }
        if self.wildcard {
            topic.starts_with(&self.stem)
        } else {
            topic == self.stem
        }
    }

    /// Whether every topic `other` matches, this one matches too (a key may only hand out
    /// what it holds).
    pub fn covers(&self, other: &Pattern) -> bool {
        if other.stem.starts_with('@') && !self.stem.starts_with('@') {
            return false;
        }
        if self.wildcard {
            other.stem.starts_with(&self.stem)
        } else {
            !other.wildcard && other.stem == self.stem
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem)?;
        if self.wildcard {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Everything one identity may do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub read: Vec<Pattern>,
    #[serde(default)]
    pub publish: Vec<Pattern>,
    #[serde(default)]
    pub admin: Vec<Pattern>,
}

impl Grants {
    /// Parses scopes such as `publish:ops-*`, `read:*`, `admin:*`.
    pub fn from_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<Self, String> {
        let mut g = Grants::default();
        for scope in scopes {
            let scope = scope.as_ref().trim();
            let (action, pattern) = scope.split_once(':').ok_or_else(|| {
                format!("scope {scope:?} must be action:pattern, e.g. publish:ops-*")
            })?;
            let pattern = Pattern::parse(pattern)?;
            match action {
                "read" => g.read.push(pattern),
                "publish" => g.publish.push(pattern),
                "admin" => g.admin.push(pattern),
                _ => {
                    return Err(format!(
                        "scope {scope:?}: the action must be read, publish or admin"
                    ))
                }
            }
        }
        Ok(g)
    }

    /// The scopes, as `from_scopes` reads them.
    pub fn scopes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (action, list) in [
            (Action::Read, &self.read),
            (Action::Publish, &self.publish),
            (Action::Admin, &self.admin),
        ] {
            out.extend(list.iter().map(|p| format!("{action}:{p}")));
        }
        out
    }

    pub fn allows(&self, action: Action, topic: &str) -> bool {
        let any = |list: &[Pattern]| list.iter().any(|p| p.matches(topic));
        any(&self.admin)
            || match action {
                Action::Read => any(&self.read),
                Action::Publish => any(&self.publish),
                Action::Admin => false,
            }
    }

    /// Whether these grants hold every grant in `other` (for minting tokens).
    pub fn covers(&self, other: &Grants) -> bool {
        let holds = |mine: &[Pattern], theirs: &[Pattern]| {
            theirs
                .iter()
                .all(|t| mine.iter().chain(&self.admin).any(|m| m.covers(t)))
        };
        holds(&self.read, &other.read)
            && holds(&self.publish, &other.publish)
            && holds(&[], &other.admin)
    }

    pub fn is_admin(&self) -> bool {
        self.admin.iter().any(|p| p.wildcard && p.stem.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let exact = Pattern::parse("ops").unwrap();
        assert!(exact.matches("ops") && !exact.matches("ops-1") && !exact.matches("op"));
        let prefix = Pattern::parse("ops-*").unwrap();
        assert!(prefix.matches("ops-1") && prefix.matches("ops-") && !prefix.matches("ops"));
        assert!(Pattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "a b", "a*b", "**", "x/y", &"a".repeat(65)] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inboxes_are_matched_only_by_inbox_patterns() {
        let everything = Pattern::parse("*").unwrap();
        assert!(!everything.matches("@ana"), "`*` must not reach people");
        let people = Pattern::parse("@*").unwrap();
        assert!(people.matches("@ana") && people.matches("@Bo Ürsel") && !people.matches("ops"));
        let ana = Pattern::parse("@ana").unwrap();
        assert!(ana.matches("@ana") && !ana.matches("@anastasia"));
        assert!(!everything.covers(&ana) && people.covers(&ana) && !people.covers(&everything));
        let admin = Grants::from_scopes(&["admin:*"]).unwrap();
        assert!(!admin.allows(Action::Publish, "@ana") && !admin.allows(Action::Read, "@ana"));
        let notify = Grants::from_scopes(&["publish:@*"]).unwrap();
        assert!(notify.allows(Action::Publish, "@ana") && !notify.allows(Action::Publish, "ops"));
        for bad in ["@", "@a*b", "@a\nb"] {
            assert!(
                Pattern::parse(&bad.replace("\\n", "\n")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scopes_parse_and_grant() {
        let g = Grants::from_scopes(&["publish:ops-*", "read:general"]).unwrap();
        assert!(g.allows(Action::Publish, "ops-db"));
        assert!(!g.allows(Action::Publish, "general"));
        assert!(g.allows(Action::Read, "general"));
        assert!(!g.allows(Action::Read, "ops-db"));
        assert!(!g.allows(Action::Admin, "ops-db"));
        assert_eq!(g.scopes(), ["read:general", "publish:ops-*"]);
        let admin = Grants::from_scopes(&["admin:*"]).unwrap();
        assert!(admin.allows(Action::Read, "x") && admin.allows(Action::Publish, "x"));
        assert!(admin.is_admin() && !g.is_admin());
        assert!(Grants::from_scopes(&["write:x"]).is_err());
        assert!(Grants::from_scopes(&["publish"]).is_err());
        assert!(Grants::from_scopes(&["read:a b"]).is_err());
    }

    #[test]
    fn a_grant_covers_only_what_it_holds() {
        let key = Grants::from_scopes(&["read:*", "publish:chat-*"]).unwrap();
        let fine = Grants::from_scopes(&["read:ops", "publish:chat-1", "publish:chat-x*"]).unwrap();
        assert!(key.covers(&fine));
        for wider in [
            &["publish:*"][..],
            &["publish:chat"][..],
            &["publish:c*"][..],
            &["admin:chat-*"][..],
        ] {
            assert!(
                !key.covers(&Grants::from_scopes(wider).unwrap()),
                "{wider:?}"
            );
        }
    }
}
