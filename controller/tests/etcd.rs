//! Input: the store conformance steps and a controller restart, against a real etcd-server
//! started for the test. Output: the same behaviour as the embedded store.

use std::sync::Arc;

use meshwire_controller::store::{etcd_store::EtcdStore, Expect, Store, StoreError, WatchEvent};
use meshwire_controller::{Config, ConnectionFilter, Controller, NullDriver, SystemClock};
use meshwire_labs::etcd::LocalEtcd;
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};

/// A real etcd-server, or None when it is not installed and the run does not require it (CI sets
/// MESHWIRE_REQUIRE_ALL=1, so there it must exist).
async fn etcd() -> Option<LocalEtcd> {
    match LocalEtcd::start().await {
        Ok(e) => Some(e),
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => {
            eprintln!("SKIP: {e}");
            None
        }
        Err(e) => panic!("etcd is required: {e}"),
    }
}

async fn connect(e: &LocalEtcd) -> EtcdStore {
    EtcdStore::connect_with(&[e.url()], None).await.unwrap()
}

/// A controller (no data plane) on the etcd `e`.
async fn start_on(e: &LocalEtcd) -> Controller {
    let store: Arc<dyn Store> = Arc::new(connect(e).await);
    Controller::start(
        store,
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap()
}

/// A request for service `s` from node `n1` (as workload `name`).
fn req(name: Option<&str>) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "s".into(),
        client: ClientRef {
            node: "n1".into(),
            name: name.map(Into::into),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

#[tokio::test]
async fn dev_etcd_conditions_watch_and_resume() {
    let Some(e) = etcd().await else { return };
    let s = connect(&e).await;
    let r1 = s.put("/t/a", b"1".to_vec(), Expect::Absent).await.unwrap();
    assert!(matches!(
        s.put("/t/a", b"x".to_vec(), Expect::Absent).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut w = s.watch("/t/", r1).await.unwrap();
    let r2 = s
        .put("/t/a", b"2".to_vec(), Expect::ModRevision(r1))
        .await
        .unwrap();
    let err = s
        .put("/t/a", b"3".to_vec(), Expect::ModRevision(r1))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("expected revision {r1}, found revision {r2}")),
        "{err}"
    );
    assert!(s.delete("/t/a", Expect::ModRevision(r2)).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(matches!(ev, WatchEvent::Put(_)));
    }
    assert_eq!(seen, vec![true, false]);
    let (list, _) = s.list("/t/").await.unwrap();
    assert!(list.is_empty());
}

#[tokio::test]
async fn dev_etcd_controller_restart_restores_state() {
    let Some(e) = etcd().await else { return };
    let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}}\n";
    let before = {
        let ctl = start_on(&e).await;
        ctl.apply(Manifest::parse("t.yaml", docs).unwrap())
            .await
            .unwrap();
        ctl.request(req(None)).await.unwrap();
        (
            ctl.connections(&ConnectionFilter::default()),
            ctl.pool_usage(),
        )
    };
    let ctl = start_on(&e).await;
    assert_eq!(
        (
            ctl.connections(&ConnectionFilter::default()),
            ctl.pool_usage()
        ),
        before
    );
    assert_eq!(ctl.endpoints().len(), 1);
}

/// Input: one real connection, then 100,000 connection records like it (each its own client and
/// address pair) written straight into etcd: tens of megabytes under one prefix, far past the
/// client's 4 MiB reply limit. Output: a controller starts on that store (the list is read in
/// pages at one revision) with every record restored and every address claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_etcd_restart_with_100000_connection_records() {
    const N: usize = 100_000;
    let Some(e) = etcd().await else { return };
    let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}, ipamPrefix: 10.0.0.0/8}\n";
    let template = {
        let ctl = start_on(&e).await;
        ctl.apply(Manifest::parse("t.yaml", docs).unwrap())
            .await
            .unwrap();
        ctl.request(req(Some("w0"))).await.unwrap()
    };
    let base = match template.address_pool.unwrap() {
        ipnet::IpNet::V4(p) => u32::from(p.network()),
        other => panic!("{other}"),
    };
    let record = |i: usize| {
        let mut c = template.clone();
        c.id = format!("bulk-{i:06}");
        c.client.name = Some(format!("w{i}"));
        let pair = base + 2 * i as u32;
        c.ip_context.dst_ip_addrs = vec![format!("{}/31", std::net::Ipv4Addr::from(pair))
            .parse()
            .unwrap()];
        c.ip_context.src_ip_addrs = vec![format!("{}/31", std::net::Ipv4Addr::from(pair + 1))
            .parse()
            .unwrap()];
        (
            format!("/meshwire/v1/connections/{}", c.id),
            serde_json::to_vec(&c).unwrap(),
        )
    };
    // Written 128 to a transaction (etcd's default limit), four transactions at a time.
    let client = etcd_client::Client::connect([format!("http://{}", e.endpoint)], None)
        .await
        .unwrap();
    let mut bytes = 0usize;
    let batches: Vec<Vec<(String, Vec<u8>)>> = (1..=N)
        .map(record)
        .inspect(|(_, v)| bytes += v.len())
        .collect::<Vec<_>>()
        .chunks(128)
        .map(|c| c.to_vec())
        .collect();
    assert!(bytes > 16 * 1024 * 1024, "{bytes} bytes");
    use futures::StreamExt;
    futures::stream::iter(batches)
        .map(|batch| {
            let mut kv = client.kv_client();
            async move {
                let ops = batch
                    .into_iter()
                    .map(|(k, v)| etcd_client::TxnOp::put(k, v, None))
                    .collect::<Vec<_>>();
                kv.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;

    let t = std::time::Instant::now();
    let ctl = start_on(&e).await;
    eprintln!(
        "controller start over {} connection records in etcd ({} MiB): {:?}",
        N + 1,
        bytes / (1024 * 1024),
        t.elapsed()
    );
    assert_eq!(ctl.connection_count(), N + 1);
    assert_eq!(ctl.pool_usage()["addresses"], 2 * (N + 1));
    // The next request takes a pair no record holds.
    let next = ctl.request(req(Some("new"))).await.unwrap();
    let taken = match next.ip_context.dst_ip_addrs[0].addr() {
        std::net::IpAddr::V4(a) => u32::from(a),
        other => panic!("{other}"),
    };
    assert!(taken >= base + 2 * (N as u32 + 1), "{taken}");
}

/// A CA, and a certificate it signed for `name` (server: 127.0.0.1; client: any), as PEM files.
fn signed(
    dir: &std::path::Path,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut p =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn ca(
    dir: &std::path::Path,
    name: &str,
) -> ((rcgen::Certificate, rcgen::KeyPair), std::path::PathBuf) {
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    ((cert, key), path)
}

/// Input: etcd serving clients over TLS and requiring client certificates. Output: the store
/// opened as `etcd://` with the CA and a client certificate works (a controller restores from
/// it); without a client certificate, with a certificate from another CA, or in plain HTTP, it
/// is refused with an error naming etcd.
#[tokio::test]
async fn dev_etcd_over_tls_with_client_certificates() {
    use meshwire_controller::store::etcd_store::EtcdTls;
    use meshwire_controller::store::{open_with, OpenOptions};
    use meshwire_labs::etcd::ServerTls;
    let dir = tempfile::tempdir().unwrap();
    let (authority, ca_path) = ca(dir.path(), "ca");
    let (server_cert, server_key) = signed(dir.path(), &authority, "etcd");
    let (client_cert, client_key) = signed(dir.path(), &authority, "meshwire");
    let (rogue, _) = ca(dir.path(), "rogue-ca");
    let (rogue_cert, rogue_key) = signed(dir.path(), &rogue, "intruder");
    let good = EtcdTls {
        ca: ca_path.clone(),
        cert: Some(client_cert),
        key: Some(client_key),
    };
    let started = LocalEtcd::start_tls(&ServerTls {
        cert: server_cert,
        key: server_key,
        client_ca: ca_path.clone(),
    })
    .await;
    let e = match started {
        Ok(e) => e,
        Err(err) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => {
            eprintln!("SKIP: {err}");
            return;
        }
        Err(err) => panic!("etcd is required: {err}"),
    };
    let spec = format!("etcd://{}", e.endpoint);
    let opts = OpenOptions {
        etcd_tls: Some(good),
        ..Default::default()
    };
    let store = open_with(&spec, &opts).await.unwrap();
    store
        .put("/t/x", b"1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(store.get("/t/x").await.unwrap().unwrap().value, b"1");
    let ctl = Controller::start(
        store,
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    assert_eq!(ctl.connection_count(), 0);

    for (what, tls) in [
        (
            "no client certificate",
            Some(EtcdTls {
                ca: ca_path.clone(),
                cert: None,
                key: None,
            }),
        ),
        (
            "another CA's certificate",
            Some(EtcdTls {
                ca: ca_path.clone(),
                cert: Some(rogue_cert.clone()),
                key: Some(rogue_key.clone()),
            }),
        ),
        ("plain HTTP", None),
    ] {
        let refused = open_with(
            &spec,
            &OpenOptions {
                etcd_tls: tls,
                ..Default::default()
            },
        )
        .await;
        let err = refused.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(err.to_string().contains("etcd"), "{what}: {err}");
    }
}

/// Input: an etcd with authentication on (a root user, and a user `meshwire` whose role may
/// read and write under /meshwire/ only). Output: without a user nothing is written, with the
/// wrong password the store does not open, and as `meshwire` the store, the election and a
/// controller work; outside its prefix etcd refuses it.
#[tokio::test]
async fn dev_etcd_with_authentication_a_user_limited_to_its_prefix() {
    use etcd_client::{Permission, PermissionType};
    use meshwire_controller::store::etcd_store::EtcdUser;
    use meshwire_controller::store::{open_etcd, OpenOptions};
    let Some(e) = etcd().await else { return };
    let url = format!("http://{}", e.endpoint);
    let mut admin = etcd_client::Client::connect([url.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("meshwire-rw").await.unwrap();
    admin
        .role_grant_permission(
            "meshwire-rw",
            Permission::new(PermissionType::Readwrite, "/meshwire/").with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("meshwire", "s3cret", None).await.unwrap();
    admin
        .user_grant_role("meshwire", "meshwire-rw")
        .await
        .unwrap();
    admin.auth_enable().await.unwrap();

    let spec = format!("etcd://{}", e.endpoint);
    let anonymous = open_etcd(&spec, &OpenOptions::default()).await;
    if let Ok(s) = anonymous {
        let w = s.put("/meshwire/v1/t/a", b"1".to_vec(), Expect::Any).await;
        assert!(w.is_err(), "an anonymous write must be refused");
    }
    let as_user = |password: &str| OpenOptions {
        etcd_user: Some(EtcdUser {
            name: "meshwire".into(),
            password: password.into(),
        }),
        ..Default::default()
    };
    let wrong = open_etcd(&spec, &as_user("nope")).await;
    let err = wrong
        .err()
        .expect("a wrong password does not open the store");
    assert!(err.to_string().contains("etcd"), "{err}");
    assert!(
        !format!("{:?}", as_user("s3cret").etcd_user).contains("s3cret"),
        "the password is never printed"
    );

    let s = open_etcd(&spec, &as_user("s3cret")).await.unwrap();
    s.put("/meshwire/v1/t/a", b"1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let outside = s.put("/elsewhere", b"1".to_vec(), Expect::Any).await;
    assert!(outside.is_err(), "outside its prefix etcd refuses the user");
    let election = meshwire_controller::store::election::Election::new(
        s.client(),
        s.describe(),
        std::time::Duration::from_secs(2),
        meshwire_controller::store::election::Candidate {
            id: "auth".into(),
            api: "http://127.0.0.1:1".into(),
            agents: None,
        },
    );
    let leadership = election.campaign().await.unwrap();
    let fenced: Arc<dyn Store> = Arc::new(s.fenced(leadership.fence()));
    let ctl = Controller::start(
        fenced,
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n";
    ctl.apply(Manifest::parse("t.yaml", docs).unwrap())
        .await
        .unwrap();
    leadership.resign().await;
}
