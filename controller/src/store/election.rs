//! Leadership among controllers sharing one etcd: one leads, the others wait as standbys.
//!
//! The leader holds the key [`LEADER_KEY`], attached to a lease it keeps alive; the key's value
//! says who leads and where ([`Candidate`]: the leader's API and agent URLs), so standbys and
//! clients can point at it. The key's create revision is the **fence**: every write of the
//! leader's store is a transaction that also compares it ([`super::etcd_store::EtcdStore::fenced`]),
//! so a leader that was paused, partitioned or slow past its lease can never write after another
//! took over: etcd refuses the write.
//!
//! Locally, the leader believes it leads only until the last keepalive etcd acknowledged plus
//! the lease, on the monotonic clock ([`Leadership::holds`]): after a pause (`SIGSTOP`, a VM
//! freeze) it knows at once that it may not act, before it asks anyone.
//!
//! ```text
//!  campaign: grant lease ─▶ txn{ leader key absent ? put(key, me, lease) : get(key) }
//!              won ─▶ Leadership (keepalive every ttl/3; watch the key; lost ─▶ notify)
//!              lost ─▶ note the leader; watch the key until it is deleted (or ttl passes) ─▶ again
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::StoreError;

/// The key the leader holds.
pub const LEADER_KEY: &str = "/meshwire/v1/leader";

/// Why leadership ended when this process gave it up ([`Leadership::resign`]).
pub const RESIGNED: &str = "resigned";

/// Who leads (or campaigns), and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Unique per process: a restarted controller is a new candidate.
    pub id: String,
    /// Its REST API (`http://HOST:PORT`), where clients send writes.
    pub api: String,
    /// Its node agents' listener, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<String>,
}

/// What the leader's writes compare: the leader key still has this create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

/// Campaigns for leadership on one etcd.
pub struct Election {
    client: Client,
    store: String,
    ttl: Duration,
    me: Candidate,
    leader: watch::Sender<Option<Candidate>>,
}

/// How a leader stands: valid until the last acknowledged keepalive plus the lease, unless lost.
struct Standing {
    valid_until: Mutex<Instant>,
    lost: watch::Sender<Option<String>>,
}

impl Standing {
    /// Not lost, and within the lease since the last acknowledged keepalive.
    fn holds(&self) -> bool {
        self.lost.borrow().is_none()
            && Instant::now() < *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lose(&self, why: String) {
        self.lost.send_if_modified(|l| {
            if l.is_some() {
                return false;
            }
            tracing::error!(reason = %why, "leadership lost");
            *l = Some(why);
            true
        });
    }
}

/// Leadership held: dropped, its keepalive stops (and the lease runs out); [`Leadership::resign`]
/// hands it over at once.
pub struct Leadership {
    fence: Fence,
    lease: i64,
    ttl: Duration,
    standing: Arc<Standing>,
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn backend(store: &str, op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        store: store.to_string(),
        op,
        key: LEADER_KEY.to_string(),
        reason: e.to_string(),
    }
}

impl Election {
    /// `ttl`: the lease, whole seconds, at least 1 (etcd may round it up to its minimum).
    pub fn new(client: Client, store: String, ttl: Duration, me: Candidate) -> Election {
        Election {
            client,
            store,
            ttl: ttl.max(Duration::from_secs(1)),
            me,
            leader: watch::channel(None).0,
        }
    }

    /// Who leads, as last seen (`None`: nobody, or not seen yet).
    pub fn leader(&self) -> watch::Receiver<Option<Candidate>> {
        self.leader.subscribe()
    }

    pub fn me(&self) -> &Candidate {
        &self.me
    }

    /// Waits until this candidate leads. Errors only when etcd cannot be used at all (a
    /// refused credential); an unreachable etcd is retried.
    pub async fn campaign(&self) -> Result<Leadership, StoreError> {
        let value =
            serde_json::to_vec(&self.me).map_err(|e| backend(&self.store, "campaign", e))?;
        let mut failures = 0u32;
        loop {
            match self.try_once(&value).await {
                Ok(Ok(l)) => {
                    self.leader.send_replace(Some(self.me.clone()));
                    return Ok(l);
                }
                Ok(Err(watch_from)) => {
                    failures = 0;
                    self.wait_vacant(watch_from).await;
                }
                Err(e) => {
                    // Nobody can be known to lead while etcd does not answer.
                    self.leader.send_replace(None);
                    failures += 1;
                    let seed = meshwire_models::document::fnv1a64(self.me.id.as_bytes());
                    let wait = crate::backoff::Backoff::RECONNECT.delay(failures, seed);
                    tracing::warn!(error = %e, retry_in = ?wait, "campaign: etcd did not answer");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One attempt: `Ok(Ok(leadership))` won, `Ok(Err(rev))` someone else leads (watch from
    /// `rev`).
    async fn try_once(&self, value: &[u8]) -> Result<Result<Leadership, i64>, StoreError> {
        let mut leases = self.client.lease_client();
        let asked = Instant::now();
        let lease = leases
            .grant(self.ttl.as_secs() as i64, None)
            .await
            .map_err(|e| backend(&self.store, "lease grant", e))?;
        let granted = Duration::from_secs(lease.ttl().max(1) as u64);
        let id = lease.id();
        let txn = Txn::new()
            .when(vec![Compare::version(LEADER_KEY, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                LEADER_KEY,
                value.to_vec(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else(vec![TxnOp::get(LEADER_KEY, None)]);
        let resp = match self.client.kv_client().txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let _ = leases.revoke(id).await;
                return Err(backend(&self.store, "campaign", e));
            }
        };
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            tracing::info!(id = %self.me.id, lease = id, revision, ttl = ?granted, "leading");
            let l = Leadership::start(
                self.client.clone(),
                self.store.clone(),
                Fence {
                    key: LEADER_KEY.to_string(),
                    revision,
                },
                id,
                granted,
                asked + granted,
            )
            .await;
            return Ok(Ok(l));
        }
        let _ = leases.revoke(id).await;
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                (
                    serde_json::from_slice::<Candidate>(kv.value()).ok(),
                    kv.mod_revision(),
                )
            }),
            _ => None,
        });
        let (who, rev) = current.unwrap_or((None, resp.header().map_or(0, |h| h.revision())));
        if self.leader.borrow().as_ref() != who.as_ref() {
            tracing::info!(leader = ?who.as_ref().map(|c| &c.api), "standing by");
        }
        self.leader.send_replace(who);
        Ok(Err(rev))
    }

    /// Returns when the leader key is deleted (its lease ran out, or it resigned), or after a
    /// lease at most (then the campaign simply looks again).
    async fn wait_vacant(&self, after: i64) {
        let opts = WatchOptions::new().with_start_revision(after + 1);
        let Ok((_watcher, mut stream)) = self
            .client
            .watch_client()
            .watch(LEADER_KEY, Some(opts))
            .await
        else {
            tokio::time::sleep(self.ttl).await;
            return;
        };
        let deadline = Instant::now() + self.ttl;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            let Ok(Some(resp)) = msg else { return };
            for ev in resp.events() {
                match ev.event_type() {
                    EventType::Delete => return,
                    EventType::Put => {
                        let who = ev
                            .kv()
                            .and_then(|kv| serde_json::from_slice::<Candidate>(kv.value()).ok());
                        self.leader.send_replace(who);
                    }
                }
            }
        }
    }
}

impl Leadership {
    async fn start(
        client: Client,
        store: String,
        fence: Fence,
        lease: i64,
        ttl: Duration,
        valid_until: Instant,
    ) -> Leadership {
        let standing = Arc::new(Standing {
            valid_until: Mutex::new(valid_until),
            lost: watch::channel(None).0,
        });
        let keep = tokio::spawn(keepalive(
            client.clone(),
            store.clone(),
            lease,
            ttl,
            standing.clone(),
        ));
        let guard = tokio::spawn(watch_key(client.clone(), fence.clone(), standing.clone()));
        Leadership {
            fence,
            lease,
            ttl,
            standing,
            client,
            tasks: vec![keep, guard],
        }
    }

    /// What this leader's writes must compare.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// The lease granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this process may still act as the leader now: not lost, and within the lease
    /// since the last keepalive etcd acknowledged (monotonic clock).
    pub fn holds(&self) -> bool {
        self.standing.holds()
    }

    /// A cheap handle for others to ask [`Leadership::holds`].
    pub fn probe(&self) -> LeaderProbe {
        LeaderProbe(self.standing.clone())
    }

    /// Returns (with why) once leadership is lost; never while it holds.
    pub async fn lost(&self) -> String {
        let mut rx = self.standing.lost.subscribe();
        loop {
            let until = *self
                .standing
                .valid_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(why) = rx.borrow().clone() {
                return why;
            }
            if Instant::now() >= until {
                return "no keepalive was acknowledged within the lease".to_string();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return "the election stopped".to_string() },
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Gives leadership up at once (revokes the lease: the key goes, a standby takes over
    /// without waiting the lease out).
    pub async fn resign(&self) {
        self.standing.lose(RESIGNED.into());
        let mut leases = self.client.lease_client();
        match tokio::time::timeout(Duration::from_secs(2), leases.revoke(self.lease)).await {
            Ok(Ok(_)) => tracing::info!(lease = self.lease, "leadership handed over"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "resigning: the lease could not be revoked; it runs out by itself")
            }
            Err(_) => {
                tracing::warn!("resigning: etcd did not answer; the lease runs out by itself")
            }
        }
    }
}

/// Asks whether leadership still holds, from anywhere (a driver wrapper, a reconcile round).
#[derive(Clone)]
pub struct LeaderProbe(Arc<Standing>);

impl LeaderProbe {
    pub fn holds(&self) -> bool {
        self.0.holds()
    }
}

/// Keeps the lease alive every third of it; extends the local validity with each
/// acknowledgement; loses leadership when etcd says the lease is gone, or when no
/// acknowledgement came within the lease.
async fn keepalive(
    client: Client,
    store: String,
    lease: i64,
    ttl: Duration,
    standing: Arc<Standing>,
) {
    let beat = ttl / 3;
    let mut leases = client.lease_client();
    let mut channel = None;
    loop {
        let until = *standing
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Instant::now() >= until {
            standing.lose("no keepalive was acknowledged within the lease".into());
            return;
        }
        if channel.is_none() {
            match tokio::time::timeout(beat, leases.keep_alive(lease)).await {
                Ok(Ok(c)) => channel = Some(c),
                Ok(Err(e)) => tracing::warn!(store = %store, error = %e, "lease keepalive stream"),
                Err(_) => tracing::warn!(store = %store, "lease keepalive stream: no answer"),
            }
        }
        if let Some((keeper, stream)) = channel.as_mut() {
            let sent = Instant::now();
            let answer = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(beat, answer).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let until = sent + Duration::from_secs(r.ttl() as u64);
                    let mut v = standing
                        .valid_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    *v = (*v).max(until);
                }
                Ok(Ok(Some(_))) => {
                    standing.lose(format!("etcd says lease {lease:x} has expired"));
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => channel = None,
            }
        }
        tokio::time::sleep(beat).await;
    }
}

/// Leadership is lost the moment the leader key is deleted or is no longer ours.
async fn watch_key(client: Client, fence: Fence, standing: Arc<Standing>) {
    loop {
        let opts = WatchOptions::new().with_start_revision(fence.revision + 1);
        if let Ok((_watcher, mut stream)) = client
            .watch_client()
            .watch(fence.key.as_str(), Some(opts))
            .await
        {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    break;
                }
                for ev in resp.events() {
                    let theirs = match ev.event_type() {
                        EventType::Delete => true,
                        EventType::Put => ev
                            .kv()
                            .is_some_and(|kv| kv.create_revision() != fence.revision),
                    };
                    if theirs {
                        standing.lose("the leader key was deleted or taken".into());
                        return;
                    }
                }
            }
        }
        // The watch ended (etcd restarted, compaction): look at the key itself, then again.
        match client.kv_client().get(fence.key.as_str(), None).await {
            Ok(r) if r.kvs().first().map(|kv| kv.create_revision()) != Some(fence.revision) => {
                standing.lose("the leader key was deleted or taken".into());
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
