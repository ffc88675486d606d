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
        let rate = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, TokioClock::default()),
            refused_in_a_row: 0,
            close_after: rate.get().saturating_mul(4),
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
