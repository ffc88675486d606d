//! Test seams: the few points where a test can pause or break the server to force the
//! interleaving or the fault it names, instead of hoping that sleeps produce it.
//!
//! Production passes `Hooks::default()`, where every seam is `None` and costs one branch.

use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Replaces the store the server built, usually with a wrapper around it.
pub type WrapStore = Arc<dyn Fn(Arc<dyn Store>) -> Arc<dyn Store> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Hooks {
    /// Wraps the store the server builds (a store that pauses between two reads, say).
    pub wrap_store: Option<WrapStore>,
    /// SQLite writer: runs before each group commit, on the writer thread. A panic here is
    /// the writer thread dying.
    pub before_commit: Option<Arc<dyn Fn() + Send + Sync>>,
    /// SQLite writer: runs after each prune chunk with the rows dropped so far.
    pub after_prune_chunk: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Hooks {
    /// The SQLite writer thread dies (panics before its next commit) once `trigger` is set:
    /// the fault that health, the API and shutdown must all report.
    pub fn writer_dies_when(trigger: Arc<AtomicBool>) -> Self {
        Self {
            before_commit: Some(Arc::new(move || {
                if trigger.load(Ordering::SeqCst) {
                    panic!("injected writer failure");
                }
            })),
            ..Self::default()
        }
    }
}
