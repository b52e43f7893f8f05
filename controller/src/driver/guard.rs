//! The leader's data plane calls, guarded by its lease: a controller that is no longer sure it
//! leads (its lease ran out on the monotonic clock, or it saw the leader key go) makes no
//! call at all, so a leader paused past its lease cannot undo what its successor wired when
//! it wakes up.

use async_trait::async_trait;
use meshwire_models::Topology;
use std::sync::Arc;
use tokio::sync::broadcast;

use super::{Desired, Driver, DriverError, DriverEvent, Failure, Report};
use crate::store::election::LeaderProbe;

pub struct LeaderGuard {
    inner: Arc<dyn Driver>,
    probe: LeaderProbe,
}

impl LeaderGuard {
    pub fn new(inner: Arc<dyn Driver>, probe: LeaderProbe) -> LeaderGuard {
        LeaderGuard { inner, probe }
    }

    fn check(&self, what: &str) -> Result<(), DriverError> {
        if self.probe.holds() {
            return Ok(());
        }
        Err(DriverError::new(
            self.inner.name(),
            what,
            "this controller no longer holds the leadership; the data plane is left to the leader",
        )
        .with(Failure::Unreachable {
            peer: "the leader".into(),
        }))
    }
}

#[async_trait]
impl Driver for LeaderGuard {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        self.check("converge")?;
        self.inner.converge(desired).await
    }

    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        self.check("topology")?;
        self.inner.topology(t).await
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<DriverEvent>> {
        self.inner.subscribe()
    }
}
