//! The key table in SQLite (`--store sqlite` and `memory`): the `api_keys` table of the
//! database file, shared by the server and `herald keys` on the same host.
//!
//! Another process's commit is noticed with `PRAGMA data_version` (it changes whenever another
//! connection commits) and confirmed by a fingerprint of the key table, since the
//! notification store commits to the same file all the time.

use super::{KeyError, Row, Source};
use rusqlite::{params, Connection};
use std::path::Path;
use std::time::Duration;

pub(super) struct SqliteSource {
    conn: Connection,
    /// `PRAGMA data_version` at the last look.
    version: i64,
    /// [`fingerprint`] of the table at the last [`Source::rows`].
    print: (i64, i64, i64),
    /// `:memory:`: this process's own table, nobody else can change it.
    private: bool,
}

impl SqliteSource {
    pub(super) fn open(path: &Path) -> Result<Self, KeyError> {
        let private = crate::auth::setup::in_memory(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !private {
                std::fs::create_dir_all(dir)
                    .map_err(|e| KeyError::Invalid(format!("creating {}: {e}", dir.display())))?;
            }
        }
        let conn = crate::store::connect_sqlite(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 hash BLOB NOT NULL,
                 scopes TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 revoked INTEGER,
                 dev INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        Ok(Self {
            conn,
            version: -1,
            print: (-1, -1, -1),
            private,
        })
    }
}

impl Source for SqliteSource {
    fn changed(&mut self) -> Result<bool, KeyError> {
        let version = data_version(&self.conn)?;
        if version == self.version {
            return Ok(false);
        }
        if fingerprint(&self.conn)? == self.print {
            self.version = version;
            return Ok(false);
        }
        Ok(true)
    }

    fn rows(&mut self) -> Result<Vec<Row>, KeyError> {
        self.version = data_version(&self.conn)?;
        self.print = fingerprint(&self.conn)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, name, hash, scopes, created, revoked, dev FROM api_keys")?;
        let rows = stmt.query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                name: r.get(1)?,
                hash: r.get(2)?,
                scopes: r.get(3)?,
                created: r.get(4)?,
                revoked: r.get(5)?,
                dev: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert(&mut self, row: &Row) -> Result<bool, KeyError> {
        let inserted = self.conn.execute(
            "INSERT OR IGNORE INTO api_keys (id, name, hash, scopes, created, revoked, dev)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
            params![row.id, row.name, row.hash, row.scopes, row.created, row.dev],
        )?;
        Ok(inserted == 1)
    }

    fn revoke(&mut self, id: &str, at: i64) -> Result<bool, KeyError> {
        let n = self.conn.execute(
            "UPDATE api_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![id, at],
        )?;
        Ok(n == 1)
    }

    fn shared(&self) -> bool {
        !self.private
    }
}

fn data_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// What changes whenever a key is added or revoked: how many keys, how many revoked, and the
/// newest time either happened.
fn fingerprint(conn: &Connection) -> Result<(i64, i64, i64), rusqlite::Error> {
    conn.prepare_cached(
        "SELECT count(*), count(revoked), max(coalesce(max(created), 0), coalesce(max(revoked), 0))
         FROM api_keys",
    )?
    .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}
