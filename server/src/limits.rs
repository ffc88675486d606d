//! Limits that keep one client from costing the server more than its share.
//!
//! - [`FrameLimiter`]: inbound frames per connection. Every frame counts (text, binary, ping
//!   and pong), because every frame costs a read and a parse; only the close frame is free.
//!
//! Rate limiting is governor's GCRA on [`TokioClock`], tokio's clock, so tests drive it with
//! `tokio::time::pause()` and `advance()` instead of sleeping.

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// governor's clock on tokio's time: an instant is the time elapsed since the clock was made.
/// Pausing tokio's clock pauses it.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// What the limiter decided about one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle the frame.
    Allow,
    /// Drop the frame. `first` is true for the first refusal after an allowed frame: tell the
    /// client once per streak (an error frame per refused frame would let a flood double the
    /// outbound traffic).
    Refuse { first: bool },
    /// Far too many refused in a row: close the connection (4002).
    Close,
}

/// Inbound frames per connection: `per_sec` on average with bursts of twice that. After
/// `4 * per_sec` refusals in a row (four seconds of flooding at the full rate), the client is
/// not slowing down, and the connection is closed.
pub struct FrameLimiter {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    refused_in_a_row: u32,
    close_after: u32,
}

impl FrameLimiter {
    pub fn new(per_sec: u32) -> Self {
        let per_sec = per_sec.max(1);
        let quota = quota(per_sec).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct_with_clock(quota, TokioClock::default()),
            refused_in_a_row: 0,
            close_after: per_sec.saturating_mul(4),
        }
    }

    /// Counts one inbound frame.
    pub fn check(&mut self) -> Verdict {
        if self.limiter.check().is_ok() {
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        if self.refused_in_a_row > self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse {
                first: self.refused_in_a_row == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_of_twice_the_rate_then_refuses() {
        let mut l = FrameLimiter::new(5);
        let verdicts: Vec<_> = (0..12).map(|_| l.check()).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert_eq!(verdicts[10], Verdict::Refuse { first: true });
        assert_eq!(verdicts[11], Verdict::Refuse { first: false });
    }

    #[tokio::test(start_paused = true)]
    async fn refills_at_the_rate_on_tokios_clock() {
        let mut l = FrameLimiter::new(5);
        while l.check() == Verdict::Allow {}
        // One frame's worth of time (200 ms at 5/s) buys exactly one frame.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(l.check(), Verdict::Allow);
        assert_eq!(l.check(), Verdict::Refuse { first: true });
        // A quiet second refills five.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..5).filter(|_| l.check() == Verdict::Allow).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_that_does_not_slow_down_is_closed() {
        let mut l = FrameLimiter::new(5);
        let mut n = 0;
        let verdict = loop {
            n += 1;
            match l.check() {
                Verdict::Close => break n,
                _ if n > 1000 => panic!("never closed"),
                _ => {}
            }
        };
        // 10 in the burst, then 20 refusals are tolerated; the 21st closes.
        assert_eq!(verdict, 10 + 20 + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The edge: publishes per credential and per address, connections per address and per user.

use governor::state::keyed::HashMapStateStore;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, TokioClock, NoOpMiddleware<Duration>>;

/// One caller's own bucket (an API key keeps one in its record: no hashing or lock per check).
pub type DirectRate = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A rate per key (`per_sec` on average, bursts of twice that), or no limit when 0.
pub struct KeyedRate<K: Hash + Eq + Clone> {
    limiter: Option<Keyed<K>>,
    /// The limiter's quota, for callers that keep a key's bucket elsewhere (see
    /// [`EdgeLimits::publish`]).
    quota: Option<Quota>,
    clock: TokioClock,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    pub fn new(per_sec: u32) -> Self {
        let clock = TokioClock::default();
        let quota = quota(per_sec);
        let limiter = quota.map(|q| RateLimiter::hashmap_with_clock(q, clock.clone()));
        Self {
            limiter,
            quota,
            clock,
        }
    }

    /// `Err(retry_after)` when `key` is over its rate.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Counts `n` at once (a bulk request): `Err(Some(retry_after))` over the rate, `Err(None)`
    /// when `n` is more than a burst, which no wait makes possible.
    pub fn check_n(&self, key: &K, n: u32) -> Result<(), Option<Duration>> {
        let (Some(l), Some(n)) = (&self.limiter, NonZeroU32::new(n)) else {
            return Ok(());
        };
        match l.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(None),
        }
    }

    /// Forgets keys whose bucket is full again, so the table holds only recent callers.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// `per_sec` with bursts of twice that; `None` for 0 (no limit).
fn quota(per_sec: u32) -> Option<Quota> {
    NonZeroU32::new(per_sec).map(|rate| {
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        Quota::per_second(rate).allow_burst(burst)
    })
}

/// How many connections each key (an address, a user) holds, capped; 0 means no cap.
pub struct ConnCounter<K: Hash + Eq + Clone> {
    max: u32,
    held: Mutex<HashMap<K, u32>>,
}

/// One counted connection; released when dropped.
pub struct ConnSlot<K: Hash + Eq + Clone> {
    counter: Arc<ConnCounter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> ConnCounter<K> {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `key`; `Err(())` when it already holds the maximum, `Ok(None)` when there
    /// is no cap (nothing to count or release).
    #[allow(clippy::result_unit_err)]
    pub fn acquire(self: &Arc<Self>, key: K) -> Result<Option<ConnSlot<K>>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return Err(());
        }
        *n += 1;
        Ok(Some(ConnSlot {
            counter: self.clone(),
            key,
        }))
    }

    pub fn held(&self, key: &K) -> u32 {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for ConnSlot<K> {
    fn drop(&mut self) {
        let mut held = self.counter.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Every edge limit, from the configuration.
pub struct EdgeLimits {
    /// HTTP and socket publishes per user; per API key, the key's record holds the bucket.
    pub publish_per_credential: KeyedRate<String>,
    /// HTTP publishes per client address.
    pub publish_per_ip: KeyedRate<IpAddr>,
    /// New WebSocket connections per client address.
    pub connects_per_ip: KeyedRate<IpAddr>,
    pub conns_per_ip: Arc<ConnCounter<IpAddr>>,
    pub conns_per_user: UserConns,
}

/// Open sockets per user, counted in a fixed table of counters indexed by a keyed hash of the
/// user id: no allocation per user or socket (a map of users with a slot per socket cost
/// 0.22 KiB per connection at 10,000 users, measured), lock-free, 256 KiB when enabled.
/// Users whose ids land on the same counter share its cap: with 65,536 counters that needs
/// dozens of sockets from users who collide, far beyond what the cap guards against.
pub struct UserConns {
    max: u32,
    counters: Box<[std::sync::atomic::AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Counters in [`UserConns`].
const USER_COUNTERS: usize = 65_536;

impl UserConns {
    pub fn new(max: u32) -> Self {
        let n = if max == 0 { 0 } else { USER_COUNTERS };
        Self {
            max,
            counters: (0..n)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn index(&self, user: &str) -> usize {
        use std::hash::BuildHasher as _;
        (self.hasher.hash_one(user) % self.counters.len().max(1) as u64) as usize
    }

    /// Counts a socket for `user`; the counter to release, or `Err(())` at the cap. `Ok(None)`
    /// when there is no cap.
    #[allow(clippy::result_unit_err)]
    pub fn acquire(&self, user: &str) -> Result<Option<u32>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let i = self.index(user);
        self.counters[i]
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| (n < self.max).then_some(n + 1),
            )
            .map(|_| Some(i as u32))
            .map_err(|_| ())
    }

    pub fn release(&self, counter: u32) {
        if let Some(c) = self.counters.get(counter as usize) {
            c.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    pub fn held(&self, user: &str) -> u32 {
        if self.max == 0 {
            return 0;
        }
        self.counters[self.index(user)].load(std::sync::atomic::Ordering::Acquire)
    }
}

impl EdgeLimits {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            publish_per_credential: KeyedRate::new(config.publish_per_sec_per_credential),
            publish_per_ip: KeyedRate::new(config.publish_per_sec_per_ip),
            connects_per_ip: KeyedRate::new(config.connects_per_sec_per_ip),
            conns_per_ip: ConnCounter::new(config.max_connections_per_ip),
            conns_per_user: UserConns::new(config.max_connections_per_user),
        }
    }

    /// Counts one publish by `who`; `Err(retry_after)` over the rate. A key's bucket lives in
    /// its record (no hashing or lock per check; made on first use, and afresh after a key
    /// table reload), a user's in the keyed table.
    pub fn publish(&self, who: &crate::auth::Identity) -> Result<(), Duration> {
        let rate = &self.publish_per_credential;
        let Some(quota) = rate.quota else {
            return Ok(());
        };
        match who {
            crate::auth::Identity::Key(k) => k
                .publish_rate
                .get_or_init(|| RateLimiter::direct_with_clock(quota, rate.clock.clone()))
                .check()
                .map_err(|not_until| not_until.wait_time_from(rate.clock.now())),
            other => self.publish_per_credential.check(&other.rate_key()),
        }
    }

    /// [`EdgeLimits::publish`] for `n` notifications at once (a bulk send counts each one):
    /// `Err(Some(retry_after))` over the rate, `Err(None)` when `n` is more than one burst.
    pub fn publish_n(&self, who: &crate::auth::Identity, n: u32) -> Result<(), Option<Duration>> {
        let rate = &self.publish_per_credential;
        let (Some(quota), Some(count)) = (rate.quota, NonZeroU32::new(n)) else {
            return Ok(());
        };
        match who {
            crate::auth::Identity::Key(k) => {
                let bucket = k
                    .publish_rate
                    .get_or_init(|| RateLimiter::direct_with_clock(quota, rate.clock.clone()));
                match bucket.check_n(count) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(rate.clock.now()))),
                    Err(_) => Err(None),
                }
            }
            other => rate.check_n(&other.rate_key(), n),
        }
    }

    /// Forgets idle callers; run every minute.
    pub fn forget_idle(&self) {
        self.publish_per_credential.forget_idle();
        self.publish_per_ip.forget_idle();
        self.connects_per_ip.forget_idle();
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_keyed_rate_refuses_with_a_retry_after_and_recovers() {
        let r = KeyedRate::<String>::new(2);
        let ana = "ana".to_owned();
        assert!(
            (0..4).all(|_| r.check(&ana).is_ok()),
            "a burst of twice the rate"
        );
        let wait = r.check(&ana).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(r.check(&"bob".to_owned()).is_ok(), "keys are separate");
        tokio::time::advance(wait).await;
        assert!(r.check(&ana).is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        r.forget_idle();
        assert_eq!(r.tracked(), 0, "idle callers are forgotten");
        assert!(
            KeyedRate::<String>::new(0).check(&ana).is_ok(),
            "0 means no limit"
        );
    }

    #[test]
    fn user_counters_cap_and_release() {
        let u = UserConns::new(2);
        let a = u.acquire("ana").unwrap().unwrap();
        let _b = u.acquire("ana").unwrap().unwrap();
        assert!(u.acquire("ana").is_err());
        u.release(a);
        assert_eq!(u.held("ana"), 1);
        assert!(u.acquire("ana").is_ok());
        assert_eq!(UserConns::new(0).acquire("ana"), Ok(None));
    }

    #[test]
    fn connection_counters_cap_and_release() {
        let c = ConnCounter::new(2);
        let a = c.acquire("ana".to_owned()).unwrap().unwrap();
        let _b = c.acquire("ana".to_owned()).unwrap().unwrap();
        assert!(c.acquire("ana".to_owned()).is_err());
        assert!(matches!(c.acquire("bob".to_owned()), Ok(Some(_))));
        drop(a);
        assert_eq!(c.held(&"ana".to_owned()), 1);
        assert!(matches!(c.acquire("ana".to_owned()), Ok(Some(_))));
        let unlimited = ConnCounter::new(0);
        assert!((0..100).all(|_| matches!(unlimited.acquire(1u8), Ok(None))));
    }
}
