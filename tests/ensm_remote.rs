//! Input: the `meshwire` binary as three processes would run in production: a controller, and
//! an eNSM in its own process (`meshwire ensm --device FILE --controller URL`) for a real
//! netconfd behind sshd loaded with our appliance YANG model. Output: the eNSM registers the
//! device's endpoint with its own URL; a request through the controller configures the device
//! (the controller calls the eNSM at that URL); close removes it; with the eNSM process gone, a
//! request fails with an error naming the device's eNSM. Credentials: each eNSM has its own
//! (a token bound to its device); another device's token is refused by it, and the controller
//! sends it only to the URL of the Device object, never to an endpoint's `url`.
//! Needs root, netconfd and openssh-server; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshwire_ensm_adapters::netconf::{Auth, Datastore, HostKey, Session, Target};
use meshwire_labs::appliance::{self, Appliance};

const BIN: &str = env!("CARGO_BIN_EXE_meshwire");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    meshwire_labs::ports::free_port().unwrap()
}

fn cli(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("MESHWIRE_CONTROLLER", url)
        .env("MESHWIRE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

/// fw1's eNSM's own credential (its token in the controller's table is bound to fw1).
const ENSM_TOKEN: &str = "ensm-fw1-secret-0123456789";
/// Another device's eNSM's credential.
const OTHER_ENSM_TOKEN: &str = "ensm-fw2-secret-0123456789";
const ADMIN_TOKEN: &str = "admin-secret-0123456789";

/// Waits for a daemon's `ready ...` line on its (piped) stdout: the event that it serves.
fn ready(p: &mut Proc, what: &str) {
    use std::io::BufRead;
    let out = p.0.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Its log shares stdout: the ready line is the one that starts with `ready `.
    std::thread::spawn(move || {
        let mut sent = false;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && l.starts_with("ready ") {
                sent = tx.send(l).is_ok();
            }
        }
    });
    if let Err(e) = rx.recv_timeout(Duration::from_secs(20)) {
        panic!("{what} did not become ready: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_remote_ensm_process_configures_the_device_for_the_controller() {
    if !appliance::runnable("the remote eNSM test") {
        return;
    }
    let yang = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ensm-adapters/yang/meshwire-appliance@2026-11-23.yang");
    let dev = Appliance::start(&[yang]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("fw1.yaml");
    std::fs::write(
        &device,
        format!(
            "apiVersion: meshwire.io/v1\nkind: EnsmDevice\nmetadata: {{name: fw1}}\nspec:\n  profile: meshwire-appliance\n  underlayAddress: 192.168.70.2\n  netconf:\n    host: 127.0.0.1\n    port: {}\n    user: root\n    keyFile: {}\n    hostKey: {{fingerprint: \"{}\"}}\n  endpoints:\n    - name: fw1\n      services: [firewall]\n",
            dev.port,
            dev.client_key().display(),
            dev.fingerprint().unwrap()
        ),
    )
    .unwrap();
    let topo = dir.path().join("topo.yaml");
    std::fs::write(&topo, "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-fw1}\nspec: {endpoints: [\"n1:eth1\", \"fw1:eth1\"], addresses: [\"192.168.70.1/24\", \"192.168.70.2/24\"]}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: firewall}\n").unwrap();

    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tokens:\n  - {name: ops, role: admin, tokenEnv: T_ADMIN}\n  - {name: fw1-ensm, role: operator, device: fw1, tokenEnv: T_FW1}\n  - {name: fw2-ensm, role: operator, device: fw2, tokenEnv: T_FW2}\n").unwrap();
    let (cp, ep) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cp}");
    let mut ctl = Proc(
        Command::new(BIN)
            .args([
                "controller",
                "--store",
                "memory",
                "--dataplane",
                "none",
                "--grpc-listen",
                "off",
                "--tokens",
                tokens.to_str().unwrap(),
                "--listen",
            ])
            .arg(format!("127.0.0.1:{cp}"))
            .env("T_ADMIN", ADMIN_TOKEN)
            .env("T_FW1", ENSM_TOKEN)
            .env("T_FW2", OTHER_ENSM_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ready(&mut ctl, "the controller");
    assert!(cli(&url, &["apply", "-f", topo.to_str().unwrap()])
        .status
        .success());
    let mut ensm = Proc(
        Command::new(BIN)
            .args([
                "ensm",
                "--device",
                device.to_str().unwrap(),
                "--controller",
                &url,
                "--listen",
            ])
            .arg(format!("127.0.0.1:{ep}"))
            .env("MESHWIRE_ENSM_TOKEN", ENSM_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready once registered, and the device answered its first contact: the endpoint is up.
    ready(&mut ensm, "the eNSM");
    let out = cli(&url, &["get", "endpoints", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v[0]["metadata"]["name"] == "fw1" && v[0]["status"]["down"] == false,
        "{v}"
    );
    // The eNSM answers only the controller (its token): 401 to anyone else.
    let http = reqwest::Client::new();
    let anon = http
        .get(format!("http://127.0.0.1:{ep}/ensm/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let wrong = http
        .get(format!("http://127.0.0.1:{ep}/ensm/v1/status"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // Another eNSM's credential (one that sees calls to fw2) cannot call fw1's eNSM.
    let other = http
        .post(format!("http://127.0.0.1:{ep}/ensm/v1/converge"))
        .bearer_auth(OTHER_ENSM_TOKEN)
        .json(
            &serde_json::json!({"scope": {"kind": "device", "name": "fw1"}, "version": 1,
            "update": {"kind": "full", "connections": []}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    let right = http
        .get(format!("http://127.0.0.1:{ep}/ensm/v1/status"))
        .bearer_auth(ENSM_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    // The eNSM's own credential speaks for its device's objects only: it may not request
    // connections (the controller composes chains itself).
    let request = http
        .post(format!("{url}/api/v1/connections"))
        .bearer_auth(ENSM_TOKEN)
        .json(&serde_json::json!({"network_service": "firewall", "client": {"node": "fw1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(request.status(), 403);
    let eps: serde_json::Value =
        serde_json::from_slice(&cli(&url, &["get", "endpoints", "-o", "json"]).stdout).unwrap();
    assert_eq!(eps[0]["spec"]["url"], format!("http://127.0.0.1:{ep}"));

    let out = cli(
        &url,
        &["request", "firewall", "--client", "n1", "-o", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    let s = Session::connect(&Target {
        device: "check".into(),
        host: "127.0.0.1".into(),
        port: dev.port,
        user: "root".into(),
        auth: Auth::Key {
            path: dev.client_key(),
            passphrase: None,
        },
        host_key: HostKey::AcceptAny,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let running = s.get_config(Datastore::Running, None).await.unwrap();
    assert!(running.contains(&format!("meshwire:{id}")), "{running}");
    assert!(cli(&url, &["close", &id]).status.success());
    let running = s.get_config(Datastore::Running, None).await.unwrap();
    assert!(!running.contains(&id), "{running}");

    // An endpoint naming another URL never receives the device's credential: the controller
    // calls the eNSM of the Device object. (Only an admin may even register it.)
    let evil = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    evil.set_nonblocking(true).unwrap();
    let decoy = dir.path().join("decoy.yaml");
    std::fs::write(&decoy, format!("---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: decoy}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: decoy}}\nspec: {{network_service_names: [decoy], url: \"http://{}\", location: {{device: fw1}}, mechanisms: {{vxlan: {{}}}}}}\n", evil.local_addr().unwrap())).unwrap();
    let out = cli(&url, &["apply", "-f", decoy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = cli(&url, &["request", "decoy", "--client", "n1"]);
    assert!(
        matches!(evil.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the controller called the endpoint's url"
    );

    drop(ensm);
    let out = cli(&url, &["request", "firewall", "--client", "n1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("eNSM of device fw1 unreachable"),
        "{err}"
    );
}
