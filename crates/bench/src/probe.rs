//! How fast the machine is right now: a fixed piece of CPU work and a
//! loopback TCP ping-pong, timed before each scenario while none of ours
//! runs. On a shared VM the same build can differ by a third from one hour
//! to the next with no steal time shown; the probe puts the phase next to
//! each result, so two results are compared knowing what the machine gave.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde::Serialize;

/// Round trips of the loopback probe, per round.
const ROUND_TRIPS: u32 = 4_000;
/// Rounds of each probe: the best counts (the machine at its fastest then).
const ROUNDS: usize = 3;
/// Values sorted by the CPU probe.
const SORTED: usize = 1 << 20;

/// The machine's speed at one moment: lower is faster.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Probe {
    /// Milliseconds to sort a fixed 1 Mi of pseudo-random u64 (best of 3).
    pub cpu_ms: f64,
    /// Microseconds per 64-byte TCP round trip on 127.0.0.1 between two
    /// threads (best of 3 rounds of 4,000).
    pub loopback_us: f64,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sort {:.1} ms, loopback round trip {:.1} µs",
            self.cpu_ms, self.loopback_us
        )
    }
}

/// Times both probes, on blocking threads (off the runtime).
pub(crate) async fn measure() -> anyhow::Result<Probe> {
    tokio::task::spawn_blocking(|| {
        Ok(Probe {
            cpu_ms: best(cpu_round),
            loopback_us: best_of(loopback_round)?,
        })
    })
    .await?
}

fn best(round: impl Fn() -> f64) -> f64 {
    (0..ROUNDS).map(|_| round()).fold(f64::INFINITY, f64::min)
}

fn best_of(round: impl Fn() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut min = f64::INFINITY;
    for _ in 0..ROUNDS {
        min = min.min(round()?);
    }
    Ok(min)
}

/// One sort of the same pseudo-random values: milliseconds.
fn cpu_round() -> f64 {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut v: Vec<u64> = (0..SORTED)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let t = Instant::now();
    v.sort_unstable();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(&v);
    ms
}

/// One round of 64-byte ping-pongs over loopback: microseconds per round trip.
fn loopback_round() -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        for _ in 0..ROUND_TRIPS {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let t = Instant::now();
    for _ in 0..ROUND_TRIPS {
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_probes_give_positive_finite_times() {
        let p = measure().await.expect("probe");
        assert!(p.cpu_ms.is_finite() && p.cpu_ms > 0.0, "{p:?}");
        assert!(p.loopback_us.is_finite() && p.loopback_us > 0.0, "{p:?}");
    }
}
