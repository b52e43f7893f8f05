//! Input: namespaces made for the test: a named one, and an anonymous one only a process is in
//! (`unshare -n`). Output: each is found from the `inodeURL` forms NSM clients send
//! (`inode://DEV/INO`, `file:///proc/PID/ns/net`, `file:///run/netns/NAME`); a namespace that is
//! gone is not found, and says so as retryable.
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::process::{Command, Stdio};

use meshwire_models::netns_ref::NetnsRef;
use meshwire_southbound::kernel::locate::{identity, locate, Located};

fn root() -> bool {
    let ok = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "the locate test needs root"
        );
        eprintln!("SKIP: not root");
    }
    ok
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_finds_named_and_process_namespaces_from_inode_urls() {
    if !root() {
        return;
    }
    let ns = Netns(format!("mwloc{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    let (dev, ino) = identity(&std::path::Path::new("/run/netns").join(&ns.0)).unwrap();
    let url = format!("inode://{dev}/{ino}");
    assert_eq!(
        locate(&NetnsRef::parse(&url).unwrap()).unwrap(),
        Located::Named(ns.0.clone())
    );
    assert_eq!(
        locate(&NetnsRef::parse(&format!("file:///run/netns/{}", ns.0)).unwrap()).unwrap(),
        Located::Named(ns.0.clone())
    );

    // A namespace no name points at: only the process is in it. The shell says "ready" from
    // inside the new namespace, then becomes `sleep` (same process id).
    let mut child = Kill(
        Command::new("unshare")
            .args(["-n", "sh", "-c", "echo ready; exec sleep 60"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let own = identity(std::path::Path::new("/proc/self/ns/net")).unwrap();
    let theirs = identity(&std::path::PathBuf::from(format!("/proc/{pid}/ns/net"))).unwrap();
    assert_ne!(theirs, own);
    let found =
        locate(&NetnsRef::parse(&format!("inode://{}/{}", theirs.0, theirs.1)).unwrap()).unwrap();
    let Located::Process { pid: found_pid } = found else {
        panic!("{found:?}")
    };
    // Any process in that namespace will do; it must be in the same one.
    assert_eq!(
        identity(&Located::Process { pid: found_pid }.path()).unwrap(),
        theirs
    );
    assert_eq!(
        locate(&NetnsRef::parse(&format!("file:///proc/{pid}/ns/net")).unwrap()).unwrap(),
        Located::Process { pid }
    );

    // Gone: not found, and worth retrying (the client's namespace may come).
    drop(child);
    drop(ns);
    let e = locate(&NetnsRef::parse(&url).unwrap()).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}
