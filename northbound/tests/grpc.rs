#![allow(clippy::result_large_err)] // tonic interceptors return Status by value
//! Input: the NSM v1 gRPC API served over a controller (memory store, recording driver), and a
//! client generated from the same protos by tonic. Output: services and endpoints registered
//! over the registry, Find with watch streaming additions and deletions, a Request giving a
//! negotiated VXLAN connection in NSM's shape, a refresh returning it unchanged, the monitor
//! streaming the initial state, the update and the delete, Close, and bad requests refused
//! with InvalidArgument naming the field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshwire_controller::driver::RecordingDriver;
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, SystemClock};
use meshwire_northbound::grpc::pb::connection as c;
use meshwire_northbound::grpc::pb::networkservice as ns;
use meshwire_northbound::grpc::pb::registry as reg;
use tonic::transport::Channel;

const TOPOLOGY: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n2}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-n2}\nspec: {endpoints: [\"n1:eth1\", \"n2:eth1\"], addresses: [\"10.0.0.1/24\", \"10.0.0.2/24\"]}\n";

async fn serve() -> Channel {
    serve_with(None).await
}

async fn serve_with(tokens: Option<meshwire_northbound::auth::Tokens>) -> Channel {
    serve_ctl(tokens).await.0
}

/// A controller (memory store, `driver`) with the two-node topology.
async fn controller(driver: RecordingDriver) -> Controller {
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(driver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(meshwire_models::Manifest::parse("t", TOPOLOGY).unwrap())
        .await
        .unwrap();
    ctl
}

async fn serve_ctl(tokens: Option<meshwire_northbound::auth::Tokens>) -> (Channel, Controller) {
    let ctl = controller(RecordingDriver::new()).await;
    // Bound before the server runs: it accepts as soon as it is spawned, nothing to wait for.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming =
        tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
    tokio::spawn(
        meshwire_northbound::grpc::router_with(ctl.clone(), tokens.map(Arc::new))
            .serve_with_incoming(incoming),
    );
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (ch, ctl)
}

fn endpoint(name: &str, node: &str) -> reg::NetworkServiceEndpoint {
    reg::NetworkServiceEndpoint {
        name: name.into(),
        network_service_names: vec!["vpn".into()],
        network_service_labels: HashMap::from([(
            "vpn".to_string(),
            reg::NetworkServiceLabels {
                labels: HashMap::from([
                    ("app".to_string(), "gw".to_string()),
                    ("nodeName".to_string(), node.to_string()),
                ]),
            },
        )]),
        url: "tcp://10.0.0.2:5001".into(),
        ..Default::default()
    }
}

fn request(id: &str) -> ns::NetworkServiceRequest {
    ns::NetworkServiceRequest {
        connection: Some(c::Connection {
            id: id.into(),
            network_service: "vpn".into(),
            labels: HashMap::from([
                ("nodeName".to_string(), "n1".to_string()),
                ("app".to_string(), "nsc".to_string()),
            ]),
            ..Default::default()
        }),
        mechanism_preferences: vec![c::Mechanism {
            cls: "REMOTE".into(),
            r#type: "VXLAN".into(),
            parameters: HashMap::new(),
        }],
    }
}

#[tokio::test]
async fn nsm_grpc_registry_request_monitor_close() {
    let ch = serve().await;
    let mut services =
        reg::network_service_registry_client::NetworkServiceRegistryClient::new(ch.clone());
    let mut nses =
        reg::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient::new(
            ch.clone(),
        );
    let mut nsc = ns::network_service_client::NetworkServiceClient::new(ch.clone());
    let mut monitor = c::monitor_connection_client::MonitorConnectionClient::new(ch);

    services
        .register(reg::NetworkService {
            name: "vpn".into(),
            payload: "IP".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    nses.register(endpoint("gw-1", "n2")).await.unwrap();

    // Find with watch: the initial state, then an addition and a deletion.
    let mut watch = nses
        .find(reg::NetworkServiceEndpointQuery {
            network_service_endpoint: Some(reg::NetworkServiceEndpoint {
                network_service_names: vec!["vpn".into()],
                ..Default::default()
            }),
            watch: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.network_service_endpoint.unwrap().name, "gw-1");
    nses.register(endpoint("gw-2", "n2")).await.unwrap();
    let added = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (
            added.network_service_endpoint.unwrap().name.as_str(),
            added.deleted
        ),
        ("gw-2", false)
    );
    nses.unregister(endpoint("gw-2", "n2")).await.unwrap();
    let gone = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (
            gone.network_service_endpoint.unwrap().name.as_str(),
            gone.deleted
        ),
        ("gw-2", true)
    );

    // Monitor: the initial state first.
    let mut events = monitor
        .monitor_connections(c::MonitorScopeSelector::default())
        .await
        .unwrap()
        .into_inner();
    let init = events.message().await.unwrap().unwrap();
    assert_eq!(
        init.r#type,
        c::ConnectionEventType::InitialStateTransfer as i32
    );
    assert!(init.connections.is_empty());

    // Request: VXLAN across nodes, in NSM's shape.
    let conn = nsc.request(request("")).await.unwrap().into_inner();
    let m = conn.mechanism.clone().unwrap();
    assert_eq!((m.cls.as_str(), m.r#type.as_str()), ("REMOTE", "VXLAN"));
    assert!(m.parameters["vni"].parse::<u32>().is_ok(), "{m:?}");
    assert_eq!(m.parameters["dst_ip"], "10.0.0.2");
    let ip = conn.context.clone().unwrap().ip_context.unwrap();
    assert_eq!((ip.src_ip_addrs.len(), ip.dst_ip_addrs.len()), (1, 1));
    assert_eq!(conn.network_service_endpoint_name, "gw-1");
    assert_eq!(conn.state, c::State::Up as i32);
    let update = events.message().await.unwrap().unwrap();
    assert_eq!(update.r#type, c::ConnectionEventType::Update as i32);
    assert!(update.connections.contains_key(&conn.id));

    // A refresh returns the same connection.
    let again = nsc.request(request(&conn.id)).await.unwrap().into_inner();
    assert_eq!(again.id, conn.id);
    assert_eq!(again.mechanism, conn.mechanism);

    // Close, and the monitor's delete.
    nsc.close(conn.clone()).await.unwrap();
    let delete = events.message().await.unwrap().unwrap();
    assert_eq!(delete.r#type, c::ConnectionEventType::Delete as i32);
    assert!(delete.connections.contains_key(&conn.id));
    nsc.close(conn).await.expect("closing twice is fine");

    // Bad input names the field.
    let mut bad = request("");
    bad.connection.as_mut().unwrap().labels.remove("nodeName");
    let e = nsc.request(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("labels.nodeName"), "{}", e.message());
    let e = nses.register(endpoint("", "n2")).await.unwrap_err();
    assert!(e.message().contains("name: required"), "{}", e.message());
    let mut nolabel = endpoint("gw-3", "n2");
    nolabel.network_service_labels.clear();
    let e = nses.register(nolabel).await.unwrap_err();
    assert!(e.message().contains("nodeName"), "{}", e.message());
    let mut unknown = request("");
    unknown.connection.as_mut().unwrap().network_service = "nope".into();
    let e = nsc.request(unknown).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Names that would leave the namespace directory or break an interface name are refused
    // where they enter, naming the field: the client's path segment (its netns), an endpoint's
    // `netns` label, the interface asked for.
    for hostile in ["../../proc/1/ns/net", "../netns/other", "a/b", ".."] {
        let mut r = request("");
        r.connection.as_mut().unwrap().path = Some(c::Path {
            index: 0,
            path_segments: vec![c::PathSegment {
                name: hostile.into(),
                ..Default::default()
            }],
        });
        let e = nsc.request(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{hostile}: {e}");
        let mut ep = endpoint("gw-9", "n2");
        ep.network_service_labels
            .get_mut("vpn")
            .unwrap()
            .labels
            .insert("netns".into(), hostile.into());
        let e = nses.register(ep).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{hostile}: {e}");
        assert!(e.message().contains("netns"), "{}", e.message());
    }
    let mut long_if = request("");
    long_if.mechanism_preferences.push(c::Mechanism {
        cls: "LOCAL".into(),
        r#type: "KERNEL".into(),
        parameters: HashMap::from([("name".to_string(), "a-name-longer-than-15".to_string())]),
    });
    let e = nsc.request(long_if).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(nses
        .register(reg::NetworkServiceEndpoint {
            expiration_time: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            ..endpoint("gw-10", "n2")
        })
        .await
        .is_err_and(|e| e.code() == tonic::Code::InvalidArgument));
}

/// With a token table: no token or an unknown one is UNAUTHENTICATED, a viewer may Find but not
/// Request (PERMISSION_DENIED), an operator may Request.
#[tokio::test]
async fn nsm_grpc_bearer_tokens_and_roles() {
    use meshwire_northbound::auth::{Role, Token, Tokens};
    let (ch, ctl) = serve_ctl(Some(Tokens(vec![
        Token {
            name: "nsc".into(),
            role: Role::Viewer,
            secret: "viewer-secret-0001".into(),
            device: None,
        },
        Token {
            name: "nse".into(),
            role: Role::Operator,
            secret: "operator-secret-001".into(),
            device: None,
        },
    ])))
    .await;
    fn with(
        secret: Option<&'static str>,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |mut r: tonic::Request<()>| {
            if let Some(s) = secret {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {s}").parse().unwrap());
            }
            Ok(r)
        }
    }
    let find = |secret| {
        let mut reg =
            reg::network_service_registry_client::NetworkServiceRegistryClient::with_interceptor(
                ch.clone(),
                with(secret),
            );
        async move {
            reg.find(reg::NetworkServiceQuery {
                network_service: Some(Default::default()),
                watch: false,
            })
            .await
            .map(|_| ())
        }
    };
    assert_eq!(
        find(None).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        find(Some("wrong-secret-000000")).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    find(Some("viewer-secret-0001")).await.unwrap();

    let mut nsc = ns::network_service_client::NetworkServiceClient::with_interceptor(
        ch.clone(),
        with(Some("viewer-secret-0001")),
    );
    let e = nsc.request(request("")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("needs role operator"), "{e}");
    let mut nsc = ns::network_service_client::NetworkServiceClient::with_interceptor(
        ch.clone(),
        with(Some("operator-secret-001")),
    );
    // Past auth: the controller itself answers (no such service yet).
    let e = nsc.request(request("")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Roles follow the object through the gRPC registry too: an operator may not replace an
    // endpoint that lives on a device (an admin object) with one of its own.
    ctl.apply(meshwire_models::Manifest::parse("t", "---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: meshwire.io/v1\nkind: Device\nmetadata: {name: fw1}\nspec: {kind: meshwire-appliance}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw-1}\nspec: {network_service_names: [vpn], location: {device: fw1}}\n").unwrap())
        .await
        .unwrap();
    let mut nses =
        reg::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient::with_interceptor(
            ch,
            with(Some("operator-secret-001")),
        );
    let e = nses.register(endpoint("gw-1", "n2")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("admin object"), "{e}");
    nses.register(endpoint("gw-2", "n2")).await.unwrap();
}

/// Input: 600 connections, a stream bound of 2, a watcher that never reads while 6,000
/// registry changes happen, then the server's shutdown signal. Output: the monitor's initial
/// state comes in pages (INITIAL_STATE_TRANSFER, then UPDATEs, 600 in all); a third stream is
/// RESOURCE_EXHAUSTED; the lagging watcher is told (ABORTED) instead of silently skipping; at
/// shutdown every open stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsm_grpc_streams_are_bounded_paged_and_end_at_shutdown() {
    let ctl = controller(RecordingDriver::quiet()).await;
    ctl.apply(meshwire_models::Manifest::parse("t", "---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n2}, mechanisms: {vxlan: {}}, ipamPrefix: 10.128.0.0/16}\n").unwrap())
        .await
        .unwrap();
    for i in 0..600 {
        ctl.request(
            serde_json::from_value(serde_json::json!({
                "network_service": "vpn", "client": {"node": "n1", "name": format!("w{i}")}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let streams = meshwire_northbound::streams::Streams::new(2, Some(stop_rx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming =
        tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
    tokio::spawn(
        meshwire_northbound::grpc::router_with_streams(ctl.clone(), None, streams)
            .serve_with_incoming(incoming),
    );
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut mon = c::monitor_connection_client::MonitorConnectionClient::new(ch.clone());
    let mut s = mon
        .monitor_connections(c::MonitorScopeSelector::default())
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    let mut kinds = Vec::new();
    while seen < 600 {
        let ev = s.message().await.unwrap().unwrap();
        assert!(ev.connections.len() <= meshwire_northbound::streams::INITIAL_PAGE);
        seen += ev.connections.len();
        kinds.push(ev.r#type);
    }
    assert_eq!(seen, 600);
    assert_eq!(
        kinds[0],
        c::ConnectionEventType::InitialStateTransfer as i32
    );
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == c::ConnectionEventType::Update as i32),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 3);

    // The lagging watcher's connection takes 1 KiB before it stops reading, so the server's
    // feed blocks soon and the controller's event queue (4,096) overflows behind it.
    let slow = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut reg = reg::network_service_registry_client::NetworkServiceRegistryClient::new(slow);
    let mut lagging = reg
        .find(reg::NetworkServiceQuery {
            network_service: None,
            watch: true,
        })
        .await
        .unwrap()
        .into_inner();
    let third = reg
        .find(reg::NetworkServiceQuery {
            network_service: None,
            watch: true,
        })
        .await;
    assert_eq!(third.unwrap_err().code(), tonic::Code::ResourceExhausted);
    for i in 0..6000 {
        ctl.apply(meshwire_models::Manifest::parse("t", &format!("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: s{i}}}\n")).unwrap())
            .await
            .unwrap();
    }
    // Bounded so a regression fails instead of hanging the suite.
    let status = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match lagging.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without saying it fell behind"),
                Err(st) => break st,
            }
        }
    })
    .await
    .expect("the lagging watcher was never told it fell behind");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    // Shutdown ends the monitor that is still open.
    stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = s.message().await {}
    })
    .await;
    assert!(end.is_ok(), "the monitor did not end at shutdown");
}
