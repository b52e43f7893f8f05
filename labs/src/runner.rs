//! Creating and removing a lab's namespaces, bridges and links with iproute2, as containerlab
//! does. `up` checks nothing is there yet, creates in order and, if a step fails, removes
//! everything of the lab again and names the step. `down` needs only the lab's name: it finds
//! namespaces by the `clab-<lab>-` prefix and host interfaces by their `meshwire-lab:<lab>` alias,
//! so it also cleans up after a crash.

use tokio::process::Command;

use crate::spec::{Kind, Lab};

/// A failed step of `up` or `down`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lab {lab}: {step}: {reason}")]
pub struct RunError {
    pub lab: String,
    pub step: String,
    pub reason: String,
}

async fn ip<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<String, String> {
    run("ip", args).await
}

async fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn host_alias(lab: &str) -> String {
    format!("meshwire-lab:{lab}")
}

/// Which lab created each namespace (`clab-a-b-c` may be lab `a`'s node `b-c` or lab `a-b`'s
/// node `c`): one file per namespace, holding the lab's name.
/// Where a running lab keeps its state (the controller's URL, logs, pids), one directory per lab.
pub const LAB_DIR: &str = "/run/meshwire/labs";

/// The state directory of lab `name`.
pub fn state_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(LAB_DIR).join(name)
}

/// The REST address of lab `name`'s controller; an error naming the file when the lab is not up.
pub fn controller_url(name: &str) -> std::io::Result<String> {
    let p = state_dir(name).join("controller.url");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("lab {name} is not up ({} missing)", p.display()),
        )),
    }
}

const OWNERS: &str = "/run/meshwire/netns-owner";

fn owner(ns: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(OWNERS).join(ns))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The namespaces of lab `name` that exist now.
pub async fn namespaces(name: &str) -> Vec<String> {
    let prefix = format!("clab-{name}-");
    ip(&["netns", "list"])
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        // Ours only when the owner record names exactly this lab: `clab-a-b-c` may belong to
        // lab `a-b`, and a namespace nobody recorded is not ours to delete.
        .filter(|n| owner(n).as_deref() == Some(name))
        .map(str::to_string)
        .collect()
}

/// What `up` started besides namespaces and links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The host's address on the lab's management network, where the controller's OpenFlow
    /// listener must bind so the ovs nodes' switches reach it (only with ovs nodes).
    pub controller_ip: Option<std::net::Ipv4Addr>,
    /// ovs node → its OVSDB remote (`unix:<state>/ovs/<node>/db.sock`).
    pub ovsdb: std::collections::BTreeMap<String, String>,
    /// Appliance node → how to reach its emulated device.
    pub appliances: std::collections::BTreeMap<String, crate::appliance::LabAppliance>,
}

/// A bridge node's label: the bridge exists already (another lab's); this lab only plugs
/// its ports into it.
pub const EXISTING_BRIDGE: &str = "meshwire.io/existing-bridge";

/// The host-side name of lab `lab`'s management bridge.
fn mgmt_bridge(lab: &str) -> String {
    format!("mwm{:06x}", fnv(lab) & 0xff_ffff)
}

fn fnv(s: &str) -> u64 {
    meshwire_models::document::fnv1a64(s.as_bytes())
}

/// Creates the management network of the ovs nodes: a host bridge with the controller's address
/// and one veth (`mgmt0` inside) per node, on a 100.127.X.0/24 no other interface uses.
/// Appliances join it too: their NETCONF and SNMP are reached there; and with node agents,
/// every kernel host (its agent reaches the controller there).
type Mgmt = Option<(
    std::net::Ipv4Addr,
    std::collections::BTreeMap<String, std::net::Ipv4Addr>,
)>;

async fn mgmt(lab: &Lab, agents: bool) -> Result<Mgmt, (String, String)> {
    let ovs: Vec<&crate::spec::LabNode> = lab
        .nodes
        .values()
        .filter(|n| n.is_ovs() || n.kind == Kind::Appliance || (agents && n.is_host()))
        .collect();
    if ovs.is_empty() {
        return Ok(None);
    }
    let mut addrs = std::collections::BTreeMap::new();
    let step = |s: String| move |reason: String| (s, reason);
    let used = ip(&["-4", "-o", "addr", "show"]).await.unwrap_or_default();
    let start = (fnv(&lab.name) % 250) as u8;
    let x = (0..250u8)
        .map(|i| (start.wrapping_add(i) % 250) + 1)
        .find(|x| !used.contains(&format!("100.127.{x}.")))
        .ok_or_else(|| {
            (
                "management network".to_string(),
                "no free 100.127.X.0/24".to_string(),
            )
        })?;
    let alias = host_alias(&lab.name);
    let br = mgmt_bridge(&lab.name);
    ip(&["link", "add", &br, "type", "bridge"])
        .await
        .map_err(step(format!("create management bridge {br}")))?;
    let host = std::net::Ipv4Addr::new(100, 127, x, 1);
    ip(&["link", "set", &br, "alias", &alias, "up"])
        .await
        .map_err(step(format!("management bridge {br} up")))?;
    ip(&["addr", "add", &format!("{host}/24"), "dev", &br])
        .await
        .map_err(step(format!("address {host}/24 on {br}")))?;
    for (i, n) in ovs.iter().enumerate() {
        let ns = lab.netns(&n.name);
        let hostside = format!("mw{:04x}m{i}", fnv(&lab.name) & 0xffff);
        let what = format!("node {}: management link", n.name);
        ip(&[
            "link", "add", &hostside, "type", "veth", "peer", "name", "mgmt0", "netns", &ns,
        ])
        .await
        .map_err(step(what.clone()))?;
        ip(&[
            "link", "set", &hostside, "alias", &alias, "master", &br, "up",
        ])
        .await
        .map_err(step(what.clone()))?;
        let node_ip = std::net::Ipv4Addr::new(100, 127, x, 10 + i as u8);
        addrs.insert(n.name.clone(), node_ip);
        let addr = format!("{node_ip}/24");
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "mgmt0"])
            .await
            .map_err(step(what.clone()))?;
        ip(&["-n", &ns, "link", "set", "mgmt0", "up"])
            .await
            .map_err(step(what))?;
    }
    Ok(Some((host, addrs)))
}

/// Starts ovsdb-server and ovs-vswitchd (userspace datapath) inside the node's namespace, with
/// their database, sockets and logs in `dir`. They run detached; `down` ends them with the
/// namespace.
async fn start_ovs(
    lab: &Lab,
    node: &str,
    dir: &std::path::Path,
) -> Result<String, (String, String)> {
    let ns = lab.netns(node);
    let d = dir.display().to_string();
    let step = |s: &str| {
        let s = format!("node {node}: {s}");
        move |reason: String| (s, reason)
    };
    std::fs::create_dir_all(dir).map_err(|e| (format!("node {node}: {d}"), e.to_string()))?;
    run(
        "ovsdb-tool",
        &[
            "create",
            &format!("{d}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ],
    )
    .await
    .map_err(step("ovsdb-tool create (is openvswitch-switch installed?)"))?;
    let env = [
        format!("OVS_RUNDIR={d}"),
        format!("OVS_LOGDIR={d}"),
        format!("OVS_DBDIR={d}"),
    ];
    let daemon = |prog: &str, args: Vec<String>| {
        let mut v: Vec<String> = vec!["netns".into(), "exec".into(), ns.clone(), "env".into()];
        v.extend(env.iter().cloned());
        v.push(prog.to_string());
        v.extend(args);
        v.push("--detach".into());
        v.push("--no-chdir".into());
        v
    };
    ip(&daemon(
        "ovsdb-server",
        vec![
            format!("{d}/conf.db"),
            format!("--remote=punix:{d}/db.sock"),
            format!("--pidfile={d}/ovsdb-server.pid"),
            format!("--log-file={d}/ovsdb-server.log"),
        ],
    ))
    .await
    .map_err(step("start ovsdb-server"))?;
    run(
        "ovs-vsctl",
        &[&format!("--db=unix:{d}/db.sock"), "--no-wait", "init"],
    )
    .await
    .map_err(step("ovs-vsctl init"))?;
    ip(&daemon(
        "ovs-vswitchd",
        vec![
            format!("unix:{d}/db.sock"),
            format!("--pidfile={d}/ovs-vswitchd.pid"),
            format!("--log-file={d}/ovs-vswitchd.log"),
        ],
    ))
    .await
    .map_err(step("start ovs-vswitchd"))?;
    Ok(format!("unix:{d}/db.sock"))
}

/// Creates the lab. On failure everything created is removed again. `state` holds what the lab
/// keeps on disk (the ovs nodes' databases and logs).
pub async fn up(lab: &Lab, state: &std::path::Path) -> Result<Runtime, RunError> {
    up_with(lab, state, false).await
}

/// [`up`]; with `agents`, every kernel host joins the management network too (its node agent
/// reaches the controller there).
pub async fn up_with(
    lab: &Lab,
    state: &std::path::Path,
    agents: bool,
) -> Result<Runtime, RunError> {
    let existing = namespaces(&lab.name).await;
    if let Some(ns) = existing.first() {
        return Err(RunError {
            lab: lab.name.clone(),
            step: "check".into(),
            reason: format!("already up (namespace {ns} exists); run `meshwire lab down` first"),
        });
    }
    let run_all = async {
        create(lab).await?;
        let m = mgmt(lab, agents).await?;
        let controller_ip = m.as_ref().map(|(h, _)| *h);
        let mut ovsdb = std::collections::BTreeMap::new();
        for n in lab.nodes.values().filter(|n| n.is_ovs()) {
            let db = start_ovs(lab, &n.name, &state.join("ovs").join(&n.name)).await?;
            ovsdb.insert(n.name.clone(), db);
        }
        let mut appliances = std::collections::BTreeMap::new();
        if let Some((host, addrs)) = &m {
            for (i, n) in lab
                .nodes
                .values()
                .filter(|n| n.kind == Kind::Appliance)
                .enumerate()
            {
                let a = crate::appliance::start_lab_appliance(
                    lab,
                    n,
                    &state.join("appliance").join(&n.name),
                    addrs[&n.name],
                    *host,
                    crate::appliance::lab_trap_port(i),
                )
                .await
                .map_err(|e| (format!("appliance {}: {}", n.name, e.step), e.reason))?;
                appliances.insert(n.name.clone(), a);
            }
        }
        Ok::<_, (String, String)>(Runtime {
            controller_ip,
            ovsdb,
            appliances,
        })
    };
    match run_all.await {
        Ok(rt) => Ok(rt),
        Err((step, reason)) => {
            tracing::warn!(lab = %lab.name, %step, %reason, "lab up failed; rolling back");
            let _ = down(&lab.name).await;
            Err(RunError {
                lab: lab.name.clone(),
                step,
                reason,
            })
        }
    }
}

async fn create(lab: &Lab) -> Result<(), (String, String)> {
    let alias = host_alias(&lab.name);
    let step = |s: String| move |reason: String| (s, reason);
    for n in lab.nodes.values() {
        match n.kind {
            Kind::Linux | Kind::Appliance => {
                let ns = lab.netns(&n.name);
                // The owner first: a namespace left by a failure half-way is still found.
                std::fs::create_dir_all(OWNERS)
                    .and_then(|_| std::fs::write(std::path::Path::new(OWNERS).join(&ns), &lab.name))
                    .map_err(|e| (format!("record the owner of {ns}"), e.to_string()))?;
                ip(&["netns", "add", &ns])
                    .await
                    .map_err(step(format!("create namespace {ns} for node {}", n.name)))?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])
                    .await
                    .map_err(step(format!("node {}: lo up", n.name)))?;
            }
            // A bridge another lab (or the operator) made, as containerlab's bridges are:
            // used, never created or removed here.
            Kind::Bridge if n.labels.get(EXISTING_BRIDGE).is_some_and(|v| v == "true") => {
                ip(&["link", "show", &n.name]).await.map_err(|r| {
                    (
                        format!("bridge {}", n.name),
                        format!("{r}: it is marked {EXISTING_BRIDGE} and must exist (bring up the lab that creates it first)"),
                    )
                })?;
            }
            Kind::Bridge => {
                ip(&["link", "add", &n.name, "type", "bridge"])
                    .await
                    .map_err(step(format!("create bridge {}", n.name)))?;
                ip(&["link", "set", &n.name, "alias", &alias, "up"])
                    .await
                    .map_err(step(format!("bridge {} up", n.name)))?;
            }
        }
    }
    for l in &lab.links {
        let what = format!(
            "link {}:{} <-> {}:{}",
            l.a.node, l.a.interface, l.b.node, l.b.interface
        );
        let ns_of = |node: &str| lab.nodes[node].has_netns().then(|| lab.netns(node));
        let (ns_a, ns_b) = (ns_of(&l.a.node), ns_of(&l.b.node));
        let mut args: Vec<String> = vec!["link".into(), "add".into(), l.a.interface.clone()];
        if let Some(ns) = &ns_a {
            args.extend(["netns".into(), ns.clone()]);
        }
        args.extend([
            "type".into(),
            "veth".into(),
            "peer".into(),
            "name".into(),
            l.b.interface.clone(),
        ]);
        if let Some(ns) = &ns_b {
            args.extend(["netns".into(), ns.clone()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ip(&argv).await.map_err(step(what.clone()))?;
        for (end, ns) in [(&l.a, &ns_a), (&l.b, &ns_b)] {
            let with = |rest: &[&str]| -> Vec<String> {
                let mut v: Vec<String> = ns
                    .iter()
                    .flat_map(|n| ["-n".to_string(), n.clone()])
                    .collect();
                v.extend(rest.iter().map(|s| s.to_string()));
                v
            };
            if ns.is_none() {
                // A bridge port in the host namespace: tag it and plug it in.
                ip(&with(&[
                    "link",
                    "set",
                    &end.interface,
                    "alias",
                    &alias,
                    "master",
                    &end.node,
                ]))
                .await
                .map_err(step(format!("{what}: join bridge {}", end.node)))?;
            }
            if let Some(m) = l.mtu {
                ip(&with(&[
                    "link",
                    "set",
                    &end.interface,
                    "mtu",
                    &m.to_string(),
                ]))
                .await
                .map_err(step(format!("{what}: mtu")))?;
            }
            if let Some(a) = end.address {
                ip(&with(&[
                    "addr",
                    "add",
                    &a.to_string(),
                    "dev",
                    &end.interface,
                ]))
                .await
                .map_err(step(format!("{what}: address {a} on {}", end.node)))?;
            }
            ip(&with(&["link", "set", &end.interface, "up"]))
                .await
                .map_err(step(format!("{what}: up")))?;
        }
    }
    for n in lab.nodes.values().filter(|n| n.has_netns()) {
        let ns = lab.netns(&n.name);
        for cmd in &n.exec {
            ip(&["netns", "exec", &ns, "sh", "-c", cmd])
                .await
                .map_err(step(format!("node {}: exec `{cmd}`", n.name)))?;
        }
    }
    Ok(())
}

/// Removes everything of lab `name`: processes in its namespaces, the namespaces, and host
/// interfaces carrying its alias. Returns what was removed.
pub async fn down(name: &str) -> Result<Vec<String>, RunError> {
    let mut removed = Vec::new();
    let fail = |step: String, reason: String| RunError {
        lab: name.to_string(),
        step,
        reason,
    };
    for ns in namespaces(name).await {
        for pid in ip(&["netns", "pids", &ns])
            .await
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = run("kill", &["-9", pid]).await;
        }
        ip(&["netns", "del", &ns])
            .await
            .map_err(|r| fail(format!("delete namespace {ns}"), r))?;
        let _ = std::fs::remove_file(std::path::Path::new(OWNERS).join(&ns));
        // A vL3 member's resolver (`/etc/netns/<ns>/resolv.conf`, written by the data plane)
        // goes with its namespace: the namespace is the lab's.
        let etc = std::path::Path::new("/etc/netns").join(&ns);
        if etc.exists() && std::fs::remove_dir_all(&etc).is_ok() {
            removed.push(format!("dir {}", etc.display()));
        }
        removed.push(format!("netns {ns}"));
    }
    let alias = host_alias(name);
    let links = ip(&["-o", "link", "show"]).await.unwrap_or_default();
    let mut ours: Vec<(String, bool)> = Vec::new();
    for line in links
        .lines()
        // The alias must be exactly ours: `meshwire-lab:a` is a prefix of `meshwire-lab:a-b`.
        .filter(|l| {
            l.split_once(" alias ")
                .is_some_and(|(_, a)| a.trim() == alias)
        })
    {
        if let Some(ifname) = line
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        {
            ours.push((ifname, line.contains("master")));
        }
    }
    // Ports first, then bridges.
    ours.sort_by_key(|(_, port)| !*port);
    for (ifname, _) in ours {
        match ip(&["link", "del", &ifname]).await {
            Ok(_) => removed.push(format!("link {ifname}")),
            Err(r) if r.contains("Cannot find device") => {}
            Err(r) => return Err(fail(format!("delete host interface {ifname}"), r)),
        }
    }
    Ok(removed)
}

/// `node interface state addresses` of every interface in the lab's namespaces.
pub async fn addresses(lab: &Lab) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for n in lab.nodes.values().filter(|n| n.has_netns()) {
        let text = ip(&["-n", &lab.netns(&n.name), "-br", "addr"])
            .await
            .unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(ifname), Some(state)) = (f.next(), f.next()) else {
                continue;
            };
            if ifname == "lo" {
                continue;
            }
            out.push((
                n.name.clone(),
                ifname.split('@').next().unwrap_or(ifname).to_string(),
                state.to_string(),
                f.collect::<Vec<_>>().join(" "),
            ));
        }
    }
    out
}
