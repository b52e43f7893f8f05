//! What the controller hands its driver: each change as a versioned delta, and once a round the
//! whole desired set, versioned together with its snapshot (see [`crate::driver::Ledger`] for
//! why the two versions must be taken that way).

use std::sync::atomic::Ordering;

use meshwire_models::Connection;

use crate::controller::Controller;
use crate::driver::{Desired, DriverError, Report, Scope};

/// Where a controller process starts its versions: the Unix time in microseconds. Versions
/// then increase across processes (a restart, a failover to another leader), so a driver that
/// outlived the last controller (a node agent, a remote eNSM) takes the new one's changes as
/// newer than anything it holds: its ledger never keeps an old controller's delta over the new
/// controller's full set.
pub fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

impl Controller {
    /// The next version. A delta takes it after the change it carries is in the state.
    fn next_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Wires `c` (both halves).
    pub(crate) async fn wire(&self, c: &Connection) -> Result<(), DriverError> {
        let v = self.next_version();
        self.inner
            .driver
            .converge(&Desired::upsert(Scope::All, v, c))
            .await
            .map(drop)
    }

    /// Unwires `c` (every half is tried).
    pub(crate) async fn unwire(&self, c: &Connection) -> Result<(), DriverError> {
        let v = self.next_version();
        self.inner
            .driver
            .converge(&Desired::remove(Scope::All, v, c))
            .await
            .map(drop)
    }

    /// Every connection not closed or failed, as a full set whose version is taken under the
    /// same state lock as the snapshot.
    pub(crate) fn desired_set(&self) -> Desired<'static> {
        let state = self.state();
        let set: Vec<Connection> = state
            .connections()
            .filter(|c| !c.state.is_final())
            .cloned()
            .collect();
        let v = self.next_version();
        drop(state);
        Desired::full(Scope::All, v, set)
    }

    /// Hands the driver a full set.
    pub(crate) async fn converge_all(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        self.inner.driver.converge(desired).await
    }
}
