//! API keys: created, listed and revoked from the command line (or by an admin key), kept as
//! a SHA-256 of their secret, never the key itself.
//!
//! A key reads `hk_<id>_<secret>`: the id is public (it names the key in `keys list` and
//! `keys revoke`), the secret is 32 random base62 characters (190 bits), so a fast hash is
//! the right one (as for GitHub's tokens): there is nothing to brute-force. The presented
//! secret's hash is compared with the stored one in constant time.
//!
//! SHA-256 in software (these machines have no SHA extensions) is 3,400 instructions, 14% of
//! a whole publish. So once a secret has verified, the in-memory record keeps it, and later
//! requests compare the presented secret with it directly (constant time, 32 bytes). The
//! records are rebuilt on every reload, so a revoked or changed key forgets it at once.
//!
//! # Where keys live
//! With `--store sqlite` or `memory`, in the `api_keys` table of the database file (`--db`),
//! shared by the server and `herald keys` on that host. With `--store redis`, in Redis, shared
//! by every node and by `herald keys` run anywhere against the same Redis: one revocation
//! reaches every node. Both are a `Source`; this module keeps the in-memory table and the
//! checks, the same for both.
//!
//! # Revocation takes effect at once
//! Every check reads an in-memory copy of the table (no disk read or round trip per publish).
//! The copy is reloaded when this process changes a key, and when another process commits a
//! change: a watcher asks the source whether the table changed every [`WATCH_INTERVAL`].

mod redis;
mod sqlite;

use super::scope::Grants;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How often the key table is checked for changes made by other processes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
const PREFIX: &str = "hk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("key store (redis): {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("{0}")]
    Invalid(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
}

/// Why a presented key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Not a key, or no key with that id and secret.
    Unknown,
    /// A real key that was revoked.
    Revoked,
}

/// One key, as stored (its secret's hash stays inside this module).
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Scopes: `publish:PATTERN`, `read:PATTERN`, `admin:*`.
    #[serde(serialize_with = "scopes")]
    #[schema(value_type = Vec<String>)]
    pub grants: Grants,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds, when revoked.
    pub revoked: Option<i64>,
    /// Created by development mode; production refuses to start while one is active.
    pub dev: bool,
    #[serde(skip)]
    hash: [u8; 32],
    /// The secret, once a request has proved it (never written anywhere).
    #[serde(skip)]
    proven: std::sync::OnceLock<[u8; SECRET_LEN]>,
    /// The [`Keys`] reload this record came from.
    #[serde(skip)]
    generation: u64,
    /// This key's publish bucket (see [`crate::limits::EdgeLimits::publish`]).
    #[serde(skip)]
    pub(crate) publish_rate: Arc<std::sync::OnceLock<crate::limits::DirectRate>>,
}

fn scopes<S: serde::Serializer>(g: &Grants, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(g.scopes())
}

impl KeyRecord {
    pub fn active(&self) -> bool {
        self.revoked.is_none()
    }
}

/// One key as a [`Source`] keeps it.
#[derive(Clone, Debug)]
struct Row {
    id: String,
    name: String,
    /// SHA-256 of the secret (32 bytes in a readable row).
    hash: Vec<u8>,
    /// Space-separated.
    scopes: String,
    created: i64,
    revoked: Option<i64>,
    dev: bool,
}

impl Row {
    fn of(rec: &KeyRecord) -> Self {
        Row {
            id: rec.id.clone(),
            name: rec.name.clone(),
            hash: rec.hash.to_vec(),
            scopes: rec.grants.scopes().join(" "),
            created: rec.created,
            revoked: rec.revoked,
            dev: rec.dev,
        }
    }
}

/// Where the key table lives. Calls block (disk or network); each is bounded.
trait Source: Send {
    /// Whether the table may have changed since the last [`Source::rows`]: one cheap query or
    /// round trip.
    fn changed(&mut self) -> Result<bool, KeyError>;
    /// Every row, read at one moment.
    fn rows(&mut self) -> Result<Vec<Row>, KeyError>;
    /// Adds a row; `false` if its id is taken.
    fn insert(&mut self, row: &Row) -> Result<bool, KeyError>;
    /// Marks a key revoked at `at`; `false` if there is no such key or it already was.
    fn revoke(&mut self, id: &str, at: i64) -> Result<bool, KeyError>;
    /// Writes back rows (or revocations) this process knew and the source no longer has;
    /// `true` if the source can lose rows this way and took them back, so that the process
    /// keeps them too. A database never loses rows: `false`, and its table is the truth.
    fn restore(&mut self, _known: &[Row]) -> Result<bool, KeyError> {
        Ok(false)
    }
    /// Whether another process can change the table (then it is watched).
    fn shared(&self) -> bool;
}

/// The key table and its in-memory copy.
pub struct Keys {
    /// Where the table lives; one lock, so reloads are serialised.
    source: Mutex<Box<dyn Source>>,
    /// By id. Ids are made by the server (random), never chosen by a client, so the table
    /// cannot be flooded into collisions and takes foldhash (a lookup with std's SipHash was
    /// 280 instructions, a fifth of the whole key check; callgrind).
    cache: RwLock<KeyTable>,
    /// Bumped by every reload: a record of the current generation is the table's current
    /// state, so checking it needs no second lookup.
    generation: std::sync::atomic::AtomicU64,
}

type KeyTable = HashMap<String, Arc<KeyRecord>, foldhash::fast::RandomState>;

impl Keys {
    /// Opens (creating if needed) the key table in the SQLite database at `path`;
    /// `:memory:` keeps keys for this process only (tests).
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        Self::with_source(Box::new(sqlite::SqliteSource::open(path)?))
    }

    /// Opens the key table kept in Redis under `prefix`, shared by every node on it. Fails if
    /// Redis cannot be read now (a node reads its keys before it serves).
    pub fn open_redis(url: &str, prefix: &str) -> Result<Self, KeyError> {
        Self::with_source(Box::new(redis::RedisSource::open(url, prefix)?))
    }

    /// The key table the configuration names: Redis with `--store redis`, else the database.
    pub fn for_config(config: &crate::config::Config) -> Result<Self, KeyError> {
        match config.store {
            crate::config::StoreKind::Redis => {
                Self::open_redis(&config.redis_url, &config.redis_prefix)
            }
            _ => Self::open(&config.db),
        }
    }

    fn with_source(source: Box<dyn Source>) -> Result<Self, KeyError> {
        let keys = Self {
            source: Mutex::new(source),
            cache: RwLock::new(KeyTable::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Whether other processes can change the table, so that [`watch`] is worth running.
    pub fn watched(&self) -> bool {
        self.lock().shared()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Source>> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the whole table into the in-memory copy.
    fn reload(&self) -> Result<(), KeyError> {
        let mut source = self.lock();
        self.reload_locked(source.as_mut())
    }

    /// [`Keys::reload`] with the source held (reloads are serialised, so an older table can
    /// never replace a newer one, and generations only grow).
    fn reload_locked(&self, source: &mut dyn Source) -> Result<(), KeyError> {
        let mut rows = source.rows()?;
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire) + 1;
        // A key's publish bucket outlives reloads: adding or revoking another key must not
        // hand this one a fresh burst.
        let known: Vec<Arc<KeyRecord>> = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let lost = lost_rows(&known, &rows);
        if !lost.is_empty() && source.restore(&lost)? {
            merge(&mut rows, lost);
        }
        let buckets: HashMap<&str, &Arc<std::sync::OnceLock<crate::limits::DirectRate>>> = known
            .iter()
            .map(|rec| (rec.id.as_str(), &rec.publish_rate))
            .collect();
        let mut map = KeyTable::default();
        for row in rows {
            let list: Vec<&str> = row.scopes.split_whitespace().collect();
            let (Ok(grants), Ok(hash)) = (
                Grants::from_scopes(&list),
                <[u8; 32]>::try_from(row.hash.as_slice()),
            ) else {
                tracing::error!(key_id = %row.id, "unreadable key row; it is ignored");
                continue;
            };
            let publish_rate = buckets
                .get(row.id.as_str())
                .map_or_else(Arc::default, |b| (*b).clone());
            let rec = KeyRecord {
                id: row.id.clone(),
                name: row.name,
                grants,
                created: row.created,
                revoked: row.revoked,
                dev: row.dev,
                hash,
                proven: std::sync::OnceLock::new(),
                generation,
                publish_rate,
            };
            map.insert(row.id, Arc::new(rec));
        }
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = map;
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Reloads if another process changed the table since the last look. Blocking.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let mut source = self.lock();
        if !source.changed()? {
            return Ok(false);
        }
        self.reload_locked(source.as_mut())?;
        Ok(true)
    }

    /// Creates a key; returns its record and the key itself, which is never stored or shown
    /// again.
    pub fn add(
        &self,
        name: &str,
        grants: Grants,
        dev: bool,
    ) -> Result<(KeyRecord, String), KeyError> {
        let id = random_base62(ID_LEN)?;
        let secret = random_base62(SECRET_LEN)?;
        let key = format!("{PREFIX}{id}_{secret}");
        let rec = self.insert(name, &id, &secret, grants, dev)?;
        Ok((rec, key))
    }

    /// Stores a key whose text the caller chose (a development key kept in a file, a test
    /// key). It must have the shape of a generated key.
    pub fn add_existing(
        &self,
        name: &str,
        key: &str,
        grants: Grants,
        dev: bool,
    ) -> Result<KeyRecord, KeyError> {
        let (id, secret) = well_formed(key).ok_or_else(|| {
            KeyError::Invalid(format!(
                "a key reads {PREFIX}<{ID_LEN} letters or digits>_<{SECRET_LEN} letters or digits>"
            ))
        })?;
        self.insert(name, id, secret, grants, dev)
    }

    fn insert(
        &self,
        name: &str,
        id: &str,
        secret: &str,
        grants: Grants,
        dev: bool,
    ) -> Result<KeyRecord, KeyError> {
        if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
            return Err(KeyError::Invalid(format!(
                "a key's name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        if grants.scopes().is_empty() {
            return Err(KeyError::Invalid(
                "a key needs at least one scope (--allow publish:PATTERN, read:PATTERN or admin:*)"
                    .into(),
            ));
        }
        let rec = KeyRecord {
            id: id.to_owned(),
            name: name.trim().to_owned(),
            grants,
            created: unix_now(),
            revoked: None,
            dev,
            hash: digest(secret),
            proven: std::sync::OnceLock::new(),
            generation: 0,
            publish_rate: Arc::default(),
        };
        let mut source = self.lock();
        let inserted = source.insert(&Row::of(&rec))?;
        self.reload_locked(source.as_mut())?;
        // An id already taken (a key imported twice) is refused with its reason.
        if !inserted {
            return Err(KeyError::Invalid(format!(
                "a key with id {} already exists",
                rec.id
            )));
        }
        Ok(rec)
    }

    /// Every key, newest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut all: Vec<KeyRecord> = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| (**r).clone())
            .collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        all
    }

    /// Revokes a key; `Ok(false)` if there is no such key or it was already revoked.
    pub fn revoke(&self, id: &str) -> Result<bool, KeyError> {
        let mut source = self.lock();
        let revoked = source.revoke(id, unix_now())?;
        self.reload_locked(source.as_mut())?;
        Ok(revoked)
    }

    /// The active key `presented` names, if its secret matches.
    pub fn verify(&self, presented: &str) -> Result<Arc<KeyRecord>, KeyRefusal> {
        let (id, secret) = split(presented).ok_or(KeyRefusal::Unknown)?;
        let rec = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or(KeyRefusal::Unknown)?;
        let matches = match rec.proven.get() {
            // One id has one secret: a different one cannot hash to the stored digest.
            Some(proven) => same_secret(proven, secret.as_bytes()),
            None => {
                let ok = bool::from(rec.hash.ct_eq(&digest(secret)));
                if ok {
                    let mut bytes = [0u8; SECRET_LEN];
                    bytes.copy_from_slice(secret.as_bytes());
                    let _ = rec.proven.set(bytes);
                }
                ok
            }
        };
        if !matches {
            return Err(KeyRefusal::Unknown);
        }
        if !rec.active() {
            return Err(KeyRefusal::Revoked);
        }
        Ok(rec)
    }

    /// Whether `rec` is still active: from the record itself while no reload happened since
    /// it was read (the hot path: a request checks the key it just verified), else by a
    /// lookup (a socket authenticated minutes ago).
    pub fn still_active(&self, rec: &KeyRecord) -> bool {
        if rec.generation == self.generation.load(std::sync::atomic::Ordering::Acquire) {
            return rec.active();
        }
        self.is_active(&rec.id)
    }

    /// Whether the key `id` is still active.
    pub fn is_active(&self, id: &str) -> bool {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|r| r.active())
    }
}

/// What `known` (this process's copy) has that `rows` (the source's table) lost: whole keys,
/// and revocations (a revoked key is never active again).
fn lost_rows(known: &[Arc<KeyRecord>], rows: &[Row]) -> Vec<Row> {
    let present: HashMap<&str, &Row> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    known
        .iter()
        .filter(|rec| match present.get(rec.id.as_str()) {
            None => true,
            Some(row) => row.revoked.is_none() && rec.revoked.is_some(),
        })
        .map(|rec| Row::of(rec))
        .collect()
}

/// `rows` with `lost` put back (a lost revocation onto its key).
fn merge(rows: &mut Vec<Row>, lost: Vec<Row>) {
    let mut at: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), i))
        .collect();
    for row in lost {
        match at.get(&row.id) {
            Some(&i) => rows[i].revoked = rows[i].revoked.or(row.revoked),
            None => {
                at.insert(row.id.clone(), rows.len());
                rows.push(row);
            }
        }
    }
}

/// Whether `s` looks like an API key (rather than a JWT).
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// Compares a presented secret with the proven one in constant time, eight bytes at a
/// time (`subtle` on the 32 single bytes cost 230 instructions per request).
fn same_secret(proven: &[u8; SECRET_LEN], presented: &[u8]) -> bool {
    if presented.len() != SECRET_LEN {
        return false;
    }
    let words = |b: &[u8]| -> [u64; SECRET_LEN / 8] {
        std::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        })
    };
    words(proven)[..].ct_eq(&words(presented)[..]).into()
}

/// The id and secret of a key-shaped string. Only the lengths are checked here: an id that
/// names no key, or a secret that does not match, is refused by the lookup and the compare.
fn split(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN || rest.as_bytes()[ID_LEN] != b'_' {
        return None;
    }
    let (id, secret) = (&rest[..ID_LEN], &rest[ID_LEN + 1..]);
    Some((id, secret))
}

/// A generated or chosen key's shape: `hk_`, 12 and 32 ASCII letters or digits.
fn well_formed(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = split(key)?;
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (alnum(id) && alnum(secret)).then_some((id, secret))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `n` characters from `[0-9A-Za-z]`, uniformly, from the operating system's CSPRNG.
pub(crate) fn random_base62(n: usize) -> Result<String, KeyError> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
        // 248 = 4 x 62: rejecting larger bytes keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    Ok(out)
}

/// Polls for key changes made by other processes until `cancel`. While the source cannot be
/// read (Redis down), the last copy stays in use; the failure is logged once, and so is the
/// recovery.
pub async fn watch(keys: Arc<Keys>, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let k = keys.clone();
        let result = match tokio::task::spawn_blocking(move || k.reload_if_changed()).await {
            Ok(result) => result,
            Err(_) => return,
        };
        match result {
            Ok(reloaded) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("API keys can be read again");
                }
                if reloaded {
                    tracing::debug!("API keys reloaded");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "reading API keys failed; the last copy stays in use");
            }
            Err(_) => {}
        }
    }
}

/// Reads a key's id out of `key` without checking it (for log fields: never the secret).
pub fn key_id(key: &str) -> Option<&str> {
    split(key).map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(s: &[&str]) -> Grants {
        Grants::from_scopes(s).unwrap()
    }

    #[test]
    fn a_key_is_shown_once_stored_hashed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let keys = Keys::open(&path).unwrap();
        let (rec, key) = keys.add("ci", grants(&["publish:ops-*"]), false).unwrap();
        assert!(key.starts_with("hk_") && key.len() == 3 + ID_LEN + 1 + SECRET_LEN);
        assert_eq!(keys.verify(&key).unwrap().id, rec.id);
        // Proven once, checked again without hashing: still exact.
        assert_eq!(keys.verify(&key).unwrap().id, rec.id);
        // The database holds neither the key nor its secret.
        let raw = std::fs::read(&path).unwrap();
        let secret = key.rsplit('_').next().unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        // A wrong secret for a real id, a malformed key, an unknown id: all Unknown.
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('a') { 'b' } else { 'a' });
        assert_eq!(keys.verify(&wrong).unwrap_err(), KeyRefusal::Unknown);
        // Every word of the secret counts: a change in its first byte is refused too.
        let at = key.len() - SECRET_LEN;
        let flipped = if key.as_bytes()[at] == b'a' { "b" } else { "a" };
        let wrong = format!("{}{flipped}{}", &key[..at], &key[at + 1..]);
        assert_eq!(keys.verify(&wrong).unwrap_err(), KeyRefusal::Unknown);
        // The same before a secret was ever proven (the hashing path), and a refused secret
        // does not become the proven one.
        let (_, other) = keys.add("other", grants(&["read:*"]), false).unwrap();
        let mut wrong = other.clone();
        wrong.pop();
        wrong.push(if other.ends_with('a') { 'b' } else { 'a' });
        assert_eq!(keys.verify(&wrong).unwrap_err(), KeyRefusal::Unknown);
        assert!(keys.verify(&other).is_ok());
        assert_eq!(keys.verify(&wrong).unwrap_err(), KeyRefusal::Unknown);
        assert_eq!(keys.verify("hk_x_y").unwrap_err(), KeyRefusal::Unknown);
        assert_eq!(keys.verify("").unwrap_err(), KeyRefusal::Unknown);
        assert!(keys.revoke(&rec.id).unwrap());
        assert!(!keys.revoke(&rec.id).unwrap());
        assert_eq!(keys.verify(&key).unwrap_err(), KeyRefusal::Revoked);
        assert!(!keys.is_active(&rec.id));
    }

    #[test]
    fn a_revocation_by_another_process_is_seen_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let server = Keys::open(&path).unwrap();
        let cli = Keys::open(&path).unwrap();
        let (rec, key) = cli.add("ci", grants(&["read:*"]), false).unwrap();
        assert!(server.reload_if_changed().unwrap());
        assert!(server.verify(&key).is_ok());
        assert!(!server.reload_if_changed().unwrap(), "nothing changed");
        // Another commit to the same file that is not about keys: no reload.
        {
            let other = crate::store::connect_sqlite(&path).unwrap();
            other
                .execute_batch("CREATE TABLE unrelated (x); INSERT INTO unrelated VALUES (1);")
                .unwrap();
        }
        assert!(!server.reload_if_changed().unwrap(), "an unrelated commit");
        cli.revoke(&rec.id).unwrap();
        assert!(server.reload_if_changed().unwrap());
        assert_eq!(server.verify(&key).unwrap_err(), KeyRefusal::Revoked);
    }

    fn redis_server() -> crate::store::redis::testing::RedisServer {
        crate::store::redis::testing::RedisServer::start()
            .expect("redis-server (scripts/setup.sh installs it)")
    }

    #[test]
    fn in_redis_one_table_serves_every_node_and_a_revocation_reaches_them_all() {
        let redis = redis_server();
        let prefix = crate::store::redis::unique_prefix();
        let a = Keys::open_redis(&redis.url(), &prefix).unwrap();
        let b = Keys::open_redis(&redis.url(), &prefix).unwrap();
        assert!(a.watched() && b.watched());
        let (rec, key) = a.add("ci", grants(&["publish:ops-*"]), false).unwrap();
        assert!(b.reload_if_changed().unwrap());
        assert_eq!(b.verify(&key).unwrap().id, rec.id);
        assert!(!b.reload_if_changed().unwrap(), "nothing changed");
        // Another deployment on the same Redis (another prefix) sees none of it.
        let other = Keys::open_redis(&redis.url(), "elsewhere").unwrap();
        assert_eq!(other.verify(&key).unwrap_err(), KeyRefusal::Unknown);
        // The same id twice is refused, from any node.
        let err = b
            .add_existing("again", &key, grants(&["read:*"]), false)
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        // Redis holds the hash, never the secret.
        let mut conn = ::redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let stored: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(format!("{prefix}:{{api-keys}}:k"))
            .query(&mut conn)
            .unwrap();
        let secret = key.rsplit('_').next().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(!stored.values().any(|v| v.contains(secret)));
        // Revoked on B: A refuses it after its next look.
        assert!(b.revoke(&rec.id).unwrap());
        assert!(!b.revoke(&rec.id).unwrap());
        assert!(a.reload_if_changed().unwrap());
        assert_eq!(a.verify(&key).unwrap_err(), KeyRefusal::Revoked);
        assert!(!a.revoke("nosuchkey000").unwrap());
    }

    #[test]
    fn a_redis_that_lost_the_table_gets_back_what_a_node_knew() {
        let mut redis = redis_server();
        let prefix = crate::store::redis::unique_prefix();
        let node = Keys::open_redis(&redis.url(), &prefix).unwrap();
        let (_, kept) = node.add("kept", grants(&["read:*"]), false).unwrap();
        let (gone, revoked) = node.add("gone", grants(&["read:*"]), false).unwrap();
        node.revoke(&gone.id).unwrap();
        // Redis without persistence restarts: its table is empty. While it is down the node
        // keeps its copy.
        redis.kill();
        assert!(node.reload_if_changed().is_err());
        assert!(node.verify(&kept).is_ok());
        redis.restart().unwrap();
        assert!(node.reload_if_changed().unwrap());
        assert!(
            node.verify(&kept).is_ok(),
            "the node did not forget its key"
        );
        assert_eq!(node.verify(&revoked).unwrap_err(), KeyRefusal::Revoked);
        // A node started now reads both back from Redis: the key works, the revocation holds.
        let fresh = Keys::open_redis(&redis.url(), &prefix).unwrap();
        assert!(fresh.verify(&kept).is_ok());
        assert_eq!(fresh.verify(&revoked).unwrap_err(), KeyRefusal::Revoked);
        assert_eq!(fresh.list().len(), 2);
    }

    #[test]
    fn bad_names_scopes_and_shapes_are_refused() {
        let keys = Keys::open(Path::new(":memory:")).unwrap();
        assert!(keys.add("", grants(&["read:*"]), false).is_err());
        assert!(keys.add("x", Grants::default(), false).is_err());
        assert!(keys
            .add_existing("x", "not-a-key", grants(&["read:*"]), false)
            .is_err());
        let random = random_base62(200).unwrap();
        assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_base62(32).unwrap(), random_base62(32).unwrap());
    }
}
