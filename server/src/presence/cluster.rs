//! Presence across nodes (Redis mode): who is in a room is kept in Redis, so a user with tabs
//! on two nodes is in it once, and joins and leaves reach every node.
//!
//! # How
//! - Each node still counts its own sockets per room and user ([`super::Presence`]); only a
//!   user's first socket on this node (and their last) goes to Redis, through one task per
//!   node that applies them in order (a quick close and reopen cannot arrive reversed).
//! - In the room's slot: a set of `node|user` (who is here through which node), a hash
//!   user -> number of nodes, and the room's announcement counter. A script adds or removes
//!   `node|user`; when a user's node count goes from 0 to 1 (or back) it numbers the
//!   announcement and publishes it on the room's channel, so every node gets every room's
//!   announcements in number order, and a snapshot (members and number, one script) is exact
//!   in the sense of [`super`]: the session writes only announcements numbered above it.
//! - A node that dies without leaving: every node refreshes its liveness key every
//!   [`BEAT`]; any node that finds a registered node's key expired takes that node's users out
//!   of every room it was in (announcing the leaves). So after a crash, nobody stays present
//!   for longer than [`NODE_TTL`] plus a sweep.

use super::{Announcement, Members, Snapshot};
use crate::store::redis::RedisStore;
use crate::store::StoreError;
use app::protocol::{PresenceAction, ServerFrame};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often a node refreshes its liveness key and looks for dead nodes.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long a node's liveness key lives without a refresh.
pub const NODE_TTL: Duration = Duration::from_secs(6);

/// Numbers the room's next announcement. A new counter starts at the server's clock in
/// microseconds, so numbers keep growing across a Redis restart that lost the old counter
/// (sessions drop announcements numbered at or below the list they last wrote).
const NEXT_SEQ: &str = r#"
local function next_seq(key)
  if redis.call('EXISTS', key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', key, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  end
  return redis.call('INCR', key)
end
"#;

/// KEYS: set `node|user`, hash user -> nodes, counter. ARGV: `node|user`, user, channel,
/// frame (join), list max. Returns {seq, count, members...} (members only up to list max).
const JOIN: &str = r#"
if ARGV[1] ~= '' and redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    local seq = next_seq(KEYS[3])
    redis.call('PUBLISH', ARGV[3], '!p' .. string.format('%.0f', seq) .. ':' .. ARGV[4])
  end
end
local seq = redis.call('GET', KEYS[3]) or '0'
local n = redis.call('HLEN', KEYS[2])
local out = {seq, n}
if n <= tonumber(ARGV[5]) then
  for _, u in ipairs(redis.call('HKEYS', KEYS[2])) do out[#out + 1] = u end
end
return out
"#;

/// KEYS: as JOIN. ARGV: `node|user`, user, channel, frame (leave).
const LEAVE: &str = r#"
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    local seq = next_seq(KEYS[3])
    redis.call('PUBLISH', ARGV[3], '!p' .. string.format('%.0f', seq) .. ':' .. ARGV[4])
  end
end
return 1
"#;

enum Op {
    /// `first`: the user's first socket on this node (otherwise only the snapshot).
    Join {
        room: Arc<str>,
        user: String,
        first: bool,
        reply: oneshot::Sender<Result<Snapshot, StoreError>>,
    },
    Leave {
        room: Arc<str>,
        user: String,
    },
    Snapshot {
        room: Arc<str>,
        reply: oneshot::Sender<Result<Snapshot, StoreError>>,
    },
}

pub struct Cluster {
    ops: mpsc::UnboundedSender<Op>,
}

impl Cluster {
    /// `local` gives this node's members again when Redis comes back empty (restarted).
    pub fn start(
        store: Arc<RedisStore>,
        list_max: usize,
        local: std::sync::Weak<super::Presence>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let node = crate::store::random_id(12);
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker {
            store,
            node,
            list_max,
            local,
            ops: tx.clone(),
            join: redis::Script::new(&format!("{NEXT_SEQ}{JOIN}")),
            leave: redis::Script::new(&format!("{NEXT_SEQ}{LEAVE}")),
        });
        tokio::spawn(worker.clone().run(rx, cancel.clone()));
        tokio::spawn(worker.beat(cancel));
        Arc::new(Self { ops: tx })
    }

    pub async fn join(
        &self,
        room: &Arc<str>,
        user: &str,
        first: bool,
    ) -> Result<Snapshot, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Join {
                room: room.clone(),
                user: user.to_owned(),
                first,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn leave(&self, room: &Arc<str>, user: &str) {
        let _ = self.ops.send(Op::Leave {
            room: room.clone(),
            user: user.to_owned(),
        });
    }

    pub async fn snapshot(&self, room: &Arc<str>) -> Result<Snapshot, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Snapshot {
                room: room.clone(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

struct Worker {
    store: Arc<RedisStore>,
    node: String,
    list_max: usize,
    local: std::sync::Weak<super::Presence>,
    /// Re-joins go through the same ordered queue as every other change.
    ops: mpsc::UnboundedSender<Op>,
    join: redis::Script,
    leave: redis::Script,
}

fn frame(room: &str, user: &str, action: PresenceAction) -> String {
    serde_json::to_string(&ServerFrame::Presence {
        topic: room.to_owned(),
        action,
        user: user.to_owned(),
    })
    .unwrap_or_default()
}

/// The presence message on a room's channel: `!p<seq>:<frame>`.
pub fn parse_announcement(room: &str, rest: &[u8]) -> Option<Announcement> {
    let text = std::str::from_utf8(rest).ok()?;
    let (seq, frame) = text.split_once(':')?;
    Some(Announcement {
        room: Arc::from(room),
        seq: seq.parse().ok()?,
        frame: frame.to_owned().into(),
    })
}

impl Worker {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Op>, cancel: CancellationToken) {
        loop {
            let op = tokio::select! {
                _ = cancel.cancelled() => return,
                op = rx.recv() => match op { Some(op) => op, None => return },
            };
            match op {
                Op::Join {
                    room,
                    user,
                    first,
                    reply,
                } => {
                    let member = if first {
                        format!("{}|{user}", self.node)
                    } else {
                        String::new()
                    };
                    let _ = reply.send(self.join_script(&room, &user, &member).await);
                }
                Op::Leave { room, user } => {
                    let member = format!("{}|{user}", self.node);
                    if let Err(e) = self.leave_script(&room, &user, &member).await {
                        tracing::warn!(error = %e, %room, user, "presence leave not recorded");
                    }
                }
                Op::Snapshot { room, reply } => {
                    let _ = reply.send(self.join_script(&room, "", "").await);
                }
            }
        }
    }

    fn room_keys(&self, room: &str) -> [String; 3] {
        let k = &self.store.keys;
        [k.key(room, "pn"), k.key(room, "pu"), k.key(room, "pq")]
    }

    /// Adds `member` (unless empty) and returns the room's snapshot.
    async fn join_script(
        &self,
        room: &str,
        user: &str,
        member: &str,
    ) -> Result<Snapshot, StoreError> {
        let keys = self.room_keys(room);
        let channel = self.store.keys.channel(room);
        let text = frame(room, user, PresenceAction::Join);
        let registry = (self.store.keys.node_rooms(&self.node), !member.is_empty());
        let (script, list_max) = (&self.join, self.list_max);
        let out: Vec<String> = self
            .store
            .conn
            .call(|mut c, _| async move {
                if registry.1 {
                    // Which rooms this node has users in: what a sweep cleans if it dies.
                    let _: () = redis::cmd("SADD")
                        .arg(&registry.0)
                        .arg(room)
                        .query_async(&mut c)
                        .await?;
                }
                crate::store::redis::with_keys(script, &keys)
                    .arg(member)
                    .arg(user)
                    .arg(&channel)
                    .arg(&text)
                    .arg(list_max)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [seq, count, users @ ..] = out.as_slice() else {
            return Err(StoreError::Corrupt("short presence answer".into()));
        };
        let count: u64 = count.parse().unwrap_or(0);
        let members = if count as usize > self.list_max {
            Members::Count(count)
        } else {
            let mut list = users.to_vec();
            list.sort();
            Members::List(list)
        };
        Ok(Snapshot {
            members,
            seq: seq.parse().unwrap_or(0),
        })
    }

    async fn leave_script(&self, room: &str, user: &str, member: &str) -> Result<(), StoreError> {
        let keys = self.room_keys(room);
        let channel = self.store.keys.channel(room);
        let text = frame(room, user, PresenceAction::Leave);
        let script = &self.leave;
        self.store
            .conn
            .call(|mut c, _| async move {
                crate::store::redis::with_keys(script, &keys)
                    .arg(member)
                    .arg(user)
                    .arg(&channel)
                    .arg(&text)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// Keeps this node's liveness key fresh and takes dead nodes' users out of their rooms.
    /// When Redis comes back with a new epoch (restarted, so its presence is gone), this
    /// node's members join again.
    async fn beat(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known_epoch: Option<Arc<str>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let keys = &self.store.keys;
            let (alive, nodes, node) =
                (keys.node_alive(&self.node), keys.nodes(), self.node.clone());
            let ttl = NODE_TTL.as_millis() as u64;
            let registered: Result<(Vec<String>, Arc<str>), _> = self
                .store
                .conn
                .call(|mut c, epoch| async move {
                    redis::pipe()
                        .cmd("SET")
                        .arg(&alive)
                        .arg(1)
                        .arg("PX")
                        .arg(ttl)
                        .ignore()
                        .cmd("SADD")
                        .arg(&nodes)
                        .arg(&node)
                        .ignore()
                        .cmd("SMEMBERS")
                        .arg(&nodes)
                        .query_async::<(Vec<String>,)>(&mut c)
                        .await
                        .map(|(v,)| (v, epoch))
                })
                .await;
            let Ok((registered, epoch)) = registered else {
                continue;
            };
            if known_epoch.as_ref().is_some_and(|k| *k != epoch) {
                self.rejoin();
            }
            known_epoch = Some(epoch);
            for other in registered.into_iter().filter(|n| *n != self.node) {
                if let Err(e) = self.sweep_if_dead(&other).await {
                    tracing::warn!(error = %e, node = other, "presence sweep failed");
                }
            }
        }
    }

    /// Every (room, user) with sockets on this node joins again (Redis lost them).
    fn rejoin(&self) {
        let Some(local) = self.local.upgrade() else {
            return;
        };
        let members = local.local_members();
        tracing::info!(
            count = members.len(),
            "redis restarted: presence joins again"
        );
        for (room, user) in members {
            let (reply, _) = oneshot::channel();
            let _ = self.ops.send(Op::Join {
                room,
                user,
                first: true,
                reply,
            });
        }
    }

    async fn sweep_if_dead(&self, node: &str) -> Result<(), StoreError> {
        let keys = &self.store.keys;
        let alive = keys.node_alive(node);
        let exists: bool =
            self.store
                .conn
                .call(|mut c, _| async move {
                    redis::cmd("EXISTS").arg(&alive).query_async(&mut c).await
                })
                .await?;
        if exists {
            return Ok(());
        }
        let rooms_key = keys.node_rooms(node);
        let rooms: Vec<String> = {
            let k = rooms_key.clone();
            self.store
                .conn
                .call(|mut c, _| async move { redis::cmd("SMEMBERS").arg(&k).query_async(&mut c).await })
                .await?
        };
        for room in rooms {
            let set = keys.key(&room, "pn");
            let pattern = format!("{node}|*");
            let mut members = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (set, pattern) = (set.clone(), pattern.clone());
                let (next, page): (u64, Vec<String>) = self
                    .store
                    .conn
                    .call(|mut c, _| async move {
                        redis::cmd("SSCAN")
                            .arg(&set)
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                members.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            for member in members {
                if let Some((_, user)) = member.split_once('|') {
                    self.leave_script(&room, user, &member).await?;
                }
            }
        }
        tracing::info!(node, "a dead node's presence was swept");
        let (nodes, node) = (keys.nodes(), node.to_owned());
        self.store
            .conn
            .call(|mut c, _| async move {
                redis::pipe()
                    .cmd("DEL")
                    .arg(&rooms_key)
                    .ignore()
                    .cmd("SREM")
                    .arg(&nodes)
                    .arg(&node)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }
}
