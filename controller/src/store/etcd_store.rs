//! The distributed store: etcd v3 (tested against Debian's `etcd-server`, plain and over TLS
//! with client certificates).
//! Conditions are etcd transactions comparing `version` (absent) or `mod_revision`. Lists are
//! read in pages of [`LIST_PAGE`] keys, all at the revision of the first page, so a prefix of any
//! size (a hundred thousand connection records) is read without passing a message limit.

use std::path::PathBuf;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{Entry, Expect, Revision, Store, StoreError, WatchEvent};

/// Keys per range request of a list.
pub const LIST_PAGE: i64 = 500;
/// The largest reply the client decodes (a page of large records stays well under it).
const MAX_DECODE: usize = 64 * 1024 * 1024;

/// TLS toward etcd: the CA that signed the servers' certificates and, where etcd requires
/// client certificates (`--client-cert-auth`), ours.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, StoreError> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| StoreError::Open {
                store: "etcd".into(),
                path: p.display().to_string(),
                reason: format!("cannot read the {what}: {e}"),
            })
        };
        let mut o = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca, "CA")?));
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                o = o.identity(Identity::from_pem(
                    read(c, "client certificate")?,
                    read(k, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Open {
                    store: "etcd".into(),
                    path: "(tls)".into(),
                    reason: "a client certificate needs its key, and a key its certificate".into(),
                })
            }
        }
        Ok(o)
    }
}

/// An etcd user (etcd with authentication enabled). The password is never printed.
#[derive(Clone)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdUser({})", self.name)
    }
}

/// Installs the process's TLS provider (aws-lc-rs) if none is: the etcd client's TLS builds its
/// configuration from the process default, and more than one provider is linked in.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub struct EtcdStore {
    endpoints: Vec<String>,
    client: Client,
    /// A leader's store: every write also requires the leader key to be this leadership's.
    fence: Option<super::election::Fence>,
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://HOST:PORT`), plain.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        Self::connect_with(endpoints, None).await
    }

    /// Connects to `endpoints`; with `tls`, over TLS (`https://HOST:PORT`; a bare or `http://`
    /// endpoint is taken as `https://`).
    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
    ) -> Result<EtcdStore, StoreError> {
        Self::connect_as(endpoints, tls, None).await
    }

    /// [`EtcdStore::connect_with`], authenticating as `user` where etcd runs with `auth enable`.
    pub async fn connect_as(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
        user: Option<&EtcdUser>,
    ) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        if let Some(u) = user {
            opts = opts.with_user(u.name.clone(), u.password.clone());
        }
        let endpoints: Vec<String> = match tls {
            None => endpoints.to_vec(),
            Some(t) => {
                ensure_crypto_provider();
                opts = opts.with_tls(t.options()?);
                endpoints
                    .iter()
                    .map(|e| {
                        let bare = e
                            .trim_start_matches("http://")
                            .trim_start_matches("https://");
                        format!("https://{bare}")
                    })
                    .collect()
            }
        };
        let client =
            Client::connect(&endpoints, Some(opts))
                .await
                .map_err(|e| StoreError::Open {
                    store: format!("etcd://{}", endpoints.join(",")),
                    path: endpoints.join(","),
                    reason: e.to_string(),
                })?;
        let s = EtcdStore {
            endpoints,
            client,
            fence: None,
        };
        s.health().await?;
        Ok(s)
    }

    /// The etcd client (shared: an election campaigns with the store's connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The same store, unfenced (a standby's reads share the connection).
    pub fn reader(&self) -> EtcdStore {
        EtcdStore {
            endpoints: self.endpoints.clone(),
            client: self.client.clone(),
            fence: None,
        }
    }

    /// This store for a leader: each write is a transaction that also compares `fence` (the
    /// leader key's create revision), so it is refused ([`StoreError::Fenced`]) once that
    /// leadership is gone, whatever this process believes.
    pub fn fenced(&self, fence: super::election::Fence) -> EtcdStore {
        EtcdStore {
            endpoints: self.endpoints.clone(),
            client: self.client.clone(),
            fence: Some(fence),
        }
    }

    /// The conditions of a write of `key`: its own, and the fence.
    fn conditions(&self, key: &str, expect: Expect) -> Vec<Compare> {
        let mut c: Vec<Compare> = Self::compare(key, expect).into_iter().collect();
        if let Some(f) = &self.fence {
            c.push(Compare::create_revision(
                f.key.as_str(),
                CompareOp::Equal,
                f.revision,
            ));
        }
        c
    }

    /// After a refused transaction: the fence's fault (the leader key, read in the same
    /// transaction, is not ours) or the write's own condition.
    async fn refused(
        &self,
        op: &'static str,
        key: &str,
        expect: Expect,
        resp: &etcd_client::TxnResponse,
    ) -> StoreError {
        if let Some(f) = &self.fence {
            let held = resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == f.revision),
                _ => false,
            });
            if !held {
                return StoreError::Fenced {
                    store: self.name(),
                    op,
                    key: key.to_string(),
                    leader_key: f.key.clone(),
                    revision: f.revision,
                };
            }
        }
        self.conflict(key, expect).await
    }

    /// What a refused transaction reads, to say why: the leader key, for a fenced store.
    fn diagnosis(&self) -> Vec<TxnOp> {
        self.fence
            .iter()
            .map(|f| TxnOp::get(f.key.as_str(), None))
            .collect()
    }

    fn name(&self) -> String {
        format!(
            "etcd://{}",
            self.endpoints
                .iter()
                .map(|e| e.trim_start_matches("http://"))
                .map(|e| e.trim_start_matches("https://"))
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

/// The end of the key range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; all-0xff: to the end of the keyspace).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// How many times a call is made while etcd answers `Unavailable`.
const TRIES: u32 = 5;

/// Whether etcd could not serve a call for now: it is electing a leader of its own (a member
/// was lost), or the member the client reached is cut off from the others,
/// or the connection to the member the client picked broke (that member is gone: the next
/// call goes to another).
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC's UNAVAILABLE (14), and UNKNOWN (2) as tonic reports a broken connection.
        etcd_client::Error::GRpcStatus(s) => {
            s.code() as i32 == 14 || (s.code() as i32 == 2 && s.message().contains("transport"))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Runs an etcd call, again (with a short backoff) while etcd answers `Unavailable`: a member
/// lost costs an election of etcd's own, not a failed write. A write that etcd applied before
/// answering so is applied once more: the same value (writes with a condition then report the
/// conflict they find).
async fn again<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut wait = std::time::Duration::from_millis(100);
    for _ in 1..TRIES {
        match call().await {
            Err(e) if unavailable(&e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "etcd unavailable for now");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            r => return r,
        }
    }
    call().await
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
        let resp = again(|| async { self.client.kv_client().get(key, None).await })
            .await
            .map_err(|e| self.backend("get", key, e))?;
        Ok(resp.kvs().first().map(|kv| Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision() as u64,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE);
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut at: i64 = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if at > 0 {
                opts = opts.with_revision(at);
            }
            let resp = again(|| {
                let (mut kv, from, opts) = (kv.clone(), from.clone(), opts.clone());
                async move { kv.get(from, Some(opts)).await }
            })
            .await
            .map_err(|e| self.backend("list", prefix, e))?;
            if at == 0 {
                at = header_rev(resp.header()) as i64;
            }
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
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((out, at.max(0) as u64))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        let kv = self.client.kv_client();
        let when = self.conditions(key, expect);
        if when.is_empty() {
            let resp = again(|| {
                let (mut kv, value) = (kv.clone(), value.clone());
                async move { kv.put(key, value, None).await }
            })
            .await
            .map_err(|e| self.backend("put", key, e))?;
            return Ok(header_rev(resp.header()));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, value, None)])
            .or_else(self.diagnosis());
        let resp = again(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.backend("put", key, e))?;
        if !resp.succeeded() {
            return Err(self.refused("put", key, expect, &resp).await);
        }
        Ok(header_rev(resp.header()))
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let kv = self.client.kv_client();
        let txn = Txn::new()
            .when(self.conditions(key, expect))
            .and_then(vec![TxnOp::delete(key, None)])
            .or_else(self.diagnosis());
        let resp = again(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.backend("delete", key, e))?;
        if !resp.succeeded() {
            return Err(self.refused("delete", key, expect, &resp).await);
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
