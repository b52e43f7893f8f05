//! Persistent state: a small key-value [`Store`] trait with revisions for optimistic
//! concurrency and watch, and three backends: [`redb`](redb_store) (embedded, one file, the
//! default), [`etcd`](etcd_store) (distributed) and [`memory`] (tests and benchmarks); and
//! [`faulty`], a memory store that refuses chosen writes, for tests of store failures.
//!
//! Keys are paths (`/meshwire/v1/connections/<id>`), values are JSON. Every write bumps a
//! store-wide revision; `put` and `delete` can require the key to be absent or at a given
//! `mod_revision`, so two controllers never overwrite each other's changes unseen.

pub mod election;
pub mod etcd_store;
pub mod faulty;
pub mod memory;
pub mod redb_store;
mod watch;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use watch::WatchHub;

pub type Revision = u64;

/// A stored key with its value and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
}

/// A condition on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist with this `mod_revision`.
    ModRevision(Revision),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Entry),
    Delete { key: String, revision: Revision },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(e) => e.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {key}: expected {expected}, found {found}")]
    Conflict {
        store: String,
        key: String,
        expected: String,
        found: String,
    },
    #[error("store {store}: cannot open {path}: {reason}")]
    Open {
        store: String,
        path: String,
        reason: String,
    },
    #[error("store {store}: {op} {key}: {reason}")]
    Backend {
        store: String,
        op: &'static str,
        key: String,
        reason: String,
    },
    #[error("store {store}: watch from revision {from} is no longer possible (history starts at {oldest})")]
    Compacted {
        store: String,
        from: Revision,
        oldest: Revision,
    },
    #[error("unknown store {0:?}: use redb:PATH, etcd://HOST:PORT or memory")]
    BadSpec(String),
    /// A leader's write after its leadership ended: etcd refused it (retry on the new leader).
    #[error("store {store}: {op} {key}: refused, this controller no longer leads (its leadership, revision {revision} of {leader_key}, is gone); nothing was written, retry on the leader")]
    Fenced {
        store: String,
        op: &'static str,
        key: String,
        leader_key: String,
        revision: i64,
    },
}

/// The persistence interface the controller uses.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `redb:/var/lib/meshwire.redb`, `etcd://127.0.0.1:2379`, `memory`.
    fn describe(&self) -> String;
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every key under `prefix`, sorted, and the store revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError>;
    /// Writes `value` if `expect` holds; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError>;
    /// Deletes `key` if `expect` holds; returns whether it existed.
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError>;
    /// Changes under `prefix` after revision `after` (0: from now on), in order.
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError>;
    /// Whether the store answers.
    async fn health(&self) -> Result<(), StoreError>;
}

/// How stores are reached beyond their spec.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// etcd over TLS (https), with a client certificate where etcd requires one.
    pub etcd_tls: Option<etcd_store::EtcdTls>,
    /// An etcd user, where etcd runs with authentication.
    pub etcd_user: Option<etcd_store::EtcdUser>,
}

/// Opens a store from its spec: `redb:PATH`, `etcd://HOST:PORT[,HOST:PORT]` or `memory`.
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_with(spec, &OpenOptions::default()).await
}

/// As [`open`], with `opts` (etcd over TLS).
pub async fn open_with(
    spec: &str,
    opts: &OpenOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(path) = spec.strip_prefix("redb:") {
        Ok(std::sync::Arc::new(redb_store::RedbStore::open(
            std::path::Path::new(path),
        )?))
    } else if spec.starts_with("etcd://") {
        Ok(std::sync::Arc::new(open_etcd(spec, opts).await?))
    } else if spec == "memory" {
        Ok(std::sync::Arc::new(memory::MemoryStore::default()))
    } else {
        Err(StoreError::BadSpec(spec.to_string()))
    }
}

/// Opens an etcd store from its spec, `etcd://HOST:PORT[,HOST:PORT]` (the concrete type: a
/// controller on etcd also campaigns for leadership with it).
pub async fn open_etcd(
    spec: &str,
    opts: &OpenOptions,
) -> Result<etcd_store::EtcdStore, StoreError> {
    let rest = spec
        .strip_prefix("etcd://")
        .ok_or_else(|| StoreError::BadSpec(spec.to_string()))?;
    let endpoints: Vec<String> = rest.split(',').map(|e| format!("http://{e}")).collect();
    if opts.etcd_tls.is_none() {
        let remote = rest.split(',').any(|e| {
            let host = e.rsplit_once(':').map_or(e, |(h, _)| h);
            !matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
        });
        if remote {
            tracing::warn!(store = %spec, "etcd off loopback without TLS: every record in transit can be read and changed on the path; give --etcd-ca (and --etcd-cert/--etcd-key)");
        }
    }
    etcd_store::EtcdStore::connect_as(&endpoints, opts.etcd_tls.as_ref(), opts.etcd_user.as_ref())
        .await
}

/// Checks `expect` against the current revision of a key (`None`: absent).
pub(crate) fn check_expect(
    store: &str,
    key: &str,
    current: Option<Revision>,
    expect: Expect,
) -> Result<(), StoreError> {
    let ok = match (expect, current) {
        (Expect::Any, _) => true,
        (Expect::Absent, None) => true,
        (Expect::ModRevision(want), Some(have)) => want == have,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let show = |r: Option<Revision>| {
        r.map(|r| format!("revision {r}"))
            .unwrap_or_else(|| "absent".into())
    };
    Err(StoreError::Conflict {
        store: store.to_string(),
        key: key.to_string(),
        expected: match expect {
            Expect::Any => "anything".into(),
            Expect::Absent => "absent".into(),
            Expect::ModRevision(r) => format!("revision {r}"),
        },
        found: show(current),
    })
}

#[cfg(test)]
pub(crate) mod conformance {
    //! One behaviour suite that every backend passes.
    use super::*;

    pub async fn run(store: &dyn Store) {
        let k = "/t/a";
        let r1 = store.put(k, b"1".to_vec(), Expect::Absent).await.unwrap();
        assert!(matches!(
            store.put(k, b"x".to_vec(), Expect::Absent).await,
            Err(StoreError::Conflict { .. })
        ));
        let e = store.get(k).await.unwrap().unwrap();
        assert_eq!((e.value.as_slice(), e.mod_revision), (&b"1"[..], r1));
        let mut w = store.watch("/t/", 0).await.unwrap();
        let r2 = store
            .put(k, b"2".to_vec(), Expect::ModRevision(r1))
            .await
            .unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            store.put(k, b"3".to_vec(), Expect::ModRevision(r1)).await,
            Err(StoreError::Conflict { .. })
        ));
        store.put("/t/b", b"b".to_vec(), Expect::Any).await.unwrap();
        store.put("/u/c", b"c".to_vec(), Expect::Any).await.unwrap();
        let (all, rev) = store.list("/t/").await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            vec!["/t/a", "/t/b"]
        );
        assert!(rev >= r2);
        assert!(store.delete("/t/b", Expect::Any).await.unwrap());
        assert!(!store.delete("/t/b", Expect::Any).await.unwrap());
        // The watch saw the put of a, the put of b and the delete of b, not /u/c.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push(match ev {
                WatchEvent::Put(e) => format!("put {}", e.key),
                WatchEvent::Delete { key, .. } => format!("delete {key}"),
            });
        }
        assert_eq!(seen, vec!["put /t/a", "put /t/b", "delete /t/b"]);
        // Resuming after r2 replays what came after it.
        let mut w2 = store.watch("/t/", r2).await.unwrap();
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w2.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(ev, WatchEvent::Put(ref e) if e.key == "/t/b"),
            "{ev:?}"
        );
        store.health().await.unwrap();
    }
}
