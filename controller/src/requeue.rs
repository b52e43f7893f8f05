//! Requeue: a connection whose repair or heal the data plane failed waits before the next
//! attempt, alone, while the round goes on with the others (kube-rs' `error_policy` is the
//! model). The wait grows with consecutive failures ([`Backoff::REQUEUE`]); a failure that will
//! not pass by itself (refused, a conflict, an invalid request) waits the longest. Success, or
//! the connection going away, forgets it. Time is the controller's injected clock.

use std::collections::HashMap;

use crate::backoff::Backoff;
use crate::controller::Controller;
use crate::driver::DriverError;

/// When a connection may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Requeue {
    pub failures: u32,
    pub not_before_ms: u64,
}

/// Per connection id. Bounded by the connections held: entries go with success or the
/// connection, and [`Controller::prune_requeue`] drops the rest each round.
pub(crate) type Requeues = HashMap<String, Requeue>;

impl Controller {
    fn requeues(&self) -> std::sync::MutexGuard<'_, Requeues> {
        self.inner.requeue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` waits after a failure (until its time comes).
    pub(crate) fn is_deferred(&self, id: &str) -> bool {
        let now = self.now();
        self.requeues()
            .get(id)
            .is_some_and(|r| r.not_before_ms > now)
    }

    /// Records a failed attempt on `id`; returns how long it now waits.
    pub(crate) fn requeue_after(&self, id: &str, e: &DriverError) -> std::time::Duration {
        let now = self.now();
        let mut q = self.requeues();
        let r = q.entry(id.to_string()).or_insert(Requeue {
            failures: 0,
            not_before_ms: now,
        });
        let wait = if e.retryable() {
            Backoff::REQUEUE.delay(
                r.failures,
                meshwire_models::document::fnv1a64(id.as_bytes()),
            )
        } else {
            Backoff::REQUEUE.max
        };
        r.failures = r.failures.saturating_add(1);
        r.not_before_ms = now.saturating_add(wait.as_millis() as u64);
        wait
    }

    /// Forgets `id`'s failures (it succeeded, or is gone).
    pub(crate) fn requeue_clear(&self, id: &str) {
        self.requeues().remove(id);
    }

    /// Drops entries of connections no longer held.
    pub(crate) fn prune_requeue(&self) {
        let held: std::collections::HashSet<String> = {
            let q = self.requeues();
            if q.is_empty() {
                return;
            }
            q.keys().cloned().collect()
        };
        let gone: Vec<String> = held
            .into_iter()
            .filter(|id| self.connection(id).is_none())
            .collect();
        let mut q = self.requeues();
        for id in gone {
            q.remove(&id);
        }
    }
}
