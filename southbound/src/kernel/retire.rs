//! Fast teardown: interfaces are retired at once and deleted in batches.
//!
//! Deleting a network device waits for an RCU grace period inside the kernel (about 20 to 25 ms
//! each on a small host), so one `RTM_DELLINK` per closed connection caps teardown near 40/s
//! while setup runs ten times faster. Instead, a close *retires* each interface: it is set down,
//! moved to our link group [`RETIRED_GROUP`] and renamed `mwr<ifindex>` (its name is free for the
//! next connection at once, its traffic has stopped). A background task then deletes every
//! retired interface of a namespace with one group `RTM_DELLINK`, which pays the grace period
//! once per batch, not once per interface.
//!
//! A deletion holds the kernel's global rtnetlink lock for its grace period, so every other
//! netlink request (the next close's, the next setup's) waits behind it: batches are gathered for
//! [`BATCH_WINDOW`] and deleted from a thread of their own with sockets of their own, never from
//! the runtime's workers.
//!
//! Retired interfaces keep their `meshwire:<id>` alias; the start sweep deletes any a crash left.
//! [`Retirer::settled`] waits until everything retired so far is deleted (tests, benchmarks).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec};
use tokio::sync::{watch, Notify};

use super::netns::{self, Namespaces};
use super::{errno, ENODEV};

/// The link group of interfaces Meshwire has retired (0x4d57, "MW"): only ever ours, only ever
/// waiting for deletion (`ip link show group 19799`).
pub const RETIRED_GROUP: u32 = 0x4d57;

/// How long retirements gather before one deletion per namespace.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);

/// The name a retired interface gets: free of the connection's names, unique in its namespace.
pub fn retired_name(ifindex: u32) -> String {
    format!("mwr{ifindex}")
}

/// Retires interfaces now and deletes them in the background, in batches per namespace.
pub struct Retirer {
    shared: Arc<Shared>,
    thread: OnceLock<()>,
}

struct Shared {
    /// The reaper's own sockets: its requests block in the kernel for a grace period.
    namespaces: Namespaces,
    stop: AtomicBool,
    /// Namespaces holding retired interfaces not yet deleted. Bounded by the namespaces the
    /// driver wires (one entry each, however many interfaces).
    pending: Mutex<HashSet<Option<String>>>,
    wake: Notify,
    /// How many retirements were queued, and how many of those are deleted.
    queued: watch::Sender<u64>,
    reaped: watch::Sender<u64>,
}

impl Drop for Retirer {
    /// The reaper deletes what is pending, then ends.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Default for Retirer {
    fn default() -> Self {
        Retirer::new()
    }
}

impl Retirer {
    pub fn new() -> Self {
        Retirer {
            shared: Arc::new(Shared {
                namespaces: Namespaces::default(),
                stop: AtomicBool::new(false),
                pending: Mutex::default(),
                wake: Notify::new(),
                queued: watch::channel(0).0,
                reaped: watch::channel(0).0,
            }),
            thread: OnceLock::new(),
        }
    }

    /// Takes interface `index` of `ns` out of service: down, into [`RETIRED_GROUP`], renamed;
    /// then queues its deletion. When this returns the interface carries no traffic and its name
    /// is free.
    pub async fn retire(
        &self,
        h: &Handle,
        ns: &Option<String>,
        index: u32,
    ) -> Result<(), rtnetlink::Error> {
        match take_out_of_service(h, index).await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        }
        let rename = LinkUnspec::new_with_index(index)
            .name(retired_name(index))
            .build();
        match h.link().set(rename).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.queue(ns);
        Ok(())
    }

    /// Queues a batch deletion of whatever is retired in `ns` (also used by the start sweep).
    pub fn queue(&self, ns: &Option<String>) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.clone());
        self.shared.queued.send_modify(|q| *q += 1);
        self.thread.get_or_init(|| {
            let shared = self.shared.clone();
            let started = std::thread::Builder::new()
                .name("mw-reaper".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(reap(shared)),
                        Err(e) => tracing::error!(error = %e, "interface reaper could not start; retired interfaces wait for the next sweep"),
                    }
                });
            if let Err(e) = started {
                tracing::error!(error = %e, "interface reaper could not start; retired interfaces wait for the next sweep");
            }
        });
        self.shared.wake.notify_one();
    }

    /// Returns once every interface retired before the call is deleted.
    pub async fn settled(&self) {
        let target = *self.shared.queued.borrow();
        let mut rx = self.shared.reaped.subscribe();
        let _ = rx.wait_for(|r| *r >= target).await;
    }
}

/// Sets interface `index` down and into [`RETIRED_GROUP`]: no traffic, and the next group
/// deletion in its namespace takes it.
pub async fn take_out_of_service(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let down = LinkUnspec::new_with_index(index)
        .down()
        .link_group(RETIRED_GROUP)
        .build();
    h.link().set(down).execute().await
}

/// Deletes every retired interface of one namespace in one request.
pub async fn delete_retired(h: &Handle) -> Result<(), rtnetlink::Error> {
    let mut del = h.link().del(0);
    del.message_mut()
        .attributes
        .push(LinkAttribute::Group(RETIRED_GROUP));
    match del.execute().await {
        Ok(()) => Ok(()),
        // Nothing (left) in the group: a peer's deletion took it, or the batch was empty.
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn reap(shared: Arc<Shared>) {
    loop {
        // Let retirements gather: one deletion per namespace per window.
        if !shared.stop.load(Ordering::Acquire) {
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        // Read before draining: everything counted here was queued into `pending` before it was
        // counted, so it is in this batch or an earlier one.
        let covered = *shared.queued.borrow();
        let batch: Vec<Option<String>> = {
            let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.drain().collect()
        };
        for ns in batch {
            if !netns::exists(&ns) {
                shared.namespaces.forget(&ns);
                continue;
            }
            let h = match shared.namespaces.handle(&ns).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(netns = ns.as_deref().unwrap_or("(own)"), error = %e, "retired interfaces left for the next sweep");
                    continue;
                }
            };
            if let Err(e) = delete_retired(&h).await {
                tracing::warn!(netns = ns.as_deref().unwrap_or("(own)"), error = %e, "deleting retired interfaces failed; left for the next sweep");
            }
        }
        shared.reaped.send_modify(|r| *r = (*r).max(covered));
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // A queue() since the drain left a permit: this returns at once.
        shared.wake.notified().await;
    }
}
