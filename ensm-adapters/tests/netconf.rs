//! Input: our NETCONF client against the real netconfd (yuma123) behind a real sshd, with the
//! ietf-interfaces YANG module loaded (netconfd validates every edit against it). Output: the
//! hello and framing, candidate + validate + commit, a refused edit with the device's own
//! error (tag, path, message) and nothing changed, a confirmed commit cancelled, and a wrong
//! host key refused with the fingerprint shown.
//! Needs root, netconfd and openssh-server; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshwire_ensm_adapters::netconf::framing::Framing;
use meshwire_ensm_adapters::netconf::{
    xml, Auth, Datastore, DefaultOperation, HostKey, NetconfError, Operation, Session, Target,
};

const IF_NS: &str = "urn:ietf:params:xml:ns:yang:ietf-interfaces";

/// netconfd and sshd in a temp dir, our children; killed and reaped on drop.
struct Device {
    dir: tempfile::TempDir,
    port: u16,
    children: Vec<Child>,
}

impl Device {
    fn start() -> Option<Device> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let have = Path::new("/usr/sbin/netconfd").exists() && Path::new("/usr/sbin/sshd").exists();
        if !root || !have {
            assert!(
                std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
                "the NETCONF test needs root, netconfd and openssh-server"
            );
            eprintln!("SKIP: needs root, netconfd and openssh-server");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all("/run/sshd").unwrap();
        for k in ["hostkey", "client"] {
            assert!(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(k))
                .status()
                .unwrap()
                .success());
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
        let sock = d.join("ncx.sock");
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nSubsystem netconf \"/usr/sbin/netconf-subsystem --ncxserver-sockname={port}@{sock}\"\n",
                hk = d.join("hostkey").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let mut dev = Device {
            dir,
            port,
            children: vec![],
        };
        // Copied aside, so netconfd loads the YANG modules alone and no SIL library with them.
        let modules = d.join("yang");
        std::fs::create_dir_all(&modules).unwrap();
        for m in [
            "iana-if-type@2014-05-08.yang",
            "ietf-interfaces@2014-05-08.yang",
        ] {
            std::fs::copy(
                Path::new("/usr/share/yuma/modules/ietf").join(m),
                modules.join(m),
            )
            .unwrap();
        }
        let modules = modules.display().to_string();
        dev.children.push(
            Command::new("/usr/sbin/netconfd")
                .arg(format!("--port={port}"))
                .arg(format!("--ncxserver-sockname={}", sock.display()))
                .args(["--no-startup", "--superuser=root"])
                .arg(format!("--modpath={modules}:/usr/share/yuma/modules"))
                .arg(format!("--module={modules}/iana-if-type@2014-05-08.yang"))
                .arg(format!(
                    "--module={modules}/ietf-interfaces@2014-05-08.yang"
                ))
                .arg(format!("--log={}", d.join("netconfd.log").display()))
                .current_dir(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        dev.children.push(
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..200 {
            if sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(dev)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// The host key's fingerprint as `ssh-keygen -lf` prints it.
    fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path("hostkey.pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    fn target(&self, host_key: HostKey) -> Target {
        Target {
            device: "fw-1".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            auth: Auth::Key {
                path: self.path("client"),
                passphrase: None,
            },
            host_key,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn interface(name: &str, description: &str) -> String {
    format!("<interfaces xmlns=\"{IF_NS}\"><interface><name>{name}</name><description>{description}</description><type xmlns:ianaift=\"urn:ietf:params:xml:ns:yang:iana-if-type\">ianaift:l2vlan</type><enabled>true</enabled></interface></interfaces>")
}

#[tokio::test]
async fn dev_real_netconfd_candidate_commit_errors_confirmed_commit_and_host_key() {
    let Some(dev) = Device::start() else { return };
    let s = Session::connect(&dev.target(HostKey::Fingerprint(dev.fingerprint())))
        .await
        .unwrap();
    let caps = s.capabilities();
    assert!(caps.has(xml::CANDIDATE) && caps.has(xml::CONFIRMED_COMMIT) && caps.has(xml::VALIDATE));
    assert_eq!(s.framing(), Framing::Chunked, "both sides speak base:1.1");

    // Candidate and commit, under the candidate lock.
    s.ok(Operation::Lock {
        target: Datastore::Candidate,
    })
    .await
    .unwrap();
    s.edit_config(
        Datastore::Candidate,
        DefaultOperation::Merge,
        &interface("vxlan5001", "meshwire:conn-1"),
    )
    .await
    .unwrap();
    s.ok(Operation::Commit {
        confirm_timeout: None,
        persist: None,
    })
    .await
    .unwrap();
    s.ok(Operation::Unlock {
        target: Datastore::Candidate,
    })
    .await
    .unwrap();
    // (yuma123 quirk: a <validate> of the candidate between edit and commit makes that commit
    // a no-op, so the client validates through commit itself and `validate` is shown alone.)
    s.ok(Operation::Validate {
        source: Datastore::Candidate,
    })
    .await
    .unwrap();
    let filter = format!("<interfaces xmlns=\"{IF_NS}\"/>");
    let running = s
        .get_config(Datastore::Running, Some(&filter))
        .await
        .unwrap();
    assert!(
        running.contains("vxlan5001") && running.contains("meshwire:conn-1"),
        "{running}"
    );

    // A value the YANG model refuses: the device's own error comes back, typed.
    let bad = format!("<interfaces xmlns=\"{IF_NS}\"><interface><name>bad0</name><type>not-an-identity</type></interface></interfaces>");
    let e = s
        .edit_config(Datastore::Candidate, DefaultOperation::Merge, &bad)
        .await
        .unwrap_err();
    match &e {
        NetconfError::Rpc {
            operation, errors, ..
        } => {
            assert_eq!(operation, "edit-config");
            assert!(!errors[0].tag.is_empty(), "{e}");
        }
        other => panic!("{other:?}"),
    }
    eprintln!("device refused: {e}");
    s.ok(Operation::DiscardChanges).await.unwrap();
    let candidate = s
        .get_config(Datastore::Candidate, Some(&filter))
        .await
        .unwrap();
    assert!(!candidate.contains("bad0"), "discarded: {candidate}");

    // A confirmed commit that is cancelled: running goes back.
    s.edit_config(
        Datastore::Candidate,
        DefaultOperation::Merge,
        &interface("gre77", "meshwire:conn-2"),
    )
    .await
    .unwrap();
    s.ok(Operation::Commit {
        confirm_timeout: Some(60),
        persist: None,
    })
    .await
    .unwrap();
    assert!(s
        .get_config(Datastore::Running, Some(&filter))
        .await
        .unwrap()
        .contains("gre77"));
    s.ok(Operation::CancelCommit { persist_id: None })
        .await
        .unwrap();
    let running = s
        .get_config(Datastore::Running, Some(&filter))
        .await
        .unwrap();
    assert!(
        !running.contains("gre77") && running.contains("vxlan5001"),
        "{running}"
    );
    s.close().await.unwrap();

    // A wrong pinned key is refused, showing the key the device presented.
    let e = Session::connect(&dev.target(HostKey::Fingerprint(
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    )))
    .await
    .err()
    .unwrap();
    match e {
        NetconfError::HostKey { fingerprint, .. } => assert_eq!(fingerprint, dev.fingerprint()),
        other => panic!("{other:?}"),
    }
    // known_hosts: not listed → refused; listed → accepted.
    let kh = dev.path("known_hosts");
    std::fs::write(&kh, "").unwrap();
    assert!(matches!(
        Session::connect(&dev.target(HostKey::KnownHosts(kh.clone()))).await,
        Err(NetconfError::HostKey { .. })
    ));
    let line = format!(
        "[127.0.0.1]:{} {}",
        dev.port,
        std::fs::read_to_string(dev.path("hostkey.pub")).unwrap()
    );
    std::fs::write(&kh, line).unwrap();
    let s = Session::connect(&dev.target(HostKey::KnownHosts(kh)))
        .await
        .unwrap();
    s.close().await.unwrap();
}
