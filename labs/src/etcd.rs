//! A private etcd-server on free loopback ports in a temporary directory, stopped on drop: for
//! tests, benchmarks and single-machine trials of the distributed store. Ready means etcd said
//! so ("ready to serve client requests" on its log), never a guess after a delay.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long etcd may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a member or cluster is started on fresh ports when a port was taken.
const ATTEMPTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot run etcd (apt-get install etcd-server): {0}")]
    Spawn(std::io::Error),
    #[error("local etcd: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("local etcd on {endpoint} {why}; its last words: {last}")]
    NotReady {
        endpoint: String,
        why: String,
        last: String,
    },
}

/// The server side of a TLS etcd: its certificate and key, and the CA its clients' certificates
/// must chain to (client certificates are then required).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

pub struct LocalEtcd {
    child: Child,
    /// `127.0.0.1:PORT`, the client endpoint.
    pub endpoint: String,
    tls: bool,
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts `etcd` from PATH and returns once it serves clients over plain HTTP.
    pub async fn start() -> Result<LocalEtcd, EtcdError> {
        Self::start_with(None).await
    }

    /// Starts `etcd` serving clients over TLS with client certificates.
    pub async fn start_tls(server: &ServerTls) -> Result<LocalEtcd, EtcdError> {
        Self::start_with(Some(server)).await
    }

    /// The client URL (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint)
    }

    async fn start_with(tls: Option<&ServerTls>) -> Result<LocalEtcd, EtcdError> {
        let mut attempt = 0;
        loop {
            match Self::start_once(tls).await {
                Err(e) if e.port_taken() && attempt + 1 < ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    async fn start_once(tls: Option<&ServerTls>) -> Result<LocalEtcd, EtcdError> {
        let io = |what| move |source| EtcdError::Io { what, source };
        let dir = tempfile::tempdir().map_err(io("temporary directory"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("127.0.0.1:{client}");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://{endpoint}"),
                "--advertise-client-urls",
                &format!("{scheme}://{endpoint}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ]);
        if let Some(server) = tls {
            cmd.arg("--cert-file")
                .arg(&server.cert)
                .arg("--key-file")
                .arg(&server.key)
                .arg("--trusted-ca-file")
                .arg(&server.client_ca)
                .arg("--client-cert-auth");
        }
        let (child, rx) = spawn(cmd)?;
        let mut e = LocalEtcd {
            child,
            endpoint,
            tls: tls.is_some(),
            _dir: dir,
        };
        let not_ready = |e: &LocalEtcd, why: &str, last: String| EtcdError::NotReady {
            endpoint: e.endpoint.clone(),
            why: why.to_string(),
            last,
        };
        match ready(rx).await {
            Ok(()) => Ok(e),
            Err((why, last)) => {
                let _ = e.child.kill();
                Err(not_ready(&e, &why, last))
            }
        }
    }
}

/// Starts one etcd member; the receiver says when it is ready (or its last log line when it
/// ended first). One thread reads its log, then keeps reading so etcd never blocks on a pipe.
fn spawn(
    mut cmd: Command,
) -> Result<(Child, tokio::sync::oneshot::Receiver<Result<(), String>>), EtcdError> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EtcdError::Spawn)?;
    let stderr = child.stderr.take();
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    if let Some(stderr) = stderr {
        std::thread::Builder::new()
            .name("etcd-log".into())
            .spawn(move || {
                let mut tx = Some(tx);
                let mut last = String::new();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("ready to serve client requests") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    last = line;
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(last));
                }
            })
            .map_err(|source| EtcdError::Io {
                what: "log reader",
                source,
            })?;
    }
    Ok((child, rx))
}

/// Waits for a member's ready line: `Err((why, last log line))` otherwise.
async fn ready(
    rx: tokio::sync::oneshot::Receiver<Result<(), String>>,
) -> Result<(), (String, String)> {
    match tokio::time::timeout(READY_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(last))) => Err(("exited before it was ready".into(), last)),
        Ok(Err(_)) => Err(("has no log".into(), String::new())),
        Err(_) => Err((
            format!("was not ready within {} s", READY_TIMEOUT.as_secs()),
            String::new(),
        )),
    }
}

fn free_port() -> Result<u16, EtcdError> {
    crate::ports::free_port().map_err(|source| EtcdError::Io {
        what: "free port",
        source,
    })
}

impl EtcdError {
    /// Whether a member died because another process took its port between our check and its
    /// bind: starting again on other ports helps.
    fn port_taken(&self) -> bool {
        matches!(self, EtcdError::NotReady { last, .. } if last.contains("address already in use"))
    }
}

/// One member of a [`LocalEtcdCluster`].
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A private etcd cluster of several members on loopback (plain HTTP), with fast elections
/// (heartbeat 50 ms, election timeout 500 ms: leases down to 1 s), whose members can be killed
/// and started again: for tests and benchmarks of highly available controllers.
pub struct LocalEtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl LocalEtcdCluster {
    /// Starts `n` members and returns once every one serves clients.
    pub async fn start(n: usize) -> Result<LocalEtcdCluster, EtcdError> {
        let mut attempt = 0;
        loop {
            match Self::start_once(n).await {
                Err(e) if e.port_taken() && attempt + 1 < ATTEMPTS => {
                    tracing::debug!("local etcd cluster: {e}; starting again on other ports");
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    async fn start_once(n: usize) -> Result<LocalEtcdCluster, EtcdError> {
        let dir = tempfile::tempdir().map_err(|source| EtcdError::Io {
            what: "temporary directory",
            source,
        })?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                child: None,
            });
        }
        let mut c = LocalEtcdCluster { members, dir };
        let mut waits = Vec::new();
        for i in 0..n {
            waits.push((i, c.launch(i, "new")?));
        }
        for (i, rx) in waits {
            ready(rx).await.map_err(|(why, last)| EtcdError::NotReady {
                endpoint: c.endpoint(i),
                why,
                last,
            })?;
        }
        Ok(c)
    }

    fn launch(
        &mut self,
        i: usize,
        state: &str,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, EtcdError> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "meshwire-local",
            ]);
        let (child, rx) = spawn(cmd)?;
        self.members[i].child = Some(child);
        Ok(rx)
    }

    /// Member `i`'s client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client)
    }

    /// The store spec naming every member: `etcd://A,B,C`.
    pub fn spec(&self) -> String {
        let all: Vec<String> = (0..self.members.len()).map(|i| self.endpoint(i)).collect();
        format!("etcd://{}", all.join(","))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it serves clients (which needs a
    /// quorum of the cluster).
    pub async fn restart(&mut self, i: usize) -> Result<(), EtcdError> {
        self.kill(i);
        let rx = self.launch(i, "existing")?;
        ready(rx).await.map_err(|(why, last)| EtcdError::NotReady {
            endpoint: self.endpoint(i),
            why,
            last,
        })
    }
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
