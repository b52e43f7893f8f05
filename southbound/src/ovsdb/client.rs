//! A thin OVSDB client task.
//!
//! ```text
//!  callers ──call(method, params)──▶ writer (mutex) ──▶ socket ──▶ ovsdb-server
//!     ▲                                                               │
//!     └── oneshot by id ◀── reader task ◀── Framer ◀── bytes ◀───────┘
//!                              ├─ echo requests answered at once
//!                              └─ update notifications ──▶ notifications channel
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::framing::Framer;
use super::ops::Op;
use super::rpc::RpcMessage;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OvsdbError {
    #[error("ovsdb {peer}: {what}: {reason}")]
    Io {
        peer: String,
        what: String,
        reason: String,
    },
    #[error("ovsdb {peer}: {method} failed: {error}")]
    Rpc {
        peer: String,
        method: String,
        error: String,
    },
    #[error(
        "ovsdb {peer}: transaction on {db}: operation {index} ({op}) failed: {error}{details}"
    )]
    Transaction {
        peer: String,
        db: String,
        index: usize,
        op: String,
        error: String,
        details: String,
    },
    #[error("ovsdb {peer}: connection closed")]
    Closed { peer: String },
}

/// How long a call waits for its reply: a server that stopped answering must not hold a caller
/// (and the locks it holds) for ever.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(Value, Value)>>>>;
type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

pub struct Client {
    peer: String,
    writer: Writer,
    pending: Pending,
    next_id: AtomicU64,
    notifications: Mutex<Option<mpsc::UnboundedReceiver<(String, Value)>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `unix:PATH` or `tcp:HOST:PORT`.
    pub async fn connect(target: &str) -> Result<Client, OvsdbError> {
        let io = |reason: std::io::Error| OvsdbError::Io {
            peer: target.to_string(),
            what: "connect".into(),
            reason: reason.to_string(),
        };
        if let Some(path) = target.strip_prefix("unix:") {
            Ok(Client::over(
                target,
                tokio::net::UnixStream::connect(path).await.map_err(io)?,
            ))
        } else if let Some(addr) = target.strip_prefix("tcp:") {
            Ok(Client::over(
                target,
                tokio::net::TcpStream::connect(addr).await.map_err(io)?,
            ))
        } else {
            Err(OvsdbError::Io {
                peer: target.to_string(),
                what: "connect".into(),
                reason: "use unix:PATH or tcp:HOST:PORT".into(),
            })
        }
    }

    fn over<S: AsyncRead + AsyncWrite + Send + 'static>(peer: &str, stream: S) -> Client {
        let (mut rd, wr) = tokio::io::split(stream);
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(wr)));
        let pending: Pending = Arc::default();
        // Unbounded: a replica must see every update, in order; dropping one would corrupt it.
        let (ntx, nrx) = mpsc::unbounded_channel();
        let (w, p, name) = (writer.clone(), pending.clone(), peer.to_string());
        let pending_on_exit = pending.clone();
        let reader = tokio::spawn(async move {
            Self::read_loop(&mut rd, &w, &p, &ntx, &name).await;
            // Callers still waiting learn the connection is gone.
            pending_on_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        });
        Client {
            peer: peer.to_string(),
            writer,
            pending,
            next_id: AtomicU64::new(1),
            notifications: Mutex::new(Some(nrx)),
            reader,
        }
    }

    /// Whether the connection is gone (the reader stopped): reconnect.
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        rd: &mut R,
        w: &Writer,
        p: &Pending,
        ntx: &mpsc::UnboundedSender<(String, Value)>,
        name: &str,
    ) {
        {
            let mut framer = Framer::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(&chunk[..n]);
                while let Some(v) = framer.next_value() {
                    let v = match v {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(peer = %name, error = %e, "malformed stream; closing");
                            return;
                        }
                    };
                    match RpcMessage::from_value(v) {
                        Some(RpcMessage::Response { id, result, error }) => {
                            let tx = id.as_u64().and_then(|id| {
                                p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
                            });
                            if let Some(tx) = tx {
                                let _ = tx.send((result, error));
                            }
                        }
                        Some(RpcMessage::Request { id, method, params }) if method == "echo" => {
                            let reply = RpcMessage::Response {
                                id,
                                result: params,
                                error: Value::Null,
                            }
                            .encode();
                            if w.lock().await.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                        Some(RpcMessage::Notification { method, params }) => {
                            let _ = ntx.send((method, params));
                        }
                        other => tracing::debug!(peer = %name, message = ?other, "ignored"),
                    }
                }
            }
        }
    }

    /// Update notifications (`update`, `update2`, ...), for one taker.
    pub fn notifications(&self) -> Option<mpsc::UnboundedReceiver<(String, Value)>> {
        self.notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Calls `method` and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let bytes = RpcMessage::Request {
            id: json!(id),
            method: method.to_string(),
            params,
        }
        .encode();
        if let Err(e) = self.writer.lock().await.write_all(&bytes).await {
            return Err(self.abandon(id, method, e.to_string()));
        }
        let (result, error) = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| OvsdbError::Closed {
                peer: self.peer.clone(),
            })?,
            Err(_) => {
                return Err(self.abandon(
                    id,
                    method,
                    format!("no reply within {} s", CALL_TIMEOUT.as_secs()),
                ))
            }
        };
        if !error.is_null() {
            return Err(OvsdbError::Rpc {
                peer: self.peer.clone(),
                method: method.to_string(),
                error: error.to_string(),
            });
        }
        Ok(result)
    }

    /// Forgets call `id` (nobody will wait for its reply) and names why.
    fn abandon(&self, id: u64, method: &str, reason: String) -> OvsdbError {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        OvsdbError::Io {
            peer: self.peer.clone(),
            what: method.to_string(),
            reason,
        }
    }

    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let v = self.call("list_dbs", json!([])).await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect())
    }

    pub async fn get_schema(&self, db: &str) -> Result<Value, OvsdbError> {
        self.call("get_schema", json!([db])).await
    }

    /// Runs `ops` as one transaction. If an operation fails, the error names it, and OVSDB
    /// guarantees nothing of the transaction was applied.
    pub async fn transact(&self, db: &str, ops: &[Op]) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(db)];
        params.extend(ops.iter().map(Op::to_json));
        let results = self.call("transact", Value::Array(params)).await?;
        let results = results.as_array().cloned().unwrap_or_default();
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").filter(|e| !e.is_null()) {
                let op = ops
                    .get(index)
                    .map(Op::summary)
                    .unwrap_or_else(|| "commit".into());
                let details = r
                    .get("details")
                    .and_then(|d| d.as_str())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                return Err(OvsdbError::Transaction {
                    peer: self.peer.clone(),
                    db: db.to_string(),
                    index,
                    op,
                    error: error.as_str().unwrap_or_default().to_string(),
                    details,
                });
            }
        }
        Ok(results)
    }

    /// Starts a monitor; returns the initial contents. Changes arrive as `update` notifications.
    pub async fn monitor(
        &self,
        db: &str,
        monitor_id: &str,
        requests: Value,
    ) -> Result<Value, OvsdbError> {
        self.call("monitor", json!([db, monitor_id, requests]))
            .await
    }

    pub async fn echo(&self) -> Result<(), OvsdbError> {
        self.call("echo", json!(["meshwire"])).await.map(|_| ())
    }

    /// `monitor_cond_since` (OVS extension): starts a monitor that reports `update3`
    /// notifications; with `last_txn_id` known, the server may send only what changed since.
    /// Returns `(found, last_txn_id, table-updates2)`; `found == false` means the contents are
    /// complete and replace whatever the caller had.
    pub async fn monitor_cond_since(
        &self,
        db: &str,
        monitor_id: &str,
        requests: Value,
        last_txn_id: &str,
    ) -> Result<(bool, String, Value), OvsdbError> {
        let r = self
            .call(
                "monitor_cond_since",
                json!([db, monitor_id, requests, last_txn_id]),
            )
            .await?;
        let found = r.get(0).and_then(|f| f.as_bool()).unwrap_or(false);
        let txn = r
            .get(1)
            .and_then(|t| t.as_str())
            .unwrap_or(super::replica::ZERO_TXN)
            .to_string();
        Ok((found, txn, r.get(2).cloned().unwrap_or(Value::Null)))
    }

    /// Asks for lock `id`; `Ok(true)` if this session holds it now, `Ok(false)` if it is queued
    /// behind another holder (a `locked` notification follows when it gets it).
    pub async fn lock(&self, id: &str) -> Result<bool, OvsdbError> {
        if let Some(e) = self.bad_lock_id("lock", id) {
            return Err(e);
        }
        let r = self.call("lock", json!([id])).await?;
        Ok(r.get("locked").and_then(|l| l.as_bool()).unwrap_or(false))
    }

    /// Takes lock `id` from whoever holds it (they get a `stolen` notification).
    pub async fn steal(&self, id: &str) -> Result<bool, OvsdbError> {
        if let Some(e) = self.bad_lock_id("steal", id) {
            return Err(e);
        }
        let r = self.call("steal", json!([id])).await?;
        Ok(r.get("locked").and_then(|l| l.as_bool()).unwrap_or(false))
    }

    /// Lock names are OVSDB ids: a letter or `_`, then letters, digits or `_`.
    fn bad_lock_id(&self, method: &str, id: &str) -> Option<OvsdbError> {
        let mut chars = id.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        (!ok).then(|| OvsdbError::Rpc {
            peer: self.peer.clone(),
            method: method.to_string(),
            error: format!("lock name {id:?} is not an OVSDB id (letters, digits, '_'; not starting with a digit)"),
        })
    }

    pub async fn unlock(&self, id: &str) -> Result<(), OvsdbError> {
        self.call("unlock", json!([id])).await.map(|_| ())
    }
}
