//! SR-IOV and device plugin resources in labs: a host labelled `meshwire.io/sriov-config: FILE`
//! (relative to the lab file) runs its agent with that configuration and a device plugin
//! directory of its own in the lab's directory (where a test plays the kubelet). With
//! `meshwire.io/sriov-standin: "<pf> <pci> <vfs>"` it also gets a stand-in PF in its namespace
//! (a bridge as the embedded switch, a veth per VF whose peer is the VF's representor port on
//! it, a veth pair as the PF's cable) and the PCI side of it as a sysfs tree in the lab's
//! directory.

use std::path::Path;

use anyhow::{bail, Context};
use meshwire_labs::spec::Lab;
use meshwire_models::sriov::PciAddress;
use meshwire_southbound::sriov::standin::{StandInPf, StandInVf};

const STANDIN_LABEL: &str = "meshwire.io/sriov-standin";
const CONFIG_LABEL: &str = "meshwire.io/sriov-config";
/// VFs one stand-in PF may have (8 functions per PCI device, 31 devices after the PF's).
const MAX_STANDIN_VFS: u32 = 248;

/// `pf0 0000:3b:00.0 2` → (PF name, PF address, VF count).
fn parse(v: &str) -> anyhow::Result<(String, PciAddress, u32)> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [name, pci, n] = parts.as_slice() else {
        bail!("{STANDIN_LABEL}: {v:?} must be \"<pf name> <pci address> <vf count>\"");
    };
    meshwire_models::validate::check_ifname(name)
        .map_err(|e| anyhow::anyhow!("{STANDIN_LABEL}: {e}"))?;
    // The VFs' names add "vNN" / "rNN" to the PF's.
    anyhow::ensure!(
        name.len() <= 11,
        "{STANDIN_LABEL}: PF name {name:?} must be at most 11 bytes"
    );
    let pci: PciAddress = pci
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{STANDIN_LABEL}: {e}"))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| (1..=MAX_STANDIN_VFS).contains(n))
        .with_context(|| {
            format!("{STANDIN_LABEL}: VF count {n:?} must be 1 to {MAX_STANDIN_VFS}")
        })?;
    Ok((name.to_string(), pci, n))
}

/// The address of VF `i` of a PF at `pf`: the functions of the next devices on its bus.
fn vf_address(pf: &PciAddress, i: u32) -> anyhow::Result<PciAddress> {
    let s = pf.as_str();
    let (bus, dev) = (&s[..7], u32::from_str_radix(&s[8..10], 16)?);
    format!("{bus}:{:02x}.{}", dev + 1 + i / 8, i % 8)
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
}

async fn ip(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds `node`'s stand-in PF when it has one; the agent's extra flags.
pub async fn prepare(lab: &Lab, agents: &Path, node: &str) -> anyhow::Result<Vec<String>> {
    let Some(n) = lab.nodes.get(node) else {
        return Ok(Vec::new());
    };
    let Some(config) = n.labels.get(CONFIG_LABEL) else {
        if n.labels.contains_key(STANDIN_LABEL) {
            bail!("node {node}: {STANDIN_LABEL} needs {CONFIG_LABEL} (the pools of its VFs)");
        }
        return Ok(Vec::new());
    };
    let config = lab.file.parent().unwrap_or(Path::new(".")).join(config);
    anyhow::ensure!(
        config.is_file(),
        "node {node}: {CONFIG_LABEL} {} is not a file",
        config.display()
    );
    let plugins = agents.join(format!("{node}.device-plugins"));
    let mut args = vec![
        "--sriov-config".to_string(),
        config.display().to_string(),
        "--device-plugin-dir".to_string(),
        plugins.display().to_string(),
    ];
    // Without a stand-in PF: device plugin resources only (a radio's attachments).
    let Some(standin) = n.labels.get(STANDIN_LABEL) else {
        return Ok(args);
    };
    let (pf, pci, count) = parse(standin).with_context(|| format!("node {node}"))?;
    let ns = lab.netns(node);
    let wire = format!("{pf}wire");
    let wire_peer = format!("{pf}wirep");
    ip(&ns, &["link", "add", &pf, "type", "bridge"]).await?;
    ip(
        &ns,
        &[
            "link", "add", &wire, "type", "veth", "peer", "name", &wire_peer,
        ],
    )
    .await?;
    ip(&ns, &["link", "set", &wire, "master", &pf, "up"]).await?;
    ip(&ns, &["link", "set", &wire_peer, "up"]).await?;
    let mut vfs = Vec::new();
    for i in 0..count {
        let (vf, rep) = (format!("{pf}v{i}"), format!("{pf}r{i}"));
        ip(
            &ns,
            &["link", "add", &vf, "type", "veth", "peer", "name", &rep],
        )
        .await?;
        ip(&ns, &["link", "set", &rep, "master", &pf, "up"]).await?;
        vfs.push(StandInVf {
            pci: vf_address(&pci, i)?,
            netdev: vf,
        });
    }
    ip(&ns, &["link", "set", &pf, "up"]).await?;
    let root = agents.join(format!("{node}.sysfs"));
    StandInPf {
        pci,
        netdev: pf,
        pf_driver: "ice".into(),
        vf_driver: "iavf".into(),
        total_vfs: count,
        vfs,
        first_iommu_group: 40,
    }
    .write(&root)
    .with_context(|| format!("node {node}: writing the stand-in sysfs tree"))?;
    args.extend(["--sysfs-root".to_string(), root.display().to_string()]);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standin_labels_are_checked() {
        let (name, pci, n) = parse("pf0 0000:3b:00.0 2").unwrap();
        assert_eq!((name.as_str(), pci.as_str(), n), ("pf0", "0000:3b:00.0", 2));
        for bad in [
            "pf0 0000:3b:00.0",
            "pf0 x 2",
            "pf0 0000:3b:00.0 0",
            "a/b 0000:3b:00.0 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let pf: PciAddress = "0000:3b:00.0".parse().unwrap();
        assert_eq!(vf_address(&pf, 0).unwrap().as_str(), "0000:3b:01.0");
        assert_eq!(vf_address(&pf, 9).unwrap().as_str(), "0000:3b:02.1");
    }
}
