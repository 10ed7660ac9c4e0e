//! A connector's rate limit: governor's GCRA, waited on with the runtime's
//! own timer, in ticks.
//!
//! governor's `until_ready` waits on a `futures-timer` delay, whose timer
//! thread is woken through a futex to set each delay and wakes the task back
//! from there: two thread switches for every message held back, which is
//! every message of a connector that runs at its limit. Here the same check
//! is waited on with tokio's timer, in the runtime's own thread.
//!
//! A send held back waits for the next tick of [`TICK`] rather than for the
//! instant its permit comes, when the burst leaves room for that: the sends
//! of one tick then go out together, and every hop after (the SMSC's
//! answers and receipts, the results to the coordinator) carries a tick's
//! worth per wake-up instead of one message. At 2,000 a second that is
//! about 20 per wake-up, and bench (j)'s limited run took 135 µs of CPU
//! per message in all (node, coordinator, SMSC) instead of 510. The rate
//! over any span longer than the burst is the same: permits not taken
//! while waiting for a tick stay in the burst.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use tokio::time::Instant;

/// How often held-back sends are let go, at most.
pub const TICK: Duration = Duration::from_millis(10);

/// Permits a second, with a burst, for one connector.
pub struct Pace {
    limiter: governor::DefaultDirectRateLimiter,
    /// The tick held-back sends wait for (zero: none, each waits for its permit).
    tick: Duration,
    /// Where the ticks are counted from.
    origin: Instant,
}

impl Pace {
    /// `rate` a second, at most `burst` at once. Held-back sends wait for
    /// ticks of [`TICK`], or of the time the burst's room beyond one
    /// permit takes to fill if that is less (none for a burst of 1).
    pub fn per_second(rate: NonZeroU32, burst: NonZeroU32) -> Pace {
        let room = Duration::from_secs(1) * (burst.get() - 1) / rate.get();
        Pace {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            tick: TICK.min(room / 2),
            origin: Instant::now(),
        }
    }

    /// Waits until the rate allows one more, and takes it.
    pub async fn ready(&self) {
        while let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            tokio::time::sleep_until(self.on_tick(Instant::now() + wait)).await;
        }
    }

    /// The first tick at or after `at`.
    fn on_tick(&self, at: Instant) -> Instant {
        let tick = self.tick.as_nanos();
        if tick == 0 {
            return at;
        }
        let ticks = at
            .saturating_duration_since(self.origin)
            .as_nanos()
            .div_ceil(tick);
        self.origin + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Once the burst is spent the rate holds: at 50 a second with a burst
    /// of 2, the first 2 wait for nothing and 10 more take 200 ms. (Real
    /// time: governor's clock is not the runtime's, so it cannot be paused.
    /// Only lower bounds are asserted, which a slow machine cannot break.)
    #[tokio::test]
    async fn holds_the_rate_after_the_burst() {
        let pace = Pace::per_second(
            NonZeroU32::new(50).expect("non-zero"),
            NonZeroU32::new(2).expect("non-zero"),
        );
        let start = Instant::now();
        for _ in 0..12 {
            pace.ready().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190),
            "12 permits at 50/s with a burst of 2 took {took:?}"
        );
    }

    /// Held-back sends wait for ticks: of [`TICK`] when the burst has room,
    /// of less when it has less, and none with a burst of 1.
    #[tokio::test]
    async fn ticks_fit_the_burst() {
        let nz = |n| NonZeroU32::new(n).expect("non-zero");
        assert_eq!(Pace::per_second(nz(2000), nz(200)).tick, TICK);
        assert_eq!(
            Pace::per_second(nz(100), nz(2)).tick,
            Duration::from_millis(5)
        );
        assert_eq!(Pace::per_second(nz(10), nz(1)).tick, Duration::ZERO);
        let pace = Pace::per_second(nz(2000), nz(200));
        let at = pace.origin + Duration::from_millis(31);
        assert_eq!(pace.on_tick(at), pace.origin + Duration::from_millis(40));
        let on = pace.origin + Duration::from_millis(40);
        assert_eq!(pace.on_tick(on), on);
    }
}
