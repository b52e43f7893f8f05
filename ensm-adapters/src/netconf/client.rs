//! A NETCONF session over SSH (RFC 6241, RFC 6242), on russh.
//!
//! ```text
//!  connect: TCP ─▶ SSH (host key checked: pinned fingerprint or known_hosts) ─▶ auth
//!           ─▶ channel ─▶ subsystem "netconf" ─▶ <hello> both ways (1.0 framing)
//!           ─▶ chunked framing if both announced base:1.1
//!  Session ──Cmd (mpsc)──▶ session task (owns the channel) ──▶ bytes ─▶ device
//!     ▲                         │ Decoder ─▶ <rpc-reply> ─▶ matched by message-id
//!     └──── oneshot reply ◀─────┘
//! ```
//! A reply with `<rpc-error>`s becomes [`NetconfError::Rpc`] carrying the device's error-tag,
//! path and message. The host key is never accepted blindly unless [`HostKey::AcceptAny`] is
//! chosen explicitly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use tokio::sync::{mpsc, oneshot};

use super::framing::{self, Decoder, Framing};
use super::xml::{self, Datastore, DefaultOperation, Hello, Operation, Reply, ReplyBody, RpcError};

#[derive(Clone)]
pub enum Auth {
    Password(String),
    Key {
        path: PathBuf,
        passphrase: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password(_) => f.write_str("Password(***)"),
            Auth::Key { path, .. } => write!(f, "Key({})", path.display()),
        }
    }
}

/// How the device's SSH host key is checked.
#[derive(Debug, Clone)]
pub enum HostKey {
    /// The key's SHA-256 fingerprint as `ssh-keygen -lf` prints it (`SHA256:…`).
    Fingerprint(String),
    /// An OpenSSH known_hosts file.
    KnownHosts(PathBuf),
    /// Accept any key (labs only; must be chosen explicitly).
    AcceptAny,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// How errors and logs name the device.
    pub device: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    pub host_key: HostKey,
    /// For connecting and for each reply.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetconfError {
    #[error("netconf {device}: connect to {addr}: {reason}")]
    Connect {
        device: String,
        addr: String,
        reason: String,
    },
    #[error("netconf {device}: host key {fingerprint} refused ({why}); pin the right fingerprint or add it to known_hosts")]
    HostKey {
        device: String,
        fingerprint: String,
        why: String,
    },
    #[error("netconf {device}: authentication as {user} failed")]
    Auth { device: String, user: String },
    #[error("netconf {device}: {operation} refused: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rpc {
        device: String,
        operation: String,
        errors: Vec<RpcError>,
    },
    #[error("netconf {device}: {what}: {reason}")]
    Protocol {
        device: String,
        what: String,
        reason: String,
    },
    #[error("netconf {device}: {operation}: no reply within {secs} s")]
    Timeout {
        device: String,
        operation: String,
        secs: u64,
    },
    #[error("netconf {device}: session closed")]
    Closed { device: String },
}

impl NetconfError {
    /// The device's error-tag of the first error, if the device refused.
    pub fn error_tag(&self) -> Option<&str> {
        match self {
            NetconfError::Rpc { errors, .. } => errors.first().map(|e| e.tag.as_str()),
            _ => None,
        }
    }
}

struct Handler {
    host: String,
    port: u16,
    check: HostKey,
    /// The fingerprint the server presented and why it was refused, for the error.
    seen: Arc<Mutex<Option<(String, String)>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                "(certificate)".into(),
                "host certificates are not supported".into(),
            ));
            return Ok(false);
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let (ok, why) = match &self.check {
            HostKey::AcceptAny => (true, String::new()),
            HostKey::Fingerprint(want) => {
                let want = want.trim();
                let want = want
                    .strip_prefix("SHA256:")
                    .unwrap_or(want)
                    .trim_end_matches('=');
                let got = fp
                    .strip_prefix("SHA256:")
                    .unwrap_or(&fp)
                    .trim_end_matches('=');
                (want == got, format!("expected SHA256:{want}"))
            }
            HostKey::KnownHosts(path) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => (true, String::new()),
                    Ok(false) => (false, format!("not in {}", path.display())),
                    Err(e) => (false, format!("{}: {e}", path.display())),
                }
            }
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((fp, why));
        Ok(ok)
    }
}

enum Cmd {
    Call {
        op: Operation,
        reply: oneshot::Sender<Result<Reply, NetconfError>>,
    },
}

/// An open NETCONF session. Cheap to clone; the task closes when the last clone is dropped.
#[derive(Clone)]
pub struct Session {
    device: String,
    tx: mpsc::Sender<Cmd>,
    hello: Arc<Hello>,
    framing: Framing,
    timeout: Duration,
}

impl Session {
    /// Opens a session: SSH, authentication, the `netconf` subsystem and the hellos, all within
    /// twice the target's timeout (the caller may hold the device's session lock meanwhile, so
    /// no step may wait unbounded on a peer that stopped answering).
    pub async fn connect(t: &Target) -> Result<Session, NetconfError> {
        let deadline = t.timeout.saturating_mul(2);
        match tokio::time::timeout(deadline, Self::connect_steps(t)).await {
            Ok(r) => r,
            Err(_) => Err(NetconfError::Connect {
                device: t.device.clone(),
                addr: format!("{}:{}", t.host, t.port),
                reason: format!(
                    "the session was not set up within {} s (SSH, authentication, subsystem, hello)",
                    deadline.as_secs()
                ),
            }),
        }
    }

    async fn connect_steps(t: &Target) -> Result<Session, NetconfError> {
        let addr = format!("{}:{}", t.host, t.port);
        let cerr = |reason: String| NetconfError::Connect {
            device: t.device.clone(),
            addr: addr.clone(),
            reason,
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_max: 3,
            ..Default::default()
        });
        let seen = Arc::new(Mutex::new(None));
        let handler = Handler {
            host: t.host.clone(),
            port: t.port,
            check: t.host_key.clone(),
            seen: seen.clone(),
        };
        let connecting = client::connect(config, (t.host.as_str(), t.port), handler);
        let mut handle = match tokio::time::timeout(t.timeout, connecting).await {
            Err(_) => {
                return Err(cerr(format!(
                    "no SSH session within {} s",
                    t.timeout.as_secs()
                )))
            }
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                if let Some((fingerprint, why)) =
                    seen.lock().unwrap_or_else(|p| p.into_inner()).take()
                {
                    if !why.is_empty() {
                        return Err(NetconfError::HostKey {
                            device: t.device.clone(),
                            fingerprint,
                            why,
                        });
                    }
                }
                return Err(cerr(e.to_string()));
            }
        };
        let auth = match &t.auth {
            Auth::Password(p) => handle.authenticate_password(&t.user, p).await,
            Auth::Key { path, passphrase } => {
                let key = russh::keys::load_secret_key(path, passphrase.as_deref())
                    .map_err(|e| cerr(format!("key {}: {e}", path.display())))?;
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| cerr(e.to_string()))?
                    .flatten();
                handle
                    .authenticate_publickey(
                        &t.user,
                        PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await
            }
        }
        .map_err(|e| cerr(e.to_string()))?;
        if !auth.success() {
            return Err(NetconfError::Auth {
                device: t.device.clone(),
                user: t.user.clone(),
            });
        }
        let mut channel = handle
            .channel_open_session()
            .await
            .map_err(|e| cerr(format!("open channel: {e}")))?;
        channel
            .request_subsystem(true, "netconf")
            .await
            .map_err(|e| cerr(format!("netconf subsystem: {e}")))?;
        // Hellos, in 1.0 framing.
        let mut out = Vec::new();
        framing::encode(xml::hello().as_bytes(), Framing::EndOfMessage, &mut out);
        channel
            .data_bytes(out)
            .await
            .map_err(|e| cerr(format!("send hello: {e}")))?;
        let mut decoder = Decoder::new();
        let hello_bytes = tokio::time::timeout(t.timeout, async {
            loop {
                if let Some(m) = decoder.next_message() {
                    return m.map_err(|e| e.to_string());
                }
                match channel.wait().await {
                    Some(ChannelMsg::Data { data }) => decoder.push(&data),
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                        return Err("the device closed the session before its hello (is the NETCONF server running?)".to_string())
                    }
                    Some(_) => {}
                }
            }
        })
        .await
        .map_err(|_| cerr(format!("no hello within {} s", t.timeout.as_secs())))?
        .map_err(cerr)?;
        let hello = xml::parse_hello(&hello_bytes).map_err(|e| NetconfError::Protocol {
            device: t.device.clone(),
            what: "hello".into(),
            reason: e.to_string(),
        })?;
        let framing = if hello.has(xml::BASE_1_1) {
            Framing::Chunked
        } else {
            Framing::EndOfMessage
        };
        decoder.framing = framing;
        tracing::info!(device = %t.device, %addr, session = ?hello.session_id, ?framing, "netconf session up");
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run(t.device.clone(), handle, channel, decoder, framing, rx));
        Ok(Session {
            device: t.device.clone(),
            tx,
            hello: Arc::new(hello),
            framing,
            timeout: t.timeout,
        })
    }

    pub fn capabilities(&self) -> &Hello {
        &self.hello
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether `other` is a handle to this same session (not a later one to the same device).
    pub fn same(&self, other: &Session) -> bool {
        self.tx.same_channel(&other.tx)
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Sends `op`, waits for its reply; `<rpc-error>`s become [`NetconfError::Rpc`].
    pub async fn call(&self, op: Operation) -> Result<ReplyBody, NetconfError> {
        let name = op.name().to_string();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Call { op, reply })
            .await
            .map_err(|_| self.closed())?;
        let r = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| NetconfError::Timeout {
                device: self.device.clone(),
                operation: name.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|_| self.closed())??;
        match r.body {
            ReplyBody::Errors(errors) => Err(NetconfError::Rpc {
                device: self.device.clone(),
                operation: name,
                errors,
            }),
            body => Ok(body),
        }
    }

    fn closed(&self) -> NetconfError {
        NetconfError::Closed {
            device: self.device.clone(),
        }
    }

    /// The configuration in `source`, as XML (inside `<data>`).
    pub async fn get_config(
        &self,
        source: Datastore,
        filter: Option<&str>,
    ) -> Result<String, NetconfError> {
        match self
            .call(Operation::GetConfig {
                source,
                filter: filter.map(str::to_string),
            })
            .await?
        {
            ReplyBody::Data(d) => Ok(d),
            _ => Ok(String::new()),
        }
    }

    pub async fn get(&self, filter: Option<&str>) -> Result<String, NetconfError> {
        match self
            .call(Operation::Get {
                filter: filter.map(str::to_string),
            })
            .await?
        {
            ReplyBody::Data(d) => Ok(d),
            _ => Ok(String::new()),
        }
    }

    pub async fn edit_config(
        &self,
        target: Datastore,
        default_operation: DefaultOperation,
        config: &str,
    ) -> Result<(), NetconfError> {
        self.call(Operation::EditConfig {
            target,
            default_operation,
            config: config.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Applies `config` as one transaction on the candidate: lock, edit, commit (confirmed with
    /// `confirm_timeout` seconds, then confirmed at once, where given), unlock. If any step fails
    /// after the lock, the candidate is discarded and unlocked, so the device is left as it was,
    /// and the step's own error is returned.
    pub async fn apply_config(
        &self,
        default_operation: DefaultOperation,
        config: &str,
        confirm_timeout: Option<u32>,
    ) -> Result<(), NetconfError> {
        self.ok(Operation::Lock {
            target: Datastore::Candidate,
        })
        .await?;
        let steps = async {
            self.edit_config(Datastore::Candidate, default_operation, config)
                .await?;
            self.ok(Operation::Commit {
                confirm_timeout,
                persist: None,
            })
            .await?;
            if confirm_timeout.is_some() {
                self.ok(Operation::Commit {
                    confirm_timeout: None,
                    persist: None,
                })
                .await?;
            }
            Ok::<(), NetconfError>(())
        }
        .await;
        if steps.is_err() {
            let _ = self.ok(Operation::DiscardChanges).await;
        }
        let unlocked = self
            .ok(Operation::Unlock {
                target: Datastore::Candidate,
            })
            .await;
        steps.and(unlocked)
    }

    /// A plain op with an `<ok/>` reply.
    pub async fn ok(&self, op: Operation) -> Result<(), NetconfError> {
        self.call(op).await.map(|_| ())
    }

    /// Closes the session politely.
    /// Ends the session politely (`<close-session>`). A device that does not answer in time,
    /// or a transport already gone, ends it all the same: the channel goes with the last handle
    /// of this session. Only the device's own refusal is an error.
    pub async fn close(&self) -> Result<(), NetconfError> {
        match self.ok(Operation::CloseSession).await {
            Err(e @ (NetconfError::Timeout { .. } | NetconfError::Closed { .. })) => {
                tracing::debug!(error = %e, "close-session unanswered; the session ends with its channel");
                Ok(())
            }
            other => other,
        }
    }
}

type Pending = HashMap<String, oneshot::Sender<Result<Reply, NetconfError>>>;

async fn run(
    device: String,
    handle: client::Handle<Handler>,
    mut channel: russh::Channel<client::Msg>,
    mut decoder: Decoder,
    framing: Framing,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let mut pending: Pending = HashMap::new();
    let mut next_id: u64 = 1;
    let why = loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(Cmd::Call { op, reply }) = cmd else { break "session dropped".to_string() };
                let id = next_id;
                next_id += 1;
                let mut out = Vec::new();
                framing::encode(xml::rpc(id, &op.body()).as_bytes(), framing, &mut out);
                if let Err(e) = channel.data_bytes(out).await {
                    let _ = reply.send(Err(NetconfError::Closed { device: device.clone() }));
                    break format!("send: {e}");
                }
                pending.insert(id.to_string(), reply);
            }
            msg = channel.wait() => {
                match msg {
                    Some(ChannelMsg::Data { data }) => {
                        decoder.push(&data);
                        let mut broken = None;
                        while let Some(m) = decoder.next_message() {
                            match m.map_err(|e| e.to_string()).and_then(|m| xml::parse_reply(&m).map_err(|e| e.to_string())) {
                                Ok(r) => {
                                    if let Some(tx) = pending.remove(&r.message_id) {
                                        let _ = tx.send(Ok(r));
                                    } else {
                                        tracing::debug!(%device, id = %r.message_id, "reply nobody waits for");
                                    }
                                }
                                Err(e) => { broken = Some(e); break; }
                            }
                        }
                        if let Some(e) = broken {
                            break format!("malformed message from the device: {e}");
                        }
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break "closed by the device".to_string(),
                    Some(_) => {}
                }
            }
        }
    };
    tracing::info!(%device, reason = %why, "netconf session ended");
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(NetconfError::Closed {
            device: device.clone(),
        }));
    }
    let _ = channel.close().await;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}
