//! The session: one shared NETCONF session per device, reopened with jittered backoff, and
//! the transactions on it (lock, edit candidate, commit, unlock; discard on failure).

use crate::netconf::client::{NetconfError, Session};
use crate::netconf::xml::DefaultOperation;

use meshwire_controller::backoff::Backoff;

use super::*;

pub(super) fn transport_failure(e: &NetconfError) -> bool {
    matches!(
        e,
        NetconfError::Connect { .. }
            | NetconfError::Closed { .. }
            | NetconfError::Timeout { .. }
            | NetconfError::Protocol { .. }
    )
}

impl Ensm {
    /// The shared session, opened if there is none (respecting the backoff).
    pub(super) async fn session(&self) -> Result<Session, String> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        {
            let h = self.health();
            let now = self.now_ms();
            if now < h.next_attempt_ms {
                return Err(format!(
                    "device unreachable: {} (next attempt in {} ms)",
                    h.last_error.clone().unwrap_or_default(),
                    h.next_attempt_ms - now
                ));
            }
        }
        match Session::connect(&self.inner.device.netconf).await {
            Ok(s) => {
                let mut h = self.health();
                h.failures = 0;
                h.counters.sessions_opened += 1;
                tracing::info!(device = %self.inner.device.name, framing = ?s.framing(), "NETCONF session open");
                *guard = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                let mut h = self.health();
                let seed = meshwire_models::document::fnv1a64(self.inner.device.name.as_bytes());
                let wait = Backoff::DEVICE.delay(h.failures, seed);
                h.next_attempt_ms = self.now_ms().saturating_add(wait.as_millis() as u64);
                h.failures = h.failures.saturating_add(1);
                h.reachable = false;
                h.last_error = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Forgets a dead session and marks the device unreachable.
    /// Forgets `dead` (if it is still the current session) and marks the device unreachable.
    /// A late error on an older session leaves a newer, healthy one alone.
    pub(super) async fn lost(&self, dead: &Session, why: &str) {
        {
            let mut current = self.inner.session.lock().await;
            match current.as_ref() {
                Some(s) if s.same(dead) => *current = None,
                _ => return,
            }
        }
        {
            let mut h = self.health();
            h.reachable = false;
            h.last_error = Some(why.to_string());
            h.next_attempt_ms = self.now_ms();
        }
        self.inner.wake.notify_one();
    }

    /// One NETCONF transaction on the shared session.
    pub(super) async fn transaction(&self, config: &str) -> Result<(), NetconfError> {
        let session = self.session().await.map_err(|e| NetconfError::Connect {
            device: self.inner.device.name.clone(),
            addr: format!(
                "{}:{}",
                self.inner.device.netconf.host, self.inner.device.netconf.port
            ),
            reason: e,
        })?;
        // The transaction runs in a task of its own: if our caller is cancelled (a client
        // hung up), it still ends with commit or discard and unlock, never leaving the
        // candidate locked on the shared session.
        let this = self.clone();
        let config = config.to_string();
        let task = tokio::spawn(async move {
            let t = this.inner.txn.lock().await;
            let r = session
                .apply_config(
                    DefaultOperation::Merge,
                    &config,
                    this.inner.profile.confirm_timeout,
                )
                .await;
            drop(t);
            {
                let mut h = this.health();
                h.counters.transactions += 1;
                if matches!(r, Err(NetconfError::Rpc { .. })) {
                    h.counters.refused += 1;
                }
            }
            if let Err(e) = &r {
                // A lock held by another session of ours (a lost one) frees with a new session.
                if transport_failure(e) || e.error_tag() == Some("lock-denied") {
                    this.lost(&session, &e.to_string()).await;
                }
            }
            r
        });
        task.await.map_err(|e| NetconfError::Closed {
            device: format!("{} (transaction task: {e})", self.inner.device.name),
        })?
    }
}
