//! Free loopback ports for the daemons tests and benchmarks start (etcd members, controllers,
//! agents' listeners).
//!
//! A port from `bind(127.0.0.1:0)` comes from the kernel's ephemeral range, the same range every
//! outgoing connection takes its local port from: between the moment we release it and the moment
//! the daemon binds it, a client connection of a test running beside us (an etcd member dialling
//! its peers, a controller dialling etcd) may take it, and the daemon dies with "address already
//! in use". Ports here come from below the ephemeral range, where no outgoing connection lands,
//! spread by a per-process seed so parallel tests rarely try the same one; each is checked free
//! by binding it. Callers that can restart a daemon on another port still do so on a clash.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The range tried: above the well-known and registered services' usual ports, below the
/// kernel's default ephemeral range (32768–60999).
const LOW: u16 = 20_000;
const HIGH: u16 = 32_000;
/// How many candidates are tried before the kernel is asked for any port.
const TRIES: usize = 256;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A loopback TCP port that was free a moment ago, preferably outside the ephemeral range.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..TRIES {
        let port = candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The next candidate: a splitmix64 step over a seed of this process's id and the time, and a
/// counter, so two processes (or two threads) walk different sequences.
fn candidate() -> u16 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z =
        (u64::from(std::process::id()) << 32) ^ nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    LOW + (z % u64::from(HIGH - LOW)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port().unwrap();
            assert!((LOW..HIGH).contains(&p), "{p}");
            seen.insert(p);
            let _held = TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        assert!(seen.len() > 40, "spread: {}", seen.len());
    }
}
