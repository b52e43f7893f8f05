//! Input: the sriov lab (host n1 with a stand-in PF of two VFs in pool worker.domain/10G; its
//! agent runs the device plugin) and a kubelet stand-in played by this test over the kubelet's
//! own API (v1beta1 `Registration` served on `kubelet.sock`, `DevicePlugin` called on the socket
//! the plugin registers). Output: both pods allocated a token get their VF and ping each other
//! through the PF's switch; a third is refused with a clear error (token in use, token unknown);
//! the pool reports no free device; a kubelet restart and an agent restart bring the
//! registration back with the same tokens and move no VF; a PF link down is reported unhealthy;
//! closing gives both VFs back to the node under their own names.
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set (CI), where it must run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshwire_southbound::sriov::deviceplugin::kubelet::StandInKubelet;
use meshwire_southbound::sriov::deviceplugin::{pb, unix_channel, HEALTHY};

mod support;
use support::lab::{root, Lab};

const POOL: &str = "worker.domain/10G";
const PLUGINS: &str = "/run/meshwire/labs/sriov/agents/n1.device-plugins";

/// A stand-in kubelet on `dir`'s `kubelet.sock`.
fn kubelet(dir: &Path) -> StandInKubelet {
    StandInKubelet::serve(dir).unwrap()
}

/// The next registration the stand-in kubelet gets.
async fn registration(k: &mut StandInKubelet) -> pb::RegisterRequest {
    k.registration(Duration::from_secs(20))
        .await
        .expect("the device plugin registers within 20 s")
}

type Plugin = pb::device_plugin_client::DevicePluginClient<tonic::transport::Channel>;

async fn plugin(dir: &Path, reg: &pb::RegisterRequest) -> Plugin {
    assert_eq!(reg.resource_name, POOL);
    assert_eq!(reg.version, "v1beta1");
    pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&dir.join(&reg.endpoint)).await.unwrap(),
    )
}

/// The first device list (from a fresh ListAndWatch) for which `pred` holds.
async fn devices_until(p: &mut Plugin, pred: impl Fn(&[pb::Device]) -> bool) -> Vec<pb::Device> {
    let mut s = p.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(15), s.message())
            .await
            .expect("a device list within 15 s")
            .unwrap()
            .expect("stream open");
        if pred(&r.devices) {
            return r.devices;
        }
    }
}

fn healthy(d: &[pb::Device]) -> usize {
    d.iter().filter(|x| x.health == HEALTHY).count()
}

async fn allocate(p: &mut Plugin, id: &str) -> String {
    let r = p
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id.to_string()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    r.container_responses[0]
        .envs
        .get(&format!("NSM_SRIOV_TOKENS_{POOL}"))
        .cloned()
        .expect("upstream's environment variable")
}

fn ifindex(lab: &Lab, node: &str, ifname: &str) -> String {
    let out = lab.exec(node, &["ip", "-o", "link", "show", ifname]);
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn sriov_pool(lab: &Lab) -> serde_json::Value {
    let out = lab.meshwire(&["get", "resources", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sriov"][0].clone()
}

/// Waits until the controller's view of the pool satisfies `pred` (reports travel as events).
fn wait_pool(lab: &Lab, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let p = sriov_pool(lab);
        if pred(&p) {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "pool now: {p}");
        // The report is an event on the agent's stream; the REST view is read, not watched.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(lab: &Lab, args: &[&str], says: &str) {
    let out = lab.meshwire(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(says),
        "{args:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_sriov_pods_get_vfs_through_the_device_plugin_and_give_them_back() {
    if !root() {
        return;
    }
    let lab = Lab::up("sriov");
    let dir = PathBuf::from(PLUGINS);
    let (p1, p2, p3) = (lab.ns("p1"), lab.ns("p2"), lab.ns("p3"));

    // The kubelet comes up after the agent: the plugin sees kubelet.sock appear and registers.
    let mut k = kubelet(&dir);
    let reg = registration(&mut k).await;
    let mut dp = plugin(&dir, &reg).await;
    let devices = devices_until(&mut dp, |d| d.len() == 2 && healthy(d) == 2).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();

    // The kubelet hands one token to each of two pods; none is left for a third.
    let t1 = allocate(&mut dp, &ids[0]).await;
    let t2 = allocate(&mut dp, &ids[1]).await;
    assert_eq!(
        (t1.as_str(), t2.as_str()),
        (ids[0].as_str(), ids[1].as_str())
    );
    let free = ids.len() - 2;
    assert_eq!(
        free, 0,
        "the device plugin offers no device for a third pod"
    );
    wait_pool(&lab, |p| p["tokensAllocated"] == 2);

    let c1 = lab.request(&[
        "sriov-net",
        "--client",
        "n1",
        "--name",
        &p1,
        "--sriov-token",
        &t1,
    ]);
    // The second pod asks as an unmodified upstream client does, through n1's NSM socket, with
    // its token in the kernel mechanism's `tokenID` (when grpcio-tools is here; else the CLI).
    let c2 = match support::lab::nsm_stubs() {
        Some(stubs) => {
            let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &p2, "python3"])
                .arg(here.join("nsm_client.py"))
                .arg(stubs.path())
                .arg("unix:///run/meshwire/labs/sriov/agents/n1.nsm.sock")
                .args(["upstream-request", "sriov-net", "nsm-1", &t2])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                lab.logs()
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["mechanism"]["type"], "KERNEL", "{v}");
            lab.connection(v["id"].as_str().unwrap())
        }
        None => lab.request(&[
            "sriov-net",
            "--client",
            "n1",
            "--name",
            &p2,
            "--sriov-token",
            &t2,
        ]),
    };
    for (c, ns) in [(&c1, &p1), (&c2, &p2)] {
        assert_eq!(c["state"], "up", "{c}");
        let m = &c["hops"][0]["mechanism"];
        assert_eq!(m["type"], "sriov-vf", "{m}");
        let link = lab.exec(
            ns.trim_start_matches("clab-sriov-"),
            &["ip", "link", "show", "nsm-1"],
        );
        let text = String::from_utf8_lossy(&link.stdout);
        assert!(
            text.contains(&format!("alias meshwire-vf:{}", c["id"].as_str().unwrap())),
            "{ns}: {text}"
        );
    }
    assert_ne!(
        c1["hops"][0]["mechanism"]["pci_address"],
        c2["hops"][0]["mechanism"]["pci_address"]
    );
    let a2 = c2["ip_context"]["src_ip_addrs"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let a1 = c1["ip_context"]["src_ip_addrs"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        lab.ping("p1", &a2),
        "p1 reaches p2 through their VFs\n{}",
        lab.logs()
    );
    assert!(lab.ping("p2", &a1));
    let pool = wait_pool(&lab, |p| p["allocated"] == 2);
    assert_eq!(
        (pool["total"].as_u64(), pool["unhealthy"].as_u64()),
        (Some(2), Some(0))
    );

    // A third pod: another's token is in use; a made-up one is not the node's.
    refused(
        &lab,
        &[
            "request",
            "sriov-net",
            "--client",
            "n1",
            "--name",
            &p3,
            "--sriov-token",
            &t1,
        ],
        "in use by connection",
    );
    refused(
        &lab,
        &[
            "request",
            "sriov-net",
            "--client",
            "n1",
            "--name",
            &p3,
            "--sriov-token",
            "sriov-00000000-0000-0000-0000-000000000000",
        ],
        "not one of this node's device plugin tokens",
    );
    refused(
        &lab,
        &["request", "sriov-net", "--client", "n1", "--name", &p3],
        "device plugin token",
    );

    let before = (ifindex(&lab, "p1", "nsm-1"), ifindex(&lab, "p2", "nsm-1"));

    // Kubelet restart: every socket in the directory deleted, kubelet.sock created anew.
    drop(k);
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let mut k = kubelet(&dir);
    let reg = registration(&mut k).await;
    let mut dp = plugin(&dir, &reg).await;
    let again: Vec<String> = devices_until(&mut dp, |d| d.len() == 2)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(
        again.iter().collect::<std::collections::BTreeSet<_>>(),
        ids.iter().collect()
    );

    // Agent restart: it registers again, its tokens and allocations restored, no VF moved.
    let out = lab.meshwire(&["lab", "node-agent", "sriov", "n1", "kill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.meshwire(&["lab", "node-agent", "sriov", "n1", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg = registration(&mut k).await;
    let mut dp = plugin(&dir, &reg).await;
    let after: Vec<String> = devices_until(&mut dp, |d| d.len() == 2)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(
        after.iter().collect::<std::collections::BTreeSet<_>>(),
        ids.iter().collect()
    );
    wait_pool(&lab, |p| p["tokensAllocated"] == 2 && p["allocated"] == 2);
    assert_eq!(
        before,
        (ifindex(&lab, "p1", "nsm-1"), ifindex(&lab, "p2", "nsm-1")),
        "no VF changed hands"
    );
    assert!(lab.ping("p1", &a2));

    // The PF's link down: its VFs are reported unhealthy (not hidden), then healthy again.
    let out = lab.exec("n1", &["ip", "link", "set", "pf0", "down"]);
    assert!(out.status.success());
    devices_until(&mut dp, |d| d.len() == 2 && healthy(d) == 0).await;
    wait_pool(&lab, |p| p["unhealthy"] == 2);
    let out = lab.exec("n1", &["ip", "link", "set", "pf0", "up"]);
    assert!(out.status.success());
    devices_until(&mut dp, |d| healthy(d) == 2).await;
    wait_pool(&lab, |p| p["unhealthy"] == 0);

    // Closing gives a VF back to n1 under its own name, unmarked; one closed while the agent
    // is away comes back when the agent does (its sweep finds it lent to no desired
    // connection).
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(lab.meshwire(&["close", c1["id"].as_str().unwrap()]));
    ok(lab.meshwire(&["lab", "node-agent", "sriov", "n1", "kill"]));
    ok(lab.meshwire(&["close", c2["id"].as_str().unwrap()]));
    assert!(
        lab.exec("p2", &["ip", "link", "show", "nsm-1"])
            .status
            .success(),
        "still lent while the agent is away"
    );
    ok(lab.meshwire(&["lab", "node-agent", "sriov", "n1", "start"]));
    assert!(
        lab.wait_links("n1", Duration::from_secs(15), |l| l.contains("pf0v0@")
            && l.contains("pf0v1@")),
        "both VFs back on n1\n{}",
        lab.logs()
    );
    for vf in ["pf0v0", "pf0v1"] {
        let out = lab.exec("n1", &["ip", "link", "show", vf]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("alias"),
            "{vf}: {text}"
        );
    }
    assert!(!lab
        .exec("p2", &["ip", "link", "show", "nsm-1"])
        .status
        .success());
    assert!(!lab
        .exec("p1", &["ip", "link", "show", "nsm-1"])
        .status
        .success());
    wait_pool(&lab, |p| p["allocated"] == 0);
}

/// Input: the radio lab (an appliance's radio endpoint with room for two attachments, reached
/// from host `worker`, whose agent publishes them as device plugin resource
/// radio.meshwire.io/radio1) and the kubelet stand-in. Output: the resource registers with two
/// healthy devices, both can be allocated, and a third pod finds none free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_radio_attachments_are_a_device_plugin_resource() {
    if !root() {
        return;
    }
    let lab = Lab::up("radio");
    let dir = PathBuf::from("/run/meshwire/labs/radio/agents/worker.device-plugins");
    let mut k = kubelet(&dir);
    let reg = registration(&mut k).await;
    assert_eq!(reg.resource_name, "radio.meshwire.io/radio1");
    let mut dp = pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&dir.join(&reg.endpoint)).await.unwrap(),
    );
    let devices = devices_until(&mut dp, |d| d.len() == 2 && healthy(d) == 2).await;
    for d in &devices {
        let r = dp
            .allocate(pb::AllocateRequest {
                container_requests: vec![pb::ContainerAllocateRequest {
                    devices_ids: vec![d.id.clone()],
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.container_responses.len(), 1);
    }
    // The kubelet's accounting: two devices, both allocated, none for a third pod.
    assert_eq!(devices.len(), 2);
    // The radio endpoint itself still takes its two attachments.
    lab.request(&["radio", "--client", "worker", "--name", &lab.ns("c1")]);
}

/// Python stubs of the kubelet's upstream device plugin proto (tests/interop/kubelet-api),
/// generated by grpcio-tools; `None` (skip) without it, unless MESHWIRE_REQUIRE_ALL.
fn kubelet_stubs() -> Option<tempfile::TempDir> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import grpc_tools, grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "grpcio-tools is required: python3 -m pip install grpcio-tools"
        );
        eprintln!("SKIP: grpcio-tools not installed");
        return None;
    }
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kubelet-api");
    let stubs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(protos.join("api.proto"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stubs)
}

/// Input: a kubelet played by Python code generated from the kubelet's own upstream
/// `api.proto` (not from Meshwire's copy), serving `kubelet.sock` in a temporary plugin
/// directory. Output: the plugin registers as v1beta1 naming its pool and socket, lists its
/// devices healthy, and `Allocate` gives upstream's `NSM_SRIOV_TOKENS_<pool>`, recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nb_device_plugin_serves_a_kubelet_built_from_the_upstream_proto() {
    use meshwire_southbound::sriov::deviceplugin::{DevicePlugins, PluginConfig, Usable};
    use std::io::BufRead;
    let Some(stubs) = kubelet_stubs() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kubelet.py");
    let mut kubelet = std::process::Command::new("python3")
        .arg(&script)
        .arg(stubs.path())
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The kubelet listens before the plugin starts, as on a node where it runs already.
    let mut err = std::io::BufReader::new(kubelet.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening", "{line}");
    let (_usable, rx) = tokio::sync::watch::channel(Usable::new());
    let plugins = DevicePlugins::start(
        PluginConfig {
            dir: dir.clone(),
            state_dir: tmp.path().join("state"),
            pools: [(POOL.to_string(), 2)].into(),
        },
        rx,
    )
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || kubelet.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(out.status.success(), "{rest}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "v1beta1", "{v}");
    assert_eq!(v["resource"], POOL);
    assert_eq!(v["endpoint"], "meshwire-worker.domain_10G.sock");
    assert_eq!(v["preStartRequired"], false);
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d["health"] == HEALTHY), "{v}");
    let first = devices[0]["id"].as_str().unwrap();
    assert_eq!(v["envs"][format!("NSM_SRIOV_TOKENS_{POOL}")], first);
    assert!(plugins.tokens().borrow().check(first).is_ok());
}
