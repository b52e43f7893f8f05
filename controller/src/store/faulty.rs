//! A memory store that refuses chosen writes and deletes, as a backend that lost its disk or
//! its quorum would: for tests of what the controller does when the store says no.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::memory::MemoryStore;
use super::{Entry, Expect, Revision, Store, StoreError, WatchEvent};

const CONNECTIONS: &str = "/meshwire/v1/connections/";

/// What a refusal says: a path of the server, which must never reach an API caller.
pub const REFUSAL: &str = "/var/lib/meshwire/state.redb: input/output error (injected)";

pub struct FaultyStore {
    inner: MemoryStore,
    /// Every put fails.
    pub refuse_puts: AtomicBool,
    /// Connection puts that still succeed (negative: all of them).
    pub put_budget: AtomicI64,
    /// Connection ids whose puts fail.
    pub refuse_puts_of: Mutex<HashSet<String>>,
    /// Every delete fails.
    pub refuse_deletes: AtomicBool,
}

impl Default for FaultyStore {
    fn default() -> Self {
        FaultyStore {
            inner: MemoryStore::default(),
            refuse_puts: AtomicBool::new(false),
            put_budget: AtomicI64::new(-1),
            refuse_puts_of: Mutex::default(),
            refuse_deletes: AtomicBool::new(false),
        }
    }
}

impl FaultyStore {
    fn refused(op: &'static str, key: &str) -> StoreError {
        StoreError::Backend {
            store: "faulty".into(),
            op,
            key: key.into(),
            reason: REFUSAL.into(),
        }
    }

    /// The keys of the connection records held.
    pub async fn connection_keys(&self) -> Vec<String> {
        match self.inner.list(CONNECTIONS).await {
            Ok((entries, _)) => entries.into_iter().map(|e| e.key).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn refuses_put(&self, key: &str) -> bool {
        if self.refuse_puts.load(Ordering::SeqCst) {
            return true;
        }
        let Some(id) = key.strip_prefix(CONNECTIONS) else {
            return false;
        };
        if self
            .refuse_puts_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            return true;
        }
        // One atomic step: concurrent puts never spend the same unit of budget.
        self.put_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                n if n > 0 => Some(n - 1),
                n => Some(n),
            })
            .is_err()
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn describe(&self) -> String {
        "faulty".into()
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        if self.refuses_put(key) {
            return Err(Self::refused("put", key));
        }
        self.inner.put(key, value, expect).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        if self.refuse_deletes.load(Ordering::SeqCst) {
            return Err(Self::refused("delete", key));
        }
        self.inner.delete(key, expect).await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
