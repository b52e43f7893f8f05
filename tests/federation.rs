//! Input: two controllers in process (recording data planes, manual clocks), site-b the home
//! of vL3 `db` (10.90.0.0/16, 10.90.128.0/17 delegated to site-a), site-a with a router
//! offering `db@site-b.example`; site-b's REST API served on loopback, site-a exchanging with
//! it through the federation client. Output: site-a imports the plan and takes addresses from
//! its part only; both sides record the same leg (id, VNI, mirrored addresses), each wired on
//! its own side only; members' routes and names cross; a wrong secret, an undelegated domain
//! and addresses outside the caller's part are refused; a VNI in use at the home is refused
//! with why; an unreachable home changes nothing; legs go when the lease runs out.

use std::future::IntoFuture;
use std::sync::Arc;

use meshwire_controller::client::{Client, ClientError, ClientOptions};
use meshwire_controller::federation::{Federation, Peer, EXCHANGE_PATH};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, ManualClock, RecordingDriver};
use meshwire_models::federation::{FedLeg, FedMember, Vl3Exchange};
use meshwire_models::{ClientRef, Connection, ConnectionRequest, Manifest, Mechanism};

const SECRET: &str = "a-secret-both-sites-share";
const LEASE_MS: u64 = 60_000;

const HOME: &str = r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: b1, labels: {meshwire.io/federation-address: 192.0.2.11}}
spec: {forwarder: kernel, underlayAddress: 10.0.0.11}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: b2, labels: {meshwire.io/federation-address: 192.0.2.12}}
spec: {forwarder: kernel, underlayAddress: 10.0.0.12}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: b1-b2}
spec: {endpoints: ["b1:eth1", "b2:eth1"]}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: db}
spec: {payload: IP, vl3: {prefix: 10.90.0.0/16, delegations: {site-a.example: 10.90.128.0/17}}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: rb1}
spec: {network_service_names: [db], location: {node: b1, netns: rb1}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: rb2}
spec: {network_service_names: [db], location: {node: b2, netns: rb2}}
"#;

const AWAY: &str = r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: a1, labels: {meshwire.io/federation-address: 192.0.2.1}}
spec: {forwarder: kernel}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: ra1}
spec: {network_service_names: [db@site-b.example], location: {node: a1, netns: ra1}}
"#;

struct Site {
    ctl: Controller,
    clock: Arc<ManualClock>,
    driver: Arc<RecordingDriver>,
}

async fn site(docs: &str, domain: &str, peer: &str, url: &str) -> Site {
    let driver = Arc::new(RecordingDriver::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        driver.clone(),
        clock.clone(),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(Manifest::parse("t.yaml", docs).unwrap())
        .await
        .unwrap();
    ctl.set_federation(Federation {
        domain: domain.into(),
        peers: [(
            peer.to_string(),
            Peer {
                url: url.into(),
                secret: SECRET.into(),
            },
        )]
        .into(),
        lease: std::time::Duration::from_millis(LEASE_MS),
        ca_pem: None,
        // Answer at once: the test asks one exchange after another.
        hold: std::time::Duration::ZERO,
    });
    Site { ctl, clock, driver }
}

fn federated(ctl: &Controller) -> Vec<Connection> {
    ctl.connections(&Default::default())
        .into_iter()
        .filter(|c| c.remote_domain().is_some())
        .collect()
}

fn vni(c: &Connection) -> u32 {
    match &c.hops[0].mechanism {
        Mechanism::Vxlan { vni, .. } => *vni,
        m => panic!("{m:?}"),
    }
}

fn client(url: &str, secret: &str) -> Client {
    Client::new(
        url,
        ClientOptions {
            token: Some(secret.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn federated_vl3_legs_mirror_each_other_and_refuse_what_they_must() {
    let home = site(HOME, "site-b.example", "site-a.example", "").await;
    // The home's mesh (rb1 – rb2) first: its VNI is one the home cannot give a leg.
    home.ctl.reconcile_once().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        axum::serve(listener, meshwire_northbound::router(home.ctl.clone())).into_future(),
    );
    let away = site(AWAY, "site-a.example", "site-b.example", &url).await;
    let f = away.ctl.federation_config().unwrap();
    let to_home = client(&url, SECRET);

    // First exchange: the plan is imported, the legs (ra1 – rb1, ra1 – rb2) claimed and wired
    // here; the home hears of them at the next.
    away.ctl.federate_once(&f, "site-b.example", &to_home).await;
    let imported = away
        .ctl
        .services()
        .into_iter()
        .find(|s| s.name == "db@site-b.example")
        .expect("plan imported");
    let v = imported.vl3.unwrap();
    assert_eq!(v.members, Some("10.90.128.0/17".parse().unwrap()));
    assert_eq!(v.zone("db@site-b.example"), "db");
    assert_eq!(federated(&away.ctl).len(), 2);
    away.ctl.federate_once(&f, "site-b.example", &to_home).await;
    let (a, b) = (federated(&away.ctl), federated(&home.ctl));
    assert_eq!(b.len(), 2, "the home recorded its ends: {b:?}");
    for leg in &a {
        let mirror = b
            .iter()
            .find(|x| x.id == leg.id)
            .expect("same id on both sides");
        assert_eq!(vni(leg), vni(mirror));
        assert_eq!(leg.ip_context.src_ip_addrs, mirror.ip_context.dst_ip_addrs);
        assert_eq!(leg.ip_context.dst_ip_addrs, mirror.ip_context.src_ip_addrs);
        let part: ipnet::IpNet = "10.90.128.0/17".parse().unwrap();
        assert!(part.contains(&leg.ip_context.src_ip_addrs[0].addr()));
        assert_eq!(mirror.remote_domain(), Some("site-a.example"));
        assert_eq!(mirror.network_service_endpoint_name, "ra1@site-a.example");
    }
    // Each side is wired on its own data plane: the home's records are on the home's.
    let wired: Vec<String> = home.driver.installed().into_iter().map(|c| c.id).collect();
    assert!(b.iter().all(|c| wired.contains(&c.id)), "{wired:?}");

    // A member at site-a: an address of its part; its route and name reach the home's ends.
    let m = away
        .ctl
        .request(ConnectionRequest {
            network_service: "db@site-b.example".into(),
            client: ClientRef {
                node: "a1".into(),
                name: Some("dba1".into()),
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        })
        .await
        .unwrap();
    let addr = m.ip_context.src_ip_addrs[0].addr();
    assert!(
        "10.90.128.0/17"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&addr),
        "{addr}"
    );
    away.ctl.federate_once(&f, "site-b.example", &to_home).await;
    for end in federated(&home.ctl) {
        assert!(
            end.ip_context
                .src_routes
                .iter()
                .any(|r| r.prefix.addr() == addr),
            "a route to dba1 on {}: {:?}",
            end.id,
            end.ip_context.src_routes
        );
        let names = &end.vl3.as_ref().unwrap().endpoint_members;
        assert!(names.iter().any(|n| n.name.as_deref() == Some("dba1")));
    }

    // Refused: a wrong secret, a domain with no part, addresses outside the caller's part.
    let x = Vl3Exchange {
        domain: "site-a.example".into(),
        service: "db".into(),
        ..Default::default()
    };
    let e = client(&url, "not-the-shared-secret")
        .post::<_, Vl3Exchange>(EXCHANGE_PATH, &x)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Refused { status: 403, .. }), "{e}");
    let mut other = x.clone();
    other.domain = "site-c.example".into();
    assert!(home
        .ctl
        .federation_accept(Some(SECRET), other)
        .await
        .is_err());
    let mut outside = x.clone();
    outside.members.push(FedMember {
        router: "ra1".into(),
        addr: "10.90.0.200".parse().unwrap(),
        name: None,
    });
    let e = home
        .ctl
        .federation_accept(Some(SECRET), outside)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");

    // A VNI the home uses already (its own rb1 – rb2 leg) is refused, with why.
    let local = home
        .ctl
        .connections(&Default::default())
        .into_iter()
        .find(|c| c.vl3.is_some() && c.remote_domain().is_none())
        .expect("the home's own peer leg");
    let mut taken = side_of(&away.ctl).await;
    taken.legs = vec![FedLeg {
        owner: "ra1".into(),
        other: "rb1".into(),
        vni: vni(&local),
        port: 4789,
        owner_addr: "10.90.255.1/31".parse().unwrap(),
        other_addr: "10.90.255.0/31".parse().unwrap(),
        why: None,
    }];
    let answer = home
        .ctl
        .federation_accept(Some(SECRET), taken)
        .await
        .unwrap();
    assert_eq!(answer.refused.len(), 1, "{answer:?}");
    assert!(answer.refused[0]
        .why
        .as_deref()
        .unwrap_or("")
        .contains("in use"));
    // The legs it did not list are closed at the home; the next real exchange brings them back.
    away.ctl.federate_once(&f, "site-b.example", &to_home).await;
    assert_eq!(federated(&home.ctl).len(), 2);

    // The home unreachable: nothing changes here.
    server.abort();
    let _ = server.await;
    let before = federated(&away.ctl);
    away.ctl.federate_once(&f, "site-b.example", &to_home).await;
    assert_eq!(
        federated(&away.ctl),
        before,
        "an unreachable home changes nothing"
    );
    // Past the lease, both sides close their ends.
    away.clock.advance(LEASE_MS + 1);
    home.clock.advance(LEASE_MS + 1);
    away.ctl.expire_federated().await;
    home.ctl.expire_federated().await;
    assert!(federated(&away.ctl).is_empty());
    assert!(federated(&home.ctl).is_empty());
}

/// site-a's side as it would send it (its routers and members).
async fn side_of(ctl: &Controller) -> Vl3Exchange {
    let members = ctl
        .connections(&Default::default())
        .into_iter()
        .filter(|c| c.vl3.as_ref().is_some_and(|v| !v.is_peer()))
        .map(|c| FedMember {
            router: c.network_service_endpoint_name.clone(),
            addr: c.ip_context.src_ip_addrs[0].addr(),
            name: c.vl3.as_ref().and_then(|v| v.name.clone()),
        })
        .collect();
    Vl3Exchange {
        domain: "site-a.example".into(),
        service: "db".into(),
        routers: vec![meshwire_models::federation::FedRouter {
            name: "ra1".into(),
            address: "192.0.2.1".parse().unwrap(),
        }],
        members,
        ..Default::default()
    }
}
