//! Input: a lab's name whose namespace prefix and interface alias are prefixes of other labs'
//! and of things nobody recorded. Output: `down` removes exactly what is its own.
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set (CI), where it must run.

use std::process::Command;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{cmd}");
}

/// Deletes what the test made, whatever happened.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("sh")
                .args(["-c", &format!("{c} 2>/dev/null")])
                .status();
        }
    }
}

#[tokio::test]
async fn dev_down_takes_exactly_its_own() {
    if !is_root() {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "lab tests need root"
        );
        eprintln!("SKIP: not root");
        return;
    }
    let tag = format!("d{}", std::process::id() % 100_000);
    let (short, long) = (tag.clone(), format!("{tag}-b"));
    let owners = "/run/meshwire/netns-owner";
    let ns_short = format!("clab-{short}-x");
    let ns_long = format!("clab-{long}-y");
    let ns_foreign = format!("clab-{short}-foreign");
    let (if_short, if_long) = (format!("{tag}s"), format!("{tag}l"));
    let _cleanup = Cleanup(vec![
        format!("ip netns del {ns_short}"),
        format!("ip netns del {ns_long}"),
        format!("ip netns del {ns_foreign}"),
        format!("ip link del {if_short}"),
        format!("ip link del {if_long}"),
        format!("rm -f {owners}/{ns_short} {owners}/{ns_long}"),
    ]);
    std::fs::create_dir_all(owners).unwrap();
    for (ns, lab) in [(&ns_short, &short), (&ns_long, &long)] {
        std::fs::write(format!("{owners}/{ns}"), lab).unwrap();
        sh(&format!("ip netns add {ns}"));
    }
    // A namespace under the lab's prefix that no lab recorded: not ours.
    sh(&format!("ip netns add {ns_foreign}"));
    sh(&format!(
        "ip link add {if_short} type bridge && ip link set {if_short} alias meshwire-lab:{short}"
    ));
    sh(&format!(
        "ip link add {if_long} type bridge && ip link set {if_long} alias meshwire-lab:{long}"
    ));

    let removed = meshwire_labs::runner::down(&short).await.unwrap();
    assert_eq!(
        removed,
        vec![format!("netns {ns_short}"), format!("link {if_short}")]
    );
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(netns.contains(&ns_long), "lab {long}'s namespace stays");
    assert!(netns.contains(&ns_foreign), "an unrecorded namespace stays");
    assert!(
        !netns.contains(&format!("{ns_short} "))
            && !netns
                .lines()
                .any(|l| l.starts_with(&format!("{ns_short} ")) || l == ns_short)
    );
    sh(&format!("ip link show {if_long} >/dev/null"));
}
