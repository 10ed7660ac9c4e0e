//! Latency statistics of a batch (or of one node's share of it) that cost
//! little while they are small: the first samples are kept as they are, and
//! only a batch with more than [`FEW`] attempts gets a histogram (about
//! 20 KB). A one-message batch then carries a few bytes, not a histogram.

use hdrhistogram::Histogram;
use smsmesh::pb;

/// Samples kept as they are before a histogram is made.
pub(super) const FEW: usize = 32;

/// Send times of attempts, microseconds.
#[derive(Debug, Default)]
pub struct Latency {
    few: Vec<u32>,
    many: Option<Box<Histogram<u32>>>,
}

impl Latency {
    /// Records one attempt's send time (at least 1 µs).
    pub fn record(&mut self, us: u64) {
        let us = us.max(1);
        if let Some(h) = &mut self.many {
            let _ = h.record(us);
            return;
        }
        if self.few.len() < FEW {
            self.few.push(us.min(u64::from(u32::MAX)) as u32);
            return;
        }
        let mut h = Box::new(new_histogram());
        for &v in &self.few {
            let _ = h.record(u64::from(v));
        }
        let _ = h.record(us);
        self.few = Vec::new();
        self.many = Some(h);
    }

    /// Gives back memory reserved for more samples.
    pub fn shrink(&mut self) {
        self.few.shrink_to_fit();
    }

    /// Count, mean, percentiles and maximum, in milliseconds.
    pub fn summary(&self) -> pb::Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if let Some(h) = &self.many {
            return pb::Latency {
                count: h.len(),
                mean_ms: h.mean() / 1000.0,
                p50_ms: ms(h.value_at_quantile(0.50)),
                p95_ms: ms(h.value_at_quantile(0.95)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            };
        }
        if self.few.is_empty() {
            return pb::Latency::default();
        }
        let mut v = self.few.clone();
        v.sort_unstable();
        let n = v.len();
        // The value at rank ⌈q·n⌉, as a histogram reports it.
        let at = |q: f64| u64::from(v[((q * n as f64).ceil() as usize).clamp(1, n) - 1]);
        pb::Latency {
            count: n as u64,
            mean_ms: v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64 / 1000.0,
            p50_ms: ms(at(0.50)),
            p95_ms: ms(at(0.95)),
            p99_ms: ms(at(0.99)),
            max_ms: ms(u64::from(v[n - 1])),
        }
    }
}

/// A latency histogram: 1 µs to 1 hour, 2 significant digits.
fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_samples_and_a_histogram_report_alike() {
        let mut small = Latency::default();
        let mut h = new_histogram();
        for us in [900, 100, 500, 300, 700] {
            small.record(us);
            h.record(us).unwrap();
        }
        let s = small.summary();
        assert_eq!(s.count, 5);
        assert_eq!((s.p50_ms, s.max_ms), (0.5, 0.9));
        assert!((s.mean_ms - 0.5).abs() < 1e-9);
        // The histogram reports a value within its 2 significant digits.
        let hist = h.value_at_quantile(0.5) as f64;
        assert!(
            (s.p50_ms * 1000.0 - hist).abs() <= hist / 100.0,
            "{s:?} vs {hist}"
        );
        // Past FEW samples it becomes a histogram and keeps every sample.
        let mut big = Latency::default();
        for us in 1..=1000u64 {
            big.record(us * 10);
        }
        let b = big.summary();
        assert_eq!(b.count, 1000);
        assert!((b.p50_ms - 5.0).abs() < 0.1, "{b:?}");
        assert!(big.few.is_empty() && big.many.is_some());
    }
}
