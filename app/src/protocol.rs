//! Herald's one wire protocol, shared by the server and the browser.
//!
//! Every WebSocket frame is a JSON object tagged by `"type"` (snake_case). The client sends
//! [`ClientFrame`]s and the server answers with [`ServerFrame`]s. Fields that later features
//! add are optional with defaults, so old clients keep working:
//!
//! | client frame   | purpose                                                               |
//! |----------------|-----------------------------------------------------------------------|
//! | `auth`         | first frame: a user token or API key (never in URLs); again to refresh |
//! | `subscribe`    | follow a topic, optionally resuming after a [`Position`]              |
//! | `unsubscribe`  | stop following a topic                                                |
//! | `publish`      | send a notification from the socket; acknowledged with `ack` by `id`  |
//! | `ping`         | application-level liveness check; answered with `pong`                |
//! | `inbox_list`   | a page of the user's own inbox, with read state; answered `inbox_page`|
//! | `inbox_update` | mark read/unread, archive/unarchive, read all up to an offset         |
//! | `typing`       | the user is typing in a room (ephemeral, rate-limited)                |
//!
//! | server frame   | purpose                                                               |
//! |----------------|-----------------------------------------------------------------------|
//! | `welcome`      | sent once on connect: connection id and server limits                 |
//! | `authenticated`| a valid `auth`: who the connection is, and until when                 |
//! | `token_expiring`| the token expires soon: send a fresh one in an `auth` frame          |
//! | `subscribed`   | a subscription is live; carries the topic's current position          |
//! | `unsubscribed` | a subscription ended                                                  |
//! | `notification` | one stored notification (the same bytes for every subscriber)         |
//! | `gap`          | the requested resume position is older than what is retained         |
//! | `reset`        | the topic's history was reset (epoch changed) since the position      |
//! | `ack`          | a client `publish` with an `id` was stored                            |
//! | `presence`     | a user joined or left a room with presence (by user, not socket)     |
//! | `typing`       | a user is typing in a room (ephemeral: never stored)                 |
//! | `error`        | a typed error; the connection stays up unless a close follows         |
//! | `pong`         | answer to `ping`                                                      |
//! | `inbox_page`   | answer to `inbox_list`                                                |
//! | `inbox_updated`| answer to `inbox_update` (what changed, the unread count)             |
//! | `inbox_changed`| read state changed (on any device): pushed to the user's inbox subscribers |
//! | `inbox_count`  | the user's authoritative unread count, after each inbox arrival       |
//!
//! A user's inbox is the topic `@<user id>` ([`inbox_topic`]): subscribe to it like any
//! topic (offsets, resume, gap and reset) to receive notifications addressed to the user.
//! Only the user (and API keys granted `@` patterns) may read it; only keys and tokens granted
//! `publish` on `@` patterns may send to it. Counts and changes carry `seq`, the user's change
//! counter: a frame with a lower `seq` than one already applied is older news.
//!
//! Error codes are [`ErrorCode`]; WebSocket close codes are in [`close_code`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 64;
/// Highest (most urgent) priority. 3 is the default.
pub const MAX_PRIORITY: u8 = 5;
/// The priority a notification gets when none is given.
pub const DEFAULT_PRIORITY: u8 = 3;
/// At most this many tags on a notification.
pub const MAX_TAGS: usize = 10;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 32;
/// Longest title, in bytes.
pub const MAX_TITLE_LEN: usize = 256;
/// Longest link, in bytes.
pub const MAX_LINK_LEN: usize = 2048;
/// Longest category, in bytes (same grammar as a topic).
pub const MAX_CATEGORY_LEN: usize = 32;
/// Longest user id (a token's `sub`), in bytes.
pub const MAX_USER_LEN: usize = 128;
/// Most users one bulk request may address.
pub const MAX_BULK_USERS: usize = 1000;
/// Most offsets one inbox update may name.
pub const MAX_INBOX_OFFSETS: usize = 1000;
/// Largest inbox page.
pub const MAX_INBOX_PAGE: usize = 200;

/// A resume position: the last notification a client saw on a topic.
///
/// `epoch` identifies one history of the topic; it changes only when that history is reset,
/// so an offset is meaningful only together with its epoch. Offsets start at 1 and increase
/// by exactly one per notification.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a publisher supplies; the store adds id, offset and time.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNotification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// What kind of notification this is, for the inbox's filters (`mention`, `billing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Who sent it: set by the server from the sender's credentials (a user's id for a
    /// message from a user's socket), never taken from what a client sends.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// A stored notification, as every reader sees it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique id (random, URL-safe).
    pub id: String,
    pub topic: String,
    pub epoch: String,
    /// Per-topic offset, assigned by the store: 1, 2, 3, ... within one epoch.
    pub offset: u64,
    /// Unix time in milliseconds when the store accepted it.
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub body: String,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The sender, as the server established it (see [`NewNotification::author`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

impl Notification {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

/// Frames a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate the connection: the first frame, and again with a fresh token (same
    /// user) before the current one expires.
    Auth { token: String },
    /// Follow `topic`. With `since`, the server replays everything after that position first.
    Subscribe {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// Echoed in the reply so a client can match it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Unsubscribe {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Publish from the socket (chat). Acknowledged with `ack` carrying the same `id`. A
    /// `client_id` makes it idempotent for this sender: a retry (after a reconnect) with the
    /// same one is stored once and acknowledged with the original position.
    Publish {
        topic: String,
        #[serde(flatten)]
        message: NewNotification,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// "I am typing" in a room: passed on to its subscribers, never stored. Send it again
    /// every few seconds while typing; it expires by itself.
    Typing { topic: String },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A page of the connection's own inbox, newest first.
    InboxList {
        #[serde(flatten)]
        query: InboxQuery,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Changes the read state of the connection's own inbox.
    InboxUpdate {
        update: InboxUpdate,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// Which inbox items a listing shows.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxFilter {
    /// Unread and not archived.
    Unread,
    /// Everything not archived.
    #[default]
    All,
    /// Archived only.
    Archived,
}

impl InboxFilter {
    /// Whether a notification in this state belongs in a listing with this filter.
    pub fn admits(self, read: bool, archived: bool) -> bool {
        match self {
            InboxFilter::Unread => !read && !archived,
            InboxFilter::All => !archived,
            InboxFilter::Archived => archived,
        }
    }
}

/// A listing of an inbox: newest first, `before` an offset (exclusive) for the next page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxQuery {
    #[serde(default)]
    pub filter: InboxFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A change to an inbox's read state. `read_all` marks read every notification up to and
/// including `up_to` (the newest one the client has seen), so an arrival that races the
/// click stays unread.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InboxUpdate {
    Read { offsets: Vec<u64> },
    Unread { offsets: Vec<u64> },
    Archive { offsets: Vec<u64> },
    Unarchive { offsets: Vec<u64> },
    ReadAll { up_to: u64 },
}

impl InboxUpdate {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            InboxUpdate::Read { offsets }
            | InboxUpdate::Unread { offsets }
            | InboxUpdate::Archive { offsets }
            | InboxUpdate::Unarchive { offsets } => {
                if offsets.is_empty() || offsets.len() > MAX_INBOX_OFFSETS {
                    return Err(ValidationError::new(
                        ErrorCode::BadField,
                        format!("offsets must name 1 to {MAX_INBOX_OFFSETS} notifications"),
                    ));
                }
                Ok(())
            }
            InboxUpdate::ReadAll { .. } => Ok(()),
        }
    }

    /// The state an item at `offset` is in after this change, given the state before.
    pub fn apply(&self, offset: u64, read: &mut bool, archived: &mut bool) {
        match self {
            InboxUpdate::Read { offsets } if offsets.contains(&offset) => *read = true,
            InboxUpdate::Unread { offsets } if offsets.contains(&offset) => *read = false,
            InboxUpdate::Archive { offsets } if offsets.contains(&offset) => *archived = true,
            InboxUpdate::Unarchive { offsets } if offsets.contains(&offset) => *archived = false,
            InboxUpdate::ReadAll { up_to } if offset <= *up_to && !*archived => *read = true,
            _ => {}
        }
    }
}

/// One inbox item: the notification and its read state.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub notification: Notification,
    pub read: bool,
    pub archived: bool,
}

/// A page of an inbox, with the unread count as of the same moment.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxPage {
    pub user: String,
    pub items: Vec<InboxItem>,
    /// Unread and not archived, in the whole inbox.
    pub unread: u64,
    /// The inbox's change counter at the moment of the listing.
    pub seq: u64,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// The topic that is `user`'s inbox.
pub fn inbox_topic(user: &str) -> String {
    format!("@{user}")
}

/// The user whose inbox `topic` is, if it is one.
pub fn inbox_owner(topic: &str) -> Option<&str> {
    topic.strip_prefix('@')
}

/// A user id: 1 to [`MAX_USER_LEN`] bytes, no control characters.
pub fn validate_user(user: &str) -> Result<(), ValidationError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(ValidationError::new(
            ErrorCode::BadField,
            format!("a user id is 1 to {MAX_USER_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A category: 1 to [`MAX_CATEGORY_LEN`] letters, digits, `_` or `-`.
pub fn validate_category(c: &str) -> Result<(), ValidationError> {
    let grammar = c
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if c.is_empty() || c.len() > MAX_CATEGORY_LEN || !grammar {
        return Err(ValidationError::new(
            ErrorCode::BadField,
            format!("category must be 1 to {MAX_CATEGORY_LEN} letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

/// A topic a client may read: a topic name, or a user's inbox (`@` and a user id).
pub fn validate_readable_topic(topic: &str) -> Result<(), ValidationError> {
    match inbox_owner(topic) {
        Some(user) => {
            validate_user(user).map_err(|e| ValidationError::new(ErrorCode::BadTopic, e.message))
        }
        None => validate_topic(topic),
    }
}

/// A presence change on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    Join,
    Leave,
}

/// Frames the server sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        conn_id: u64,
        /// Largest inbound frame the server accepts, in bytes.
        max_frame_bytes: usize,
        /// How often the server pings; a client silent for longer than twice this is closed.
        heartbeat_ms: u64,
        /// The first frame (normally `auth`) must arrive within this, or the socket closes
        /// with 4004.
        #[serde(default)]
        auth_timeout_ms: u64,
    },
    /// Answer to a valid `auth` frame (the first, or a refresh). `expires_at` (Unix seconds)
    /// is when the connection closes with 4005 unless a fresh token arrives before.
    Authenticated {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// The connection's token expires soon: send a fresh one in an `auth` frame.
    TokenExpiring {
        expires_at: i64,
    },
    /// The subscription is live. `position` is the topic's last offset when the subscription
    /// started: any replay ends there and live notifications continue after it.
    Subscribed {
        topic: String,
        position: Position,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// In a room with presence: who is in it now (users, each once), or only how many
        /// when they are more than the server lists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_count: Option<u64>,
    },
    Unsubscribed {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Notification(Notification),
    /// The resume position is older than the oldest retained notification: offsets
    /// `requested + 1 .. first_available` are gone. Replay continues from `first_available`.
    Gap {
        topic: String,
        epoch: String,
        requested: u64,
        first_available: u64,
    },
    /// The topic's epoch differs from the one in the resume position; offsets from the old
    /// epoch mean nothing now. Replay continues from `first_available` of the new `epoch`.
    Reset {
        topic: String,
        epoch: String,
        first_available: u64,
    },
    Ack {
        id: u64,
        position: Position,
    },
    Presence {
        topic: String,
        action: PresenceAction,
        user: String,
    },
    /// Who is in a room now, replacing what the client knew: sent when presence frames had to
    /// be dropped for this connection (a storm while it was behind), or when a subscription
    /// that was replaying history starts receiving live. Presence frames after it apply on
    /// top of it; none from before it follow it.
    PresenceSync {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_count: Option<u64>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    InboxPage {
        #[serde(flatten)]
        page: InboxPage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Answer to `inbox_update`: how many notifications changed state, and the count after.
    InboxUpdated {
        changed: u64,
        unread: u64,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The user's inbox state changed (from any connection or the API).
    InboxChanged {
        update: InboxUpdate,
        unread: u64,
        seq: u64,
    },
    /// The user's unread count after an arrival.
    InboxCount {
        unread: u64,
        seq: u64,
    },
    /// `user` is typing in `topic`; forget it after `expires_ms` without another.
    Typing {
        topic: String,
        user: String,
        expires_ms: u64,
    },
}

/// Every error code Herald sends, over HTTP (`{"error":{"code":..}}`) and in `error` frames.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not valid JSON, or not the expected shape.
    BadFrame,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// The frame or body is larger than the configured limit.
    TooLarge,
    /// The topic name breaks the grammar (see [`validate_topic`]).
    BadTopic,
    /// A field is out of range (priority, tag, title, link, empty body...).
    BadField,
    /// Unsubscribing from a topic the connection does not follow.
    NotSubscribed,
    /// The connection follows as many topics as it may.
    TooManySubscriptions,
    /// Too many requests or frames; slow down.
    RateLimited,
    /// A query parameter is invalid.
    BadQuery,
    /// The resource does not exist.
    NotFound,
    /// The server cannot take more connections or work right now.
    Unavailable,
    /// The request's Origin is not allowed.
    ForbiddenOrigin,
    /// The request took longer than the server allows (a body sent too slowly).
    Timeout,
    /// The store failed; nothing was acknowledged.
    Internal,
    /// No credentials: send `Authorization: Bearer <key or token>`, or an `auth` frame first.
    Unauthorized,
    /// The key or token is not valid (unknown, forged, malformed, wrong algorithm or audience).
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The API key was revoked.
    KeyRevoked,
    /// Valid credentials without the grant for this topic or action.
    Forbidden,
    /// A credential was put in the URL; send it in a header or the `auth` frame.
    TokenInUrl,
    /// A refreshed token names another user than the connection's.
    SubjectMismatch,
    /// This user (or address) already holds as many connections as it may.
    TooManyConnections,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::BadField => "bad_field",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadQuery => "bad_query",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ForbiddenOrigin => "forbidden_origin",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenInUrl => "token_in_url",
            ErrorCode::SubjectMismatch => "subject_mismatch",
            ErrorCode::TooManyConnections => "too_many_connections",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes Herald uses, and the reason text sent with each: the one table.
/// 1000-1015 are RFC 6455's; 4000-4999 are Herald's own.
pub mod close_code {
    /// Normal close (client asked, or unsubscribe-all).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect (to another node) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (an unmasked frame, a reserved opcode or bits,
    /// a bad continuation); RFC 6455 section 7.4.1.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8; RFC 6455 section 8.1.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The Origin or token was refused.
    pub const POLICY: u16 = 1008;
    /// A frame exceeded the hard size limit; the stream cannot be resynchronised.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (the store failed for good); reconnect, to another node if there is one.
    pub const INTERNAL: u16 = 1011;
    /// The client did not keep up: its outbound queue overflowed. Reconnect and resume from
    /// the last offset seen; nothing is lost for a client that resumes.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The client stopped answering heartbeats.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// The client sent too many frames too fast.
    pub const RATE_LIMITED: u16 = 4002;
    /// Authentication failed: the first frame was not a valid `auth` (and anonymous access
    /// is off), or the key behind the connection was revoked. An `error` frame before the
    /// close says which (`unauthorized`, `invalid_token`, `token_expired`, `key_revoked`).
    pub const UNAUTHORIZED: u16 = 4003;
    /// No first frame within the handshake timeout.
    pub const AUTH_TIMEOUT: u16 = 4004;
    /// The connection's token expired without a fresh one; get a new token, reconnect, resume.
    pub const TOKEN_EXPIRED: u16 = 4005;
    /// The user already holds `--max-connections-per-user` sockets.
    pub const TOO_MANY_CONNECTIONS: u16 = 4006;

    /// The reason text sent in the close frame for `code` (at most 123 bytes, as RFC 6455
    /// allows).
    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "bye",
            GOING_AWAY => "server shutting down; reconnect and resume",
            PROTOCOL_ERROR => "websocket protocol violation",
            INVALID_PAYLOAD => "text frame is not valid UTF-8",
            POLICY => "refused by policy",
            TOO_BIG => "message exceeds the hard size limit",
            INTERNAL => "server error; reconnect and resume",
            SLOW_CONSUMER => "slow consumer: reconnect and resume from your last offset",
            HEARTBEAT_TIMEOUT => "no heartbeat answer",
            RATE_LIMITED => "too many frames",
            UNAUTHORIZED => "authentication failed",
            AUTH_TIMEOUT => "no auth frame in time",
            TOKEN_EXPIRED => "token expired: get a new token, reconnect and resume",
            TOO_MANY_CONNECTIONS => "too many connections for this user",
            _ => "",
        }
    }

    /// A short stable name for `code` (metrics labels, logs); `other` for a code not above.
    pub fn name(code: u16) -> &'static str {
        match code {
            NORMAL => "normal",
            GOING_AWAY => "going_away",
            PROTOCOL_ERROR => "protocol_error",
            INVALID_PAYLOAD => "invalid_payload",
            POLICY => "policy",
            TOO_BIG => "too_big",
            INTERNAL => "internal",
            SLOW_CONSUMER => "slow_consumer",
            HEARTBEAT_TIMEOUT => "heartbeat_timeout",
            RATE_LIMITED => "rate_limited",
            UNAUTHORIZED => "unauthorized",
            AUTH_TIMEOUT => "auth_timeout",
            TOKEN_EXPIRED => "token_expired",
            TOO_MANY_CONNECTIONS => "too_many_connections",
            _ => "other",
        }
    }

    /// Every code above, for tests and documentation.
    pub const ALL: &[u16] = &[
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        INTERNAL,
        SLOW_CONSUMER,
        HEARTBEAT_TIMEOUT,
        RATE_LIMITED,
        UNAUTHORIZED,
        AUTH_TIMEOUT,
        TOKEN_EXPIRED,
        TOO_MANY_CONNECTIONS,
    ];
}

/// Why a name or field was refused; the message is user-facing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
}

impl ValidationError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The topic grammar: 1 to 64 characters from `A-Z a-z 0-9 _ -`.
///
/// Kept deliberately small so that a topic is safe in a URL path, a Redis key and a file
/// name without escaping.
pub fn validate_topic(topic: &str) -> Result<(), ValidationError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(ValidationError::new(
            ErrorCode::BadTopic,
            format!("topic must be 1 to {MAX_TOPIC_LEN} characters"),
        ));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ValidationError::new(
            ErrorCode::BadTopic,
            "topic may contain only letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

impl NewNotification {
    /// Checks every field against the documented limits; `max_body` is the configured
    /// largest body in bytes.
    pub fn validate(&self, max_body: usize) -> Result<(), ValidationError> {
        if self.body.trim().is_empty() {
            return Err(ValidationError::new(
                ErrorCode::BadField,
                "body must not be empty",
            ));
        }
        if self.body.len() > max_body {
            return Err(ValidationError::new(
                ErrorCode::TooLarge,
                format!("body is larger than {max_body} bytes"),
            ));
        }
        if let Some(p) = self.priority {
            if !(1..=MAX_PRIORITY).contains(&p) {
                return Err(ValidationError::new(
                    ErrorCode::BadField,
                    format!("priority must be 1 to {MAX_PRIORITY}"),
                ));
            }
        }
        if let Some(t) = &self.title {
            if t.len() > MAX_TITLE_LEN {
                return Err(ValidationError::new(
                    ErrorCode::BadField,
                    format!("title is longer than {MAX_TITLE_LEN} bytes"),
                ));
            }
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                ErrorCode::BadField,
                format!("at most {MAX_TAGS} tags"),
            ));
        }
        if self
            .tags
            .iter()
            .any(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
        {
            return Err(ValidationError::new(
                ErrorCode::BadField,
                format!("each tag must be 1 to {MAX_TAG_LEN} bytes"),
            ));
        }
        if let Some(c) = &self.category {
            validate_category(c)?;
        }
        if let Some(l) = &self.link {
            let ok_scheme = l.starts_with("https://") || l.starts_with("http://");
            if l.len() > MAX_LINK_LEN || !ok_scheme {
                return Err(ValidationError::new(
                    ErrorCode::BadField,
                    format!("link must be an http(s) URL of at most {MAX_LINK_LEN} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// The JSON error body of every failed HTTP request: `{"error":{"code":..,"message":..}}`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// One page of `GET /api/topics/{topic}/notifications`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub topic: String,
    pub epoch: String,
    /// Oldest retained offset (equals `last_offset + 1` when nothing is retained).
    pub first_offset: u64,
    /// Newest offset ever assigned in this epoch (0 before the first publish).
    pub last_offset: u64,
    pub notifications: Vec<Notification>,
    /// Pass as `since` (oldest-first) or `before` (newest-first) for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `GET /api/admin/overview`: what the admin page shows (an admin key).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    pub version: String,
    /// `sqlite`, `memory` or `redis`.
    pub store: String,
    /// Whether the node takes new work (see `GET /api/ready`).
    pub ready: bool,
    pub draining: bool,
    /// Why not ready, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    pub connections: usize,
    pub max_connections: usize,
    pub subscriptions: usize,
    pub topics: usize,
    /// The topics with the most subscribers on this node, most first.
    pub busiest: Vec<BusyTopic>,
    /// Since start: publishes stored (all routes), notification frames written, connections
    /// cut as slow consumers. Rates come from two readings.
    pub published: u64,
    pub delivered: u64,
    pub slow_consumer_cuts: u64,
    pub queued_frames: usize,
    pub queue_depth_max: usize,
    pub store_queued_writes: u64,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyTopic {
    pub topic: String,
    pub subscribers: usize,
}

/// One API key as `GET /api/keys` lists it (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// Scopes: `publish:PATTERN`, `read:PATTERN`, `admin:*`.
    pub grants: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub revoked: Option<i64>,
    #[serde(default)]
    pub dev: bool,
}

/// `POST /api/keys` `{"name":..,"allow":[..]}`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddKey {
    pub name: String,
    /// Scopes: `publish:PATTERN`, `read:PATTERN` or `admin:*`.
    pub allow: Vec<String>,
}

/// A key just created: the only time the key itself is shown.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    pub key: String,
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_client(frame: ClientFrame) {
        let json = serde_json::to_string(&frame).unwrap();
        let back: ClientFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, frame, "{json}");
    }

    fn round_trip_server(frame: ServerFrame) {
        let json = serde_json::to_string(&frame).unwrap();
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, frame, "{json}");
    }

    fn sample() -> Notification {
        Notification {
            id: "abc123".into(),
            topic: "ops".into(),
            epoch: "e1".into(),
            offset: 7,
            time: 1_700_000_000_000,
            title: Some("Deploy".into()),
            body: "Deploy finished".into(),
            priority: 4,
            tags: vec!["rocket".into()],
            link: Some("https://example.com".into()),
            category: Some("deploys".into()),
            author: Some("ana".into()),
        }
    }

    #[test]
    fn every_client_frame_round_trips() {
        round_trip_client(ClientFrame::Auth { token: "t".into() });
        round_trip_client(ClientFrame::Subscribe {
            topic: "a".into(),
            since: None,
            id: None,
        });
        round_trip_client(ClientFrame::Subscribe {
            topic: "a".into(),
            since: Some(Position {
                epoch: "e".into(),
                offset: 3,
            }),
            id: Some(9),
        });
        round_trip_client(ClientFrame::Unsubscribe {
            topic: "a".into(),
            id: Some(1),
        });
        round_trip_client(ClientFrame::Publish {
            topic: "chat".into(),
            message: NewNotification {
                body: "hi".into(),
                ..Default::default()
            },
            client_id: Some("m-1".into()),
            id: Some(2),
        });
        round_trip_client(ClientFrame::Typing {
            topic: "chat".into(),
        });
        // A client cannot name the author: the field is not read.
        let forged: ClientFrame =
            serde_json::from_str(r#"{"type":"publish","topic":"c","body":"x","author":"bo"}"#)
                .unwrap();
        assert!(matches!(forged, ClientFrame::Publish { message, .. } if message.author.is_none()));
        round_trip_client(ClientFrame::Ping { id: None });
        round_trip_client(ClientFrame::InboxList {
            query: InboxQuery {
                filter: InboxFilter::Unread,
                category: Some("mention".into()),
                before: Some(9),
                limit: Some(20),
            },
            id: Some(2),
        });
        round_trip_client(ClientFrame::InboxUpdate {
            update: InboxUpdate::ReadAll { up_to: 7 },
            id: None,
        });
        let wire: ClientFrame =
            serde_json::from_str(r#"{"type":"inbox_update","update":{"op":"read","offsets":[3]}}"#)
                .unwrap();
        assert_eq!(
            wire,
            ClientFrame::InboxUpdate {
                update: InboxUpdate::Read { offsets: vec![3] },
                id: None
            }
        );
    }

    #[test]
    fn every_server_frame_round_trips() {
        let pos = Position {
            epoch: "e".into(),
            offset: 5,
        };
        round_trip_server(ServerFrame::Welcome {
            conn_id: 1,
            max_frame_bytes: 65536,
            heartbeat_ms: 25000,
            auth_timeout_ms: 10000,
        });
        round_trip_server(ServerFrame::Authenticated {
            user: "ana".into(),
            expires_at: Some(1_800_000_000),
        });
        round_trip_server(ServerFrame::TokenExpiring {
            expires_at: 1_800_000_000,
        });
        round_trip_server(ServerFrame::Subscribed {
            topic: "a".into(),
            position: pos.clone(),
            id: Some(1),
            members: None,
            member_count: None,
        });
        round_trip_server(ServerFrame::Subscribed {
            topic: "chat-a".into(),
            position: pos.clone(),
            id: None,
            members: Some(vec!["ana".into(), "bo".into()]),
            member_count: None,
        });
        round_trip_server(ServerFrame::Typing {
            topic: "chat-a".into(),
            user: "ana".into(),
            expires_ms: 5000,
        });
        round_trip_server(ServerFrame::Unsubscribed {
            topic: "a".into(),
            id: None,
        });
        round_trip_server(ServerFrame::Notification(sample()));
        round_trip_server(ServerFrame::Gap {
            topic: "a".into(),
            epoch: "e".into(),
            requested: 1,
            first_available: 10,
        });
        round_trip_server(ServerFrame::Reset {
            topic: "a".into(),
            epoch: "f".into(),
            first_available: 1,
        });
        round_trip_server(ServerFrame::Ack {
            id: 3,
            position: pos,
        });
        round_trip_server(ServerFrame::Presence {
            topic: "a".into(),
            action: PresenceAction::Join,
            user: "ann".into(),
        });
        round_trip_server(ServerFrame::PresenceSync {
            topic: "a".into(),
            members: Some(vec!["ann".into()]),
            member_count: None,
        });
        round_trip_server(ServerFrame::Error {
            code: ErrorCode::BadTopic,
            message: "no".into(),
            id: None,
        });
        round_trip_server(ServerFrame::Pong { id: Some(4) });
        round_trip_server(ServerFrame::InboxPage {
            page: InboxPage {
                user: "ana".into(),
                items: vec![InboxItem {
                    notification: sample(),
                    read: true,
                    archived: false,
                }],
                unread: 3,
                seq: 12,
                next: Some(7),
            },
            id: Some(1),
        });
        round_trip_server(ServerFrame::InboxChanged {
            update: InboxUpdate::Archive {
                offsets: vec![1, 2],
            },
            unread: 0,
            seq: 13,
        });
        round_trip_server(ServerFrame::InboxCount { unread: 1, seq: 14 });
        round_trip_server(ServerFrame::InboxUpdated {
            changed: 2,
            unread: 1,
            seq: 15,
            id: Some(8),
        });
    }

    #[test]
    fn notification_frame_is_flat_and_tagged() {
        let v: serde_json::Value =
            serde_json::to_value(ServerFrame::Notification(sample())).unwrap();
        assert_eq!(v["type"], "notification");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["body"], "Deploy finished");
    }

    #[test]
    fn subscribe_without_optional_fields_parses() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"subscribe","topic":"ops"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                topic: "ops".into(),
                since: None,
                id: None
            }
        );
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in [
            ErrorCode::BadFrame,
            ErrorCode::TooManySubscriptions,
            ErrorCode::ForbiddenOrigin,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn every_close_code_has_a_short_reason() {
        for &code in close_code::ALL {
            let r = close_code::reason(code);
            assert!(!r.is_empty() && r.len() <= 123, "{code}: {r:?}");
        }
    }

    #[test]
    fn every_close_code_has_its_own_name() {
        let names: std::collections::HashSet<_> = close_code::ALL
            .iter()
            .map(|&c| close_code::name(c))
            .collect();
        assert_eq!(names.len(), close_code::ALL.len());
        assert!(!names.contains("other"));
    }

    #[test]
    fn topic_grammar() {
        assert!(validate_topic("general").is_ok());
        assert!(validate_topic("ops_prod-1").is_ok());
        assert!(validate_topic(&"a".repeat(64)).is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(&"a".repeat(65)).is_err());
        assert!(validate_topic("a/b").is_err());
        assert!(validate_topic("héllo").is_err());
        assert_eq!(validate_topic("a b").unwrap_err().code, ErrorCode::BadTopic);
    }

    #[test]
    fn notification_validation() {
        let ok = NewNotification {
            body: "x".into(),
            ..Default::default()
        };
        assert!(ok.validate(10).is_ok());
        let empty = NewNotification {
            body: "  ".into(),
            ..Default::default()
        };
        assert_eq!(empty.validate(10).unwrap_err().code, ErrorCode::BadField);
        let big = NewNotification {
            body: "x".repeat(11),
            ..Default::default()
        };
        assert_eq!(big.validate(10).unwrap_err().code, ErrorCode::TooLarge);
        let prio = NewNotification {
            body: "x".into(),
            priority: Some(6),
            ..Default::default()
        };
        assert_eq!(prio.validate(10).unwrap_err().code, ErrorCode::BadField);
        let link = NewNotification {
            body: "x".into(),
            link: Some("javascript:1".into()),
            ..Default::default()
        };
        assert_eq!(link.validate(10).unwrap_err().code, ErrorCode::BadField);
    }
}
