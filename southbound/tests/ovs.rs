//! Input: our OpenFlow 1.3 codec speaking to a real ovs-vswitchd (userspace datapath), with the
//! test as the controller. Output: the handshake, features and port descriptions decode; a flow
//! with our cookie and a tunnel-id set_field is installed (as `ovs-ofctl` shows); a refused
//! flow_mod comes back as an error naming our request.
//! Needs root and openvswitch-switch; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use meshwire_southbound::openflow::*;

mod support;
use support::Ovs;

/// A minimal blocking controller connection for the test.
struct Switch {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Switch {
    fn send(&mut self, m: OfpMessage) {
        self.stream.write_all(&m.encode().unwrap()).unwrap();
    }

    fn recv(&mut self) -> OfpMessage {
        loop {
            if let Some(n) = frame_len(&self.buf).unwrap() {
                let (m, _) = OfpMessage::decode(&self.buf[..n]).unwrap();
                self.buf.drain(..n);
                if let Message::EchoRequest(d) = &m.body {
                    let reply = OfpMessage::new(m.xid, Message::EchoReply(d.clone()));
                    self.send(reply);
                    continue;
                }
                return m;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "switch closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message with `xid`, skipping asynchronous ones (port status and the like).
    fn reply(&mut self, xid: u32) -> Message {
        loop {
            let m = self.recv();
            if m.xid == xid {
                return m.body;
            }
        }
    }
}

#[test]
fn dev_real_ovs_handshake_features_flow_mod_and_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let Some(ovs) = Ovs::start(Some(port)) else {
        return;
    };
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sw = Switch {
        stream,
        buf: Vec::new(),
    };

    sw.send(OfpMessage::new(
        1,
        Message::Hello {
            versions: Some(1 << VERSION),
        },
    ));
    let hello = sw.recv();
    assert!(
        matches!(hello.body, Message::Hello { versions: Some(v) } if v & (1 << VERSION) != 0),
        "{hello:?}"
    );

    sw.send(OfpMessage::new(2, Message::FeaturesRequest));
    let Message::FeaturesReply(f) = sw.reply(2) else {
        panic!("no features reply")
    };
    assert!(f.n_tables > 0 && f.datapath_id != 0, "{f:?}");

    sw.send(OfpMessage::new(
        3,
        Message::MultipartRequest(MultipartRequest::PortDesc { flags: 0 }),
    ));
    let Message::MultipartReply(MultipartReply::PortDesc { ports, .. }) = sw.reply(3) else {
        panic!("no port desc")
    };
    assert!(
        ports.iter().any(|p| p.name == ovs.bridge),
        "the LOCAL port carries the bridge's name: {ports:?}"
    );

    // Our flow: cookie 0x4d57, in_port=1 -> tunnel id 5001, output 2; confirmed by a barrier.
    let fm = FlowMod::add(
        0x4d57,
        0,
        100,
        vec![OxmField::InPort(1)],
        vec![
            Action::SetField(OxmField::TunnelId(5001, None)),
            Action::Output {
                port: 2,
                max_len: 0,
            },
        ],
    );
    sw.send(OfpMessage::new(4, Message::FlowMod(fm)));
    sw.send(OfpMessage::new(5, Message::BarrierRequest));
    assert_eq!(sw.reply(5), Message::BarrierReply);
    let flows = ovs.ofctl("dump-flows");
    assert!(
        flows.contains("cookie=0x4d57")
            && flows.contains("priority=100,in_port=1")
            && flows.contains("set_field:0x1389->tun_id,output:2"),
        "{flows}"
    );

    // Flow stats by cookie come back through our decoder.
    sw.send(OfpMessage::new(
        6,
        Message::MultipartRequest(MultipartRequest::flows_by_cookie(0x4d57)),
    ));
    let Message::MultipartReply(MultipartReply::Flow { flows, .. }) = sw.reply(6) else {
        panic!("no flow stats")
    };
    assert_eq!(flows.len(), 1);
    assert_eq!(
        (flows[0].cookie, flows[0].priority, flows[0].matches.clone()),
        (0x4d57, 100, vec![OxmField::InPort(1)])
    );

    // A flow_mod to a group that does not exist is refused; the error carries our request.
    let bad = FlowMod::add(0x4d57, 0, 50, vec![], vec![Action::Group(999)]);
    sw.send(OfpMessage::new(7, Message::FlowMod(bad)));
    let Message::Error { kind, data, .. } = sw.reply(7) else {
        panic!("no error")
    };
    assert_eq!(kind, 2, "OFPET_BAD_ACTION");
    let (offending, _) = OfpMessage::decode(&data).unwrap();
    assert_eq!(offending.xid, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_real_ovs_channel_requests_errors_and_hostile_input() {
    use meshwire_southbound::openflow::channel::SwitchEvent;
    async fn next(ev: &mut tokio::sync::mpsc::Receiver<SwitchEvent>) -> SwitchEvent {
        tokio::time::timeout(Duration::from_secs(15), ev.recv())
            .await
            .expect("event in time")
            .expect("listener alive")
    }
    use meshwire_southbound::openflow::channel::listen;
    let (addr, mut events) = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let Some(ovs) = Ovs::start(Some(addr.port())) else {
        return;
    };
    let sw = loop {
        if let SwitchEvent::Connected(sw) = next(&mut events).await {
            break sw;
        }
    };
    assert!(sw.datapath_id != 0);

    // Multipart replies come back whole.
    let reply = sw
        .request(Message::MultipartRequest(MultipartRequest::PortDesc {
            flags: 0,
        }))
        .await
        .unwrap();
    assert!(
        matches!(&reply[0], Message::MultipartReply(MultipartReply::PortDesc { ports, .. }) if ports.iter().any(|p| p.name == ovs.bridge))
    );

    // Fire-and-forget flow_mods, confirmed by a barrier; an error names its request.
    for i in 0..100u16 {
        let fm = FlowMod::add(
            0x4d57,
            0,
            1000 + i,
            vec![OxmField::InPort(u32::from(i) + 1)],
            vec![Action::Output {
                port: 2,
                max_len: 0,
            }],
        );
        sw.send(Message::FlowMod(fm)).await.unwrap();
    }
    let bad_xid = sw
        .send(Message::FlowMod(FlowMod::add(
            0x4d57,
            0,
            1,
            vec![],
            vec![Action::Group(4242)],
        )))
        .await
        .unwrap();
    sw.barrier().await.unwrap();
    let err = loop {
        if let e @ SwitchEvent::Error { .. } = next(&mut events).await {
            break e;
        }
    };
    let SwitchEvent::Error {
        xid,
        kind,
        offending,
        ..
    } = err
    else {
        unreachable!()
    };
    assert_eq!((xid, kind), (bad_xid, 2));
    assert!(matches!(offending.map(|o| o.body), Some(Message::FlowMod(f)) if f.priority == 1));
    let stats = sw
        .request(Message::MultipartRequest(
            MultipartRequest::flows_by_cookie(0x4d57),
        ))
        .await
        .unwrap();
    let n: usize = stats
        .iter()
        .map(|m| match m {
            Message::MultipartReply(MultipartReply::Flow { flows, .. }) => flows.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(n, 100);

    // A hostile peer pretending to be a switch: a malformed message closes only its channel.
    let mut bad = std::net::TcpStream::connect(addr).unwrap();
    bad.write_all(
        &OfpMessage::new(0, Message::Hello { versions: None })
            .encode()
            .unwrap(),
    )
    .unwrap();
    bad.write_all(&[0x04, 14, 0, 9, 0, 0, 0, 1, 0xff]).unwrap(); // a 9-byte "flow_mod"
                                                                 // The real switch still answers.
    sw.barrier().await.unwrap();
}

/// Input: the OpenFlow listener over TLS requiring switch certificates from our CA, and a real
/// ovs-vswitchd whose bridge dials `ssl:` with a key and certificate that CA signed (`ovs-vsctl
/// set-ssl`). Output: the switch connects over TLS, and its channel carries requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_real_ovs_over_tls_with_client_certificates() {
    use meshwire_southbound::openflow::channel::{
        listen_with, tls_server_config, ListenOptions, SwitchEvent,
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaves) = support::pki(dir.path());
    let cfg = tls_server_config(&leaves[0].0, &leaves[0].1, &ca).unwrap();
    let (addr, mut events) = listen_with(
        "127.0.0.1:0".parse().unwrap(),
        ListenOptions { tls: Some(cfg) },
    )
    .await
    .unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let Some(ovs) = Ovs::start_ssl(
        addr.port(),
        &path(&leaves[1].1),
        &path(&leaves[1].0),
        &path(&ca),
    ) else {
        return;
    };
    let sw = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(SwitchEvent::Connected(sw))) => break sw,
            Ok(Some(_)) => continue,
            other => panic!(
                "the switch did not connect over TLS: {other:?}; {}",
                std::fs::read_to_string(ovs.path("ovs-vswitchd.log")).unwrap_or_default()
            ),
        }
    };
    sw.barrier().await.unwrap();
    let reply = sw
        .request(Message::MultipartRequest(MultipartRequest::PortDesc {
            flags: 0,
        }))
        .await
        .unwrap();
    assert!(
        matches!(&reply[0], Message::MultipartReply(MultipartReply::PortDesc { ports, .. }) if ports.iter().any(|p| p.name == ovs.bridge))
    );
}
