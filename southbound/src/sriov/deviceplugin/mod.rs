//! The kubelet device plugin (`deviceplugin/v1beta1`) publishing a node's SR-IOV pools: one
//! `DevicePlugin` server per pool, each on its own socket in the kubelet's plugin directory,
//! served before it registers with the kubelet's `kubelet.sock`.
//!
//! ```text
//!   kubelet ──Register◀── plugin (per pool) ──ListAndWatch──▶ tokens, Healthy/Unhealthy
//!           ──Allocate──▶ NSM_SRIOV_TOKENS_<pool>=<ids>  (recorded in the state file first)
//! ```
//!
//! A restarted kubelet deletes every socket in the directory and creates its own again: the
//! supervisor sees both on an inotify watch, serves its sockets again and registers again. The
//! devices are tokens ([`crate::sriov::tokens`]) whose IDs and allocations survive an agent
//! restart in the state directory; how many of a pool's tokens are healthy comes from the pool's
//! usable VFs (a PF link down makes its VFs' tokens unhealthy: reported, not hidden).

mod dirwatch;
pub mod kubelet;
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::sriov::tokens::{TokenError, Tokens};
use dirwatch::DirEvent;

pub mod pb {
    tonic::include_proto!("v1beta1");
}

/// The API version this plugin speaks.
pub const VERSION: &str = "v1beta1";
/// The kubelet's registration socket, in the plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The kubelet's plugin directory.
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
/// How long a registration call may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Devices one container may be given at once.
const MAX_ALLOCATE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error("device plugin directory {dir}: {why}")]
    Dir { dir: String, why: String },
    #[error("pool {pool}: socket {path}: {why}")]
    Socket {
        pool: String,
        path: String,
        why: String,
    },
    #[error("registering pool {pool} with the kubelet at {socket}: {why}")]
    Register {
        pool: String,
        socket: String,
        why: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl DevicePluginError {
    /// Whether trying again may help (a kubelet not up yet, a busy disk).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            DevicePluginError::Register { .. } | DevicePluginError::Socket { .. }
        )
    }
}

/// What the plugins publish.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The kubelet's plugin directory ([`DEFAULT_DIR`]).
    pub dir: PathBuf,
    /// Where the token list is kept across restarts.
    pub state_dir: PathBuf,
    /// Each pool and its size (its VF count).
    pub pools: BTreeMap<String, usize>,
}

/// How many of each pool's VFs are usable now (by pool name); pools not named are all usable.
pub type Usable = BTreeMap<String, usize>;

pub(crate) struct Shared {
    state_dir: PathBuf,
    tokens: Mutex<Tokens>,
    usable: Mutex<Usable>,
    devices: BTreeMap<String, watch::Sender<Vec<pb::Device>>>,
    tokens_tx: watch::Sender<Tokens>,
    /// Each pool's socket file and its inode, for removal when the plugins stop.
    sockets: Mutex<BTreeMap<String, (PathBuf, Option<u64>)>>,
}

impl Shared {
    fn devices(&self, pool: &str) -> Option<watch::Receiver<Vec<pb::Device>>> {
        self.devices.get(pool).map(|d| d.subscribe())
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an allocation (saved before it is acknowledged), then republishes.
    fn allocate(&self, pool: &str, ids: &[String]) -> Result<(), DevicePluginError> {
        let snapshot = {
            let mut t = self.lock_tokens();
            let mut next = t.clone();
            if next.allocate(pool, ids)? {
                next.save(&self.state_dir)?;
                *t = next;
            }
            t.clone()
        };
        self.tokens_tx.send_replace(snapshot);
        self.publish();
        Ok(())
    }

    /// Recomputes every pool's device list: allocated tokens first, then the others; as many
    /// healthy as the pool has usable VFs.
    fn publish(&self) {
        let tokens = self.lock_tokens().clone();
        let usable = self
            .usable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (pool, tx) in &self.devices {
            let mut list: Vec<&crate::sriov::tokens::Token> =
                tokens.pools.get(pool).into_iter().flatten().collect();
            list.sort_by_key(|t| !t.allocated);
            let healthy = usable.get(pool).copied().unwrap_or(list.len());
            let devices: Vec<pb::Device> = list
                .iter()
                .enumerate()
                .map(|(i, t)| pb::Device {
                    id: t.id.clone(),
                    health: if i < healthy { HEALTHY } else { UNHEALTHY }.to_string(),
                    topology: None,
                })
                .collect();
            tx.send_if_modified(|cur| {
                let mut a: Vec<_> = cur.iter().map(|d| (&d.id, &d.health)).collect();
                let mut b: Vec<_> = devices.iter().map(|d| (&d.id, &d.health)).collect();
                a.sort();
                b.sort();
                if a == b {
                    return false;
                }
                *cur = devices.clone();
                true
            });
        }
    }
}

/// The running plugins; dropping it stops them (sockets are removed).
pub struct DevicePlugins {
    shared: Arc<Shared>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for DevicePlugins {
    /// Stops the supervisor and removes the sockets at once (the kubelet then sees the
    /// resource's plugin gone), each only if it is still the one this process bound.
    fn drop(&mut self) {
        self.supervisor.abort();
        let sockets = std::mem::take(
            &mut *self
                .shared
                .sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (path, ino) in sockets.into_values() {
            if ino.is_some() && inode(&path) == ino {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The socket file of `pool` in the plugin directory (`meshwire-<domain>_<name>.sock`).
pub fn socket_name(pool: &str) -> String {
    format!("meshwire-{}.sock", pool.replace('/', "_"))
}

impl DevicePlugins {
    /// Loads the tokens, serves every pool's socket and starts registering with the kubelet
    /// (again whenever it restarts). A kubelet not up yet is waited for, not an error.
    pub async fn start(
        cfg: PluginConfig,
        mut usable: watch::Receiver<Usable>,
    ) -> Result<DevicePlugins, DevicePluginError> {
        let dir_err = |why: String| DevicePluginError::Dir {
            dir: cfg.dir.display().to_string(),
            why,
        };
        std::fs::create_dir_all(&cfg.dir).map_err(|e| dir_err(e.to_string()))?;
        let mut tokens = Tokens::load(&cfg.state_dir)?;
        if tokens.resize(&cfg.pools) {
            tokens.save(&cfg.state_dir)?;
        }
        let devices = cfg
            .pools
            .keys()
            .map(|p| (p.clone(), watch::channel(Vec::new()).0))
            .collect();
        let shared = Arc::new(Shared {
            state_dir: cfg.state_dir.clone(),
            tokens_tx: watch::channel(tokens.clone()).0,
            tokens: Mutex::new(tokens),
            usable: Mutex::new(usable.borrow_and_update().clone()),
            devices,
            sockets: Mutex::new(BTreeMap::new()),
        });
        shared.publish();
        let events = dirwatch::watch(&cfg.dir).map_err(|e| dir_err(format!("watch: {e}")))?;
        let mut sup = Supervisor {
            dir: cfg.dir.clone(),
            shared: shared.clone(),
            servers: BTreeMap::new(),
        };
        for pool in cfg.pools.keys() {
            sup.serve(pool)?;
        }
        let supervisor = tokio::spawn(sup.run(events, usable));
        Ok(DevicePlugins { shared, supervisor })
    }

    /// The tokens as they are now, and as they change (allocations).
    pub fn tokens(&self) -> watch::Receiver<Tokens> {
        self.shared.tokens_tx.subscribe()
    }
}

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    path: PathBuf,
    /// The socket file's inode: only that file is removed on drop (a successor may have bound
    /// the same path since).
    inode: Option<u64>,
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if self.inode.is_some() && inode(&self.path) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Supervisor {
    dir: PathBuf,
    shared: Arc<Shared>,
    servers: BTreeMap<String, Server>,
}

impl Supervisor {
    /// Binds `pool`'s socket (replacing a leftover) and serves it.
    fn serve(&mut self, pool: &str) -> Result<(), DevicePluginError> {
        let path = self.dir.join(socket_name(pool));
        let err = |why: String| DevicePluginError::Socket {
            pool: pool.to_string(),
            path: path.display().to_string(),
            why,
        };
        self.servers.remove(pool);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| err(e.to_string()))?;
        let incoming = futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = service::PoolPlugin {
            pool: pool.to_string(),
            shared: self.shared.clone(),
        };
        let at = path.display().to_string();
        tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(pb::device_plugin_server::DevicePluginServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(socket = %at, error = %e, "device plugin server stopped");
            }
        });
        tracing::info!(pool, socket = %path.display(), "device plugin serving");
        let ino = inode(&path);
        self.shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.to_string(), (path.clone(), ino));
        self.servers.insert(
            pool.to_string(),
            Server {
                stop: Some(stop),
                inode: ino,
                path,
            },
        );
        Ok(())
    }

    /// Registers every pool with the kubelet; the pools that failed.
    async fn register_all(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for pool in self.servers.keys() {
            match register(&self.dir, pool).await {
                Ok(()) => tracing::info!(pool, "registered with the kubelet"),
                Err(e) => {
                    tracing::warn!(pool, error = %e, "kubelet registration failed; trying again");
                    failed.push(pool.clone());
                }
            }
        }
        failed
    }

    async fn run(
        mut self,
        mut events: tokio::sync::mpsc::Receiver<DirEvent>,
        mut usable: watch::Receiver<Usable>,
    ) {
        let kubelet = self.dir.join(KUBELET_SOCKET);
        let mut pending = kubelet.exists() && !self.register_all().await.is_empty();
        let mut failures = 0u32;
        let backoff = meshwire_controller::backoff::Backoff::RECONNECT;
        loop {
            let retry = async {
                if pending {
                    tokio::time::sleep(backoff.delay(failures, 0)).await
                } else {
                    std::future::pending::<()>().await
                }
            };
            let mut look = false;
            tokio::select! {
                ev = events.recv() => match ev {
                    None => return,
                    Some(DirEvent::Created(n)) if n == KUBELET_SOCKET => look = true,
                    Some(DirEvent::Deleted(n)) if self.servers.values().any(|s| s.path.file_name().is_some_and(|f| f == n.as_str())) => look = true,
                    Some(DirEvent::Overflow) => look = true,
                    Some(_) => {}
                },
                r = usable.changed() => {
                    if r.is_err() { return; }
                    *self.shared.usable.lock().unwrap_or_else(|p| p.into_inner()) = usable.borrow_and_update().clone();
                    self.shared.publish();
                }
                () = retry => look = true,
            }
            if !look {
                continue;
            }
            // Our sockets deleted (a kubelet restart deletes them all): served again first.
            let missing: Vec<String> = self
                .servers
                .iter()
                .filter(|(_, s)| !s.path.exists())
                .map(|(p, _)| p.clone())
                .collect();
            for pool in &missing {
                tracing::info!(pool, "socket deleted (kubelet restart?): serving it again");
                if let Err(e) = self.serve(pool) {
                    tracing::warn!(pool, error = %e, "cannot serve again");
                }
            }
            if kubelet.exists() {
                pending = !self.register_all().await.is_empty();
                failures = if pending {
                    failures.saturating_add(1)
                } else {
                    0
                };
            }
        }
    }
}

/// One `Register` call on the kubelet's socket in `dir`.
pub async fn register(dir: &Path, pool: &str) -> Result<(), DevicePluginError> {
    let socket = dir.join(KUBELET_SOCKET);
    let err = |why: String| DevicePluginError::Register {
        pool: pool.to_string(),
        socket: socket.display().to_string(),
        why,
    };
    let channel = unix_channel(&socket)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut client = pb::registration_client::RegistrationClient::new(channel);
    let req = pb::RegisterRequest {
        version: VERSION.into(),
        endpoint: socket_name(pool),
        resource_name: pool.to_string(),
        options: Some(pb::DevicePluginOptions::default()),
    };
    tokio::time::timeout(REGISTER_TIMEOUT, client.register(req))
        .await
        .map_err(|_| err(format!("no answer within {} s", REGISTER_TIMEOUT.as_secs())))?
        .map_err(|s| err(format!("{}: {}", s.code(), s.message())))?;
    Ok(())
}

/// A gRPC channel over the unix socket at `path` (the URI is a placeholder tonic needs).
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(REGISTER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}
