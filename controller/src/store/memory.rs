//! An in-memory store for tests and benchmarks. Same semantics as the others, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{check_expect, Entry, Expect, Revision, Store, StoreError, WatchEvent, WatchHub};

type Data = BTreeMap<String, (Vec<u8>, Revision)>;

#[derive(Default)]
pub struct MemoryStore {
    /// Values with their mod revision, and the store revision.
    data: Mutex<(Data, Revision)>,
    hub: WatchHub,
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        Ok(d.0.get(key).map(|(v, r)| Entry {
            key: key.to_string(),
            value: v.clone(),
            mod_revision: *r,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let entries =
            d.0.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, r))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    mod_revision: *r,
                })
                .collect();
        Ok((entries, d.1))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        let ev;
        let rev;
        {
            let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
            check_expect("memory", key, d.0.get(key).map(|(_, r)| *r), expect)?;
            d.1 += 1;
            rev = d.1;
            ev = WatchEvent::Put(Entry {
                key: key.to_string(),
                value: value.clone(),
                mod_revision: rev,
            });
            d.0.insert(key.to_string(), (value, rev));
        }
        self.hub.publish(vec![ev]);
        Ok(rev)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let rev;
        {
            let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
            let current = d.0.get(key).map(|(_, r)| *r);
            check_expect("memory", key, current, expect)?;
            if current.is_none() {
                return Ok(false);
            }
            d.0.remove(key);
            d.1 += 1;
            rev = d.1;
        }
        self.hub.publish(vec![WatchEvent::Delete {
            key: key.to_string(),
            revision: rev,
        }]);
        Ok(true)
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        let current = self.data.lock().unwrap_or_else(|p| p.into_inner()).1;
        self.hub.subscribe("memory", prefix, after, current)
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        super::super::conformance::run(&super::MemoryStore::default()).await;
    }
}
