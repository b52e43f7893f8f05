//! A private etcd-server on free loopback ports in a temporary directory, stopped on drop: for
//! tests, benchmarks and single-machine trials of the distributed store. Ready means etcd said
//! so ("ready to serve client requests" on its log), never a guess after a delay.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long etcd may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

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
        let io = |what| move |source| EtcdError::Io { what, source };
        let dir = tempfile::tempdir().map_err(io("temporary directory"))?;
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(io("free port"))
        };
        let (client, peer) = (port()?, port()?);
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
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(EtcdError::Spawn)?;
        let stderr = child.stderr.take();
        let mut e = LocalEtcd {
            child,
            endpoint,
            tls: tls.is_some(),
            _dir: dir,
        };
        // One thread reads etcd's log: it reports the ready line (or the end of the log), then
        // keeps reading so etcd never blocks on a full pipe.
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
                .map_err(io("log reader"))?;
        }
        let not_ready = |e: &LocalEtcd, why: &str, last: String| EtcdError::NotReady {
            endpoint: e.endpoint.clone(),
            why: why.to_string(),
            last,
        };
        match tokio::time::timeout(READY_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(e),
            Ok(Ok(Err(last))) => Err(not_ready(&e, "exited before it was ready", last)),
            Ok(Err(_)) => Err(not_ready(&e, "has no log", String::new())),
            Err(_) => {
                let _ = e.child.kill();
                Err(not_ready(
                    &e,
                    &format!("was not ready within {} s", READY_TIMEOUT.as_secs()),
                    String::new(),
                ))
            }
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
