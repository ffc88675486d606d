//! The wrapper under SQLite itself: a workload that splits pages in most transactions (appends
//! at the end of many key ranges, as inbox arrivals are), with a cache small enough to evict,
//! deletes that free pages for reuse, and a reopened database, must read back exactly what was
//! written and pass SQLite's integrity check; and SQLite must still rename pages through the
//! temporary page number (if it stopped, the wrapper would no longer be needed).

use rusqlite::{params, Connection};
use std::collections::BTreeMap;

#[test]
fn split_heavy_transactions_read_back_exactly_and_pass_the_integrity_check() {
    sqlite_pcache::install().expect("installed before the first connection");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut model: BTreeMap<(String, i64), String> = BTreeMap::new();
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    // 256 KiB: far less than the table, so pages are evicted and read back.
    conn.pragma_update(None, "cache_size", -256).unwrap();
    conn.execute_batch(
        "CREATE TABLE n (topic TEXT NOT NULL, offset INTEGER NOT NULL, body TEXT NOT NULL,
         PRIMARY KEY (topic, offset)) WITHOUT ROWID",
    )
    .unwrap();
    let users = 300;
    let mut next = vec![1_i64; users];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..400 {
        let tx = conn.transaction().unwrap();
        for _ in 0..25 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = (rng % users as u64) as usize;
            let topic = format!("@user-{u:04}");
            let body = format!("{round}-{u}-{}", ".".repeat((rng % 200) as usize));
            tx.execute(
                "INSERT INTO n (topic, offset, body) VALUES (?1, ?2, ?3)",
                params![topic, next[u], body],
            )
            .unwrap();
            model.insert((topic, next[u]), body);
            next[u] += 1;
        }
        if round % 50 == 49 {
            // Retention: the oldest rows of every topic, so pages are freed and reused.
            tx.execute(
                "DELETE FROM n WHERE offset <= ?1",
                params![(round / 50) as i64 * 2],
            )
            .unwrap();
            let cut = (round / 50) as i64 * 2;
            model.retain(|(_, offset), _| *offset > cut);
        }
        tx.commit().unwrap();
    }
    assert!(
        sqlite_pcache::temporary_renames() > 0,
        "SQLite no longer renames pages through the temporary page number"
    );
    drop(conn);
    let conn = Connection::open(&path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut st = conn
        .prepare("SELECT topic, offset, body FROM n ORDER BY topic, offset")
        .unwrap();
    let rows: BTreeMap<(String, i64), String> = st
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), model.len());
    assert!(rows == model, "the table differs from what was written");
}
