//! Files appearing in and leaving one directory, as inotify reports them: the kubelet's plugin
//! directory, where a restarted kubelet deletes every socket and creates its own again.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// What happened to a name in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    Created(String),
    Deleted(String),
    /// Events were lost (the kernel's queue overflowed): look at the directory again.
    Overflow,
}

struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// How many events wait for their reader before the watch reports an overflow instead.
const BUFFER: usize = 256;

/// Watches `dir` until the receiver is dropped (the task then ends at its next event).
pub fn watch(dir: &Path) -> std::io::Result<mpsc::Receiver<DirEvent>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM,
    )?;
    // SAFETY: `Watch` owns the inotify descriptor and always returns that one; it stays open
    // until the AsyncFd (its only owner) is dropped.
    let fd = unsafe { AsyncFd::register(Watch(ino)) }.map_err(|e| e.into_parts().1)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let at = dir.display().to_string();
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            match fd.get_ref().0.read_events() {
                Ok(events) => {
                    for e in events {
                        let ev = if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            DirEvent::Overflow
                        } else {
                            let Some(name) = e.name.as_ref().and_then(|n| n.to_str()) else {
                                continue;
                            };
                            if e.mask
                                .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                            {
                                DirEvent::Deleted(name.to_string())
                            } else {
                                DirEvent::Created(name.to_string())
                            }
                        };
                        match tx.try_send(ev) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                // The reader looks at the whole directory on its next event.
                                let _ = tx.send(DirEvent::Overflow).await;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => {
                    tracing::warn!(dir = %at, error = %e, "directory no longer watched");
                    return;
                }
            }
        }
    });
    Ok(rx)
}
