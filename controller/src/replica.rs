//! A standby's read-only copy of the leader's state: the store's objects and connections, read
//! once and kept current from the store's watch. No data plane, no reconcile loop, no write: a
//! standby serves reads from it (they may lag the leader by the watch's delay, milliseconds)
//! and sends every write to the leader.
//!
//! A watch that falls behind the store's compaction cannot resume: the replica reads the whole
//! state again (paged) and watches from there, instead of dying.

use std::sync::Arc;
use std::time::Duration;

use meshwire_models::{Connection, Object};

use crate::controller::{Controller, CONNECTIONS, OBJECTS};
use crate::error::ControllerError;
use crate::state::Config;
use crate::store::{Revision, Store, StoreError, WatchEvent};

/// Everything under this prefix is the controller's state (objects, connections, leader).
const ROOT: &str = "/meshwire/v1/";

/// The task keeping a replica current; it stops with this handle.
pub struct Replica {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A store that reads and refuses every write: a replica never writes, whatever is asked of
/// it (a standby's routes admit only reads; this holds even if one did not).
struct ReadOnly(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for ReadOnly {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn get(&self, key: &str) -> Result<Option<crate::store::Entry>, StoreError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<crate::store::Entry>, Revision), StoreError> {
        self.0.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        _value: Vec<u8>,
        _expect: crate::store::Expect,
    ) -> Result<Revision, StoreError> {
        Err(self.refuse("put", key))
    }
    async fn delete(&self, key: &str, _expect: crate::store::Expect) -> Result<bool, StoreError> {
        Err(self.refuse("delete", key))
    }
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        self.0.watch(prefix, after).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.0.health().await
    }
}

impl ReadOnly {
    fn refuse(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::Backend {
            store: self.0.describe(),
            op,
            key: key.to_string(),
            reason: "a standby's replica does not write; send the call to the leader".into(),
        }
    }
}

impl Controller {
    /// A read-only controller over `store` for a standby, kept current while the returned
    /// [`Replica`] lives. Its store refuses every write.
    pub async fn replica(
        store: Arc<dyn Store>,
        config: Config,
    ) -> Result<(Controller, Replica), ControllerError> {
        let store: Arc<dyn Store> = Arc::new(ReadOnly(store));
        let (state, from) = crate::controller::load(&*store, config.clone()).await?;
        let ctl = Controller::assemble(
            state,
            store,
            Arc::new(crate::driver::NullDriver),
            Arc::new(crate::clock::SystemClock),
        );
        let task = tokio::spawn(follow(ctl.clone(), from, config));
        Ok((ctl, Replica { task }))
    }

    /// Takes in one change the leader made.
    fn take(&self, ev: WatchEvent) -> Result<(), String> {
        match ev {
            WatchEvent::Put(e) if e.key.starts_with(OBJECTS) => {
                let obj: Object = serde_json::from_slice(&e.value).map_err(|x| x.to_string())?;
                self.state().upsert(obj);
            }
            WatchEvent::Put(e) if e.key.starts_with(CONNECTIONS) => {
                let c: Connection = serde_json::from_slice(&e.value).map_err(|x| x.to_string())?;
                let mut s = self.state();
                s.remove_connection(&c.id);
                s.restore(c).map_err(|x| x.to_string())?;
            }
            WatchEvent::Delete { key, .. } if key.starts_with(CONNECTIONS) => {
                self.state().remove_connection(&key[CONNECTIONS.len()..]);
            }
            // An object deleted: rare; its key alone does not say its kind's spelling, so the
            // whole state is read again.
            WatchEvent::Delete { key, .. } if key.starts_with(OBJECTS) => {
                return Err(format!("{key} deleted"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Keeps `ctl` current from revision `from`: applies each change; reads everything again when
/// a change cannot be applied in place or the watch fell behind a compaction; watches again
/// (with a pause) when the watch ends.
async fn follow(ctl: Controller, mut from: Revision, config: Config) {
    let store = ctl.inner.store.clone();
    loop {
        let mut reload = false;
        match store.watch(ROOT, from).await {
            Ok(mut rx) => {
                while let Some(ev) = rx.recv().await {
                    match ev {
                        Ok(ev) => {
                            let at = ev.revision();
                            if let Err(why) = ctl.take(ev) {
                                tracing::debug!(%why, "replica: reading the state again");
                                reload = true;
                                break;
                            }
                            from = from.max(at);
                        }
                        Err(StoreError::Compacted { oldest, .. }) => {
                            tracing::info!(from, oldest, "replica: the watch fell behind a compaction; reading the state again");
                            reload = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "replica: watch ended; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "replica: cannot watch the store yet"),
        }
        if reload {
            match crate::controller::load(&*store, config.clone()).await {
                Ok((state, at)) => {
                    *ctl.state() = state;
                    from = at;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "replica: reading the state failed"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
