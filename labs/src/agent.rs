//! The lab appliance's data-plane agent: it makes an emulated `meshwire-appliance` behave like
//! the device its NETCONF configuration describes. Runs inside the appliance's namespace, reads
//! the running datastore from the device's own netconfd (over SSH, like any management agent
//! on a real box) and applies it to Linux:
//!
//! - `tunnels/tunnel` with `vxlan` → a VXLAN interface of that name with the address and MTU;
//!   GRE, MPLS and VLAN tunnels are reported as unsupported (these hosts have no such modules);
//! - `firewall/rule` → an nftables forward chain, rules in sequence order, default accept;
//! - IPv4 forwarding on.
//!
//! What it creates carries the alias `mwa:<parameters>`; what is not in the configuration any
//! more is removed. The agent is lab tooling: it stands in for the appliance's own software.

/// What stopped one pass of the agent (it logs it and tries again).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what} is unreadable: {reason}")]
    Unreadable { what: &'static str, reason: String },
    #[error("{command}: {reason}")]
    Command { command: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, AgentError>;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshwire_ensm_adapters::netconf::{Auth, Datastore, HostKey, Session, Target};

const NS: &str = "urn:meshwire:params:xml:ns:yang:meshwire-appliance";
const TABLE: &str = "meshwire_appliance";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tunnel {
    name: String,
    address: Option<String>,
    peer: Option<String>,
    mtu: Option<u32>,
    /// (vni, remote, port), when VXLAN.
    vxlan: Option<(u32, String, u16)>,
    other: Option<String>,
}

impl Tunnel {
    fn alias(&self) -> String {
        format!(
            "mwa:{}:{}:{}",
            self.vxlan
                .as_ref()
                .map(|(v, r, p)| format!("{v}/{r}/{p}"))
                .unwrap_or_default(),
            self.address.clone().unwrap_or_default(),
            self.mtu.unwrap_or(0)
        )
    }
}

/// A cross-connect: traffic arriving on tunnel `a` leaves by tunnel `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrossConnect {
    a: String,
    b: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    sequence: u32,
    tunnel: Option<String>,
    protocol: String,
    destination: Option<String>,
    port: Option<u16>,
    action: String,
}

type Config = (Vec<Tunnel>, Vec<Rule>, Vec<CrossConnect>);

fn parse(data: &str) -> Result<Config> {
    let doc = format!("<data>{data}</data>");
    let doc = roxmltree::Document::parse(&doc).map_err(|e| AgentError::Unreadable {
        what: "the running config",
        reason: e.to_string(),
    })?;
    let text = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name((NS, tag)))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    let mut tunnels = Vec::new();
    for t in doc.descendants().filter(|n| n.has_tag_name((NS, "tunnel"))) {
        let Some(name) = text(t, "name") else {
            continue;
        };
        if !safe_ifname(&name) {
            tracing::warn!(tunnel = %name, "tunnel name is not an interface name; ignored");
            continue;
        }
        let child = |tag: &str| t.children().find(|c| c.has_tag_name((NS, tag)));
        let vxlan = child("vxlan").map(|v| {
            (
                text(v, "vni").and_then(|x| x.parse().ok()).unwrap_or(0),
                text(v, "remote").unwrap_or_default(),
                text(v, "port").and_then(|x| x.parse().ok()).unwrap_or(4789),
            )
        });
        let other = ["gre", "mpls", "vlan"]
            .into_iter()
            .find(|k| child(k).is_some())
            .map(str::to_string);
        let tunnel = Tunnel {
            name,
            address: text(t, "address"),
            peer: text(t, "peer"),
            mtu: text(t, "mtu").and_then(|x| x.parse().ok()),
            vxlan,
            other,
        };
        // Everything below becomes an argument of `ip` or a word of an nft script.
        let addr_ok = tunnel
            .address
            .as_deref()
            .is_none_or(|a| a.parse::<ipnet::IpNet>().is_ok());
        let peer_ok = tunnel
            .peer
            .as_deref()
            .is_none_or(|a| a.parse::<std::net::IpAddr>().is_ok());
        let remote_ok = tunnel
            .vxlan
            .as_ref()
            .is_none_or(|(_, r, _)| r.parse::<std::net::IpAddr>().is_ok());
        if !(addr_ok && peer_ok && remote_ok) {
            tracing::warn!(tunnel = %tunnel.name, "tunnel with an address that is not an IP address; ignored");
            continue;
        }
        tunnels.push(tunnel);
    }
    let mut rules = Vec::new();
    for r in doc.descendants().filter(|n| n.has_tag_name((NS, "rule"))) {
        let rule = Rule {
            sequence: text(r, "sequence")
                .and_then(|x| x.parse().ok())
                .unwrap_or(0),
            tunnel: text(r, "tunnel"),
            protocol: text(r, "protocol").unwrap_or_else(|| "any".into()),
            destination: text(r, "destination"),
            port: text(r, "port").and_then(|x| x.parse().ok()),
            action: text(r, "action").unwrap_or_else(|| "accept".into()),
        };
        let ok = rule.tunnel.as_deref().is_none_or(safe_ifname)
            && matches!(rule.protocol.as_str(), "any" | "icmp" | "tcp" | "udp")
            && matches!(rule.action.as_str(), "accept" | "drop")
            && rule.destination.as_deref().is_none_or(|d| {
                d.parse::<ipnet::IpNet>().is_ok() || d.parse::<std::net::IpAddr>().is_ok()
            });
        if !ok {
            tracing::warn!(
                sequence = rule.sequence,
                "firewall rule with a field nft cannot take safely; ignored"
            );
            continue;
        }
        rules.push(rule);
    }
    rules.sort_by_key(|r| r.sequence);
    let mut xcs = Vec::new();
    for x in doc
        .descendants()
        .filter(|n| n.has_tag_name((NS, "cross-connect")))
    {
        if let (Some(a), Some(b)) = (text(x, "a"), text(x, "b")) {
            if safe_ifname(&a) && safe_ifname(&b) {
                xcs.push(CrossConnect { a, b });
            } else {
                tracing::warn!(%a, %b, "cross-connect between names that are not interface names; ignored");
            }
        }
    }
    Ok((tunnels, rules, xcs))
}

/// A tunnel name that is a kernel interface name and a safe word inside an nft string: letters,
/// digits, `-`, `_` and `.` only (no quote, backslash, semicolon or space can end the string).
fn safe_ifname(n: &str) -> bool {
    meshwire_models::validate::check_ifname(n).is_ok()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Policy routing for cross-connects: what arrives on `a` is routed by a table of its own whose
/// default route is `b`'s peer, and leaves `b` masqueraded (replies find their way back).
const XC_PREF: u32 = 20000;
const XC_TABLE: u32 = 2000;
const NAT_TABLE: &str = "meshwire_appliance_nat";

async fn apply_cross_connects(xcs: &[CrossConnect], tunnels: &[Tunnel]) -> Result<()> {
    let rules = run_cmd("ip", &["-j", "rule", "show"], None).await?;
    let v: serde_json::Value =
        serde_json::from_str(&rules).map_err(|e| AgentError::Unreadable {
            what: "ip -j rule",
            reason: e.to_string(),
        })?;
    for r in v.as_array().into_iter().flatten() {
        if let Some(p) = r.get("priority").and_then(|p| p.as_u64()) {
            if (XC_PREF as u64..XC_PREF as u64 + 1000).contains(&p) {
                run_cmd("ip", &["rule", "del", "pref", &p.to_string()], None).await?;
            }
        }
    }
    let mut nat = format!(
        "table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
    );
    for (i, x) in xcs.iter().enumerate().take(1000) {
        let Some(peer) = tunnels
            .iter()
            .find(|t| t.name == x.b)
            .and_then(|t| t.peer.clone())
        else {
            tracing::warn!(a = %x.a, b = %x.b, "cross-connect: tunnel b has no peer address");
            continue;
        };
        let (pref, table) = (
            (XC_PREF + i as u32).to_string(),
            (XC_TABLE + i as u32).to_string(),
        );
        run_cmd(
            "ip",
            &[
                "route", "replace", "default", "via", &peer, "dev", &x.b, "table", &table,
            ],
            None,
        )
        .await?;
        run_cmd(
            "ip",
            &["rule", "add", "pref", &pref, "iif", &x.a, "lookup", &table],
            None,
        )
        .await?;
        nat.push_str(&format!("    oifname \"{}\" counter masquerade\n", x.b));
        tracing::info!(a = %x.a, b = %x.b, via = %peer, "cross-connect applied");
    }
    nat.push_str("  }\n}\n");
    run_cmd("nft", &["-f", "-"], Some(&nat)).await?;
    Ok(())
}

/// The nftables script for `rules`: the table replaced atomically.
fn nft_script(rules: &[Rule]) -> String {
    let mut s = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n"
    );
    for r in rules {
        let mut m = Vec::new();
        if let Some(t) = &r.tunnel {
            m.push(format!("iifname \"{t}\""));
        }
        if let Some(d) = &r.destination {
            let fam = if d.contains(':') { "ip6" } else { "ip" };
            m.push(format!("{fam} daddr {d}"));
        }
        match r.protocol.as_str() {
            "icmp" => m.push("meta l4proto { icmp, ipv6-icmp }".into()),
            "tcp" | "udp" => {
                m.push(format!("meta l4proto {}", r.protocol));
                if let Some(p) = r.port {
                    m.push(format!("{} dport {p}", r.protocol));
                }
            }
            _ => {}
        }
        let action = if r.action == "drop" { "drop" } else { "accept" };
        s.push_str(&format!(
            "    {} counter {action} comment \"rule {}\"\n",
            m.join(" "),
            r.sequence
        ));
    }
    s.push_str("  }\n}\n");
    s
}

async fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| AgentError::Io {
            what: format!("running {program}"),
            source,
        })?;
    let io = |source| AgentError::Io {
        what: format!("{program} {}", args.join(" ")),
        source,
    };
    if let Some(mut i) = child.stdin.take() {
        if let Some(text) = stdin {
            i.write_all(text.as_bytes()).await.map_err(io)?;
        }
    }
    let out = child.wait_with_output().await.map_err(io)?;
    if !out.status.success() {
        return Err(AgentError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our interfaces now: name → alias.
async fn ours() -> Result<BTreeMap<String, String>> {
    let out = run_cmd("ip", &["-j", "link", "show"], None).await?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| AgentError::Unreadable {
        what: "ip -j link",
        reason: e.to_string(),
    })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let alias = l.get("ifalias")?.as_str()?;
            let name = l.get("ifname")?.as_str()?;
            alias
                .starts_with("mwa:")
                .then(|| (name.to_string(), alias.to_string()))
        })
        .collect())
}

async fn apply_tunnels(tunnels: &[Tunnel]) -> Result<()> {
    let have = ours().await?;
    for (name, alias) in &have {
        if !tunnels
            .iter()
            .any(|t| t.name == *name && t.alias() == *alias)
        {
            run_cmd("ip", &["link", "del", name], None).await?;
            tracing::info!(interface = %name, "tunnel removed");
        }
    }
    for t in tunnels {
        if have.get(&t.name) == Some(&t.alias()) {
            continue;
        }
        let Some((vni, remote, port)) = &t.vxlan else {
            tracing::warn!(tunnel = %t.name, kind = ?t.other, "not supported by this emulated appliance (no GRE, MPLS or VLAN modules here)");
            continue;
        };
        let (vni, port) = (vni.to_string(), port.to_string());
        // A half-made interface of an earlier attempt (created, never labelled) is in the way.
        let _ = run_cmd("ip", &["link", "del", &t.name], None).await;
        run_cmd(
            "ip",
            &[
                "link", "add", &t.name, "type", "vxlan", "id", &vni, "remote", remote, "dstport",
                &port,
            ],
            None,
        )
        .await?;
        if let Some(a) = &t.address {
            run_cmd("ip", &["addr", "add", a, "dev", &t.name], None).await?;
        }
        let mtu = t.mtu.unwrap_or(1450).to_string();
        run_cmd(
            "ip",
            &[
                "link",
                "set",
                &t.name,
                "alias",
                &t.alias(),
                "mtu",
                &mtu,
                "up",
            ],
            None,
        )
        .await?;
        tracing::info!(tunnel = %t.name, vni = %vni, remote = %remote, "tunnel up");
    }
    Ok(())
}

async fn fingerprint(pubkey: &Path) -> Result<String> {
    let out = run_cmd("ssh-keygen", &["-lf", &pubkey.display().to_string()], None).await?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| AgentError::Unreadable {
            what: "ssh-keygen -l",
            reason: format!("no fingerprint for {}", pubkey.display()),
        })
}

/// Runs the agent until killed. `dir` is the appliance's state directory (keys).
pub async fn run(dir: PathBuf, port: u16, interval: Duration) -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| AgentError::Io {
        what: "enabling forwarding".into(),
        source,
    })?;
    let target = Target {
        device: "local-appliance".into(),
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        auth: Auth::Key {
            path: dir.join("client"),
            passphrase: None,
        },
        host_key: HostKey::Fingerprint(fingerprint(&dir.join("hostkey.pub")).await?),
        // Short: a get-config that gets no reply (seen under load, while the eNSM commits on
        // another session) costs 2 s before the agent reconnects, not 5.
        timeout: Duration::from_secs(2),
    };
    let mut last_tunnels: Option<Vec<Tunnel>> = None;
    let mut last_rules: Option<Vec<Rule>> = None;
    let mut last_xcs: Option<(Vec<CrossConnect>, Vec<Tunnel>)> = None;
    loop {
        let session = match Session::connect(&target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the device's NETCONF; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tracing::info!("agent following the running configuration");
        loop {
            let data = match session.get_config(Datastore::Running, None).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "get-config failed; reconnecting");
                    break;
                }
            };
            match parse(&data) {
                Ok((tunnels, rules, xcs)) => {
                    if last_tunnels.as_ref() != Some(&tunnels) {
                        match apply_tunnels(&tunnels).await {
                            Ok(()) => last_tunnels = Some(tunnels.clone()),
                            Err(e) => {
                                tracing::warn!(error = %e, "applying tunnels failed; retrying")
                            }
                        }
                    }
                    // Routes through a tunnel go with it: re-apply when either changed.
                    let want = (xcs, tunnels);
                    if last_tunnels.as_ref() == Some(&want.1) && last_xcs.as_ref() != Some(&want) {
                        match apply_cross_connects(&want.0, &want.1).await {
                            Ok(()) => last_xcs = Some(want),
                            Err(e) => {
                                tracing::warn!(error = %e, "applying cross-connects failed; retrying")
                            }
                        }
                    }
                    if last_rules.as_ref() != Some(&rules) {
                        match run_cmd("nft", &["-f", "-"], Some(&nft_script(&rules))).await {
                            Ok(_) => {
                                tracing::info!(rules = rules.len(), "firewall policy applied");
                                last_rules = Some(rules);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "applying the firewall failed; retrying")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable running config"),
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_config_becomes_tunnels_and_an_nft_forward_chain() {
        let data = format!(
            "<tunnels xmlns=\"{NS}\"><tunnel><name>mw1</name><address>172.16.20.0/31</address><mtu>1450</mtu><vxlan><vni>5001</vni><remote>192.168.70.1</remote></vxlan></tunnel><tunnel><name>mw2</name><gre><key>1</key><remote>1.1.1.1</remote></gre></tunnel></tunnels><firewall xmlns=\"{NS}\"><rule><sequence>20</sequence><protocol>icmp</protocol><action>drop</action></rule><rule><sequence>10</sequence><protocol>tcp</protocol><destination>10.70.0.0/16</destination><port>5201</port><action>accept</action></rule></firewall>"
        );
        let (t, r, x) = parse(&data).unwrap();
        assert!(x.is_empty());
        assert_eq!(t[0].vxlan, Some((5001, "192.168.70.1".into(), 4789)));
        assert_eq!(t[1].other.as_deref(), Some("gre"));
        assert_eq!(r[0].sequence, 10, "sorted by sequence");
        let s = nft_script(&r);
        assert!(
            s.contains("ip daddr 10.70.0.0/16 meta l4proto tcp tcp dport 5201 counter accept"),
            "{s}"
        );
        assert!(
            s.contains("meta l4proto { icmp, ipv6-icmp } counter drop"),
            "{s}"
        );
        assert!(s.find("rule 10") < s.find("rule 20"));
    }

    /// Input: a running config whose names and addresses would inject nft statements or `ip`
    /// arguments. Output: those entries are dropped; the script holds only well-formed words.
    #[test]
    fn dev_hostile_names_never_reach_the_nft_script() {
        let data = format!(
            "<tunnels xmlns=\"{NS}\"><tunnel><name>x\"; flush ruleset; \"</name><vxlan><vni>1</vni><remote>1.1.1.1</remote></vxlan></tunnel><tunnel><name>ok1</name><peer>1.2.3.4; rm</peer></tunnel><tunnel><name>ok2</name></tunnel></tunnels><firewall xmlns=\"{NS}\"><rule><sequence>1</sequence><tunnel>a\" accept</tunnel><action>drop</action></rule><rule><sequence>2</sequence><destination>10.0.0.0/8 accept</destination></rule><rule><sequence>3</sequence><protocol>tcp</protocol><action>drop</action></rule></firewall><cross-connects xmlns=\"{NS}\"><cross-connect><a>ok2</a><b>b;c</b></cross-connect></cross-connects>"
        );
        let (t, r, x) = parse(&data).unwrap();
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["ok2"]
        );
        assert_eq!(r.iter().map(|r| r.sequence).collect::<Vec<_>>(), [3]);
        assert!(x.is_empty());
        let s = nft_script(&r);
        assert!(!s.contains("flush") && !s.contains("a\""), "{s}");
    }
}
