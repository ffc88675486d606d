//! Who the connection is: the first frame's `auth`, in-band refreshes, expiry, and the
//! permission check every subscribe and publish makes (through [`crate::auth::Authority`]).
//!
//! - A socket must send its first frame within the handshake timeout (4004 otherwise).
//! - A first frame that is a valid `auth` makes the connection that identity; an invalid one
//!   gets an `error` frame that says why, then 4003. A first frame of another kind makes the
//!   connection anonymous where that is configured, and is refused with 4003 where not.
//! - A later `auth` is a refresh: a valid token for the same user replaces the grants and the
//!   expiry (subscriptions the new grants no longer cover end with `unsubscribed` and a
//!   `forbidden` error); an invalid one, or one for another user, gets an `error` frame and
//!   changes nothing.
//! - Before the token expires the client gets `token_expiring`; at `exp` (plus the configured
//!   leeway) without a refresh, 4005. Both are the hub's per-connection deadlines, checked by
//!   one sweep for all connections instead of a timer each.
//! - A connection authenticated by an API key ends (4003) once the key is revoked.

use super::{Session, Socket, Stop};
use crate::auth::{Action, AuthError, Identity};
use app::protocol::{close_code, ErrorCode, ServerFrame};
use std::sync::Arc;
use std::time::Duration;

static ANONYMOUS: Identity = Identity::Anonymous;

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl<S: Socket> Session<S> {
    pub(super) fn pending_auth(&self) -> bool {
        self.identity.is_none()
    }

    /// The first frame was not `auth`: anonymous where configured, refused (4003) where not.
    pub(super) async fn anonymous_or_close(&mut self) -> Result<(), Stop> {
        if self.state.auth.allow_anonymous {
            self.identity = Some(Identity::Anonymous);
            self.state.hub.set_deadline(&self.reg.conn, None, 0);
            return Ok(());
        }
        let e = AuthError::Missing;
        self.refuse(&e, None).await?;
        Err(Stop::Close(close_code::UNAUTHORIZED))
    }

    /// An `auth` frame: the first one, or a refresh.
    pub(super) async fn authenticate(&mut self, token: String) -> Result<(), Stop> {
        let verified = self.state.auth.authenticate(&token);
        drop(token);
        let first = self.identity.is_none();
        let who = match verified {
            Ok(who) => who,
            Err(e) => {
                tracing::debug!(conn_id = self.reg.conn.id, code = %e.code(), first, "auth refused");
                self.refuse(&e, None).await?;
                return if first {
                    Err(Stop::Close(close_code::UNAUTHORIZED))
                } else {
                    Ok(())
                };
            }
        };
        if let Some(current) = self.identity.as_ref() {
            if !matches!(current, Identity::Anonymous) && current.name() != who.name() {
                let e = AuthError::SubjectMismatch(current.name());
                return self.refuse(&e, None).await;
            }
        }
        if let (Identity::User(u), None) = (&who, &self.user_slot) {
            match self.state.limits.conns_per_user.acquire(&u.id) {
                Ok(counter) => self.user_slot = counter,
                Err(()) => {
                    let msg = format!(
                        "{} already has {} connections open",
                        u.id, self.state.config.max_connections_per_user
                    );
                    crate::metrics::rate_limited("connections_per_user");
                    self.error(ErrorCode::TooManyConnections, &msg, None)
                        .await?;
                    return Err(Stop::Close(close_code::TOO_MANY_CONNECTIONS));
                }
            }
        }
        tracing::debug!(conn_id = self.reg.conn.id, user = %who.name(), first, "authenticated");
        self.arm_expiry(&who);
        let frame = ServerFrame::Authenticated {
            user: who.name(),
            expires_at: who.expires_at(),
        };
        self.identity = Some(who);
        self.drop_forbidden_subs().await?;
        self.io.send(&frame).await
    }

    /// Sets (or clears) the connection's expiry deadline and its warning.
    fn arm_expiry(&self, who: &Identity) {
        let (hub, conn) = (&self.state.hub, &self.reg.conn);
        let Some(exp) = who.expires_at() else {
            hub.set_deadline(conn, None, 0);
            hub.set_warning(conn, None);
            return;
        };
        let cfg = &self.state.config;
        let now = unix_now_ms();
        let until_exp = (exp.saturating_mul(1000) - now).max(0) as u64;
        let leeway = cfg.token_leeway_secs.saturating_mul(1000);
        hub.set_deadline(
            conn,
            Some(Duration::from_millis(until_exp + leeway)),
            close_code::TOKEN_EXPIRED,
        );
        // Warn `token_warning_secs` ahead, or half-way for tokens shorter than twice that.
        let warn = cfg.token_warning_secs.saturating_mul(1000);
        let warn_after = if until_exp > warn.saturating_mul(2) {
            until_exp - warn
        } else {
            until_exp / 2
        };
        hub.set_warning(conn, Some(Duration::from_millis(warn_after)));
    }

    /// After a refresh narrowed the grants: ends what the connection may no longer read.
    async fn drop_forbidden_subs(&mut self) -> Result<(), Stop> {
        let forbidden: Vec<(u32, Arc<str>)> = self
            .subs
            .iter()
            .filter(|s| self.permit(Action::Read, &s.topic).is_err())
            .map(|s| (s.slot, s.topic.clone()))
            .collect();
        for (slot, topic) in forbidden {
            self.drop_sub(slot);
            let e = AuthError::Forbidden {
                action: Action::Read,
                topic: topic.to_string(),
            };
            self.refuse(&e, None).await?;
            let frame = ServerFrame::Unsubscribed {
                topic: topic.to_string(),
                id: None,
            };
            self.io.send(&frame).await?;
        }
        Ok(())
    }

    /// An `error` frame for a refused credential or permission.
    pub(super) async fn refuse(&mut self, e: &AuthError, id: Option<u64>) -> Result<(), Stop> {
        crate::metrics::auth_failure(e.reason());
        self.error(e.code(), &e.to_string(), id).await
    }

    /// The user this connection is signed in as, if a user (keys are not people): whose
    /// inbox it may use, whom it counts as in a room, who authored what it sends.
    pub(super) fn user_id(&self) -> Option<String> {
        match self.identity.as_ref() {
            Some(Identity::User(u)) => Some(u.id.clone()),
            _ => None,
        }
    }

    /// May this connection do `action` to `topic`?
    pub(super) fn permit(&self, action: Action, topic: &str) -> Result<(), AuthError> {
        let who = self.identity.as_ref().unwrap_or(&ANONYMOUS);
        self.state.auth.check(who, action, topic)
    }

    /// Whether the connection's API key was revoked (checked before each write batch).
    pub(super) fn key_revoked(&self) -> bool {
        matches!(self.identity.as_ref(), Some(who @ Identity::Key(_)) if !self.state.auth.still_valid(who))
    }

    /// Tells the client its key was revoked and ends the connection (4003).
    pub(super) async fn close_revoked(&mut self) -> Result<(), Stop> {
        let e = AuthError::Revoked;
        self.refuse(&e, None).await?;
        Err(Stop::Close(close_code::UNAUTHORIZED))
    }

    /// The `token_expiring` frame for this connection's token, if it has one.
    pub(super) fn expiring_frame(&self) -> Option<String> {
        let exp = self.identity.as_ref()?.expires_at()?;
        serde_json::to_string(&ServerFrame::TokenExpiring { expires_at: exp }).ok()
    }
}
