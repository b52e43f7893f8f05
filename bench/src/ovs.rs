//! `meshwire bench openflow` and `meshwire bench ovsdb`: our OpenFlow channel and OVSDB client
//! against a real Open vSwitch, side by side with the peers in the same run: `ovs-ofctl --bundle`
//! (the floor set by OVS itself) and os-ken for flows; `ovs-vsctl` and the OVS Python IDL for
//! ports. Needs openflow-switch and, for the Python peers, `pip install os-ken ovs`
//! (scripts/bench-deps.sh).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_southbound::openflow::channel::{self, Switch, SwitchEvent};
use meshwire_southbound::openflow::{Action, Message, OxmField};
use meshwire_southbound::ovs::{add_flow, sync_flows, FlowSpec};
use meshwire_southbound::ovsdb::ops::{self, cond, Op};
use meshwire_southbound::ovsdb::Client;
use serde_json::json;

const OSKEN_PY: &str = include_str!("peers/osken_flows.py");
const IDL_PY: &str = include_str!("peers/ovs_idl_ports.py");
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const COOKIE: u64 = 0x4d57_0000_0000_0001;

/// ovsdb-server (and optionally ovs-vswitchd, userspace datapath) in a temp dir, as our
/// children; killed and reaped on drop.
struct Rig {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    vswitchd: bool,
}

impl Rig {
    fn start(vswitchd: bool) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let mut rig = Rig {
            dir,
            children: vec![],
            vswitchd,
        };
        run("ovsdb-tool", &["create", &format!("{d}/conf.db"), SCHEMA])
            .context("bench needs openvswitch-switch (scripts/install-deps.sh)")?;
        rig.spawn(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--log-file={d}/ovsdb-server.log"),
        ])?;
        for _ in 0..200 {
            if rig.path("db.sock").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        rig.vsctl(&["init"])?;
        if vswitchd {
            rig.spawn(&[
                "ovs-vswitchd",
                &format!("unix:{d}/db.sock"),
                &format!("--log-file={d}/ovs-vswitchd.log"),
            ])?;
        }
        Ok(rig)
    }

    fn spawn(&mut self, argv: &[&str]) -> anyhow::Result<()> {
        let d = self.dir.path();
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .env("OVS_RUNDIR", d)
            .env("OVS_LOGDIR", d)
            .env("OVS_DBDIR", d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        self.children.push(child);
        Ok(())
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn db(&self) -> String {
        format!("unix:{}", self.path("db.sock").display())
    }

    fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", self.db());
        let mut all = vec![db.as_str(), "--timeout=60"];
        // Without ovs-vswitchd nobody would ever confirm the change: do not wait for it.
        if !(self.vswitchd && args.contains(&"add-br")) {
            all.push("--no-wait");
        }
        all.extend_from_slice(args);
        Command::new("ovs-vsctl")
            .args(&all)
            .env("OVS_RUNDIR", self.dir.path())
            .output()
            .map_err(anyhow::Error::from)
            .and_then(|o| {
                if o.status.success() {
                    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                } else {
                    bail!("ovs-vsctl: {}", String::from_utf8_lossy(&o.stderr))
                }
            })
    }

    /// A userspace bridge; with `controller`, it dials that TCP port.
    fn bridge(&self, name: &str, dpid: u64, controller: Option<u16>) -> anyhow::Result<()> {
        let dp = format!("other-config:datapath-id={dpid:016x}");
        let mut args = vec![
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail-mode=secure",
            &dp,
        ];
        let target;
        if let Some(p) = controller {
            target = format!("tcp:127.0.0.1:{p}");
            args.extend(["--", "set-controller", name, &target]);
        }
        self.vsctl(&args).map(|_| ())
    }

    fn mgmt(&self, bridge: &str) -> String {
        format!("unix:{}", self.path(&format!("{bridge}.mgmt")).display())
    }

    fn flow_count(&self, bridge: &str) -> usize {
        Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "dump-aggregate", &self.mgmt(bridge)])
            .output()
            .ok()
            .and_then(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string();
                s.split("flow_count=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !o.status.success() {
        bail!("{prog}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn flow(i: u32) -> FlowSpec {
    FlowSpec {
        cookie: COOKIE,
        priority: 100,
        matches: vec![
            OxmField::InPort(1),
            OxmField::EthType(0x0800),
            OxmField::Ipv4Dst(Ipv4Addr::from(0x0a00_0000 + i), None),
        ],
        actions: vec![Action::Output {
            port: 2,
            max_len: 0,
        }],
    }
}

async fn wait_switch(
    events: &mut tokio::sync::mpsc::Receiver<SwitchEvent>,
    dpid: u64,
) -> anyhow::Result<Switch> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Some(SwitchEvent::Connected(sw))) if sw.datapath_id == dpid => return Ok(sw),
            Ok(None) => bail!("listener stopped"),
            _ => {}
        }
    }
    bail!("switch {dpid:#x} did not connect")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(meshwire_labs::ports::free_port()?)
}

/// Seconds os-ken takes for `n` flows into a fresh bridge, or None without os-ken.
fn osken(rig: &Rig, bridge: &str, dpid: u64, n: usize) -> anyhow::Result<Option<f64>> {
    if !python_has("os_ken") {
        return Ok(None);
    }
    let port = free_port()?;
    let script = rig.path("osken_flows.py");
    std::fs::write(&script, OSKEN_PY)?;
    let out = rig.path(&format!("osken-{n}.out"));
    let mut child = Command::new("python3")
        .arg(&script)
        .args([port.to_string(), n.to_string()])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting os-ken")?;
    // Let os-ken listen before the bridge dials it.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rig.bridge(bridge, dpid, Some(port))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(&out) {
            if let Ok(v) = s.trim().parse::<f64>() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Some(v));
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!("os-ken exited ({st}) before its barrier reply");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("os-ken did not finish {n} flows in 600 s")
}

pub async fn openflow(scale: f64) -> anyhow::Result<()> {
    let sizes: Vec<usize> = [10_000usize, 100_000]
        .iter()
        .map(|n| ((*n as f64 * scale).round() as usize).max(100))
        .collect();
    let rig = Rig::start(true)?;
    let (addr, mut events) = channel::listen("127.0.0.1:0".parse()?).await?;
    let mut figures: BTreeMap<String, f64> = BTreeMap::new();
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "flows (confirmed by barrier)",
        "meshwire (batch)",
        "meshwire (one bundle)",
        "ovs-ofctl --bundle",
        "os-ken",
    ]);
    let mut reconcile_sw = None;
    for (k, &n) in sizes.iter().enumerate() {
        // Meshwire: one write of n flow_mods and a barrier, to a fresh bridge.
        let dpid = 0x4d57_0000_0000_1000 + k as u64;
        let br = format!("bmw{k}");
        rig.bridge(&br, dpid, Some(addr.port()))?;
        let sw = wait_switch(&mut events, dpid).await?;
        let mods: Vec<Message> = (0..n as u32)
            .map(|i| Message::FlowMod(add_flow(&flow(i))))
            .collect();
        let t0 = Instant::now();
        sw.batch(mods).await?;
        let mw = t0.elapsed().as_secs_f64();
        let got = rig.flow_count(&br);
        if got != n {
            bail!("meshwire: {got} flows installed, expected {n}");
        }
        // Meshwire again, atomically: the same flows in one ONF bundle.
        let dpid_b = dpid + 0x300;
        let br_b = format!("bmb{k}");
        rig.bridge(&br_b, dpid_b, Some(addr.port()))?;
        let swb = wait_switch(&mut events, dpid_b).await?;
        let mods: Vec<Message> = (0..n as u32)
            .map(|i| Message::FlowMod(add_flow(&flow(i))))
            .collect();
        let t0 = Instant::now();
        swb.bundle(mods).await?;
        let mwb = t0.elapsed().as_secs_f64();
        let got = rig.flow_count(&br_b);
        if got != n {
            bail!("meshwire bundle: {got} flows installed, expected {n}");
        }
        // ovs-ofctl: the same flows from a file, in one bundle.
        let br_o = format!("bof{k}");
        rig.bridge(&br_o, dpid + 0x100, None)?;
        let file = rig.path(&format!("flows-{n}.txt"));
        let text: String = (0..n as u32)
            .map(|i| {
                format!(
                    "cookie={COOKIE:#x},priority=100,in_port=1,ip,nw_dst={},actions=output:2\n",
                    Ipv4Addr::from(0x0a00_0000 + i)
                )
            })
            .collect();
        std::fs::write(&file, text)?;
        let t0 = Instant::now();
        run(
            "ovs-ofctl",
            &[
                "-O",
                "OpenFlow13",
                "--bundle",
                "add-flows",
                &rig.mgmt(&br_o),
                &file.display().to_string(),
            ],
        )?;
        let ofctl = t0.elapsed().as_secs_f64();
        let got = rig.flow_count(&br_o);
        if got != n {
            bail!("ovs-ofctl: {got} flows installed, expected {n}");
        }
        // os-ken.
        let ok = osken(&rig, &format!("bok{k}"), dpid + 0x200, n)?;
        if ok.is_some() && rig.flow_count(&format!("bok{k}")) != n {
            bail!("os-ken: flows missing");
        }
        let rate = |s: f64| n as f64 / s;
        figures.insert(format!("mw_{n}_fps"), rate(mw));
        figures.insert(format!("mwbundle_{n}_fps"), rate(mwb));
        figures.insert(format!("ofctl_{n}_fps"), rate(ofctl));
        if let Some(s) = ok {
            figures.insert(format!("osken_{n}_fps"), rate(s));
        }
        t.add_row(vec![
            n.to_string(),
            format!("{:.0} flows/s ({:.2} s)", rate(mw), mw),
            format!("{:.0} flows/s ({:.2} s)", rate(mwb), mwb),
            format!("{:.0} flows/s ({:.2} s)", rate(ofctl), ofctl),
            ok.map(|s| format!("{:.0} flows/s ({:.2} s)", rate(s), s))
                .unwrap_or_else(|| "not installed (pip install os-ken)".into()),
        ]);
        if k == 0 {
            reconcile_sw = Some((sw, n, br));
        }
    }
    println!("{t}");

    // Reconcile: n installed flows, 1% of them changed; read back, diff, one bundle.
    let (sw, n, br) = reconcile_sw.context("no switch")?;
    let mut desired: Vec<FlowSpec> = (0..n as u32).map(flow).collect();
    let changed = n / 100;
    for f in desired.iter_mut().take(changed) {
        f.actions = vec![Action::Output {
            port: 3,
            max_len: 0,
        }];
    }
    let t0 = Instant::now();
    let st = sync_flows(&sw, desired.clone(), &|_| true, COOKIE, u64::MAX).await?;
    let reconcile = t0.elapsed().as_secs_f64();
    if st.modified != changed || st.unchanged != n - changed {
        bail!("reconcile changed {st:?}, expected {changed} modified");
    }
    // The same end state the blunt way: delete everything of ours and add all back, one bundle.
    let mut all = vec![Message::FlowMod(meshwire_southbound::openflow::FlowMod {
        cookie: COOKIE,
        cookie_mask: u64::MAX,
        table_id: 0xff,
        command: meshwire_southbound::openflow::FlowModCommand::Delete,
        idle_timeout: 0,
        hard_timeout: 0,
        priority: 0,
        buffer_id: meshwire_southbound::openflow::NO_BUFFER,
        out_port: meshwire_southbound::openflow::ANY,
        out_group: meshwire_southbound::openflow::ANY,
        flags: 0,
        matches: vec![],
        instructions: vec![],
    })];
    all.extend(desired.iter().map(|f| Message::FlowMod(add_flow(f))));
    let t0 = Instant::now();
    sw.bundle(all).await?;
    let replace = t0.elapsed().as_secs_f64();
    if rig.flow_count(&br) != n {
        bail!("flows missing after the full replace");
    }
    let mut r = Table::new();
    r.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["reconcile", "time"]);
    r.add_row(vec![
        format!("{n} installed, {changed} changed: read back, diff, one bundle"),
        format!("{:.1} ms", reconcile * 1e3),
    ]);
    r.add_row(vec![
        format!("the same by deleting and re-adding all {n} in one bundle"),
        format!("{:.1} ms", replace * 1e3),
    ]);
    println!("{r}");

    let (small, big) = (sizes[0], sizes[1]);
    let f = |k: String| figures.get(&k).copied();
    let mut line = format!(
        "openflow: mw_{small}_fps={:.0} mw_{big}_fps={:.0} ofctl_{small}_fps={:.0} ofctl_{big}_fps={:.0}",
        figures[&format!("mw_{small}_fps")],
        figures[&format!("mw_{big}_fps")],
        figures[&format!("ofctl_{small}_fps")],
        figures[&format!("ofctl_{big}_fps")]
    );
    if let (Some(a), Some(b)) = (
        f(format!("osken_{small}_fps")),
        f(format!("osken_{big}_fps")),
    ) {
        line.push_str(&format!(" osken_{small}_fps={a:.0} osken_{big}_fps={b:.0}"));
    }
    line.push_str(&format!(
        " reconcile_{n}_1pct_ms={:.1} full_replace_ms={:.1}",
        reconcile * 1e3,
        replace * 1e3
    ));
    line.push_str(&format!(
        " mwbundle_{small}_fps={:.0} mwbundle_{big}_fps={:.0}",
        figures[&format!("mwbundle_{small}_fps")],
        figures[&format!("mwbundle_{big}_fps")]
    ));
    // Like for like: our bundle against ovs-ofctl's bundle.
    line.push_str(&format!(
        " ratio_vs_ovs_ofctl={:.2} ratio_vs_ovs_ofctl_{small}={:.2} ratio_vs_ovs_ofctl_batch={:.2}",
        figures[&format!("mwbundle_{big}_fps")] / figures[&format!("ofctl_{big}_fps")],
        figures[&format!("mwbundle_{small}_fps")] / figures[&format!("ofctl_{small}_fps")],
        figures[&format!("mw_{big}_fps")] / figures[&format!("ofctl_{big}_fps")]
    ));
    if let Some(o) = f(format!("osken_{big}_fps")) {
        line.push_str(&format!(
            " ratio_vs_os_ken={:.2} ratio_vs_os_ken_{small}={:.2}",
            figures[&format!("mwbundle_{big}_fps")] / o,
            figures[&format!("mwbundle_{small}_fps")] / figures[&format!("osken_{small}_fps")]
        ));
    }
    line.push_str(&format!(
        " ratio_vs_full_replace={:.2}",
        replace / reconcile
    ));
    println!("{line}");
    Ok(())
}

/// Our client: `n` ports added to `bridge`, one transaction each or all in one.
async fn mw_ports(db: &str, bridge: &str, n: usize, batch: bool) -> anyhow::Result<f64> {
    let c = Client::connect(db).await?;
    let ops_for = |k: usize| {
        let (i, p) = (format!("i{k}"), format!("p{k}"));
        vec![
            Op::Insert {
                table: "Interface".into(),
                row: json!({"name": format!("mw{k}"), "external_ids": ops::owner_ids()}),
                uuid_name: Some(i.clone()),
            },
            Op::Insert {
                table: "Port".into(),
                row: json!({"name": format!("mw{k}"), "interfaces": ops::named_uuid(&i), "external_ids": ops::owner_ids()}),
                uuid_name: Some(p.clone()),
            },
            Op::Mutate {
                table: "Bridge".into(),
                conditions: vec![cond("name", "==", json!(bridge))],
                mutations: vec![ops::mutation(
                    "ports",
                    "insert",
                    ops::set(vec![ops::named_uuid(&p)]),
                )],
            },
        ]
    };
    let t0 = Instant::now();
    if batch {
        let all: Vec<Op> = (0..n).flat_map(ops_for).collect();
        c.transact("Open_vSwitch", &all).await?;
    } else {
        for k in 0..n {
            c.transact("Open_vSwitch", &ops_for(k)).await?;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn vsctl_ports(rig: &Rig, bridge: &str, n: usize, batch: bool) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    if batch {
        let names: Vec<String> = (0..n).map(|k| format!("vs{k}")).collect();
        let mut args: Vec<&str> = Vec::new();
        for (k, name) in names.iter().enumerate() {
            if k > 0 {
                args.push("--");
            }
            args.extend(["add-port", bridge, name]);
        }
        rig.vsctl(&args)?;
    } else {
        for k in 0..n {
            rig.vsctl(&["add-port", bridge, &format!("vs{k}")])?;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn idl_ports(rig: &Rig, bridge: &str, n: usize, batch: bool) -> anyhow::Result<Option<f64>> {
    if !python_has("ovs.db.idl") {
        return Ok(None);
    }
    let script = rig.path("ovs_idl_ports.py");
    std::fs::write(&script, IDL_PY)?;
    let out = Command::new("python3")
        .arg(&script)
        .args([
            rig.db(),
            SCHEMA.to_string(),
            bridge.to_string(),
            n.to_string(),
            if batch { "batch" } else { "separate" }.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "ovs Python IDL: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(Some(s.trim().lines().last().unwrap_or("").parse()?))
}

fn port_count(rig: &Rig, bridge: &str) -> usize {
    rig.vsctl(&["list-ports", bridge])
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub async fn ovsdb(scale: f64) -> anyhow::Result<()> {
    let n = ((1000.0 * scale).round() as usize).max(20);
    let mut rates: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for mode in ["separate", "batch"] {
        let batch = mode == "batch";
        for who in ["meshwire", "ovs-vsctl", "ovs-python-idl"] {
            // A fresh database per run: nobody pays for another's rows.
            let rig = Rig::start(false)?;
            rig.vsctl(&["add-br", "br0"])?;
            let secs = match who {
                "meshwire" => Some(mw_ports(&rig.db(), "br0", n, batch).await?),
                "ovs-vsctl" => Some(vsctl_ports(&rig, "br0", n, batch)?),
                _ => idl_ports(&rig, "br0", n, batch)?,
            };
            if let Some(s) = secs {
                let got = port_count(&rig, "br0");
                if got != n {
                    bail!("{who} {mode}: {got} ports, expected {n}");
                }
                rates.insert((who, mode), n as f64 / s);
            }
        }
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        format!("{n} ports added to a bridge"),
        "one transaction each".into(),
        "all in one transaction".into(),
    ]);
    for who in ["meshwire", "ovs-vsctl", "ovs-python-idl"] {
        let cell = |mode| {
            rates
                .get(&(who, mode))
                .map(|r| format!("{r:.0} ports/s"))
                .unwrap_or_else(|| "not installed (pip install ovs)".into())
        };
        t.add_row(vec![who.to_string(), cell("separate"), cell("batch")]);
    }
    println!("{t}");
    let g = |w, m| rates.get(&(w, m)).copied();
    let mut line = format!(
        "ovsdb: ports={n} mw_separate_pps={:.0} mw_batch_pps={:.0} vsctl_separate_pps={:.0} vsctl_batch_pps={:.0}",
        g("meshwire", "separate").unwrap_or(0.0),
        g("meshwire", "batch").unwrap_or(0.0),
        g("ovs-vsctl", "separate").unwrap_or(0.0),
        g("ovs-vsctl", "batch").unwrap_or(0.0),
    );
    if let (Some(s), Some(b)) = (
        g("ovs-python-idl", "separate"),
        g("ovs-python-idl", "batch"),
    ) {
        line.push_str(&format!(
            " idl_separate_pps={s:.0} idl_batch_pps={b:.0} ratio_vs_ovs_idl={:.2} ratio_vs_ovs_idl_batch={:.2}",
            g("meshwire", "separate").unwrap_or(0.0) / s,
            g("meshwire", "batch").unwrap_or(0.0) / b
        ));
    }
    line.push_str(&format!(
        " ratio_vs_ovs_vsctl={:.2} ratio_vs_ovs_vsctl_batch={:.2}",
        g("meshwire", "separate").unwrap_or(0.0) / g("ovs-vsctl", "separate").unwrap_or(1.0),
        g("meshwire", "batch").unwrap_or(0.0) / g("ovs-vsctl", "batch").unwrap_or(1.0)
    ));
    println!("{line}");
    Ok(())
}
