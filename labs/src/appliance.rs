//! An emulated NETCONF appliance: the real `netconfd` (yuma123) behind a real `sshd`, with YANG
//! modules loaded from copies (so no SIL library is picked up and netconfd validates every edit
//! against the model alone), in a temp dir. Both daemons are children of the caller and are
//! killed and reaped on drop. For tests, benchmarks and labs.
//!
//! ```text
//!  client ──SSH──▶ sshd (127.0.0.1:port, host key in dir) ──subsystem netconf──▶
//!     netconf-subsystem ──unix socket dir/ncx.sock──▶ netconfd --port=port
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's netconfd keeps the IETF modules.
pub const YUMA_IETF: &str = "/usr/share/yuma/modules/ietf";

#[derive(Debug, thiserror::Error)]
#[error("netconf appliance: {step}: {reason}")]
pub struct ApplianceError {
    pub step: String,
    pub reason: String,
}

/// A running netconfd behind sshd.
pub struct Appliance {
    dir: tempfile::TempDir,
    pub port: u16,
    children: Vec<Child>,
    netconfd_args: Vec<String>,
}

fn err(step: &str, reason: impl std::fmt::Display) -> ApplianceError {
    ApplianceError {
        step: step.to_string(),
        reason: reason.to_string(),
    }
}

fn run(step: &str, cmd: &mut Command) -> Result<(), ApplianceError> {
    let out = cmd.output().map_err(|e| err(step, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(step, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this machine can run one (root, netconfd, sshd).
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Path::new("/usr/sbin/netconfd").exists() && Path::new("/usr/sbin/sshd").exists()
}

impl Appliance {
    /// Starts one with `modules` (YANG files) loaded; returns once sshd accepts connections.
    pub fn start(modules: &[PathBuf]) -> Result<Appliance, ApplianceError> {
        let dir = tempfile::tempdir().map_err(|e| err("temp dir", e))?;
        let d = dir.path().to_path_buf();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| err("pick a port", e))?
            .port();
        std::fs::create_dir_all("/run/sshd").map_err(|e| err("/run/sshd", e))?;
        for k in ["hostkey", "client"] {
            run(
                "ssh-keygen",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(d.join(k)),
            )?;
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys"))
            .map_err(|e| err("authorized_keys", e))?;
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
        .map_err(|e| err("sshd_config", e))?;
        let yang = d.join("yang");
        std::fs::create_dir_all(&yang).map_err(|e| err("yang dir", e))?;
        let mut args = vec![
            format!("--port={port}"),
            format!("--ncxserver-sockname={}", sock.display()),
            "--no-startup".into(),
            "--superuser=root".into(),
            format!("--modpath={}:/usr/share/yuma/modules", yang.display()),
            format!("--log={}", d.join("netconfd.log").display()),
        ];
        for m in modules {
            let name = m
                .file_name()
                .ok_or_else(|| err("module", format!("{} has no file name", m.display())))?;
            std::fs::copy(m, yang.join(name))
                .map_err(|e| err("copy module", format!("{}: {e}", m.display())))?;
            args.push(format!("--module={}", yang.join(name).display()));
        }
        let mut a = Appliance {
            dir,
            port,
            children: vec![],
            netconfd_args: args,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> Result<(), ApplianceError> {
        let d = self.dir.path().to_path_buf();
        let sock = d.join("ncx.sock");
        let _ = std::fs::remove_file(&sock);
        let port = self.port;
        // netconfd keeps a transaction-id file under $HOME/.yuma: one home per appliance, so
        // parallel appliances do not race on it.
        let netconfd = Command::new("/usr/sbin/netconfd")
            .args(&self.netconfd_args)
            .env("HOME", &d)
            .current_dir(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start netconfd", e))?;
        self.children.push(netconfd);
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start sshd", e))?;
        self.children.push(sshd);
        for _ in 0..250 {
            if sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(err(
            "wait",
            format!(
                "netconfd or sshd did not come up; netconfd log: {}",
                std::fs::read_to_string(d.join("netconfd.log")).unwrap_or_default()
            ),
        ))
    }

    /// Kills netconfd and sshd (the device goes away; its configuration with it, as netconfd
    /// runs without a startup file).
    pub fn stop(&mut self) {
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts them again, same port and host key.
    pub fn restart(&mut self) -> Result<(), ApplianceError> {
        self.stop();
        self.spawn()
    }

    /// The IETF interfaces model (with iana-if-type), as netconfd ships it.
    pub fn ietf_interfaces() -> Vec<PathBuf> {
        [
            "iana-if-type@2014-05-08.yang",
            "ietf-interfaces@2014-05-08.yang",
        ]
        .iter()
        .map(|m| Path::new(YUMA_IETF).join(m))
        .collect()
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// The private key the appliance trusts (user root).
    pub fn client_key(&self) -> PathBuf {
        self.path("client")
    }

    /// The SSH host key's SHA-256 fingerprint, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> Result<String, ApplianceError> {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path("hostkey.pub"))
            .output()
            .map_err(|e| err("ssh-keygen -lf", e))?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| err("ssh-keygen -lf", "no fingerprint printed"))
    }

    /// A known_hosts line for this appliance.
    pub fn known_hosts_line(&self) -> Result<String, ApplianceError> {
        let key =
            std::fs::read_to_string(self.path("hostkey.pub")).map_err(|e| err("hostkey.pub", e))?;
        Ok(format!("[127.0.0.1]:{} {}", self.port, key.trim()))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ip(args: &[&str]) -> Result<(), ApplianceError> {
    run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    )
}

/// An emulated SNMP device: a namespace with the real `snmpd` (v2c community `public`, v3 user
/// `mwuser` with SHA-256 / AES-128 keys `authpass123` / `privpass123`), reachable from the host
/// over a management veth at 169.254.K.2:161, and a data link inside (`data0` ⇄ `data1`).
/// Everything is removed on drop.
pub struct SnmpAgent {
    pub ns: String,
    host_if: String,
    pub addr: std::net::SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl SnmpAgent {
    pub fn start() -> Result<SnmpAgent, ApplianceError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id() % 10_000 * 10 + n % 10;
        let k = (std::process::id() + n * 7) % 200 + 20;
        let ns = format!("mwsnmp{id}");
        let host_if = format!("mwsn{id}");
        let dir = tempfile::tempdir().map_err(|e| err("temp dir", e))?;
        let mut a = SnmpAgent {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr: std::net::SocketAddr::from(([169, 254, k as u8, 2], 161)),
            child: None,
            _dir: dir,
        };
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "mgmt0", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("169.254.{k}.1/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("169.254.{k}.2/30"),
            "dev",
            "mgmt0",
        ])?;
        ip(&["-n", &ns, "link", "set", "mgmt0", "up"])?;
        ip(&[
            "-n", &ns, "link", "add", "data0", "type", "veth", "peer", "name", "data1",
        ])?;
        ip(&["-n", &ns, "link", "set", "data0", "up"])?;
        ip(&["-n", &ns, "link", "set", "data1", "up"])?;
        let d = a._dir.path().display().to_string();
        std::fs::write(
            format!("{d}/snmpd.conf"),
            "rocommunity public 169.254.0.0/16\ncreateUser mwuser SHA-256 \"authpass123\" AES \"privpass123\"\nrouser mwuser priv\n",
        )
        .map_err(|e| err("snmpd.conf", e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "env"])
            .arg(format!("SNMP_PERSISTENT_DIR={d}"))
            .args(["snmpd", "-f", "-Lf"])
            .arg(format!("{d}/snmpd.log"))
            .args(["-C", "-c"])
            .arg(format!("{d}/snmpd.conf"))
            .arg(format!("udp:169.254.{k}.2:161"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start snmpd", e))?;
        a.child = Some(child);
        Ok(a)
    }

    /// The kernel ifindex (= ifIndex) of an interface of the device.
    pub fn ifindex(&self, name: &str) -> Result<u32, ApplianceError> {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-o", "link", "show", name])
            .output()
            .map_err(|e| err("ip link show", e))?;
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .ok_or_else(|| err("ifindex", format!("{name} not found in {}", self.ns)))
    }

    /// Stops snmpd (the device stops answering).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SnmpAgent {
    fn drop(&mut self) {
        self.stop();
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
