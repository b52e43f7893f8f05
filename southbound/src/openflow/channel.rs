//! The controller side of OpenFlow 1.3 connections: a listener, and one task per switch that
//! owns its socket.
//!
//! ```text
//!  ovs-vswitchd ──TCP──▶ listener ──spawn──▶ switch task (owns the socket)
//!                                              │  handshake: hello ⇄ hello, features
//!                                              │  assigns xids; matches replies (gathers multipart)
//!                                              │  answers echo; closes on a malformed message
//!  Switch handle ──Cmd (mpsc)──▶ switch task ──▶ SwitchEvent (mpsc) ──▶ controller
//!                                                 Connected / Error(with the offending request)
//!                                                 / PortStatus / PacketIn / Disconnected
//! ```
//! A malformed or hostile message closes that switch's channel with a logged error and a
//! `Disconnected` event; it never takes the controller down.
//!
//! With TLS ([`ListenOptions::tls`]), a switch must present a certificate the configured CA
//! signed (Open vSwitch's `ssl:` controller targets with `ovs-vsctl set-ssl`), so only switches
//! holding a key the operator issued can connect. Either way a datapath id belongs to the first
//! live session that claimed it: a second connection claiming it is refused while the first
//! still answers an echo within [`TAKEOVER_PROBE`]; a first session that no longer answers is
//! closed and the newcomer takes over (a switch that restarted behind a dead TCP session).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::{frame_len, Features, Message, MultipartReply, OfpMessage, VERSION};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("switch {dpid:#x}: channel closed")]
    Closed { dpid: u64 },
    #[error("switch {dpid:#x}: request {xid} refused: error type {kind} code {code}")]
    Refused {
        dpid: u64,
        xid: u32,
        kind: u16,
        code: u16,
    },
    #[error("switch {peer}: {reason}")]
    Handshake { peer: String, reason: String },
    #[error("listener: {0}")]
    Listen(String),
    #[error("switch {dpid:#x}: the reply to request {xid} has more than {parts} parts; refused")]
    TooLarge { dpid: u64, xid: u32, parts: usize },
    /// Requests of a batch or bundle the switch refused, each with the request it named.
    #[error("switch {dpid:#x}: {} request(s) refused, first: {}", refused.len(), refused.first().map(|r| r.to_string()).unwrap_or_default())]
    Rejected { dpid: u64, refused: Vec<Refusal> },
}

/// One refused request: the error type and code, and the request as we sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub xid: u32,
    pub kind: u16,
    pub code: u16,
    pub request: Message,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut req = format!("{:?}", self.request);
        if req.len() > 300 {
            let mut cut = 300;
            while !req.is_char_boundary(cut) {
                cut -= 1;
            }
            req.truncate(cut);
            req.push('…');
        }
        write!(
            f,
            "xid {} error type {} code {} for {req}",
            self.xid, self.kind, self.code
        )
    }
}

/// Something a switch said or did, for the controller.
#[derive(Debug)]
pub enum SwitchEvent {
    Connected(Switch),
    /// An error for a request nobody waits on (a flow_mod, say), with that request decoded.
    Error {
        dpid: u64,
        xid: u32,
        kind: u16,
        code: u16,
        offending: Option<OfpMessage>,
    },
    PortStatus {
        dpid: u64,
        reason: u8,
        port: super::Port,
    },
    PacketIn {
        dpid: u64,
        packet: super::PacketIn,
    },
    Disconnected {
        dpid: u64,
        /// Which connection ended: a switch that reconnected has a newer one.
        conn_id: u64,
        reason: String,
    },
}

/// How long a request waits for its reply (or a batch for its barrier).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most parts one multipart reply may have (each at most 64 KiB): a reply past it is
/// refused to its requester rather than held in memory.
pub const MAX_MULTIPART_PARTS: usize = 1024;
/// An idle channel sends an echo request after this long, and is closed after three times it.
pub const ECHO_INTERVAL: Duration = Duration::from_secs(5);
/// How long the live session of a datapath id has to answer when another connection claims it.
pub const TAKEOVER_PROBE: Duration = Duration::from_secs(3);
/// How long a switch has for the TLS handshake.
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

static CONN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where a request's reply (all parts of a multipart) or error goes.
type ReplyTx = oneshot::Sender<Result<Vec<Message>, ChannelError>>;

enum Cmd {
    /// Send; if `reply` is set, deliver the reply (all parts of a multipart) or the error.
    Send {
        body: Message,
        reply: Option<oneshot::Sender<Result<Vec<Message>, ChannelError>>>,
        xid: oneshot::Sender<u32>,
    },
    /// Send all in one write, then a barrier; report every refusal among them.
    Batch {
        bodies: Vec<Message>,
        done: oneshot::Sender<Result<(), ChannelError>>,
    },
    /// Send an echo request; `alive` fires at the next message from the switch.
    Probe { alive: oneshot::Sender<()> },
    /// Close the channel: another connection took the datapath id over.
    Replaced,
}

/// A batch waiting for its barrier.
struct BatchWait {
    first_xid: u32,
    bodies: Vec<Message>,
    refused: Vec<Refusal>,
    done: oneshot::Sender<Result<(), ChannelError>>,
}

/// A handle on one connected switch.
#[derive(Debug, Clone)]
pub struct Switch {
    pub datapath_id: u64,
    pub features: Features,
    /// Unique per connection (a reconnecting switch gets a new one).
    pub conn_id: u64,
    tx: mpsc::Sender<Cmd>,
    bundles: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Switch {
    /// Sends a message that expects no reply (flow_mod, packet_out); returns its xid. Errors for
    /// it arrive as [`SwitchEvent::Error`].
    pub async fn send(&self, body: Message) -> Result<u32, ChannelError> {
        let (xtx, xrx) = oneshot::channel();
        self.tx
            .send(Cmd::Send {
                body,
                reply: None,
                xid: xtx,
            })
            .await
            .map_err(|_| self.closed())?;
        xrx.await.map_err(|_| self.closed())
    }

    /// Sends a request and waits for its reply (all parts of a multipart reply).
    pub async fn request(&self, body: Message) -> Result<Vec<Message>, ChannelError> {
        let (rtx, rrx) = oneshot::channel();
        let (xtx, _xrx) = oneshot::channel();
        self.tx
            .send(Cmd::Send {
                body,
                reply: Some(rtx),
                xid: xtx,
            })
            .await
            .map_err(|_| self.closed())?;
        tokio::time::timeout(REQUEST_TIMEOUT, rrx)
            .await
            .map_err(|_| self.timeout())?
            .map_err(|_| self.closed())?
    }

    fn timeout(&self) -> ChannelError {
        ChannelError::Handshake {
            peer: format!("{:#x}", self.datapath_id),
            reason: format!("no reply within {} s", REQUEST_TIMEOUT.as_secs()),
        }
    }

    /// Waits until the switch has processed everything sent before.
    pub async fn barrier(&self) -> Result<(), ChannelError> {
        self.request(Message::BarrierRequest).await.map(|_| ())
    }

    /// Sends `bodies` in as few writes as possible followed by a barrier, and returns once the
    /// switch has processed all of them: `Rejected` lists every one it refused.
    pub async fn batch(&self, bodies: Vec<Message>) -> Result<(), ChannelError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Batch { bodies, done })
            .await
            .map_err(|_| self.closed())?;
        tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| self.timeout())?
            .map_err(|_| self.closed())?
    }

    /// Applies `bodies` atomically in one ONF bundle (ordered): either all take effect at commit or
    /// none does; the flow table is never seen half-changed. A refused message discards the bundle.
    pub async fn bundle(&self, bodies: Vec<Message>) -> Result<(), ChannelError> {
        use super::{BundleControl, BundleCtrl, BUNDLE_ATOMIC, BUNDLE_ORDERED};
        let id = self
            .bundles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let flags = BUNDLE_ATOMIC | BUNDLE_ORDERED;
        let ctl = |kind| {
            Message::BundleControl(BundleControl {
                bundle_id: id,
                kind,
                flags,
            })
        };
        self.request(ctl(BundleCtrl::OpenRequest)).await?;
        let adds = bodies
            .into_iter()
            .map(|m| Message::BundleAdd {
                bundle_id: id,
                flags,
                message: Box::new(m),
            })
            .collect();
        if let Err(e) = self.batch(adds).await {
            let _ = self.request(ctl(BundleCtrl::DiscardRequest)).await;
            return Err(e);
        }
        self.request(ctl(BundleCtrl::CommitRequest))
            .await
            .map(|_| ())
    }

    fn closed(&self) -> ChannelError {
        ChannelError::Closed {
            dpid: self.datapath_id,
        }
    }
}

/// How the listener takes switches.
#[derive(Clone, Default)]
pub struct ListenOptions {
    /// TLS with client certificates (see [`tls_server_config`]); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS server configuration for switches: our certificate chain and key, and the CA whose
/// certificates switches must present. All PEM.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ChannelError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad =
        |p: &std::path::Path, e: String| ChannelError::Listen(format!("{}: {e}", p.display()));
    let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, ChannelError> {
        let v: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| bad(p, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(p, format!("not a PEM certificate: {e}")))?;
        if v.is_empty() {
            return Err(bad(p, "no CERTIFICATE block".into()));
        }
        Ok(v)
    };
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, format!("no usable PRIVATE KEY block: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(client_ca)? {
        roots
            .add(c)
            .map_err(|e| bad(client_ca, format!("not a CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(client_ca, e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ChannelError::Listen(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// The live session of each datapath id.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<u64, Live>>>);

#[derive(Clone)]
struct Live {
    conn_id: u64,
    peer: SocketAddr,
    tx: mpsc::Sender<Cmd>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `dpid` for a new session: refused while the live one answers a probe.
    async fn claim(&self, dpid: u64, new: Live) -> Result<(), String> {
        let old = self.lock().get(&dpid).cloned();
        if let Some(old) = old {
            let (alive, answered) = oneshot::channel();
            let probed = old.tx.send(Cmd::Probe { alive }).await.is_ok();
            let answers = probed
                && tokio::time::timeout(TAKEOVER_PROBE, answered)
                    .await
                    .is_ok_and(|r| r.is_ok());
            if answers {
                return Err(format!(
                    "datapath id {dpid:#x} is connected from {} and still answers; a second session is refused",
                    old.peer
                ));
            }
            tracing::warn!(dpid = format!("{dpid:#x}"), old = %old.peer, new = %new.peer, "the switch's old session no longer answers; the new one takes over");
            let _ = old.tx.try_send(Cmd::Replaced);
        }
        self.lock().insert(dpid, new);
        Ok(())
    }

    fn release(&self, dpid: u64, conn_id: u64) {
        let mut l = self.lock();
        if l.get(&dpid).is_some_and(|s| s.conn_id == conn_id) {
            l.remove(&dpid);
        }
    }
}

/// Listens for switches on `addr` (plain TCP); returns the bound address and the event stream.
pub async fn listen(
    addr: SocketAddr,
) -> Result<(SocketAddr, mpsc::Receiver<SwitchEvent>), ChannelError> {
    listen_with(addr, ListenOptions::default()).await
}

/// Listens for switches on `addr` with `opts`; returns the bound address and the event stream.
pub async fn listen_with(
    addr: SocketAddr,
    opts: ListenOptions,
) -> Result<(SocketAddr, mpsc::Receiver<SwitchEvent>), ChannelError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ChannelError::Listen(format!("{addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ChannelError::Listen(e.to_string()))?;
    let (events, rx) = mpsc::channel(4096);
    let sessions = Sessions::default();
    let acceptor = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let events = events.clone();
                    let sessions = sessions.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let r = match acceptor {
                            None => run_switch(stream, peer, events, sessions).await,
                            Some(a) => {
                                match tokio::time::timeout(TLS_HANDSHAKE, a.accept(stream)).await {
                                    Ok(Ok(tls)) => run_switch(tls, peer, events, sessions).await,
                                    Ok(Err(e)) => Err(ChannelError::Handshake {
                                        peer: peer.to_string(),
                                        reason: format!("TLS: {e}"),
                                    }),
                                    Err(_) => Err(ChannelError::Handshake {
                                        peer: peer.to_string(),
                                        reason: format!(
                                            "no TLS handshake within {} s",
                                            TLS_HANDSHAKE.as_secs()
                                        ),
                                    }),
                                }
                            }
                        };
                        if let Err(e) = r {
                            tracing::warn!(%peer, error = %e, "switch connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((local, rx))
}

struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn write(&mut self, m: &OfpMessage) -> Result<(), String> {
        let bytes = m.encode().map_err(|e| e.to_string())?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| e.to_string())?;
        self.stream.flush().await.map_err(|e| e.to_string())
    }

    async fn read(&mut self) -> Result<OfpMessage, String> {
        loop {
            if let Some(n) = frame_len(&self.buf).map_err(|e| e.to_string())? {
                let (m, _) = OfpMessage::decode(&self.buf[..n])
                    .map_err(|e| format!("malformed message: {e}"))?;
                self.buf.drain(..n);
                return Ok(m);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed by the switch".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

async fn run_switch<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    events: mpsc::Sender<SwitchEvent>,
    sessions: Sessions,
) -> Result<(), ChannelError> {
    let hs = |reason: String| ChannelError::Handshake {
        peer: peer.to_string(),
        reason,
    };
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    c.write(&OfpMessage::new(
        0,
        Message::Hello {
            versions: Some(1 << VERSION),
        },
    ))
    .await
    .map_err(hs)?;
    let hello = tokio::time::timeout(Duration::from_secs(10), c.read())
        .await
        .map_err(|_| hs("no hello within 10 s".into()))?
        .map_err(hs)?;
    match hello.body {
        Message::Hello { versions: Some(v) } if v & (1 << VERSION) == 0 => {
            return Err(hs(format!(
                "switch does not speak OpenFlow 1.3 (versions {v:#x})"
            )))
        }
        Message::Hello { .. } => {}
        other => return Err(hs(format!("expected hello, got {other:?}"))),
    }
    c.write(&OfpMessage::new(1, Message::FeaturesRequest))
        .await
        .map_err(hs)?;
    let features = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.read())
            .await
            .map_err(|_| hs("no features reply within 10 s".into()))?
            .map_err(hs)?;
        match m.body {
            Message::FeaturesReply(f) => break f,
            Message::EchoRequest(d) => c
                .write(&OfpMessage::new(m.xid, Message::EchoReply(d)))
                .await
                .map_err(hs)?,
            _ => {}
        }
    };
    let dpid = features.datapath_id;
    let conn_id = CONN_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
    sessions
        .claim(
            dpid,
            Live {
                conn_id,
                peer,
                tx: tx.clone(),
            },
        )
        .await
        .map_err(hs)?;
    let _ = events
        .send(SwitchEvent::Connected(Switch {
            datapath_id: dpid,
            features,
            conn_id,
            tx,
            bundles: Default::default(),
        }))
        .await;
    tracing::info!(%peer, dpid = format!("{dpid:#x}"), "switch connected");

    let mut next_xid: u32 = 2;
    let mut last_rx = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(ECHO_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: HashMap<u32, (ReplyTx, Vec<Message>)> = HashMap::new();
    let mut sent: HashMap<u32, Message> = HashMap::new();
    let mut batches: HashMap<u32, BatchWait> = HashMap::new();
    let mut probes: Vec<oneshot::Sender<()>> = Vec::new();
    let reason = loop {
        tokio::select! {
            cmd = rx.recv() => {
                let (body, reply, xid) = match cmd {
                    None => break "controller dropped the switch".to_string(),
                    Some(Cmd::Replaced) => break "a new session took the datapath id over".to_string(),
                    Some(Cmd::Probe { alive }) => {
                        probes.push(alive);
                        if let Err(e) = c.write(&OfpMessage::new(1, Message::EchoRequest(b"meshwire".to_vec()))).await { break e; }
                        continue;
                    }
                    Some(Cmd::Send { body, reply, xid }) => (body, reply, xid),
                                        Some(Cmd::Batch { bodies, done }) => {
                        // The batch's xids must be contiguous: never wrap inside one.
                        if (next_xid as u64) + bodies.len() as u64 + 4 > u32::MAX as u64 {
                            next_xid = 2;
                        }
                        let first_xid = next_xid + 1;
                        let mut bytes = Vec::with_capacity(bodies.len() * 96 + 8);
                        let mut bad = None;
                                                for b in &bodies {
                            next_xid += 1;
                            if let Err(e) = super::encode_into(next_xid, b, &mut bytes) { bad = Some(e.to_string()); break; }
                        }
                        if let Some(e) = bad {
                            let _ = done.send(Err(ChannelError::Handshake { peer: peer.to_string(), reason: format!("cannot encode: {e}") }));
                            continue;
                        }
                        next_xid = next_xid.wrapping_add(1).max(2);
                        let barrier = OfpMessage::new(next_xid, Message::BarrierRequest);
                        match barrier.encode() {
                            Ok(v) => bytes.extend_from_slice(&v),
                            Err(e) => { let _ = done.send(Err(ChannelError::Handshake { peer: peer.to_string(), reason: e.to_string() })); continue; }
                        }
                        if let Err(e) = write_flush(&mut c.stream, &bytes).await {
                            let _ = done.send(Err(ChannelError::Closed { dpid }));
                            break e.to_string();
                        }
                        batches.insert(next_xid, BatchWait { first_xid, bodies, refused: Vec::new(), done });
                        continue;
                    }
                };
                next_xid = next_xid.wrapping_add(1).max(2);
                let m = OfpMessage::new(next_xid, body);
                if let Err(e) = c.write(&m).await {
                    break e;
                }
                let _ = xid.send(next_xid);
                match reply {
                    Some(r) => { waiting.insert(next_xid, (r, Vec::new())); }
                    None => {
                        // Remember recent fire-and-forget requests to name them in errors.
                        if sent.len() > 4096 { sent.clear(); }
                        sent.insert(next_xid, m.body);
                    }
                }
            }
                        _ = ticker.tick() => {
                // Requesters that gave up (their timeout passed): forget what they waited for.
                waiting.retain(|_, (r, _)| !r.is_closed());
                batches.retain(|_, b| !b.done.is_closed());
                let idle = last_rx.elapsed();
                if idle > ECHO_INTERVAL * 3 {
                    break format!("nothing from the switch for {} s", idle.as_secs());
                }
                if idle >= ECHO_INTERVAL {
                    if let Err(e) = c.write(&OfpMessage::new(1, Message::EchoRequest(b"meshwire".to_vec()))).await { break e; }
                }
            }
            msg = c.read() => {
                let m = match msg { Ok(m) => m, Err(e) => break e };
                last_rx = tokio::time::Instant::now();
                for p in probes.drain(..) {
                    let _ = p.send(());
                }
                match m.body {
                    Message::EchoRequest(d) => {
                        if let Err(e) = c.write(&OfpMessage::new(m.xid, Message::EchoReply(d))).await { break e; }
                    }
                    Message::Error { kind, code, .. } if batches.values().any(|b| (m.xid.wrapping_sub(b.first_xid) as usize) < b.bodies.len()) => {
                        if let Some(b) = batches.values_mut().find(|b| (m.xid.wrapping_sub(b.first_xid) as usize) < b.bodies.len()) {
                            let request = b.bodies[m.xid.wrapping_sub(b.first_xid) as usize].clone();
                            b.refused.push(Refusal { xid: m.xid, kind, code, request });
                        }
                    }
                    Message::BarrierReply if batches.contains_key(&m.xid) => {
                        if let Some(b) = batches.remove(&m.xid) {
                            let r = if b.refused.is_empty() { Ok(()) } else { Err(ChannelError::Rejected { dpid, refused: b.refused }) };
                            let _ = b.done.send(r);
                        }
                    }
                    Message::Error { kind, code, data } => {
                        if let Some((r, _)) = waiting.remove(&m.xid) {
                            let _ = r.send(Err(ChannelError::Refused { dpid, xid: m.xid, kind, code }));
                        } else {
                            sent.remove(&m.xid);
                            let offending = OfpMessage::decode(&data).ok().map(|(o, _)| o);
                            let _ = events.send(SwitchEvent::Error { dpid, xid: m.xid, kind, code, offending }).await;
                        }
                    }
                    Message::PortStatus { reason, port } => { let _ = events.send(SwitchEvent::PortStatus { dpid, reason, port }).await; }
                    Message::PacketIn(packet) => { let _ = events.send(SwitchEvent::PacketIn { dpid, packet }).await; }
                    body => {
                        let more = matches!(&body, Message::MultipartReply(MultipartReply::Flow { flags, .. } | MultipartReply::PortDesc { flags, .. } | MultipartReply::PortStats { flags, .. } | MultipartReply::Other { flags, .. }) if flags & 1 == 1);
                        if let Some((_, parts)) = waiting.get_mut(&m.xid) {
                            parts.push(body);
                            if parts.len() > MAX_MULTIPART_PARTS {
                                if let Some((r, _)) = waiting.remove(&m.xid) {
                                    let _ = r.send(Err(ChannelError::TooLarge { dpid, xid: m.xid, parts: MAX_MULTIPART_PARTS }));
                                }
                            } else if !more {
                                if let Some((r, parts)) = waiting.remove(&m.xid) { let _ = r.send(Ok(parts)); }
                            }
                        }
                    }
                }
            }
        }
    };
    sessions.release(dpid, conn_id);
    for (_, b) in batches.drain() {
        let _ = b.done.send(Err(ChannelError::Closed { dpid }));
    }
    tracing::warn!(%peer, dpid = format!("{dpid:#x}"), %reason, "switch channel closed");
    let _ = events
        .send(SwitchEvent::Disconnected {
            dpid,
            conn_id,
            reason,
        })
        .await;
    Ok(())
}
