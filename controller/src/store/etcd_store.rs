//! The distributed store: etcd v3 (tested against Debian's `etcd-server`).
//! Conditions are etcd transactions comparing `version` (absent) or `mod_revision`.

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{Entry, Expect, Revision, Store, StoreError, WatchEvent};

pub struct EtcdStore {
    endpoints: Vec<String>,
    client: Client,
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let client =
            Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| StoreError::Open {
                    store: format!("etcd://{}", endpoints.join(",")),
                    path: endpoints.join(","),
                    reason: e.to_string(),
                })?;
        let s = EtcdStore {
            endpoints: endpoints.to_vec(),
            client,
        };
        s.health().await?;
        Ok(s)
    }

    fn name(&self) -> String {
        format!(
            "etcd://{}",
            self.endpoints
                .iter()
                .map(|e| e.trim_start_matches("http://"))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    fn backend(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            store: self.name(),
            op,
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    fn compare(key: &str, expect: Expect) -> Option<Compare> {
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Compare::version(key, CompareOp::Equal, 0)),
            Expect::ModRevision(r) => Some(Compare::mod_revision(key, CompareOp::Equal, r as i64)),
        }
    }

    async fn conflict(&self, key: &str, expect: Expect) -> StoreError {
        let found = match self.get(key).await {
            Ok(Some(e)) => format!("revision {}", e.mod_revision),
            Ok(None) => "absent".into(),
            Err(e) => format!("unknown ({e})"),
        };
        StoreError::Conflict {
            store: self.name(),
            key: key.to_string(),
            expected: match expect {
                Expect::Any => "anything".into(),
                Expect::Absent => "absent".into(),
                Expect::ModRevision(r) => format!("revision {r}"),
            },
            found,
        }
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision().max(0) as u64).unwrap_or(0)
}

#[async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.name()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| self.backend("get", key, e))?;
        Ok(resp.kvs().first().map(|kv| Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision() as u64,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.backend("list", prefix, e))?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = kv
                .key_str()
                .map_err(|e| self.backend("list", prefix, e))?
                .to_string();
            out.push(Entry {
                key,
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision() as u64,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, header_rev(resp.header())))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        match Self::compare(key, expect) {
            None => {
                let resp = kv
                    .put(key, value, None)
                    .await
                    .map_err(|e| self.backend("put", key, e))?;
                Ok(header_rev(resp.header()))
            }
            Some(cmp) => {
                let txn = Txn::new()
                    .when(vec![cmp])
                    .and_then(vec![TxnOp::put(key, value, None)]);
                let resp = kv.txn(txn).await.map_err(|e| self.backend("put", key, e))?;
                if !resp.succeeded() {
                    return Err(self.conflict(key, expect).await);
                }
                Ok(header_rev(resp.header()))
            }
        }
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let mut kv = self.client.kv_client();
        let cmp: Vec<Compare> = Self::compare(key, expect).into_iter().collect();
        let txn = Txn::new()
            .when(cmp)
            .and_then(vec![TxnOp::delete(key, None)]);
        let resp = kv
            .txn(txn)
            .await
            .map_err(|e| self.backend("delete", key, e))?;
        if !resp.succeeded() {
            return Err(self.conflict(key, expect).await);
        }
        Ok(resp
            .op_responses()
            .iter()
            .any(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0)))
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        let mut opts = WatchOptions::new().with_prefix();
        if after > 0 {
            opts = opts.with_start_revision(after as i64 + 1);
        }
        let (watcher, mut stream) = self
            .client
            .watch_client()
            .watch(prefix, Some(opts))
            .await
            .map_err(|e| self.backend("watch", prefix, e))?;
        let (tx, rx) = mpsc::channel(1024);
        let name = self.name();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let _watcher = watcher; // dropping it would cancel the watch
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let _ = tx
                                .send(Err(StoreError::Compacted {
                                    store: name.clone(),
                                    from: after,
                                    oldest: resp.compact_revision() as u64,
                                }))
                                .await;
                            return;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let out = match ev.event_type() {
                                EventType::Put => WatchEvent::Put(Entry {
                                    key,
                                    value: kv.value().to_vec(),
                                    mod_revision: kv.mod_revision() as u64,
                                }),
                                EventType::Delete => WatchEvent::Delete {
                                    key,
                                    revision: kv.mod_revision() as u64,
                                },
                            };
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx
                            .send(Err(StoreError::Backend {
                                store: name.clone(),
                                op: "watch",
                                key: prefix.clone(),
                                reason: e.to_string(),
                            }))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.client
            .maintenance_client()
            .status()
            .await
            .map(|_| ())
            .map_err(|e| self.backend("status", "(cluster)", e))
    }
}

/// A private etcd-server on free loopback ports in a temporary directory, stopped on drop. For
/// tests, benchmarks and single-machine trials of the distributed store.
pub struct LocalEtcd {
    child: std::process::Child,
    /// `127.0.0.1:PORT`, the client endpoint.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts `etcd` from PATH and waits until it accepts connections.
    pub async fn start() -> Result<LocalEtcd, StoreError> {
        let fail = |reason: String| StoreError::Open {
            store: "etcd (local)".into(),
            path: "etcd".into(),
            reason,
        };
        let dir = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        };
        let (client, peer) = (
            port().map_err(|e| fail(e.to_string()))?,
            port().map_err(|e| fail(e.to_string()))?,
        );
        let endpoint = format!("127.0.0.1:{client}");
        let child = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("http://{endpoint}"),
                "--advertise-client-urls",
                &format!("http://{endpoint}"),
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
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run etcd (apt-get install etcd-server): {e}"
                ))
            })?;
        let e = LocalEtcd {
            child,
            endpoint,
            _dir: dir,
        };
        for _ in 0..200 {
            if EtcdStore::connect(&[format!("http://{}", e.endpoint)])
                .await
                .is_ok()
            {
                return Ok(e);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(fail(format!("etcd did not answer on {}", e.endpoint)))
    }

    pub async fn store(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(&[format!("http://{}", self.endpoint)]).await
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
