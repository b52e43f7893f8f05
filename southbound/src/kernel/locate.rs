//! Finding a client's network namespace on this host from what its request names (an
//! `inodeURL`, see [`meshwire_models::netns_ref`]): a named namespace by its name, a process's by
//! its id, and `inode://DEV/INO`, as unmodified upstream NSM clients send it, by looking for
//! the namespace file with that device and inode: first among the named namespaces, then among
//! the processes under `/proc`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use meshwire_models::netns_ref::NetnsRef;

use super::netns::{self, NETNS_DIR};

/// Where a namespace was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// A namespace named under [`NETNS_DIR`] (what the data plane opens by name).
    Named(String),
    /// Only a process is in it: the namespace of process `pid`.
    Process { pid: u32 },
}

impl Located {
    /// The namespace file.
    pub fn path(&self) -> PathBuf {
        match self {
            Located::Named(n) => Path::new(NETNS_DIR).join(n),
            Located::Process { pid } => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing on this host is in that namespace (gone, or on another host): the client may
    /// retry once its namespace exists.
    #[error("no network namespace on this host for {what}")]
    NotFound { what: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl LocateError {
    pub fn retryable(&self) -> bool {
        matches!(self, LocateError::NotFound { .. })
    }
}

/// Most entries of `/proc` looked at for one lookup.
pub const MAX_PROCESSES: usize = 1 << 20;

/// The device and inode of a namespace file.
pub fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Finds the namespace `r` names.
pub fn locate(r: &NetnsRef) -> Result<Located, LocateError> {
    match r {
        NetnsRef::Named(name) => {
            let path = netns::path(name).map_err(|e| LocateError::Io {
                what: format!("namespace {name:?}"),
                source: e,
            })?;
            if path.exists() {
                Ok(Located::Named(name.clone()))
            } else {
                Err(LocateError::NotFound {
                    what: format!("namespace {name:?}"),
                })
            }
        }
        NetnsRef::Process { pid } => {
            let at = Located::Process { pid: *pid };
            if at.path().exists() {
                Ok(at)
            } else {
                Err(LocateError::NotFound {
                    what: format!("process {pid}"),
                })
            }
        }
        NetnsRef::Inode { dev, ino } => by_inode(*dev, *ino),
    }
}

fn by_inode(dev: u64, ino: u64) -> Result<Located, LocateError> {
    let want = Some((dev, ino));
    if let Ok(dir) = std::fs::read_dir(NETNS_DIR) {
        for e in dir.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if identity(&e.path()).ok() == want {
                return Ok(Located::Named(name));
            }
        }
    }
    let proc = std::fs::read_dir("/proc").map_err(|e| LocateError::Io {
        what: "/proc".into(),
        source: e,
    })?;
    for e in proc.flatten().take(MAX_PROCESSES) {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exits meanwhile is just not a match.
        if identity(&e.path().join("ns/net")).ok() == want {
            return Ok(Located::Process { pid });
        }
    }
    Err(LocateError::NotFound {
        what: format!("inode://{dev}/{ino}"),
    })
}
