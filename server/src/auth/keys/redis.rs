//! The key table in Redis (`--store redis`): every node, and `herald keys` run anywhere with
//! the same `--redis-url` and `--redis-prefix`, share one table, so a key made or revoked
//! once works or stops working on every node.
//!
//! # Layout
//! Three keys with one hash tag, `<prefix>:{api-keys}:…`:
//! - `k`: a hash from key id to its record (JSON: name, SHA-256 of the secret, scopes,
//!   creation time, development flag). Written once, with HSETNX: an id is never reused.
//! - `r`: a hash from key id to the time it was revoked. Written once: a revocation is final.
//! - `v`: a random stamp, replaced by every change. Nodes poll it (one GET every
//!   [`super::WATCH_INTERVAL`]) and read `k` and `r` again when it moved.
//!
//! Each change is one Lua script (the write and the new stamp together), and a read is one
//! MULTI of the three, so a node never sees a change without its stamp.
//!
//! # A Redis that lost the table
//! Keys are added and revoked, never deleted, so the table only grows and every node's copy
//! is a part of it. A Redis restarted without persistence (or a promoted replica that had not
//! seen the last writes) comes back with less than a node knows: the node writes back what is
//! missing (records and revocations, each with HSETNX, so several nodes doing it at once
//! agree) and keeps using its copy meanwhile, so no key stops working and no revoked key comes
//! back while any node remembers it. A revocation no running node has seen yet is lost with
//! Redis's data, as a notification would be: run Redis with persistence (README).
//!
//! Calls are blocking (they run on the key watcher's blocking thread, in the CLI, at start and
//! under `spawn_blocking` for the admin API), on one connection made on first use and again
//! after a failure, each bounded by [`crate::store::redis::CALL_TIMEOUT`].

use super::{KeyError, Row, Source};
use base64::Engine as _;
use std::collections::HashMap;

/// A record as `k` keeps it (the id is the field; revocations live in `r`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    name: String,
    /// Base64 of the SHA-256 of the secret.
    hash: String,
    scopes: String,
    created: i64,
    #[serde(default)]
    dev: bool,
}

/// Adds a record if its id is free, with a new stamp. KEYS: records, stamp; ARGV: id,
/// record, stamp.
const INSERT: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('SET', KEYS[2], ARGV[3])
  return 1
end
return 0
";

/// Revokes a key that exists and is not revoked, with a new stamp. KEYS: records,
/// revocations, stamp; ARGV: id, time, stamp.
const REVOKE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('SET', KEYS[3], ARGV[3])
  return 1
end
return 0
";

/// Writes back records and revocations that are missing, each only if still missing; a new
/// stamp if anything was. KEYS: records, revocations, stamp; ARGV: stamp, n, n pairs (id,
/// record), then pairs (id, time of revocation).
const RESTORE: &str = r"
local n = tonumber(ARGV[2])
local wrote = 0
for i = 0, n - 1 do
  wrote = wrote + redis.call('HSETNX', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = 3 + 2 * n, #ARGV, 2 do
  wrote = wrote + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
if wrote > 0 then redis.call('SET', KEYS[3], ARGV[1]) end
return wrote
";

pub(super) struct RedisSource {
    client: redis::Client,
    /// Made on first use; dropped after a failure (the next call connects again).
    conn: Option<redis::Connection>,
    records: String,
    revocations: String,
    stamp: String,
    /// The stamp the last [`Source::rows`] read (`Some(None)`: the table had none yet).
    seen: Option<Option<String>>,
    insert: redis::Script,
    revoke: redis::Script,
    restore: redis::Script,
}

impl RedisSource {
    pub(super) fn open(url: &str, prefix: &str) -> Result<Self, KeyError> {
        let client =
            redis::Client::open(url).map_err(|e| KeyError::Invalid(format!("redis url: {e}")))?;
        let key = |part: &str| format!("{prefix}:{{api-keys}}:{part}");
        Ok(Self {
            client,
            conn: None,
            records: key("k"),
            revocations: key("r"),
            stamp: key("v"),
            seen: None,
            insert: redis::Script::new(INSERT),
            revoke: redis::Script::new(REVOKE),
            restore: redis::Script::new(RESTORE),
        })
    }

    /// Runs `f` on the connection, connecting first if there is none; any failure drops it.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, KeyError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let timeout = crate::store::redis::CALL_TIMEOUT;
                let c = self.client.get_connection_with_timeout(timeout)?;
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                c
            }
        };
        let out = f(self, &mut conn)?;
        self.conn = Some(conn);
        Ok(out)
    }
}

fn new_stamp() -> Result<String, KeyError> {
    super::random_base62(16)
}

impl Source for RedisSource {
    fn changed(&mut self) -> Result<bool, KeyError> {
        let now: Option<String> = self.call(|s, c| redis::cmd("GET").arg(&s.stamp).query(c))?;
        Ok(self.seen.as_ref() != Some(&now))
    }

    fn rows(&mut self) -> Result<Vec<Row>, KeyError> {
        let (stamp, records, revocations): (
            Option<String>,
            HashMap<String, String>,
            HashMap<String, i64>,
        ) = self.call(|s, c| {
            redis::pipe()
                .atomic()
                .get(&s.stamp)
                .hgetall(&s.records)
                .hgetall(&s.revocations)
                .query(c)
        })?;
        self.seen = Some(stamp);
        let mut rows = Vec::with_capacity(records.len());
        for (id, json) in records {
            let Ok(rec) = serde_json::from_str::<Record>(&json) else {
                tracing::error!(key_id = %id, "unreadable key record in redis; it is ignored");
                continue;
            };
            let Ok(hash) = base64::engine::general_purpose::STANDARD.decode(&rec.hash) else {
                tracing::error!(key_id = %id, "unreadable key hash in redis; it is ignored");
                continue;
            };
            rows.push(Row {
                revoked: revocations.get(&id).copied(),
                id,
                name: rec.name,
                hash,
                scopes: rec.scopes,
                created: rec.created,
                dev: rec.dev,
            });
        }
        Ok(rows)
    }

    fn insert(&mut self, row: &Row) -> Result<bool, KeyError> {
        let record = record_json(row)?;
        let stamp = new_stamp()?;
        let n: i64 = self.call(|s, c| {
            s.insert
                .key(&s.records)
                .key(&s.stamp)
                .arg(&row.id)
                .arg(&record)
                .arg(&stamp)
                .invoke(c)
        })?;
        Ok(n == 1)
    }

    fn revoke(&mut self, id: &str, at: i64) -> Result<bool, KeyError> {
        let stamp = new_stamp()?;
        let n: i64 = self.call(|s, c| {
            s.revoke
                .key(&s.records)
                .key(&s.revocations)
                .key(&s.stamp)
                .arg(id)
                .arg(at)
                .arg(&stamp)
                .invoke(c)
        })?;
        Ok(n == 1)
    }

    fn restore(&mut self, known: &[Row]) -> Result<bool, KeyError> {
        let stamp = new_stamp()?;
        let records = known
            .iter()
            .map(|r| Ok((r.id.as_str(), record_json(r)?)))
            .collect::<Result<Vec<_>, KeyError>>()?;
        let wrote: i64 = self.call(|s, c| {
            let mut call = s.restore.key(&s.records);
            call.key(&s.revocations)
                .key(&s.stamp)
                .arg(&stamp)
                .arg(records.len());
            for (id, json) in &records {
                call.arg(*id).arg(json);
            }
            for r in known {
                if let Some(at) = r.revoked {
                    call.arg(&r.id).arg(at);
                }
            }
            call.invoke(c)
        })?;
        if wrote > 0 {
            tracing::warn!(
                written = wrote,
                "redis had lost API keys or revocations this node knew; they were written back"
            );
        }
        Ok(true)
    }

    fn shared(&self) -> bool {
        true
    }
}

fn record_json(row: &Row) -> Result<String, KeyError> {
    serde_json::to_string(&Record {
        name: row.name.clone(),
        hash: base64::engine::general_purpose::STANDARD.encode(&row.hash),
        scopes: row.scopes.clone(),
        created: row.created,
        dev: row.dev,
    })
    .map_err(|e| KeyError::Invalid(format!("encoding a key record: {e}")))
}
