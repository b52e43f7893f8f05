//! `meshwire bench sriov`: an SR-IOV VF lent to a client (request to its interface ready in
//! the pod) beside a veth connection on the same node in the same run, and the device plugin's
//! `Allocate` round trips per second.
//!
//! A node namespace with a stand-in PF (a bridge as its switch, veths as its VFs, a sysfs tree
//! in a temporary directory: these machines have no SR-IOV NIC), a pod namespace and an endpoint
//! namespace. A controller with the agent hub on loopback and one agent for the node in this
//! process (`KernelDriver::for_node`, the SR-IOV side reporting its pool); each request returns
//! once the agent acknowledged the wiring: the VF moved into the pod, renamed, addressed and up
//! (the veth created, addressed and up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_models::sriov::SriovConfig;
use meshwire_models::{ClientRef, ConnectionRequest, ConnectionState, Manifest};
use meshwire_southbound::agent::{node, NodeAgentOptions};
use meshwire_southbound::sriov::deviceplugin::{pb, unix_channel};
use meshwire_southbound::sriov::node::{SriovNode, SriovOptions};
use meshwire_southbound::sriov::standin::{StandInPf, StandInVf};
use meshwire_southbound::KernelDriver;

use crate::setup::{pct, sh, BenchNetns};

const P: &str = "mwsrb";
const VFS: u32 = 4;

/// The node with its stand-in PF, a pod and an endpoint.
fn namespaces() -> anyhow::Result<BenchNetns> {
    let ns = BenchNetns::create(P, &["n1", "pod", "e"])?;
    let n1 = format!("{P}-n1");
    sh(&format!(
        "ip -n {n1} link add pf0 type bridge && ip -n {n1} link add pf0wire type veth peer name pf0wirep && ip -n {n1} link set pf0wire master pf0 up && ip -n {n1} link set pf0wirep up"
    ))?;
    for i in 0..VFS {
        sh(&format!(
            "ip -n {n1} link add pf0v{i} type veth peer name pf0r{i} && ip -n {n1} link set pf0r{i} master pf0 up"
        ))?;
    }
    sh(&format!("ip -n {n1} link set pf0 up"))?;
    Ok(ns)
}

fn manifests() -> String {
    format!(
        r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {{name: n1}}
spec: {{forwarder: kernel, netns: {P}-n1}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {{name: vfnet}}
spec: {{payload: ETHERNET}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {{name: pf}}
spec: {{network_service_names: [vfnet], location: {{node: n1}}, mechanisms: {{sriovVf: {{}}}}, ipamPrefix: 10.81.0.0/24}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {{name: vethnet}}
spec: {{payload: IP}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {{name: e}}
spec: {{network_service_names: [vethnet], location: {{node: n1, netns: {P}-e}}, ipamPrefix: 172.23.0.0/16}}
"#
    )
}

fn req(service: &str, token: Option<&str>) -> ConnectionRequest {
    ConnectionRequest {
        network_service: service.into(),
        client: ClientRef {
            node: "n1".into(),
            name: Some(format!("{P}-pod")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: Some("nsm-1".into()),
        excluded_prefixes: vec![],
        sriov_token: token.map(str::to_string),
    }
}

/// `n` request/close cycles; the requests' times (ms).
async fn cycles(
    ctl: &meshwire_controller::Controller,
    r: &ConnectionRequest,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = ctl.request(r.clone()).await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(c.state == ConnectionState::Up, "{} not up", c.id);
        ctl.close(&c.id).await?;
    }
    Ok(out)
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let n = ((200.0 * scale).round() as usize).max(5);
    let allocations = ((2_000.0 * scale).round() as usize).max(50);
    let _ns = namespaces()?;
    let dir = tempfile::tempdir()?;
    let sysfs = dir.path().join("sysfs");
    StandInPf {
        pci: "0000:3b:00.0"
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        netdev: "pf0".into(),
        pf_driver: "ice".into(),
        vf_driver: "iavf".into(),
        total_vfs: VFS,
        vfs: (0..VFS)
            .map(|i| {
                Ok(StandInVf {
                    pci: format!("0000:3b:01.{i}")
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!(e))?,
                    netdev: format!("pf0v{i}"),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        first_iommu_group: 40,
    }
    .write(&sysfs)?;
    let config = SriovConfig::from_yaml(
        "physicalFunctions:\n  0000:3b:00.0: {capabilities: [10G], serviceDomains: [bench.example]}\n",
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let plugins = dir.path().join("device-plugins");
    let sriov = SriovNode::start(SriovOptions {
        config,
        sysfs_root: sysfs,
        plugin_dir: Some(plugins.clone()),
        state_dir: dir.path().join("state"),
        netns: Some(format!("{P}-n1")),
    })
    .await?;

    // Allocate round trips on the plugin's socket (as the kubelet calls it), one token each.
    let socket = plugins.join(meshwire_southbound::sriov::deviceplugin::socket_name(
        "bench.example/10G",
    ));
    let mut dp = pb::device_plugin_client::DevicePluginClient::new(unix_channel(&socket).await?);
    let mut watch = dp.list_and_watch(pb::Empty {}).await?.into_inner();
    let devices = watch
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no device list"))?
        .devices;
    let token = devices
        .first()
        .map(|d| d.id.clone())
        .ok_or_else(|| anyhow::anyhow!("the pool has no devices"))?;
    let t = Instant::now();
    for i in 0..allocations {
        let id = devices[i % devices.len()].id.clone();
        dp.allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id],
            }],
        })
        .await?;
    }
    let allocate_per_s = allocations as f64 / t.elapsed().as_secs_f64();

    let (hub, url, server, ctl) = crate::agents::hub_controller(
        Duration::from_secs(30),
        Manifest::parse("sriov.yaml", &manifests())?,
    )
    .await?;
    let driver = Arc::new(KernelDriver::for_node("n1").sriov_standin(true));
    let agent = tokio::spawn(node::run(
        NodeAgentOptions {
            node: "n1".into(),
            controllers: vec![url],
            token: None,
            ca: None,
            connect_timeout: Duration::from_secs(2),
            sriov: Some(sriov.report()),
        },
        driver.clone(),
        |_| {},
    ));
    let _loop = ctl.spawn_reconciler(Duration::from_secs(3600));
    let t = Instant::now();
    while hub.attached().is_empty()
        || ctl
            .sriov_usage()
            .first()
            .is_none_or(|p| p.tokens_allocated == 0)
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the agent did not attach and report its pool within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Warm both paths, then alternate so each sees the same machine.
    cycles(&ctl, &req("vfnet", Some(&token)), 2).await?;
    cycles(&ctl, &req("vethnet", None), 2).await?;
    let (mut vf, mut veth) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        vf.extend(cycles(&ctl, &req("vfnet", Some(&token)), n / 10).await?);
        veth.extend(cycles(&ctl, &req("vethnet", None), n / 10).await?);
    }
    driver.settled().await;
    agent.abort();
    server.abort();
    drop(sriov);

    let (vf50, vf99) = (pct(&mut vf, 0.5), pct(&mut vf, 0.99));
    let (ve50, ve99) = (pct(&mut veth, 0.5), pct(&mut veth, 0.99));
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "request -> interface ready in the pod (one node, its agent)",
        "p50 ms",
        "p99 ms",
        "samples",
    ]);
    t.add_row(vec![
        "SR-IOV VF lent (moved, renamed, addressed, up)".to_string(),
        format!("{vf50:.2}"),
        format!("{vf99:.2}"),
        vf.len().to_string(),
    ]);
    t.add_row(vec![
        "veth pair to an endpoint on the node".to_string(),
        format!("{ve50:.2}"),
        format!("{ve99:.2}"),
        veth.len().to_string(),
    ]);
    t.add_row(vec![
        "device plugin Allocate round trips per second".to_string(),
        format!("{allocate_per_s:.0}"),
        String::new(),
        allocations.to_string(),
    ]);
    println!("{t}");
    println!("stand-in PF (veths as VFs): the PF-side VF settings are not sent; on a real NIC moving a VF is the same netlink work");
    println!(
        "sriov: vf_p50_ms={vf50:.2} vf_p99_ms={vf99:.2} veth_p50_ms={ve50:.2} veth_p99_ms={ve99:.2} samples={} allocate_per_s={allocate_per_s:.0} ratio_vs_veth={:.2}",
        vf.len(),
        ve50 / vf50
    );
    Ok(())
}
