//! Inbound frames: the limits every frame passes, then the answer to each client frame.
//!
//! Order of checks, the same for every frame: the rate limit (every frame counts, control
//! frames included), then the frame kind (only JSON text is understood), the soft size limit,
//! and the parse. A refused frame gets a typed `error` frame and the connection stays up; a
//! protocol violation gets the RFC 6455 close code; a flood that does not slow down gets 4002.

use super::{Session, Socket, Stop};
use crate::limits::Verdict;
use app::protocol::{close_code, ClientFrame, ErrorCode, ServerFrame};
use axum::extract::ws::Message;
use tokio_tungstenite::tungstenite;

impl<S: Socket> Session<S> {
    /// Handles one result of reading the socket.
    pub(super) async fn inbound(
        &mut self,
        inbound: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Stop> {
        let msg = match inbound {
            None => return Err(Stop::Gone),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(read_error(e)),
        };
        self.state.hub.touch(&self.reg.conn);
        // Boxed: handling a frame (subscribe, publish) needs a large future, and every idle
        // connection would otherwise carry its space in its task.
        Box::pin(self.on_message(msg)).await
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), Stop> {
        if let Message::Close(_) = msg {
            // tungstenite answers the close handshake itself.
            return Err(Stop::Gone);
        }
        match self.limit.check() {
            Verdict::Allow => {}
            Verdict::Close => return Err(Stop::Close(close_code::RATE_LIMITED)),
            Verdict::Refuse { first } => {
                crate::metrics::rate_limited("socket_frames");
                let data = matches!(msg, Message::Text(_) | Message::Binary(_));
                if first && data {
                    let msg = format!(
                        "more than {} frames per second; frames are being dropped",
                        self.state.config.frames_per_sec
                    );
                    return self.error(ErrorCode::RateLimited, &msg, None).await;
                }
                return Ok(());
            }
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return self
                    .error(
                        ErrorCode::BadFrame,
                        "binary frames are not supported; send JSON text",
                        None,
                    )
                    .await
            }
            // Pings are answered by tungstenite; pongs only prove liveness (touched above).
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        let max = self.state.config.max_frame_bytes;
        if text.len() > max {
            let msg = format!("frame is {} bytes; the limit is {max}", text.len());
            return self.error(ErrorCode::TooLarge, &msg, None).await;
        }
        let frame: ClientFrame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                let (code, msg) = classify_parse_error(text.as_str(), &e);
                return self.error(code, &msg, None).await;
            }
        };
        if self.pending_auth() {
            if let ClientFrame::Auth { token } = frame {
                return self.authenticate(token).await;
            }
            self.anonymous_or_close().await?;
        }
        match frame {
            ClientFrame::Auth { token } => self.authenticate(token).await,
            ClientFrame::Subscribe { topic, since, id } => self.subscribe(topic, since, id).await,
            ClientFrame::Unsubscribe { topic, id } => {
                let Some(i) = self.find_sub(&topic) else {
                    return self
                        .error(ErrorCode::NotSubscribed, "not subscribed to that topic", id)
                        .await;
                };
                let slot = self.subs[i].slot;
                self.drop_sub(slot);
                self.io.send(&ServerFrame::Unsubscribed { topic, id }).await
            }
            ClientFrame::Publish {
                topic,
                message,
                client_id,
                id,
            } => self.publish(topic, message, client_id, id).await,
            ClientFrame::Typing { topic } => self.typing(topic).await,
            ClientFrame::Ping { id } => self.io.send(&ServerFrame::Pong { id }).await,
            ClientFrame::InboxList { query, id } => self.inbox_list(query, id).await,
            ClientFrame::InboxUpdate { update, id } => self.inbox_update(update, id).await,
        }
    }

    pub(super) async fn error(
        &mut self,
        code: ErrorCode,
        message: &str,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        tracing::debug!(conn_id = self.reg.conn.id, %code, "error frame");
        let frame = ServerFrame::Error {
            code,
            message: message.to_owned(),
            id,
        };
        self.io.send(&frame).await
    }
}

/// Maps a read error to how the connection ends. RFC 6455 asks for a close frame with a
/// specific code when the endpoint fails the connection: 1009 for a message over the limit
/// (the stream is mid-frame and cannot be resynchronised), 1007 for a text frame that is not
/// UTF-8, 1002 for any other protocol violation. Anything else means the peer is gone.
fn read_error(e: axum::Error) -> Stop {
    let inner = e.into_inner();
    let Some(e) = inner.downcast_ref::<tungstenite::Error>() else {
        return Stop::Gone;
    };
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(_) => Stop::Close(close_code::TOO_BIG),
        tungstenite::Error::Utf8(_) => Stop::Close(close_code::INVALID_PAYLOAD),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Stop::Gone,
        tungstenite::Error::Protocol(p) => {
            tracing::debug!(error = %p, "websocket protocol violation");
            Stop::Close(close_code::PROTOCOL_ERROR)
        }
        _ => Stop::Gone,
    }
}

/// Tells a frame with an unknown `type` apart from one that is not valid at all.
pub(crate) fn classify_parse_error(text: &str, err: &serde_json::Error) -> (ErrorCode, String) {
    const KNOWN: &[&str] = &[
        "auth",
        "subscribe",
        "unsubscribe",
        "publish",
        "ping",
        "inbox_list",
        "inbox_update",
        "typing",
    ];
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
            Some(t) if !KNOWN.contains(&t) => {
                (ErrorCode::UnknownType, format!("unknown frame type {t:?}"))
            }
            None => (
                ErrorCode::BadFrame,
                "frame needs a string \"type\"".to_owned(),
            ),
            Some(_) => (ErrorCode::BadFrame, format!("invalid frame: {err}")),
        },
        Err(_) => (ErrorCode::BadFrame, format!("not valid JSON: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_classified() {
        let e = serde_json::from_str::<ClientFrame>("{").unwrap_err();
        assert_eq!(classify_parse_error("{", &e).0, ErrorCode::BadFrame);
        let t = r#"{"type":"dance"}"#;
        let e = serde_json::from_str::<ClientFrame>(t).unwrap_err();
        assert_eq!(classify_parse_error(t, &e).0, ErrorCode::UnknownType);
        let t = r#"{"type":"subscribe"}"#;
        let e = serde_json::from_str::<ClientFrame>(t).unwrap_err();
        assert_eq!(classify_parse_error(t, &e).0, ErrorCode::BadFrame);
    }

    #[test]
    fn read_errors_map_to_rfc_6455_close_codes() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let wrap = |e: tungstenite::Error| axum::Error::new(e);
        assert_eq!(
            read_error(wrap(tungstenite::Error::Utf8("bad".into()))),
            Stop::Close(close_code::INVALID_PAYLOAD)
        );
        assert_eq!(
            read_error(wrap(tungstenite::Error::Protocol(
                ProtocolError::UnmaskedFrameFromClient
            ))),
            Stop::Close(close_code::PROTOCOL_ERROR)
        );
        assert_eq!(
            read_error(wrap(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1
                }
            ))),
            Stop::Close(close_code::TOO_BIG)
        );
        assert_eq!(
            read_error(wrap(tungstenite::Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            ))),
            Stop::Gone
        );
        assert_eq!(
            read_error(wrap(tungstenite::Error::ConnectionClosed)),
            Stop::Gone
        );
    }
}
