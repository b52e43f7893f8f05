//! Long-lived streams (SSE, gRPC MonitorConnections, registry Find with watch) are bounded:
//! at most [`Streams::max`] run at once (the next caller is told to retry, 503 or
//! RESOURCE_EXHAUSTED), each holds a permit for its life, and all of them end when the server
//! shuts down, so an open stream never holds a graceful shutdown forever.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Streams open at once by default.
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Connections per message of a monitor's initial state (gRPC's default limit is 4 MiB; one
/// connection is well under 2 KiB).
pub const INITIAL_PAGE: usize = 256;

pub struct Streams {
    permits: Arc<Semaphore>,
    max: usize,
    stop: watch::Receiver<bool>,
    // Keeps the channel open when the caller gave no shutdown signal of its own.
    _own: Option<watch::Sender<bool>>,
}

impl Streams {
    /// Up to `max` streams, all ended when `stop` turns true.
    pub fn new(max: usize, stop: Option<watch::Receiver<bool>>) -> Arc<Streams> {
        let (own, stop) = match stop {
            Some(rx) => (None, rx),
            None => {
                let (tx, rx) = watch::channel(false);
                (Some(tx), rx)
            }
        };
        Arc::new(Streams {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            stop,
            _own: own,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit for one more stream, or `None` when `max` are open.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Runs `feed` in a task of its own, holding `permit` for its life, until it ends or the
    /// server shuts down.
    pub fn spawn(
        &self,
        permit: OwnedSemaphorePermit,
        feed: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stopping = self.stopping();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stopping => {}
                _ = feed => {}
            }
        });
    }

    /// Resolves when the server is shutting down.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.clone();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    // The sender is gone: nobody can ask us to stop any more.
                    return std::future::pending().await;
                }
            }
        }
    }
}
