//! How many jobs a node keeps ready beyond its send slots (its prefetch).
//!
//! A send slot that frees waits for a new job unless one is already held:
//! after a result goes out, the next job arrives one coordinator round trip
//! later. To keep every slot busy the node holds about as many extra jobs as
//! sends finish in one round trip, `rate × round trip`, the bandwidth-delay
//! product of the job pipeline. [`Pipeline`] measures both (the round trip as
//! the time from a grant of credit to the jobs that fill it) and sizes the
//! prefetch between a floor and a ceiling.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Round trips longer than this are gaps in the work (the coordinator had
/// nothing to send), not round trips: they are not measured.
const LONGEST_ROUND_TRIP: Duration = Duration::from_secs(1);

/// Rates are measured over windows at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(50);

/// Headroom over the measured product, for round trips that vary.
const HEADROOM: f64 = 1.5;

/// Sizes a node's prefetch from its send rate and its round trip to the coordinator.
#[derive(Debug)]
pub struct Pipeline {
    floor: u32,
    ceiling: u32,
    /// Credit granted and not yet filled by jobs: (when granted, credits still open).
    open: VecDeque<(Instant, u64)>,
    /// Smoothed round trip, seconds.
    round_trip: Option<f64>,
    /// Smoothed rate at which sends finish, per second.
    rate: f64,
    /// Sends finished since `window_start`.
    finished: u64,
    window_start: Instant,
}

impl Pipeline {
    /// A pipeline whose prefetch stays between `floor` and `ceiling` (a ceiling
    /// at or below the floor fixes it at the floor).
    pub fn new(floor: u32, ceiling: u32, now: Instant) -> Self {
        Pipeline {
            floor,
            ceiling: ceiling.max(floor),
            open: VecDeque::new(),
            round_trip: None,
            rate: 0.0,
            finished: 0,
            window_start: now,
        }
    }

    /// The most the prefetch can be.
    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// The prefetch to keep now.
    pub fn prefetch(&self) -> u32 {
        let Some(rtt) = self.round_trip else {
            return self.floor;
        };
        let want = (self.rate * rtt * HEADROOM).ceil();
        (want.min(f64::from(self.ceiling)) as u32).max(self.floor)
    }

    /// `credits` were granted at `now`.
    pub fn granted(&mut self, credits: u64, now: Instant) {
        if credits > 0 && self.ceiling > self.floor {
            self.open.push_back((now, credits));
        }
    }

    /// `jobs` arrived at `now`: they fill the oldest open grants, and each grant
    /// filled in full is a round trip measured.
    pub fn filled(&mut self, mut jobs: u64, now: Instant) {
        while jobs > 0 {
            let Some((at, open)) = self.open.front_mut() else {
                return;
            };
            let used = jobs.min(*open);
            *open -= used;
            jobs -= used;
            if *open == 0 {
                let rtt = now.saturating_duration_since(*at);
                self.open.pop_front();
                if rtt <= LONGEST_ROUND_TRIP {
                    let s = rtt.as_secs_f64();
                    self.round_trip = Some(self.round_trip.map_or(s, |r| r + (s - r) / 8.0));
                }
            }
        }
    }

    /// `n` sends finished by `now`.
    pub fn finished(&mut self, n: u64, now: Instant) {
        self.finished += n;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let rate = self.finished as f64 / elapsed.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                rate
            } else {
                self.rate + (rate - self.rate) / 4.0
            };
            self.finished = 0;
            self.window_start = now;
        }
    }

    /// A new stream: grants of the old one will never be filled.
    pub fn new_stream(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn prefetch_covers_rate_times_round_trip() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(1, 100, t0);
        assert_eq!(p.prefetch(), 1, "nothing measured yet: the floor");
        // 1,000 sends a second, and grants answered 20 ms later.
        for i in 0..20u64 {
            let t = t0 + ms(50 * i);
            p.granted(5, t);
            p.filled(5, t + ms(20));
            p.finished(50, t + ms(50));
        }
        // 1000/s × 0.020 s × 1.5 = 30.
        assert_eq!(p.prefetch(), 30);
    }

    #[test]
    fn prefetch_stays_between_floor_and_ceiling() {
        let t0 = Instant::now();
        let mut slow = Pipeline::new(3, 100, t0);
        slow.granted(1, t0);
        slow.filled(1, t0 + ms(1));
        slow.finished(1, t0 + ms(100)); // 10 a second: 10 × 0.001 × 1.5 < 3
        assert_eq!(slow.prefetch(), 3);
        let mut fast = Pipeline::new(3, 10, t0);
        fast.granted(1, t0);
        fast.filled(1, t0 + ms(100));
        fast.finished(10_000, t0 + ms(100));
        assert_eq!(fast.prefetch(), 10);
        let mut fixed = Pipeline::new(4, 0, t0);
        fixed.granted(1, t0);
        fixed.filled(1, t0 + ms(100));
        fixed.finished(10_000, t0 + ms(100));
        assert_eq!((fixed.prefetch(), fixed.ceiling()), (4, 4));
    }

    #[test]
    fn grants_fill_in_order_and_gaps_in_the_work_are_not_round_trips() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(0, 1000, t0);
        p.granted(3, t0);
        p.granted(2, t0 + ms(10));
        p.filled(2, t0 + ms(5)); // part of the first grant: nothing measured
        assert_eq!(p.round_trip, None);
        p.filled(3, t0 + ms(30)); // the rest of both: 30 ms, then 20 ms
        let rtt = p.round_trip.unwrap();
        assert!(
            (rtt - (0.030 + (0.020 - 0.030) / 8.0)).abs() < 1e-9,
            "{rtt}"
        );
        // A grant filled only after 5 s: the coordinator had nothing to send.
        p.granted(1, t0 + ms(100));
        p.filled(1, t0 + ms(5100));
        assert_eq!(p.round_trip, Some(rtt));
        // Jobs beyond every open grant change nothing.
        p.filled(7, t0 + ms(5200));
        assert!(p.open.is_empty());
    }
}
