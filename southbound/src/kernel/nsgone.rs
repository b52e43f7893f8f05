//! Named namespaces going away, as they happen: an inotify watch on the directory of named
//! namespaces.
//!
//! Deleting a namespace we hold sockets in (`ip netns del`, a pod torn down) does not destroy
//! it while our sockets keep it alive, so its interfaces raise no link notification; only its
//! name disappears. Seeing that at once lets the controller look at once (heal, close) instead
//! of at its next round.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// The inotify instance, by its descriptor (it owns it: the descriptor lives as long as it).
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

use super::netns::NETNS_DIR;

/// Called with the name of each namespace removed from [`NETNS_DIR`].
pub type OnRemoved = Arc<dyn Fn(&str) + Send + Sync>;

/// Watches [`NETNS_DIR`] (created when missing) until the returned task is aborted; `None`
/// (logged) when it cannot be watched or no runtime runs: the full set still finds a
/// namespace gone at the next round.
pub fn watch(on_removed: OnRemoved) -> Option<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let _in_rt = rt.enter();
    let setup = || -> std::io::Result<AsyncFd<Watch>> {
        std::fs::create_dir_all(NETNS_DIR)?;
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(NETNS_DIR, AddWatchFlags::IN_DELETE)?;
        // SAFETY: `Watch` owns the inotify descriptor and always returns that one; it stays
        // open until the AsyncFd (its only owner) is dropped.
        unsafe { AsyncFd::register(Watch(ino)) }.map_err(|e| e.into_parts().1)
    };
    let fd = match setup() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(dir = NETNS_DIR, error = %e, "namespace removals not watched; the rounds find them");
            return None;
        }
    };
    Some(rt.spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            match fd.get_ref().0.read_events() {
                Ok(events) => {
                    for e in events {
                        if let Some(name) = e.name.as_ref().and_then(|n| n.to_str()) {
                            on_removed(name);
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => {
                    tracing::warn!(dir = NETNS_DIR, error = %e, "namespace removals no longer watched");
                    return;
                }
            }
        }
    }))
}
