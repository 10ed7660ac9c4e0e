//! Ports a test can bind again after letting them go: picked at random below
//! `ip_local_port_range`, which the kernel never gives to an outgoing
//! connection. A port from `:0` comes from that range, and while its server
//! is stopped it may become the local end of some connection; binding it
//! again then fails with EADDRINUSE.

use std::net::TcpListener;

/// A listener on 127.0.0.1 at a port below the ephemeral range, or at one
/// from `:0` if none of the ports tried is free.
pub(crate) fn restartable_listener() -> std::io::Result<TcpListener> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let base = 10_000u16.min(low.saturating_sub(1));
    let span = u32::from(low.saturating_sub(base).max(1));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mut seed = nanos ^ std::process::id().rotate_left(16);
    for _ in 0..200 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let port = base + ((seed >> 8) % span) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l);
        }
    }
    TcpListener::bind("127.0.0.1:0")
}
