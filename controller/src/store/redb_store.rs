//! The embedded store: one redb file.
//!
//! ```text
//!  callers ──(WriteOp + oneshot)──▶ writer thread ──▶ one write transaction per batch ──▶ commit (fsync)
//!                                        │                                                  │
//!                                        └──────────── replies, then WatchHub::publish ◀────┘
//! ```
//! Writes go to one dedicated thread that drains whatever is queued into a single transaction
//! (group commit): sixteen concurrent writers cost one fsync, not sixteen. Each operation's
//! condition is checked inside the transaction, so a failed condition fails that operation only.
//! Reads open their own read transaction on the caller's thread.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{check_expect, Entry, Expect, Revision, Store, StoreError, WatchEvent, WatchHub};

const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MAX_BATCH: usize = 256;

/// Per-operation results of a committed batch, and the events to publish.
type Committed = (Vec<Result<(Revision, bool), StoreError>>, Vec<WatchEvent>);

struct WriteOp {
    key: String,
    /// `None` deletes.
    value: Option<Vec<u8>>,
    expect: Expect,
    reply: oneshot::Sender<Result<(Revision, bool), StoreError>>,
}

pub struct RedbStore {
    path: String,
    db: Arc<Database>,
    writer: Option<std::sync::mpsc::Sender<WriteOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
    hub: Arc<WatchHub>,
}

impl Drop for RedbStore {
    /// Closes the queue and waits for the writer, so the file is unlocked when drop returns.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            store: format!("redb:{shown}"),
            path: shown.clone(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        {
            let w = db.begin_write().map_err(|e| open_err(e.to_string()))?;
            w.open_table(KV).map_err(|e| open_err(e.to_string()))?;
            w.open_table(META).map_err(|e| open_err(e.to_string()))?;
            w.commit().map_err(|e| open_err(e.to_string()))?;
        }
        let db = Arc::new(db);
        let hub = Arc::new(WatchHub::default());
        let (tx, rx) = std::sync::mpsc::channel::<WriteOp>();
        let (wdb, whub, name) = (db.clone(), hub.clone(), format!("redb:{shown}"));
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer(wdb, whub, name, rx))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(RedbStore {
            path: shown,
            db,
            writer: Some(tx),
            thread: Some(thread),
            hub,
        })
    }

    fn name(&self) -> String {
        format!("redb:{}", self.path)
    }

    fn backend(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            store: self.name(),
            op,
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| self.backend("read", "revision", e))?;
        let t = r
            .open_table(META)
            .map_err(|e| self.backend("read", "revision", e))?;
        Ok(t.get("revision")
            .map_err(|e| self.backend("read", "revision", e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<(Revision, bool), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| self.backend("write", key, "store is closing"))?
            .send(WriteOp {
                key: key.to_string(),
                value,
                expect,
                reply,
            })
            .map_err(|_| self.backend("write", key, "writer thread has stopped"))?;
        rx.await
            .map_err(|_| self.backend("write", key, "writer thread has stopped"))?
    }
}

fn writer(
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    name: String,
    rx: std::sync::mpsc::Receiver<WriteOp>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let fail = |e: &dyn std::fmt::Display, key: &str| StoreError::Backend {
            store: name.clone(),
            op: "write",
            key: key.to_string(),
            reason: e.to_string(),
        };
        let result = (|| -> Result<Committed, StoreError> {
            let w = db.begin_write().map_err(|e| fail(&e, "(transaction)"))?;
            let mut results = Vec::with_capacity(batch.len());
            let mut events = Vec::new();
            {
                let mut kv = w.open_table(KV).map_err(|e| fail(&e, "(kv)"))?;
                let mut meta = w.open_table(META).map_err(|e| fail(&e, "(meta)"))?;
                let mut rev = meta
                    .get("revision")
                    .map_err(|e| fail(&e, "revision"))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                for op in &batch {
                    let current = kv
                        .get(op.key.as_str())
                        .map_err(|e| fail(&e, &op.key))?
                        .map(|v| v.value().0);
                    if let Err(e) = check_expect(&name, &op.key, current, op.expect) {
                        results.push(Err(e));
                        continue;
                    }
                    match &op.value {
                        Some(v) => {
                            rev += 1;
                            kv.insert(op.key.as_str(), (rev, v.as_slice()))
                                .map_err(|e| fail(&e, &op.key))?;
                            events.push(WatchEvent::Put(Entry {
                                key: op.key.clone(),
                                value: v.clone(),
                                mod_revision: rev,
                            }));
                            results.push(Ok((rev, true)));
                        }
                        None if current.is_none() => results.push(Ok((rev, false))),
                        None => {
                            rev += 1;
                            kv.remove(op.key.as_str()).map_err(|e| fail(&e, &op.key))?;
                            events.push(WatchEvent::Delete {
                                key: op.key.clone(),
                                revision: rev,
                            });
                            results.push(Ok((rev, true)));
                        }
                    }
                }
                meta.insert("revision", rev)
                    .map_err(|e| fail(&e, "revision"))?;
            }
            w.commit().map_err(|e| fail(&e, "(commit)"))?;
            Ok((results, events))
        })();
        match result {
            Ok((results, events)) => {
                hub.publish(events);
                for (op, r) in batch.into_iter().zip(results) {
                    let _ = op.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(store = %name, error = %e, "write transaction failed; batch refused");
                for op in batch {
                    let _ = op.reply.send(Err(StoreError::Backend {
                        store: name.clone(),
                        op: "write",
                        key: op.key.clone(),
                        reason: e.to_string(),
                    }));
                }
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    fn describe(&self) -> String {
        self.name()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| self.backend("get", key, e))?;
        let t = r.open_table(KV).map_err(|e| self.backend("get", key, e))?;
        let v = t.get(key).map_err(|e| self.backend("get", key, e))?;
        Ok(v.map(|v| {
            let (rev, bytes) = v.value();
            Entry {
                key: key.to_string(),
                value: bytes.to_vec(),
                mod_revision: rev,
            }
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| self.backend("list", prefix, e))?;
        let t = r
            .open_table(KV)
            .map_err(|e| self.backend("list", prefix, e))?;
        let meta = r
            .open_table(META)
            .map_err(|e| self.backend("list", prefix, e))?;
        let rev = meta
            .get("revision")
            .map_err(|e| self.backend("list", prefix, e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for item in t
            .range(prefix..)
            .map_err(|e| self.backend("list", prefix, e))?
        {
            let (k, v) = item.map_err(|e| self.backend("list", prefix, e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            let (mod_revision, bytes) = v.value();
            out.push(Entry {
                key: k.value().to_string(),
                value: bytes.to_vec(),
                mod_revision,
            });
        }
        Ok((out, rev))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        Ok(self.write(key, Some(value), expect).await?.0)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        Ok(self.write(key, None, expect).await?.1)
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        let current = self.revision()?;
        self.hub.subscribe(&self.name(), prefix, after, current)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.revision().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        super::super::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let rev = {
            let s = RedbStore::open(&path).unwrap();
            s.put("/k", b"v".to_vec(), Expect::Absent).await.unwrap()
        };
        let s = RedbStore::open(&path).unwrap();
        let e = s.get("/k").await.unwrap().unwrap();
        assert_eq!((e.value, e.mod_revision), (b"v".to_vec(), rev));
        assert!(
            s.put("/k2", vec![], Expect::Any).await.unwrap() > rev,
            "revisions keep counting"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_commits_and_conditions_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put("/same", format!("{i}").into_bytes(), Expect::Absent)
                    .await
                    .is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as usize;
        }
        assert_eq!(wins, 1, "exactly one writer may create the key");
    }
}
