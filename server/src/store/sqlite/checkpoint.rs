//! Checkpoints: copying the WAL back into the database, kept off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so that
//! commit, and every publish waiting for it, pays for copying the whole WAL. Here a thread of
//! its own ([`run`]) copies instead, with PASSIVE checkpoints that never wait for the writer.
//!
//! But the WAL only starts over from its beginning (instead of growing) once every frame in
//! it has been copied, and under constant writes the thread never quite gets there: frames
//! keep arriving while it copies. Left alone, the WAL would grow until a checkpoint in the
//! writer copied what was left, which under a sustained 30,000 notifications/s was every few
//! hundred milliseconds and took the writer 6-27 ms each time (growing with the database),
//! every publish in flight waiting behind it. So the two cooperate ([`Cycle`]):
//! - The thread copies every [`CHECKPOINT_EVERY`] while the WAL is small. Once it holds
//!   `cycle` pages or more, it copies round after round, each round copying what arrived
//!   during the one before, so the rounds get shorter; after each round that copied
//!   everything it found, it records how far it got ([`Progress`]).
//! - The writer, after each commit (SQLite's WAL hook, [`install`]), checkpoints by itself
//!   only when the WAL holds `cycle` pages and the thread's last round left at most `finish`
//!   pages uncopied: copying those is short, and the writer's next transaction starts the WAL
//!   over. Whatever the thread did, the writer also checkpoints at `backstop` pages, so the WAL
//!   stays bounded even if the thread cannot keep up or has died.
//!
//! None of this decides what is durable: a commit is durable once its frames are in the WAL
//! and fsynced. Checkpoints only move pages from the WAL to the database file, and any of
//! them at any time is safe; the cycle decides only who copies, and when.

use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// How often the checkpoint thread copies the WAL back while it is small.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How long the thread waits before its next round when a reader kept the last one from
/// copying everything (a read holds its snapshot's pages in the WAL for a few milliseconds).
const READER_WAIT: Duration = Duration::from_millis(5);

/// When the WAL is copied by whom (in WAL pages, 4 KiB each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cycle {
    /// From this size on, the thread copies round after round and the writer finishes the
    /// job (and so restarts the WAL) as soon as the thread is within `finish` pages.
    pub cycle: i64,
    /// Pages left for the writer to copy at most, at `cycle` pages and more.
    pub finish: i64,
    /// The writer checkpoints at this size whatever the thread did.
    pub backstop: i64,
}

impl Cycle {
    /// About 40 MB of WAL before it starts over, at most 2 MB copied by the writer, and a
    /// backstop at about 200 MB.
    pub const DEFAULT: Cycle = Cycle {
        cycle: 10_000,
        finish: 512,
        backstop: 50_000,
    };

    /// Whether the writer should checkpoint now, the WAL holding `frames` pages of which
    /// `uncopied` were not copied by the thread's last round.
    pub fn writer_copies(&self, frames: i64, uncopied: i64) -> bool {
        frames >= self.backstop || (frames >= self.cycle && uncopied <= self.finish)
    }
}

/// What the thread and the writer tell each other, lock-free.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// How many times the writer has seen the WAL start over: frame numbers count from the
    /// start of the WAL, so a round's result means something only in its own generation.
    generation: AtomicU64,
    /// The thread's last round that copied every frame it found: its generation in the high
    /// 32 bits, how many frames the WAL held then in the low 32.
    copied: AtomicU64,
    /// Checkpoints the writer ran, and how many of them were at the backstop.
    writer_checkpoints: AtomicU64,
    backstop_checkpoints: AtomicU64,
    /// Pages in the WAL after the writer's last commit.
    frames: AtomicU64,
}

impl Progress {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records a round, begun in `generation`, that left nothing uncopied of the `frames` it
    /// found.
    fn copied(&self, generation: u64, frames: i64) {
        let frames = u64::try_from(frames).unwrap_or(0).min(u64::from(u32::MAX));
        self.copied
            .store((generation << 32) | frames, Ordering::Release);
    }

    /// Of a WAL of `frames` pages in `generation`, how many the thread has not copied.
    fn uncopied(&self, generation: u64, frames: i64) -> i64 {
        let copied = self.copied.load(Ordering::Acquire);
        if copied >> 32 != generation & u64::from(u32::MAX) {
            return frames;
        }
        let upto = (copied & u64::from(u32::MAX)) as i64;
        if upto > frames {
            // A round of this generation cannot have seen more than the WAL holds: stale.
            return frames;
        }
        frames - upto
    }

    /// Checkpoints the writer has run (all, and those at the backstop).
    #[cfg(test)]
    fn writer_checkpoints(&self) -> (u64, u64) {
        (
            self.writer_checkpoints.load(Ordering::Relaxed),
            self.backstop_checkpoints.load(Ordering::Relaxed),
        )
    }
}

/// Makes `conn` (the writer's connection) checkpoint after its commits as [`Cycle`] says,
/// instead of SQLite's automatic checkpoint (which the hook replaces).
pub(super) fn install(
    conn: &mut Connection,
    cycle: Cycle,
    progress: Arc<Progress>,
) -> rusqlite::Result<()> {
    let mut last_frames = 0_i64;
    let mut generation = progress.generation();
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames| {
        let frames = i64::from(frames);
        if frames < last_frames {
            // The WAL started over since the last commit.
            generation += 1;
            progress.generation.store(generation, Ordering::Release);
        }
        last_frames = frames;
        progress.frames.store(frames as u64, Ordering::Relaxed);
        if cycle.writer_copies(frames, progress.uncopied(generation, frames)) {
            progress.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
            let reason = if frames >= cycle.backstop {
                progress
                    .backstop_checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                "backstop"
            } else {
                "cycle"
            };
            metrics::counter!("herald_store_writer_checkpoints_total", "reason" => reason)
                .increment(1);
            // Never an error from here: the commit has happened, and an error returned by a
            // WAL hook would make the COMMIT itself report one. A checkpoint that cannot run
            // now (the thread is in one) is simply the thread's to finish.
            if let Err(e) = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                tracing::debug!(error = %e, frames, "writer checkpoint did not run");
            }
        }
        Ok(())
    }))
}

/// One PASSIVE checkpoint by the thread: returns how many frames the WAL held and whether
/// all of them are now copied. Records a round that copied everything in `progress`.
pub(super) fn round(conn: &Connection, progress: &Progress) -> rusqlite::Result<(i64, bool)> {
    let generation = progress.generation();
    let (busy, frames, copied) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let all = busy == 0 && frames >= 0 && copied == frames;
    if all {
        progress.copied(generation, frames);
    }
    metrics::gauge!("herald_store_wal_pages").set(progress.frames.load(Ordering::Relaxed) as f64);
    Ok((frames, all))
}

/// The checkpoint thread: rounds every [`CHECKPOINT_EVERY`] while the WAL is under
/// `cycle.cycle` pages, back to back above it as long as each round finds new frames, until
/// `stop` is dropped. Its connection only checkpoints.
pub(super) fn run(conn: &Connection, cycle: Cycle, progress: &Progress, stop: &Receiver<()>) {
    let mut wait = CHECKPOINT_EVERY;
    let mut last = (-1, false);
    loop {
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        wait = CHECKPOINT_EVERY;
        match round(conn, progress) {
            Ok(now) => {
                // Back to back only while there is something new to copy: a large WAL and an
                // idle writer (which restarts the WAL at its next commit) leave the thread
                // asleep. A round held short by a reader's snapshot waits a little for it.
                if now.0 >= cycle.cycle && now != last {
                    wait = if now.1 { Duration::ZERO } else { READER_WAIT };
                }
                last = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; the writer's backstop remains");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small numbers, so that a test reaches them in a few dozen commits of a page or two.
    const SMALL: Cycle = Cycle {
        cycle: 40,
        finish: 4,
        backstop: 200,
    };

    #[test]
    fn the_writer_copies_only_a_little_or_at_the_backstop() {
        // Below the cycle size: never, however little is left.
        assert!(!SMALL.writer_copies(39, 0));
        // At or above it: only when the thread left at most `finish` pages.
        assert!(SMALL.writer_copies(40, 4));
        assert!(!SMALL.writer_copies(40, 5));
        assert!(!SMALL.writer_copies(199, 199));
        // At the backstop: whatever is left.
        assert!(SMALL.writer_copies(200, 200));
    }

    #[test]
    fn a_round_counts_only_in_its_own_generation() {
        let p = Progress::default();
        assert_eq!(p.uncopied(0, 30), 30, "no round yet");
        p.copied(0, 25);
        assert_eq!(p.uncopied(0, 30), 5);
        // The WAL started over: the round was about the old one.
        assert_eq!(p.uncopied(1, 30), 30);
        // A count smaller than the round's: not the WAL the round saw.
        assert_eq!(p.uncopied(0, 10), 10);
    }

    /// A writer connection with the hook installed, a table, and the thread's connection.
    fn setup(dir: &tempfile::TempDir) -> (Connection, Connection, Arc<Progress>) {
        let path = dir.path().join("wal.db");
        let mut writer = super::super::connect(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
            .unwrap();
        let progress = Arc::new(Progress::default());
        install(&mut writer, SMALL, progress.clone()).unwrap();
        let thread = super::super::connect(&path).unwrap();
        (writer, thread, progress)
    }

    /// One commit of a page or two; returns the WAL's size in pages after it.
    fn commit(writer: &Connection, progress: &Progress) -> i64 {
        writer
            .execute("INSERT INTO t (data) VALUES (zeroblob(3000))", [])
            .unwrap();
        progress.frames.load(Ordering::Relaxed) as i64
    }

    #[test]
    fn without_the_thread_the_writer_copies_only_at_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _thread, progress) = setup(&dir);
        while commit(&writer, &progress) < SMALL.backstop {
            assert_eq!(progress.writer_checkpoints(), (0, 0));
        }
        assert_eq!(progress.writer_checkpoints(), (1, 1));
        // The backstop copied everything: the next commit starts the WAL over.
        assert!(commit(&writer, &progress) < 5);
        assert_eq!(progress.generation(), 1);
    }

    #[test]
    fn once_the_thread_has_caught_up_the_writer_finishes_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread, progress) = setup(&dir);
        while commit(&writer, &progress) < SMALL.cycle {}
        // Past the cycle size, the thread far behind (it never ran): the writer waits.
        commit(&writer, &progress);
        assert_eq!(progress.writer_checkpoints(), (0, 0));
        // A round while the writer is in a transaction, as under constant writes: the
        // round copies everything committed, and the transaction commits after it.
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t (data) VALUES (zeroblob(3000))")
            .unwrap();
        let (seen, all) = round(&thread, &progress).unwrap();
        assert!(all && seen >= SMALL.cycle);
        writer.execute_batch("COMMIT").unwrap();
        // That commit left a page or two uncopied: the writer copied them...
        assert!(progress.frames.load(Ordering::Relaxed) as i64 > seen);
        assert_eq!(progress.writer_checkpoints(), (1, 0));
        // ...and the commit after starts the WAL over.
        assert!(commit(&writer, &progress) < 5);
        assert_eq!(progress.generation(), 1);
    }

    #[test]
    fn a_round_from_before_the_wal_started_over_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread, progress) = setup(&dir);
        while commit(&writer, &progress) < SMALL.cycle {}
        // A round with the writer idle copies everything: the next commit starts the WAL over
        // by itself.
        let (seen, all) = round(&thread, &progress).unwrap();
        assert!(all);
        assert!(commit(&writer, &progress) < 5);
        assert_eq!(progress.generation(), 1);
        // Grow the new WAL past the size that round saw: by its count the thread would be a
        // page or two behind, but it was about the WAL before.
        while commit(&writer, &progress) < seen + 2 {}
        assert_eq!(progress.writer_checkpoints(), (0, 0));
    }
}
