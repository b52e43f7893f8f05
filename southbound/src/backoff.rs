//! Jittered exponential backoff for reconnecting to switches and databases.

use std::time::Duration;

use meshwire_models::document::fnv1a64;

fn jitter(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let h = fnv1a64(format!("{seed}{nanos}").as_bytes());
    0.5 + (h % 1000) as f64 / 2000.0
}

/// 100 ms doubling to 5 s, times 0.5..1.0 (varying with time and `seed`), so many peers that
/// lost the controller at once do not come back in lockstep.
pub fn backoff(failures: u32, seed: u64) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    Duration::from_millis((base as f64 * jitter(seed)) as u64)
}
