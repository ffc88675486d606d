//! SQLite's own page cache, minus a walk of the whole cache after every page split.
//!
//! # Why
//! When a B-tree page splits, SQLite's `balance_nonroot` sorts the new pages by page number so
//! that a table's pages stay in file order. To swap two pages it renames one of them, for a
//! moment, to the page right after the lock byte (page 262,145 with 4 KiB pages, a page number
//! no database page ever has). SQLite's default page cache, pcache1, remembers the largest page
//! number it has held (`iMaxKey`), and at the end of every write transaction it truncates the
//! cache to the database's size: with that remembered number far past the end of the database,
//! the truncation walks the whole hash table and every page in it instead of its last few slots.
//! With Herald's 64 MiB writer cache (16,384 pages) and a split in most transactions (arrivals
//! in thousands of inboxes, each at the end of its own range of the table), the walk was the
//! largest single item of the SQLite writer thread: 15% of its CPU (perf, 2026-12-07).
//!
//! # What
//! [`install`] puts a thin layer in front of pcache1 that stores that temporary page under key 0
//! instead. SQLite never uses page 0, so the key is free, and the largest page number pcache1
//! sees stays the database's own. Everything else is pcache1 unchanged: the same memory, the
//! same eviction, the same locking.
//!
//! # Why it is correct
//! - The keys are translated one to one: the temporary page number `T` to 0, every other key
//!   to itself. SQLite never asks the cache for page 0, nor for page `T` as a database page
//!   (its pager refuses both: `getPageNormal`, `PAGER_SJ_PGNO`); `T` only ever appears as the
//!   temporary name inside a balance.
//! - A truncation must drop every page at or above its limit. A page stored under 0 is really
//!   page `T`, so before a truncation whose limit is at or below `T`, such a page is moved back
//!   to key `T` and pcache1 drops it as it always would. (In practice nothing is under 0 then:
//!   the temporary name lasts for three renames inside one balance.)
//! - With another lock-byte offset (a test build of SQLite), `T` is simply a key that is never
//!   temporary: still translated one to one, still truncated correctly, only no faster. The
//!   counter [`temporary_renames`] shows whether SQLite still renames pages through `T`.
//!
//! This crate is the one place in Herald with `unsafe` code: SQLite's page-cache interface is a
//! table of C function pointers.

use libsqlite3_sys as ffi;
use std::ffi::{c_int, c_uint};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// SQLite's lock byte (`PENDING_BYTE`): the page after the one holding it is the temporary name.
const PENDING_BYTE: u32 = 0x4000_0000;

/// Why [`install`] left SQLite's page cache as it was (nothing is wrong then, only slower).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotInstalled(pub String);

impl std::fmt::Display for NotInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQLite's page cache wrapper not installed: {}", self.0)
    }
}

impl std::error::Error for NotInstalled {}

/// pcache1's methods, each checked present when installing.
struct Methods {
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> *mut ffi::sqlite3_pcache,
    cachesize: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int),
    pagecount: unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int,
    fetch: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        c_uint,
        c_int,
    ) -> *mut ffi::sqlite3_pcache_page,
    unpin: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_int),
    rekey: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        *mut ffi::sqlite3_pcache_page,
        c_uint,
        c_uint,
    ),
    truncate: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint),
    destroy: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
    shrink: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
}

/// Set once, before SQLite can call any of the wrappers below.
static INNER: OnceLock<Methods> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), NotInstalled>> = OnceLock::new();
static TEMPORARY_RENAMES: AtomicU64 = AtomicU64::new(0);

/// Installs the wrapper as this process's SQLite page cache. It must run before SQLite is
/// initialized, that is before the first connection of the process opens: later, SQLite refuses
/// (and the cache stays pcache1 alone). Only the first call does anything; every call returns
/// its result.
pub fn install() -> Result<(), NotInstalled> {
    INSTALLED.get_or_init(install_once).clone()
}

/// How many times SQLite has renamed a page through the temporary page number since the
/// process started (each one a walk of the whole cache avoided).
pub fn temporary_renames() -> u64 {
    TEMPORARY_RENAMES.load(Ordering::Relaxed)
}

fn install_once() -> Result<(), NotInstalled> {
    let mut current = MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
    // SAFETY: GETPCACHE2 takes one pointer to a methods table, which it fills in (with
    // pcache1's, installing them as the default first if nothing was configured).
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, current.as_mut_ptr()) };
    if rc != ffi::SQLITE_OK {
        return Err(NotInstalled(format!(
            "SQLite is already initialized (sqlite3_config: {rc})"
        )));
    }
    // SAFETY: the call succeeded, so the table is written (all-zero, a valid value, otherwise).
    let current = unsafe { current.assume_init() };
    let missing = || NotInstalled("the current page cache lacks a method".into());
    let methods = Methods {
        create: current.xCreate.ok_or_else(missing)?,
        cachesize: current.xCachesize.ok_or_else(missing)?,
        pagecount: current.xPagecount.ok_or_else(missing)?,
        fetch: current.xFetch.ok_or_else(missing)?,
        unpin: current.xUnpin.ok_or_else(missing)?,
        rekey: current.xRekey.ok_or_else(missing)?,
        truncate: current.xTruncate.ok_or_else(missing)?,
        destroy: current.xDestroy.ok_or_else(missing)?,
        shrink: current.xShrink.ok_or_else(missing)?,
    };
    if INNER.set(methods).is_err() {
        return Err(NotInstalled("installed twice".into()));
    }
    let wrapper = ffi::sqlite3_pcache_methods2 {
        iVersion: current.iVersion,
        // pcache1's own start and stop, with its own argument: nothing to wrap there.
        pArg: current.pArg,
        xInit: current.xInit,
        xShutdown: current.xShutdown,
        xCreate: Some(create),
        xCachesize: Some(cachesize),
        xPagecount: Some(pagecount),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: Some(shrink),
    };
    // SAFETY: PCACHE2 takes one pointer to a methods table and copies it; every function in it
    // is valid for the life of the process.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PCACHE2,
            &wrapper as *const ffi::sqlite3_pcache_methods2,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(NotInstalled(format!(
            "SQLite refused the page cache (sqlite3_config: {rc})"
        )));
    }
    Ok(())
}

/// One page cache (SQLite makes one per connection): pcache1's, and the temporary page number
/// for its page size.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    temporary: c_uint,
}

impl Cache {
    /// The key pcache1 keeps `key` under.
    fn key(&self, key: c_uint) -> c_uint {
        if key == self.temporary {
            0
        } else {
            key
        }
    }
}

fn methods() -> &'static Methods {
    // The wrappers are only reachable through the table installed after `INNER` was set.
    INNER.get().unwrap_or_else(|| std::process::abort())
}

/// # Safety
/// `p` must be a cache made by [`create`] and not yet destroyed (SQLite's contract).
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    // SAFETY: per the function's contract, `p` is a live `Box<Cache>` of ours.
    unsafe { &*p.cast::<Cache>() }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    // SAFETY: forwarding SQLite's call with its own arguments.
    let inner = unsafe { (methods().create)(page_size, extra, purgeable) };
    if inner.is_null() {
        return inner;
    }
    let temporary = match u32::try_from(page_size) {
        Ok(size) if size > 0 => PENDING_BYTE / size + 1,
        _ => 0,
    };
    Box::into_raw(Box::new(Cache { inner, temporary })).cast()
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, pages: c_int) {
    // SAFETY: `p` is one of ours (SQLite's contract); its inner cache is pcache1's.
    unsafe { (methods().cachesize)(cache(p).inner, pages) }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    // SAFETY: as in `cachesize`.
    unsafe { (methods().pagecount)(cache(p).inner) }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    // SAFETY: as in `cachesize`.
    let c = unsafe { cache(p) };
    // SAFETY: forwarding with the translated key.
    unsafe { (methods().fetch)(c.inner, c.key(key), create) }
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    // SAFETY: as in `cachesize`; `page` is pcache1's page, handed out by `fetch`.
    unsafe { (methods().unpin)(cache(p).inner, page, discard) }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    // SAFETY: as in `cachesize`.
    let c = unsafe { cache(p) };
    if new == c.temporary {
        TEMPORARY_RENAMES.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: forwarding with translated keys; the translation is one to one, so they differ
    // as `old` and `new` do.
    unsafe { (methods().rekey)(c.inner, page, c.key(old), c.key(new)) }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    // SAFETY: as in `cachesize`.
    let c = unsafe { cache(p) };
    let m = methods();
    if limit <= c.temporary {
        // Page `temporary`, if held (under 0), must go too: back under its own number first.
        // SAFETY: a lookup without creating; a page found is pinned, and the truncation below
        // drops pinned pages at or above the limit as well.
        let page = unsafe { (m.fetch)(c.inner, 0, 0) };
        if !page.is_null() {
            // SAFETY: `page` is under key 0, and nothing is under `temporary` (it is 0's).
            unsafe { (m.rekey)(c.inner, page, 0, c.temporary) };
        }
    }
    // SAFETY: forwarding SQLite's call.
    unsafe { (m.truncate)(c.inner, limit) }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: `p` came from `Box::into_raw` in `create`, and SQLite destroys a cache once.
    let c = unsafe { Box::from_raw(p.cast::<Cache>()) };
    // SAFETY: forwarding SQLite's call for the inner cache.
    unsafe { (methods().destroy)(c.inner) }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: as in `cachesize`.
    unsafe { (methods().shrink)(cache(p).inner) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of 4 KiB pages made through the wrapper, as SQLite makes one.
    struct TestCache(*mut ffi::sqlite3_pcache);

    impl TestCache {
        fn new() -> Self {
            install().unwrap();
            // SAFETY: the wrapper is installed; pcache1 needs SQLite initialized.
            let rc = unsafe { ffi::sqlite3_initialize() };
            assert_eq!(rc, ffi::SQLITE_OK);
            // SAFETY: arguments as SQLite passes them (page size, extra bytes, purgeable).
            let p = unsafe { create(4096, 64, 1) };
            assert!(!p.is_null());
            // SAFETY: ours. (A cache without a size frees every page as soon as it is unpinned.)
            unsafe { cachesize(p, 100) };
            Self(p)
        }

        /// Fetches (creating with `create` = 2) and unpins at once, as a page SQLite is done
        /// with; returns whether it was there (or made).
        fn touch(&self, key: c_uint, create: c_int) -> bool {
            // SAFETY: a live cache of ours.
            let page = unsafe { fetch(self.0, key, create) };
            if page.is_null() {
                return false;
            }
            // SAFETY: the page just fetched, kept (not discarded).
            unsafe { unpin(self.0, page, 0) };
            true
        }
    }

    impl Drop for TestCache {
        fn drop(&mut self) {
            // SAFETY: ours, destroyed once.
            unsafe { destroy(self.0) }
        }
    }

    const T: c_uint = PENDING_BYTE / 4096 + 1;

    #[test]
    fn the_temporary_page_is_kept_under_key_zero_and_renamed_back() {
        let c = TestCache::new();
        assert!(c.touch(7, 2));
        // SAFETY: page 7 exists; rename it through the temporary number and back, as a balance.
        unsafe {
            let page = fetch(c.0, 7, 0);
            rekey(c.0, page, 7, T);
            assert_eq!(fetch(c.0, 7, 0), std::ptr::null_mut());
            assert_eq!(fetch(c.0, T, 0), page);
            rekey(c.0, page, T, 8);
            unpin(c.0, page, 0);
        }
        assert!(c.touch(8, 0));
        assert!(!c.touch(T, 0));
        assert!(temporary_renames() >= 1);
    }

    #[test]
    fn a_truncation_drops_the_temporary_page_like_any_page_above_its_limit() {
        let c = TestCache::new();
        assert!(c.touch(3, 2));
        assert!(c.touch(T, 2), "page T made (stored under 0)");
        // SAFETY: a live cache of ours, no page referenced.
        unsafe { truncate(c.0, 100) };
        assert!(!c.touch(T, 0), "page T is at or above the limit: gone");
        assert!(c.touch(3, 0), "page 3 is below it: kept");
        // SAFETY: as above.
        unsafe { truncate(c.0, 3) };
        assert!(!c.touch(3, 0));
    }
}
