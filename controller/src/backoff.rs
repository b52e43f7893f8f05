//! Backoff: jittered exponential delays before trying a peer again (a switch, a database, a
//! device, a connection the reconcile loop requeues). The one implementation every crate uses.

use std::time::Duration;

use meshwire_models::document::fnv1a64;

/// Delays from `min`, doubling per failure, capped at `max`, each times a factor in 0.5..1.0
/// that varies with the time and a seed, so peers that failed together do not retry in
/// lockstep. The jitter spreads load; it is not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Reconnecting to switches and OVSDB servers: 100 ms to 5 s.
    pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    /// Reopening a device's NETCONF session: 200 ms to 10 s.
    pub const DEVICE: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    /// Requeueing a connection whose repair or heal failed: 1 s to 60 s.
    pub const REQUEUE: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// The delay after `failures` failures in a row (0: the first retry).
    pub fn delay(&self, failures: u32, seed: u64) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        base.mul_f64(jitter(seed))
    }
}

/// A factor in 0.5..1.0 from the clock's low bits and `seed` (no RNG dependency).
fn jitter(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let h = fnv1a64(format!("{seed}{nanos}").as_bytes());
    0.5 + (h % 1000) as f64 / 2000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_jittered_and_capped() {
        let b = Backoff::RECONNECT;
        let d: Vec<Duration> = (0..40).map(|f| b.delay(f, 7)).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|x| *x <= b.max));
        assert!(d[5] > d[0]);
        assert!(
            d[39] >= b.max / 2,
            "a long run of failures stays near the cap"
        );
    }
}
