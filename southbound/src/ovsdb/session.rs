//! A long-lived OVSDB session: connects (and reconnects, with jittered exponential backoff),
//! keeps a [`Replica`] of the monitored tables current through `monitor_cond_since` and
//! `update3` notifications, resuming from the last transaction id after a reconnect, and probes
//! the server with echo requests so a dead peer is noticed even when nothing changes.
//!
//! ```text
//!  supervisor task: connect ─▶ get_schema ─▶ monitor_cond_since(last txn id) ─▶ replica
//!        ▲                                         │ update3 ─▶ replica
//!        │                                         │ every `probe`: echo (fails ─▶ drop)
//!        └──── backoff(failures) ◀── closed ◀──────┘
//! ```

use meshwire_controller::backoff::Backoff;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, RwLock};

use super::replica::{Replica, ZERO_TXN};
use super::Client;

pub struct Session {
    remote: String,
    replica: Arc<Mutex<Replica>>,
    client: Arc<RwLock<Option<Arc<Client>>>>,
    connected: watch::Receiver<u64>,
    /// Bumped at every sync, replica update and answered probe: what waits listen to.
    activity: watch::Receiver<u64>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    resumed: AtomicU64,
    echoes: AtomicU64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub db: String,
    /// `monitor_cond_since` requests: `{table: [{"columns": [...]}]}`.
    pub monitor: Value,
    /// How often an idle session sends an echo request.
    pub probe: Duration,
}

impl Session {
    /// Starts the session in the background; it keeps trying until dropped.
    pub fn start(remote: &str, config: SessionConfig) -> Session {
        let replica = Arc::new(Mutex::new(Replica::new()));
        let client: Arc<RwLock<Option<Arc<Client>>>> = Arc::default();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = watch::channel(0u64);
        let (act_tx, act_rx) = watch::channel(0u64);
        let task = tokio::spawn(supervise(
            remote.to_string(),
            config,
            replica.clone(),
            client.clone(),
            counters.clone(),
            Signals {
                synced: tx,
                activity: act_tx,
            },
        ));
        Session {
            remote: remote.to_string(),
            replica,
            client,
            connected: rx,
            activity: act_rx,
            counters,
            task,
        }
    }

    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// A copy of the replica as it is now.
    pub fn replica(&self) -> Replica {
        self.replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connected client, if any (for transactions).
    pub async fn client(&self) -> Option<Arc<Client>> {
        self.client.read().await.clone()
    }

    /// Waits until the session has (re)connected and synced at least `n` times in all.
    pub async fn wait_synced(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until `f` holds, looking again at every sync, replica update and answered probe
    /// (never on a timer); false when `timeout` passes first.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn(&Session) -> bool) -> bool {
        let mut rx = self.activity.clone();
        let until = async {
            loop {
                rx.borrow_and_update();
                if f(self) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return f(self);
                }
            }
        };
        tokio::time::timeout(timeout, until).await.unwrap_or(false)
    }

    /// How many times it connected, how many of those resumed from the last transaction id
    /// (the server had the history), and how many echo probes it sent.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.counters.connects.load(Ordering::Relaxed),
            self.counters.resumed.load(Ordering::Relaxed),
            self.counters.echoes.load(Ordering::Relaxed),
        )
    }
}

/// What the session task tells its owner.
struct Signals {
    /// The number of full syncs so far.
    synced: watch::Sender<u64>,
    activity: watch::Sender<u64>,
}

impl Signals {
    fn bump(&self) {
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn lock(r: &Mutex<Replica>) -> std::sync::MutexGuard<'_, Replica> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(
    remote: String,
    config: SessionConfig,
    replica: Arc<Mutex<Replica>>,
    slot: Arc<RwLock<Option<Arc<Client>>>>,
    counters: Arc<Counters>,
    signals: Signals,
) {
    let seed = remote
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    let mut failures: u32 = 0;
    loop {
        let mut synced_once = false;
        let r = run_once(
            &remote,
            &config,
            &replica,
            &slot,
            &counters,
            &signals,
            &mut synced_once,
        )
        .await;
        // A session that got as far as a full sync starts its backoff over.
        failures = if synced_once {
            1
        } else {
            failures.saturating_add(1)
        };
        if let Err(e) = r {
            tracing::warn!(%remote, error = %e, failures, "ovsdb session down; reconnecting");
        }
        *slot.write().await = None;
        tokio::time::sleep(Backoff::RECONNECT.delay(failures, seed)).await;
    }
}

/// One connection's life: sync, then follow updates and probe until it breaks.
async fn run_once(
    remote: &str,
    config: &SessionConfig,
    replica: &Mutex<Replica>,
    slot: &RwLock<Option<Arc<Client>>>,
    counters: &Counters,
    signals: &Signals,
    synced_once: &mut bool,
) -> Result<(), super::OvsdbError> {
    let c = Arc::new(Client::connect(remote).await?);
    let mut notes = c.notifications().ok_or_else(|| super::OvsdbError::Closed {
        peer: remote.to_string(),
    })?;
    let schema = c.get_schema(&config.db).await?;
    let last = {
        let mut r = lock(replica);
        if r.tables.is_empty() && r.last_txn_id.is_none() {
            *r = Replica::with_schema(&schema);
        }
        r.last_txn_id
            .clone()
            .unwrap_or_else(|| ZERO_TXN.to_string())
    };
    let (found, txn, initial) = c
        .monitor_cond_since(&config.db, "meshwire", config.monitor.clone(), &last)
        .await?;
    {
        let mut r = lock(replica);
        if !found {
            r.clear();
        } else {
            counters.resumed.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = r.apply_update2(&initial) {
            // Never resume from a replica that did not take the whole initial state.
            r.clear();
            r.last_txn_id = None;
            return Err(super::OvsdbError::Rpc {
                peer: remote.to_string(),
                method: "monitor_cond_since".into(),
                error: e.to_string(),
            });
        }
        r.last_txn_id = Some(txn);
    }
    *synced_once = true;
    *slot.write().await = Some(c.clone());
    let n = counters.connects.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = signals.synced.send(n);
    signals.bump();
    tracing::info!(%remote, resumed = found, "ovsdb session synced");
    let mut probe = tokio::time::interval(config.probe);
    probe.tick().await;
    loop {
        tokio::select! {
            note = notes.recv() => {
                let Some((method, params)) = note else {
                    return Err(super::OvsdbError::Closed { peer: remote.to_string() });
                };
                if let Err(e) = lock(replica).apply_notification(&method, &params) {
                    // A replica that missed something is worse than a resync: start over.
                    lock(replica).last_txn_id = None;
                    return Err(super::OvsdbError::Rpc { peer: remote.to_string(), method, error: e.to_string() });
                }
                signals.bump();
            }
            _ = probe.tick() => {
                counters.echoes.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(config.probe.max(Duration::from_secs(1)), c.echo()).await {
                    Ok(Ok(())) => signals.bump(),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(super::OvsdbError::Io { peer: remote.to_string(), what: "echo".into(), reason: "no reply in time".into() }),
                }
            }
        }
    }
}
