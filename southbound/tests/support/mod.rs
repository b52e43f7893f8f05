//! Real Open vSwitch daemons for tests: ovsdb-server and, when asked, ovs-vswitchd with the
//! userspace datapath, in a temp dir, killed on drop. They are started with `--detach`, whose
//! parent exits only once the daemon is ready (its sockets bound): that exit is what the tests
//! wait for, never a timer.
//! Tests skip without root or openvswitch-switch, unless MESHWIRE_REQUIRE_ALL is set.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// An ovsdb-server and ovs-vswitchd in a temp dir, and one bridge; all removed on drop.
pub struct Ovs {
    dir: tempfile::TempDir,
    pub bridge: String,
    /// The daemons' pid files, ovsdb-server first.
    daemons: Vec<PathBuf>,
}

/// Starts a daemon with `--detach --pidfile=<dir>/<name>.pid` and returns once it is ready.
fn detached(dir: &std::path::Path, args: &[String]) -> PathBuf {
    let name = std::path::Path::new(&args[0])
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let pidfile = dir.join(format!("{name}.pid"));
    let out = Command::new(&args[0])
        .args(&args[1..])
        .arg("--detach")
        .arg(format!("--pidfile={}", pidfile.display()))
        .env("OVS_RUNDIR", dir)
        .env("OVS_LOGDIR", dir)
        .env("OVS_DBDIR", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pidfile
}

/// SIGKILLs the daemon of `pidfile` and waits until it is gone (its pid file lock is released
/// only by its death, so `kill -0` failing is the event).
fn kill(pidfile: &std::path::Path) {
    let Ok(pid) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let pid = pid.trim().to_string();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    // `tail --pid` returns when the process has exited.
    let _ = Command::new("tail")
        .args(["--pid", &pid, "-f", "/dev/null"])
        .status();
    let _ = std::fs::remove_file(pidfile);
}

impl Ovs {
    /// ovsdb-server alone (`controller_port: None`), or with ovs-vswitchd and one bridge whose
    /// controller is `tcp:127.0.0.1:<port>`.
    pub fn start(controller_port: Option<u16>) -> Option<Ovs> {
        Self::start_with(controller_port.map(|p| format!("tcp:127.0.0.1:{p}")), None)
    }

    /// With ovs-vswitchd and one bridge whose controller is `ssl:127.0.0.1:<port>`, the switch
    /// presenting `ssl = (key, cert, ca)` (`ovs-vsctl set-ssl`).
    pub fn start_ssl(port: u16, key: &str, cert: &str, ca: &str) -> Option<Ovs> {
        Self::start_with(
            Some(format!("ssl:127.0.0.1:{port}")),
            Some(format!("set-ssl {key} {cert} {ca} --")),
        )
    }

    fn start_with(target: Option<String>, ssl: Option<String>) -> Option<Ovs> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let have = Command::new("sh")
            .args(["-c", "command -v ovs-vswitchd && command -v ovsdb-server"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !root || !have {
            assert!(
                std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
                "the OVS test needs root and openvswitch-switch"
            );
            eprintln!("SKIP: needs root and openvswitch-switch");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // Unique per test: a userspace bridge creates a host tap device of its name.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bridge = format!("mwof{}x{n}", std::process::id() % 100_000);
        let mut ovs = Ovs {
            dir,
            bridge,
            daemons: Vec::new(),
        };
        let sh = |cmd: String| {
            let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(format!(
            "ovsdb-tool create {d}/conf.db /usr/share/openvswitch/vswitch.ovsschema"
        ));
        let here = ovs.dir.path().to_path_buf();
        ovs.daemons.push(detached(
            &here,
            &[
                "ovsdb-server".into(),
                format!("{d}/conf.db"),
                format!("--remote=punix:{d}/db.sock"),
                format!("--unixctl={d}/ovsdb-server.ctl"),
                format!("--log-file={d}/ovsdb-server.log"),
            ],
        ));
        sh(format!("ovs-vsctl --db=unix:{d}/db.sock --no-wait init"));
        let Some(target) = target else {
            return Some(ovs);
        };
        ovs.daemons.push(detached(
            &here,
            &[
                "ovs-vswitchd".into(),
                format!("unix:{d}/db.sock"),
                format!("--log-file={d}/ovs-vswitchd.log"),
            ],
        ));
        sh(format!(
            "OVS_RUNDIR={d} ovs-vsctl --db=unix:{d}/db.sock --timeout=20 {ssl} add-br {b} -- set bridge {b} datapath_type=netdev protocols=OpenFlow13 fail-mode=secure -- set-controller {b} {target}",
            b = ovs.bridge,
            ssl = ssl.unwrap_or_default()
        ));
        Some(ovs)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `unix:<dir>/db.sock`.
    pub fn db(&self) -> String {
        format!("unix:{}", self.path("db.sock").display())
    }

    /// Runs ovs-vsctl against this database; returns stdout.
    pub fn vsctl(&self, args: &str) -> String {
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("ovs-vsctl --db={} --no-wait --timeout=10 {args}", self.db()),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[allow(dead_code)]
    pub fn ofctl(&self, args: &str) -> String {
        let out = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ovs-ofctl -O OpenFlow13 {args} unix:{}",
                    self.path(&format!("{}.mgmt", self.bridge)).display()
                ),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Ovs {
    /// Kills ovsdb-server (SIGKILL) and starts it again on the same database and socket.
    pub fn restart_db(&mut self) {
        kill(&self.daemons[0]);
        let d = self.dir.path().display().to_string();
        let _ = std::fs::remove_file(self.path("db.sock"));
        let here = self.dir.path().to_path_buf();
        self.daemons[0] = detached(
            &here,
            &[
                "ovsdb-server".into(),
                format!("{d}/conf.db"),
                format!("--remote=punix:{d}/db.sock"),
                format!("--unixctl={d}/ovsdb-server.ctl"),
                format!("--log-file={d}/ovsdb-server.log"),
            ],
        );
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        let d = self.dir.path().display().to_string();
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ovs-vsctl --db=unix:{d}/db.sock --timeout=5 del-br {} 2>/dev/null",
                    self.bridge
                ),
            ])
            .status();
        // vswitchd first, then the database.
        for pidfile in self.daemons.drain(..).rev() {
            kill(&pidfile);
        }
    }
}

/// A test CA and two certificates it signed for 127.0.0.1, `controller` and `switch`, as PEM
/// files in `dir` (`ca.pem`, `NAME.pem`, `NAME-key.pem`). Returns the CA's path and each
/// (certificate, key) pair in that order.
pub fn pki(dir: &std::path::Path) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let mut leaves = Vec::new();
    for name in ["controller", "switch"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        leaves.push((c, k));
    }
    (ca_path, leaves)
}
