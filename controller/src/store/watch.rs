//! Watch support for the in-process backends: a bounded history of recent changes, so a watcher
//! can resume from a revision, and a fan-out to live watchers.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{Revision, StoreError, WatchEvent};

const HISTORY: usize = 4096;

#[derive(Default)]
pub struct WatchHub {
    inner: Mutex<Hub>,
}

#[derive(Default)]
struct Hub {
    history: VecDeque<WatchEvent>,
    watchers: Vec<(String, mpsc::Sender<Result<WatchEvent, StoreError>>)>,
}

impl WatchHub {
    /// Records committed changes and hands them to live watchers (dropping closed ones).
    pub fn publish(&self, events: Vec<WatchEvent>) {
        let mut hub = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            let key = match &ev {
                WatchEvent::Put(e) => e.key.as_str(),
                WatchEvent::Delete { key, .. } => key.as_str(),
            };
            hub.watchers.retain(|(prefix, tx)| {
                if !key.starts_with(prefix.as_str()) {
                    return !tx.is_closed();
                }
                // A watcher that cannot keep up is dropped rather than blocking writers.
                tx.try_send(Ok(ev.clone())).is_ok()
            });
            if hub.history.len() == HISTORY {
                hub.history.pop_front();
            }
            hub.history.push_back(ev);
        }
    }

    /// A watch on `prefix` of changes after `after` (0: only new ones).
    pub fn subscribe(
        &self,
        store: &str,
        prefix: &str,
        after: Revision,
        current: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        let (tx, rx) = mpsc::channel(1024);
        let mut hub = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if after > 0 && after < current {
            let oldest = hub
                .history
                .front()
                .map(|e| e.revision())
                .unwrap_or(current + 1);
            if after + 1 < oldest {
                return Err(StoreError::Compacted {
                    store: store.to_string(),
                    from: after,
                    oldest,
                });
            }
            for ev in hub.history.iter().filter(|e| e.revision() > after) {
                let key = match ev {
                    WatchEvent::Put(e) => &e.key,
                    WatchEvent::Delete { key, .. } => key,
                };
                if key.starts_with(prefix) {
                    let _ = tx.try_send(Ok(ev.clone()));
                }
            }
        }
        hub.watchers.push((prefix.to_string(), tx));
        Ok(rx)
    }
}
