//! Losing a namespace as a failure does: it stops forwarding first (every interface down), then
//! it is deleted. Deleting alone is not a loss while someone still holds the namespace (a data
//! plane's netlink socket keeps it, and its interfaces forwarding, alive).

use std::process::Command;

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets every interface of named namespace `ns` down, then deletes `ns`.
pub fn lose_namespace(ns: &str) -> Result<(), String> {
    let links = ip(&["-n", ns, "-o", "link", "show"])?;
    for line in links.lines() {
        // `3: nse-1a2b@if4: <...>`: the name is the second field, before any `@`.
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        match ip(&["-n", ns, "link", "set", name, "down"]) {
            // Gone already (its peer was deleted meanwhile): it forwards nothing either.
            Err(e) if e.contains("Cannot find device") => {}
            other => other.map(drop)?,
        }
    }
    ip(&["netns", "del", ns]).map(drop)
}
