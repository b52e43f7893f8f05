//! Input: the store conformance steps and a controller restart, against a real etcd-server
//! started for the test. Output: the same behaviour as the embedded store.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use meshwire_controller::store::{etcd_store::EtcdStore, Expect, Store, StoreError, WatchEvent};
use meshwire_controller::{Config, ConnectionFilter, Controller, NullDriver, SystemClock};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts etcd-server on free loopback ports, or returns None when it is not installed and the
/// run does not require it (CI sets MESHWIRE_REQUIRE_ALL=1, so there it must exist).
async fn etcd() -> Option<Etcd> {
    if which("etcd").is_none() {
        assert!(std::env::var("MESHWIRE_REQUIRE_ALL").is_err(), "etcd is required (apt-get install etcd-server)");
        eprintln!("SKIP: etcd not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let child = Command::new("etcd")
        .args([
            "--data-dir", dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls", &format!("http://{endpoint}"),
            "--advertise-client-urls", &format!("http://{endpoint}"),
            "--listen-peer-urls", &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster", &format!("default=http://127.0.0.1:{peer}"),
            "--log-level", "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let e = Etcd { child, endpoint, _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(&e.endpoint).is_ok() {
            return Some(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("etcd did not start on {}", e.endpoint);
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|f| f.is_file()))
}

async fn connect(e: &Etcd) -> EtcdStore {
    for _ in 0..50 {
        if let Ok(s) = EtcdStore::connect(&[format!("http://{}", e.endpoint)]).await {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("cannot connect to etcd");
}

#[tokio::test]
async fn dev_etcd_conditions_watch_and_resume() {
    let Some(e) = etcd().await else { return };
    let s = connect(&e).await;
    let r1 = s.put("/t/a", b"1".to_vec(), Expect::Absent).await.unwrap();
    assert!(matches!(s.put("/t/a", b"x".to_vec(), Expect::Absent).await, Err(StoreError::Conflict { .. })));
    let mut w = s.watch("/t/", r1).await.unwrap();
    let r2 = s.put("/t/a", b"2".to_vec(), Expect::ModRevision(r1)).await.unwrap();
    let err = s.put("/t/a", b"3".to_vec(), Expect::ModRevision(r1)).await.unwrap_err();
    assert!(err.to_string().contains(&format!("expected revision {r1}, found revision {r2}")), "{err}");
    assert!(s.delete("/t/a", Expect::ModRevision(r2)).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv()).await.unwrap().unwrap().unwrap();
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
        let store: Arc<dyn Store> = Arc::new(connect(&e).await);
        let ctl = Controller::start(store, Arc::new(NullDriver), Arc::new(SystemClock), Config::default()).await.unwrap();
        ctl.apply(Manifest::parse("t.yaml", docs).unwrap()).await.unwrap();
        let req = ConnectionRequest { network_service: "s".into(), client: ClientRef { node: "n1".into(), name: None }, labels: Default::default(), mechanisms: vec![], interface: None, excluded_prefixes: vec![] };
        ctl.request(req).await.unwrap();
        (ctl.connections(&ConnectionFilter::default()), ctl.pool_usage())
    };
    let store: Arc<dyn Store> = Arc::new(connect(&e).await);
    let ctl = Controller::start(store, Arc::new(NullDriver), Arc::new(SystemClock), Config::default()).await.unwrap();
    assert_eq!((ctl.connections(&ConnectionFilter::default()), ctl.pool_usage()), before);
    assert_eq!(ctl.endpoints().len(), 1);
}
