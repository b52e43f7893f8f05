//! Input: fake switches (our codec over TCP or TLS, driven by the test) connecting to the
//! controller's OpenFlow listener. Output: a second session claiming the datapath id of a live
//! one is refused and the first keeps working; a first session that no longer answers is
//! replaced; over TLS only a switch presenting a certificate from the configured CA connects.

use std::sync::Arc;
use std::time::Duration;

use meshwire_southbound::openflow::channel::{
    listen, listen_with, tls_server_config, ListenOptions, SwitchEvent, TAKEOVER_PROBE,
};
use meshwire_southbound::openflow::{frame_len, Features, Message, OfpMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

mod support;
use support::pki;

/// A switch played by the test.
struct Fake<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Fake<S> {
    async fn send(&mut self, xid: u32, m: Message) {
        self.io
            .write_all(&OfpMessage::new(xid, m).encode().unwrap())
            .await
            .unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next message, or `None` when the controller closed the connection.
    async fn recv(&mut self) -> Option<OfpMessage> {
        loop {
            // Bytes that are no OpenFlow (a TLS alert toward a plain client) end the session.
            if let Some(n) = frame_len(&self.buf).ok()? {
                let (m, _) = OfpMessage::decode(&self.buf[..n]).ok()?;
                self.buf.drain(..n);
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Hello both ways, then the features reply naming `dpid`.
    async fn handshake(&mut self, dpid: u64) {
        let hello = self.recv().await.unwrap();
        assert!(matches!(hello.body, Message::Hello { .. }));
        self.send(0, Message::Hello { versions: None }).await;
        let req = self.recv().await.unwrap();
        assert!(matches!(req.body, Message::FeaturesRequest));
        self.send(
            req.xid,
            Message::FeaturesReply(Features {
                datapath_id: dpid,
                n_buffers: 0,
                n_tables: 254,
                auxiliary_id: 0,
                capabilities: 0,
            }),
        )
        .await;
    }

    /// Answers echoes and barriers until the controller closes the connection.
    async fn serve(mut self) {
        while let Some(m) = self.recv().await {
            match m.body {
                Message::EchoRequest(d) => self.send(m.xid, Message::EchoReply(d)).await,
                Message::BarrierRequest => self.send(m.xid, Message::BarrierReply).await,
                _ => {}
            }
        }
    }
}

async fn connected(
    events: &mut mpsc::Receiver<SwitchEvent>,
) -> meshwire_southbound::openflow::channel::Switch {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(SwitchEvent::Connected(sw))) => return sw,
            Ok(Some(_)) => continue,
            other => panic!("no Connected event: {other:?}"),
        }
    }
}

/// Input: switch A connects as datapath 7 and answers echoes; B then claims datapath 7. Output:
/// B's connection is closed after the handshake, no second Connected event is sent, and A's
/// channel still carries a barrier.
#[tokio::test]
async fn dev_second_session_for_a_live_datapath_id_is_refused() {
    let (addr, mut events) = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut a = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    a.handshake(7).await;
    let sw = connected(&mut events).await;
    tokio::spawn(a.serve());

    let mut b = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    b.handshake(7).await;
    // The controller probes A (which answers), then closes B without a word.
    assert!(
        b.recv().await.is_none(),
        "the impostor's session stayed open"
    );
    sw.barrier().await.unwrap();
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, SwitchEvent::Connected(_)),
            "a second session was accepted"
        );
    }
}

/// Input: switch A connects as datapath 8 and then stops answering (its TCP session stays
/// open); B claims datapath 8. Output: after the probe, B is accepted (Connected, with a newer
/// connection id) and A's channel is closed.
#[tokio::test]
async fn dev_silent_session_is_replaced_by_the_newcomer() {
    let (addr, mut events) = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut a = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    a.handshake(8).await;
    let first = connected(&mut events).await;
    let mut b = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    let started = std::time::Instant::now();
    b.handshake(8).await;
    tokio::spawn(b.serve());
    let second = connected(&mut events).await;
    assert!(started.elapsed() >= TAKEOVER_PROBE);
    assert_eq!(second.datapath_id, 8);
    assert!(second.conn_id > first.conn_id);
    second.barrier().await.unwrap();
    // A is closed: reading past our echo probe ends.
    while a.recv().await.is_some() {}
}

fn client_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((c, k)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(c).unwrap()],
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Input: a TLS listener requiring switch certificates from our CA; a switch with such a
/// certificate, one without any, and one speaking plain TCP. Output: only the first connects
/// (Connected, and its channel carries a barrier); the others never get past the handshake.
#[tokio::test]
async fn dev_tls_listener_takes_only_switches_with_our_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaves) = pki(dir.path());
    let cfg = tls_server_config(&leaves[0].0, &leaves[0].1, &ca).unwrap();
    let (addr, mut events) = listen_with(
        "127.0.0.1:0".parse().unwrap(),
        ListenOptions { tls: Some(cfg) },
    )
    .await
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

    // No client certificate: the server refuses the handshake.
    let anon = tokio_rustls::TlsConnector::from(client_config(&ca, None));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = match anon.connect(name.clone(), tcp).await {
        Err(_) => true,
        // TLS 1.3 finishes on the client first; the refusal arrives with the first read.
        Ok(io) => Fake {
            io,
            buf: Vec::new(),
        }
        .recv()
        .await
        .is_none(),
    };
    assert!(refused, "a switch without a certificate got a session");

    // Plain TCP toward the TLS listener: no OpenFlow hello ever comes back.
    let mut plain = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    plain.send(0, Message::Hello { versions: None }).await;
    assert!(plain.recv().await.is_none());

    // With our certificate: a session.
    let good =
        tokio_rustls::TlsConnector::from(client_config(&ca, Some((&leaves[1].0, &leaves[1].1))));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sw = Fake {
        io: good.connect(name, tcp).await.unwrap(),
        buf: Vec::new(),
    };
    sw.handshake(9).await;
    let handle = connected(&mut events).await;
    tokio::spawn(sw.serve());
    assert_eq!(handle.datapath_id, 9);
    handle.barrier().await.unwrap();
}

/// Input: a switch that answers a port-description request with an endless multipart reply
/// (every part flagged "more"). Output: past MAX_MULTIPART_PARTS parts the requester gets
/// TooLarge instead of the controller holding the reply in memory, and the channel stays up.
#[tokio::test]
async fn dev_endless_multipart_reply_is_refused() {
    use meshwire_southbound::openflow::channel::{ChannelError, MAX_MULTIPART_PARTS};
    use meshwire_southbound::openflow::{MultipartReply, MultipartRequest};
    let (addr, mut events) = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut sw = Fake {
        io: tokio::net::TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    sw.handshake(11).await;
    let handle = connected(&mut events).await;
    tokio::spawn(async move {
        while let Some(m) = sw.recv().await {
            match m.body {
                Message::MultipartRequest(MultipartRequest::PortDesc { .. }) => {
                    for _ in 0..=MAX_MULTIPART_PARTS + 10 {
                        sw.send(
                            m.xid,
                            Message::MultipartReply(MultipartReply::PortDesc {
                                flags: 1,
                                ports: vec![],
                            }),
                        )
                        .await;
                    }
                }
                Message::EchoRequest(d) => sw.send(m.xid, Message::EchoReply(d)).await,
                Message::BarrierRequest => sw.send(m.xid, Message::BarrierReply).await,
                _ => {}
            }
        }
    });
    let r = handle
        .request(Message::MultipartRequest(MultipartRequest::PortDesc {
            flags: 0,
        }))
        .await;
    assert!(
        matches!(r, Err(ChannelError::TooLarge { parts, .. }) if parts == MAX_MULTIPART_PARTS),
        "{r:?}"
    );
    handle.barrier().await.unwrap();
}
