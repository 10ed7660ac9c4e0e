//! How fast the machine is right now: dependent random reads over 16 MiB
//! and a loopback TCP ping-pong, timed before each scenario while none of
//! ours runs. On this shared VM the same build's coordinator needs up to 1.6
//! times the CPU time for the same work from one hour to the next, with no
//! steal time shown: the neighbours take the shared cache and the wake-ups.
//! The probe puts the phase next to each result, so that two results are
//! compared knowing what the machine gave.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde::Serialize;

/// Round trips of the loopback probe, per round.
const ROUND_TRIPS: u32 = 4_000;
/// Rounds of each probe: the median counts.
const ROUNDS: usize = 5;
/// Slots of the random cycle the memory probe follows: 16 MiB of u32, half
/// of the L3 cache this machine shares with its neighbours.
const SLOTS: usize = 4 << 20;
/// Reads of the memory probe, per round.
const READS: usize = 1 << 20;

/// The machine's speed at one moment: lower is faster.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Probe {
    /// Nanoseconds per dependent random read over 16 MiB (median of 5 rounds
    /// of 1 Mi reads).
    pub memory_ns: f64,
    /// Microseconds per 64-byte TCP round trip on 127.0.0.1 between two
    /// threads (median of 5 rounds of 4,000).
    pub loopback_us: f64,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "random read {:.1} ns, loopback round trip {:.1} µs",
            self.memory_ns, self.loopback_us
        )
    }
}

/// Times both probes, on a blocking thread (off the runtime).
pub(crate) async fn measure() -> anyhow::Result<Probe> {
    tokio::task::spawn_blocking(|| {
        let cycle = random_cycle();
        let mut memory = Vec::with_capacity(ROUNDS);
        let mut loopback = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            memory.push(memory_round(&cycle));
            loopback.push(loopback_round()?);
        }
        Ok(Probe {
            memory_ns: median(memory),
            loopback_us: median(loopback),
        })
    })
    .await?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One cycle through every slot in a pseudo-random order (Sattolo's
/// shuffle): each read's address depends on the one before.
fn random_cycle() -> Vec<u32> {
    let mut next: Vec<u32> = (0..SLOTS as u32).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..SLOTS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % i as u64) as usize;
        next.swap(i, j);
    }
    next
}

/// One round of reads along the cycle: nanoseconds per read.
fn memory_round(next: &[u32]) -> f64 {
    let mut at = 0u32;
    let t = Instant::now();
    for _ in 0..READS {
        at = next[at as usize];
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / READS as f64;
    std::hint::black_box(at);
    ns
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
        assert!(p.memory_ns.is_finite() && p.memory_ns > 0.0, "{p:?}");
        assert!(p.loopback_us.is_finite() && p.loopback_us > 0.0, "{p:?}");
    }
}
