//! What a driver keeps of the desired state it was handed: the last full set merged with every
//! delta since, and the gate that keeps a full set's sweep from racing a delta.
//!
//! A full set is a snapshot the controller took at version `v`; deltas at versions above `v`
//! may have been applied before the full set arrives (they were sent after the snapshot). Taken
//! alone, the snapshot would sweep a connection wired a moment ago, or report one just closed.
//! So the ledger remembers the version of each delta per connection, and a full set changes
//! only what no newer delta touched. Deltas run side by side; a full set waits for the deltas in
//! flight and holds new ones off while it sweeps (they are quick, and it is once a round).

use std::collections::HashMap;
use std::sync::Mutex;

use meshwire_models::Connection;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Removals remembered at most (the oldest go first); a full set forgets those it covers.
const MAX_REMOVED: usize = 65_536;

#[derive(Default)]
pub struct Ledger {
    gate: RwLock<()>,
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Desired connections with the version that last set them.
    conns: HashMap<String, (Connection, u64)>,
    /// Connections a delta removed, with its version.
    removed: HashMap<String, u64>,
    /// Whether a full set was ever handed (until then, the driver knows only its deltas).
    known: bool,
    /// The newest version seen.
    version: u64,
    /// How many deltas were recorded.
    deltas: u64,
}

impl Ledger {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delta; hold the guard while applying it.
    pub async fn delta(
        &self,
        version: u64,
        upsert: &[Connection],
        remove: &[Connection],
    ) -> RwLockReadGuard<'_, ()> {
        let guard = self.gate.read().await;
        let mut b = self.book();
        b.version = b.version.max(version);
        b.deltas += 1;
        for c in remove.iter() {
            b.conns.remove(&c.id);
            b.removed.insert(c.id.clone(), version);
        }
        for c in upsert.iter() {
            b.removed.remove(&c.id);
            b.conns.insert(c.id.clone(), (c.clone(), version));
        }
        if b.removed.len() > MAX_REMOVED {
            let mut v: Vec<u64> = b.removed.values().copied().collect();
            v.sort_unstable();
            let cut = v[v.len() - MAX_REMOVED];
            b.removed.retain(|_, at| *at >= cut);
        }
        guard
    }

    /// Takes a full set at `version`: waits for deltas in flight, then returns the desired set
    /// (the full set, with what newer deltas changed left as they left it) and a guard that
    /// holds new deltas off until dropped.
    pub async fn full(
        &self,
        version: u64,
        connections: &[Connection],
    ) -> (RwLockWriteGuard<'_, ()>, Vec<Connection>) {
        let guard = self.gate.write().await;
        let mut b = self.book();
        let mut conns: HashMap<String, (Connection, u64)> = connections
            .iter()
            .filter(|c| b.removed.get(&c.id).is_none_or(|at| *at <= version))
            .map(|c| (c.id.clone(), (c.clone(), version)))
            .collect();
        for (id, (c, at)) in &b.conns {
            if *at > version {
                conns.insert(id.clone(), (c.clone(), *at));
            }
        }
        b.removed.retain(|_, at| *at > version);
        b.conns = conns;
        b.known = true;
        b.version = b.version.max(version);
        let set = b.conns.values().map(|(c, _)| c.clone()).collect();
        (guard, set)
    }

    /// The desired connections as the ledger has them now.
    pub fn snapshot(&self) -> Vec<Connection> {
        self.book().conns.values().map(|(c, _)| c.clone()).collect()
    }

    /// Whether connection `id` is desired as far as the ledger knows.
    pub fn contains(&self, id: &str) -> bool {
        self.book().conns.contains_key(id)
    }

    /// Whether a full set was ever handed: until then, only what deltas named is known, and
    /// nothing else may be taken for a leftover.
    pub fn known(&self) -> bool {
        self.book().known
    }

    /// Whether no delta was ever recorded: nothing was wired since this driver started, so a
    /// full set may take whatever it does not name for a leftover at once.
    pub fn untouched(&self) -> bool {
        self.book().deltas == 0
    }

    /// The newest version seen.
    pub fn version(&self) -> u64 {
        self.book().version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> Connection {
        Connection {
            id: id.into(),
            ..Connection::default()
        }
    }

    fn ids(mut v: Vec<Connection>) -> Vec<String> {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter().map(|c| c.id).collect()
    }

    #[tokio::test]
    async fn a_full_set_keeps_what_newer_deltas_did() {
        let l = Ledger::default();
        drop(l.delta(3, &[conn("a")], &[]).await);
        drop(l.delta(5, &[conn("new")], &[]).await);
        drop(l.delta(6, &[], &[conn("gone")]).await);
        assert!(!l.known());
        // Snapshot taken at 4: it has "gone" (closed at 6) and not "new" (wired at 5).
        let (_g, set) = l.full(4, &[conn("a"), conn("gone"), conn("old")]).await;
        assert_eq!(ids(set), ["a", "new", "old"]);
        drop(_g);
        assert!(l.known());
        assert_eq!(l.version(), 6);
        // A later full set decides alone.
        let (_g, set) = l.full(7, &[conn("gone")]).await;
        assert_eq!(ids(set), ["gone"]);
    }

    #[tokio::test]
    async fn a_full_set_waits_for_deltas_in_flight() {
        let l = std::sync::Arc::new(Ledger::default());
        let held = l.delta(1, &[conn("a")], &[]).await;
        let l2 = l.clone();
        let full = tokio::spawn(async move { ids(l2.full(0, &[]).await.1) });
        tokio::task::yield_now().await;
        assert!(!full.is_finished());
        drop(held);
        assert_eq!(full.await.unwrap(), ["a"]);
    }
}
