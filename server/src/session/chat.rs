//! Publishing from the socket (chat messages) and typing indicators.
//!
//! - A message's author is the connection's user, set here from the token, whatever the frame
//!   says (the frame has no author field the server reads).
//! - A `client_id` makes a message idempotent per sender: the store's idempotency key is the
//!   sender and the client id, so a retry after a reconnect is stored once and acknowledged
//!   with the original position.
//! - `typing` is passed on to the room's subscribers on the hub's frame path (never stored),
//!   at most once a second per socket and room; receivers forget it after `expires_ms`.

use super::{Session, Socket, Stop};
use crate::auth::Action;
use crate::metrics::Outcome;
use app::protocol::{validate_topic, ErrorCode, NewNotification, ServerFrame};
use std::time::Duration;

/// Longest client message id.
const MAX_CLIENT_ID: usize = 64;
/// A socket passes on at most one `typing` per room in this long.
const TYPING_EVERY: Duration = Duration::from_secs(1);
/// How long a `typing` lasts without another.
pub const TYPING_EXPIRES: Duration = Duration::from_secs(5);

impl<S: Socket> Session<S> {
    /// A `publish` frame: checked, stored, acknowledged (and counted).
    pub(super) async fn publish(
        &mut self,
        topic: String,
        message: NewNotification,
        client_id: Option<String>,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        let mut outcome = Outcome::Rejected;
        let result = self
            .publish_counted(topic, message, client_id, id, &mut outcome)
            .await;
        crate::metrics::publish(crate::metrics::Route::Socket, outcome);
        result
    }

    async fn publish_counted(
        &mut self,
        topic: String,
        mut message: NewNotification,
        client_id: Option<String>,
        id: Option<u64>,
        outcome: &mut Outcome,
    ) -> Result<(), Stop> {
        if let Err(e) =
            validate_topic(&topic).and_then(|()| message.validate(self.state.config.max_body_bytes))
        {
            return self.error(e.code, &e.message, id).await;
        }
        if let Some(c) = &client_id {
            if c.is_empty() || c.len() > MAX_CLIENT_ID || c.chars().any(char::is_control) {
                let msg = format!("client_id must be 1 to {MAX_CLIENT_ID} printable characters");
                return self.error(ErrorCode::BadField, &msg, id).await;
            }
        }
        if let Err(e) = self.permit(Action::Publish, &topic) {
            return self.refuse(&e, id).await;
        }
        let Some(who) = self.identity.as_ref() else {
            return self.refuse(&crate::auth::AuthError::Missing, id).await;
        };
        if let Err(wait) = self.state.limits.publish(who) {
            crate::metrics::rate_limited("publish_per_credential");
            let msg = format!("too many publishes; retry in {} ms", wait.as_millis());
            return self.error(ErrorCode::RateLimited, &msg, id).await;
        }
        // Whatever the client put in the frame, the author is who the token says.
        message.author = self.user_id();
        let key = client_id.map(|c| format!("{}\u{1f}{c}", who.rate_key()));
        match self.state.store.append(&topic, message, key).await {
            Ok(a) if a.duplicate => {
                *outcome = Outcome::Duplicate;
                self.ack(&a, id).await
            }
            Ok(a) => {
                *outcome = Outcome::Stored;
                self.ack(&a, id).await
            }
            Err(e) => {
                let code = super::resume::store_code(&e);
                *outcome = crate::metrics::failed_outcome(code);
                tracing::error!(error = %e, topic, "publish from socket failed");
                let msg = "the notification could not be stored";
                self.error(code, msg, id).await
            }
        }
    }

    async fn ack(&mut self, a: &crate::store::Appended, id: Option<u64>) -> Result<(), Stop> {
        match id {
            Some(id) => {
                let position = a.stored.notification.position();
                self.io.send(&ServerFrame::Ack { id, position }).await
            }
            None => Ok(()),
        }
    }

    pub(super) async fn typing(&mut self, topic: String) -> Result<(), Stop> {
        let Some(i) = self.find_sub(&topic) else {
            let msg = "subscribe to the room before typing in it";
            return self.error(ErrorCode::NotSubscribed, msg, None).await;
        };
        if let Err(e) = self.permit(Action::Publish, &topic) {
            return self.refuse(&e, None).await;
        }
        let Some(member) = self.subs[i].member.as_mut() else {
            let msg = "typing is for users in rooms with presence";
            return self.error(ErrorCode::BadTopic, msg, None).await;
        };
        let now = tokio::time::Instant::now();
        if member.typed_at.is_some_and(|t| now < t + TYPING_EVERY) {
            return Ok(());
        }
        member.typed_at = Some(now);
        let frame = ServerFrame::Typing {
            topic: topic.clone(),
            user: member.user().to_owned(),
            expires_ms: TYPING_EXPIRES.as_millis() as u64,
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            // Lost under pressure rather than cutting anyone: typing expires by itself.
            let kind = crate::broker::FrameKind::Ephemeral;
            self.state
                .broker
                .send_frame(&topic, text.into(), kind)
                .await;
        }
        Ok(())
    }
}
