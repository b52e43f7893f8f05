//! Input: the controller's agent hub serving its gRPC service on loopback, and node agents
//! (`agent::node::run`) attached to it over real gRPC streams, each with a recording driver in
//! place of its node's kernel data plane. Output: which node's agent got which part of each
//! desired state, the reports and events that came back, refusals, and the lease's verdict.
//! Needs nothing but loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshwire_controller::driver::{Happened, Health};
use meshwire_controller::{Desired, Driver, DriverEvent, RecordingDriver, Scope};
use meshwire_models::{
    ClientRef, Connection, ConnectionState, ForwarderKind, Hop, IpContext, Mechanism, Node,
    Payload, Placement, Topology,
};
use meshwire_southbound::agent::{node, AgentHub, Credentials, HubConfig, NodeAgentOptions};

fn topology() -> Topology {
    let mut t = Topology::default();
    for n in ["n1", "n2", "n3"] {
        t.nodes.insert(
            n.into(),
            Node {
                name: n.into(),
                forwarder: ForwarderKind::Kernel,
                underlay_address: None,
                netns: None,
                ovsdb: None,
                labels: Default::default(),
            },
        );
    }
    t
}

/// A VXLAN connection from a client on `client` to an endpoint on `endpoint`.
fn conn(id: &str, client: &str, endpoint: &str) -> Connection {
    Connection {
        id: id.into(),
        network_service: "s".into(),
        network_service_endpoint_name: format!("ep-{endpoint}"),
        payload: Payload::Ip,
        client: ClientRef {
            node: client.into(),
            name: None,
        },
        labels: Default::default(),
        interface: "nsm-1".into(),
        preferences: vec![],
        path: vec![],
        hops: vec![Hop {
            from: client.into(),
            to: endpoint.into(),
            link: None,
            mechanism: Mechanism::Vxlan {
                vni: 7000,
                src_ip: "192.168.0.1".parse().unwrap(),
                dst_ip: "192.168.0.2".parse().unwrap(),
                port: 4789,
            },
        }],
        placement: Placement::default(),
        ip_context: IpContext::default(),
        address_pool: None,
        mtu: 1450,
        state: ConnectionState::Programming,
        created_at_ms: 0,
        updated_at_ms: 0,
        generation: 0,
        last_error: None,
        chain: Default::default(),
        request_key: None,
        vl3: None,
        dns_context: None,
    }
}

mod support;

struct Rig {
    hub: AgentHub,
    url: String,
    /// The CA agents trust (with TLS).
    ca: Option<Vec<u8>>,
    events: tokio::sync::broadcast::Receiver<DriverEvent>,
    _server: tokio::task::JoinHandle<()>,
}

const TOKENS: [(&str, &str); 3] = [
    ("n1", "n1-secret-0123456789"),
    ("n2", "n2-secret-0123456789"),
    ("n3", "n3-secret-0123456789"),
];

async fn rig(lease: Duration) -> Rig {
    rig_with(lease, None).await
}

/// A hub serving over TLS with `(ca, cert, key)` (PEM files) when given.
async fn rig_with(
    lease: Duration,
    tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
) -> Rig {
    let hub = AgentHub::new(HubConfig {
        lease,
        credentials: Credentials::Tokens(
            TOKENS
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
    });
    hub.topology(&topology()).await.unwrap();
    let events = hub.subscribe().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", l.local_addr().unwrap());
    let incoming = tonic::transport::server::TcpIncoming::from_listener(l, true, None).unwrap();
    let mut server = tonic::transport::Server::builder();
    let mut ca = None;
    if let Some((ca_path, cert, key)) = &tls {
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        );
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
        ca = Some(std::fs::read(ca_path).unwrap());
    }
    let router = server.add_service(hub.service());
    let server = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Rig {
        hub,
        url,
        ca,
        events,
        _server: server,
    }
}

fn token(node: &str) -> String {
    TOKENS
        .iter()
        .find(|(n, _)| *n == node)
        .unwrap()
        .1
        .to_string()
}

/// Starts the agent of `node` (presenting `token_of`'s token) with a recording driver.
fn agent(
    rig: &Rig,
    node: &str,
    token_of: &str,
) -> (
    Arc<RecordingDriver>,
    tokio::task::JoinHandle<Result<(), node::NodeError>>,
) {
    let driver = Arc::new(RecordingDriver::new());
    let opts = NodeAgentOptions {
        node: node.into(),
        controllers: vec![rig.url.clone()],
        token: Some(token(token_of)),
        ca: rig.ca.clone(),
        connect_timeout: Duration::from_secs(2),
        sriov: None,
    };
    let d: Arc<dyn Driver> = driver.clone();
    (driver, tokio::spawn(node::run(opts, d, |_| {})))
}

/// The next event of `kind` for `node` from the hub.
async fn event(rig: &mut Rig, pred: impl Fn(&Happened) -> bool) -> DriverEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rig.events.recv().await.unwrap();
            if pred(&e.happened) {
                return e;
            }
        }
    })
    .await
    .expect("the event within 10 s")
}

async fn attached(rig: &mut Rig, node: &str) {
    let n = node.to_string();
    event(
        rig,
        move |h| matches!(h, Happened::NodeAttached { node } if *node == n),
    )
    .await;
}

/// Input: a cross-node connection n1 → n2 and a same-node one on n3; a full set; a removal;
/// an event raised by n2's driver. Output: each agent's driver holds exactly the connections
/// that touch its node; the full set's report merges both agents' views (n2's broken
/// connection comes back as n2 saw it); the event arrives scoped to n2.
#[tokio::test]
async fn agents_get_their_nodes_part_and_report_back() {
    let mut rig = rig(Duration::from_secs(30)).await;
    let (d1, _a1) = agent(&rig, "n1", "n1");
    let (d2, _a2) = agent(&rig, "n2", "n2");
    let (d3, _a3) = agent(&rig, "n3", "n3");
    for n in ["n1", "n2", "n3"] {
        attached(&mut rig, n).await;
    }
    let cross = conn("c-cross", "n1", "n2");
    let local = conn("c-local", "n3", "n3");
    rig.hub
        .converge(&Desired::upsert(Scope::All, 5, &cross))
        .await
        .unwrap();
    rig.hub
        .converge(&Desired::upsert(Scope::All, 6, &local))
        .await
        .unwrap();
    let ids =
        |d: &RecordingDriver| -> Vec<String> { d.installed().into_iter().map(|c| c.id).collect() };
    assert_eq!(ids(&d1), ["c-cross"]);
    assert_eq!(ids(&d2), ["c-cross"]);
    assert_eq!(ids(&d3), ["c-local"]);

    d2.break_connection(
        "c-cross",
        Health::EndpointLost {
            reason: "namespace gone".into(),
        },
    );
    let report = rig
        .hub
        .converge(&Desired::full(
            Scope::All,
            7,
            vec![cross.clone(), local.clone()],
        ))
        .await
        .unwrap();
    assert_eq!(report.version, 7);
    assert!(
        matches!(
            report.observation.connections.get("c-cross"),
            Some(Health::EndpointLost { .. })
        ),
        "{report:?}"
    );
    assert!(!report.observation.connections.contains_key("c-local"));

    rig.hub
        .converge(&Desired::remove(Scope::All, 8, &local))
        .await
        .unwrap();
    assert!(ids(&d3).is_empty());

    d2.report(DriverEvent {
        scope: Scope::Node("whatever the agent says".into()),
        happened: Happened::InterfaceGone {
            netns: "e".into(),
            ifname: "nse-1".into(),
        },
        detail: "deleted".into(),
    });
    let e = event(&mut rig, |h| matches!(h, Happened::InterfaceGone { .. })).await;
    assert_eq!(
        e.scope,
        Scope::Node("n2".into()),
        "an agent speaks for its own node only"
    );
}

/// Input: an agent presenting n2's token as n1; an agent with no token.
/// Output: both are refused for good (the agent stops), with the reason; n1 stays unattached.
#[tokio::test]
async fn an_agent_with_another_nodes_token_is_refused() {
    let rig = rig(Duration::from_secs(30)).await;
    let (_, impostor) = agent(&rig, "n1", "n2");
    let err = tokio::time::timeout(Duration::from_secs(10), impostor)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(!err.retryable());
    assert!(
        err.to_string().contains("node n2's agent credential"),
        "{err}"
    );
    let anonymous = node::run(
        NodeAgentOptions {
            node: "n1".into(),
            controllers: vec![rig.url.clone()],
            token: None,
            ca: None,
            connect_timeout: Duration::from_secs(2),
            sriov: None,
        },
        Arc::new(RecordingDriver::new()),
        |_| {},
    );
    let err = tokio::time::timeout(Duration::from_secs(10), anonymous)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    assert!(rig.hub.attached().is_empty());
}

/// Input: n2's agent goes away while a connection n1 → n2 is desired; a removal and an upsert
/// meanwhile; then the lease ends. Output: within the lease the full set has no verdict on the
/// connection and the removal succeeds (left to n2's next full set); wiring onto n2 fails as
/// unreachable and names the node; after the lease the hub raises NodeLost and reports the
/// endpoint on n2 lost.
#[tokio::test]
async fn an_agent_away_keeps_its_connections_until_its_lease_ends() {
    let mut rig = rig(Duration::from_millis(600)).await;
    let (_d1, _a1) = agent(&rig, "n1", "n1");
    let (_d2, a2) = agent(&rig, "n2", "n2");
    attached(&mut rig, "n1").await;
    attached(&mut rig, "n2").await;
    let c = conn("c1", "n1", "n2");
    rig.hub
        .converge(&Desired::upsert(Scope::All, 2, &c))
        .await
        .unwrap();
    a2.abort();
    event(
        &mut rig,
        |h| matches!(h, Happened::NodeDetached { node } if node == "n2"),
    )
    .await;
    let report = rig
        .hub
        .converge(&Desired::full(Scope::All, 3, vec![c.clone()]))
        .await
        .unwrap();
    assert!(report.observation.connections.is_empty(), "{report:?}");
    rig.hub
        .converge(&Desired::remove(Scope::All, 4, &c))
        .await
        .unwrap();
    let err = rig
        .hub
        .converge(&Desired::upsert(Scope::All, 5, &conn("c2", "n1", "n2")))
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("node n2"), "{err}");
    event(
        &mut rig,
        |h| matches!(h, Happened::NodeLost { node } if node == "n2"),
    )
    .await;
    let report = rig
        .hub
        .converge(&Desired::full(Scope::All, 6, vec![c.clone()]))
        .await
        .unwrap();
    assert!(
        matches!(
            report.observation.connections.get("c1"),
            Some(Health::EndpointLost { .. })
        ),
        "{report:?}"
    );
    assert_eq!(rig.hub.attached(), ["n1"]);
}

/// Input: the hub serving over TLS with a certificate a test CA signed; an agent trusting that
/// CA, and one trusting nothing but the system's roots. Output: the first attaches and wires
/// over TLS; the second never attaches (its connection fails the certificate check, and it
/// keeps retrying).
#[tokio::test]
async fn agents_attach_over_tls_and_only_to_a_controller_they_trust() {
    // One TLS provider for the process, as the binary installs it at start.
    meshwire_controller::store::etcd_store::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaves) = support::pki(dir.path());
    let (cert, key) = leaves[0].clone();
    let mut rig = rig_with(Duration::from_secs(30), Some((ca, cert, key))).await;
    assert!(rig.url.starts_with("https://"));
    let (d1, _a1) = agent(&rig, "n1", "n1");
    attached(&mut rig, "n1").await;
    let c = conn("c1", "n1", "n1");
    rig.hub
        .converge(&Desired::upsert(Scope::All, 1, &c))
        .await
        .unwrap();
    assert_eq!(d1.installed().len(), 1);

    let untrusting = tokio::spawn(node::run(
        NodeAgentOptions {
            node: "n2".into(),
            controllers: vec![rig.url.clone()],
            token: Some(token("n2")),
            ca: None,
            connect_timeout: Duration::from_secs(2),
            sriov: None,
        },
        Arc::new(RecordingDriver::new()),
        |_| {},
    ));
    // A window, not a wait for a state: in 1 s it tries several times (backoff from 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.hub.attached(), ["n1"]);
    untrusting.abort();
}
