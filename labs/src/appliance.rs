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

/// For tests: whether an appliance can run here; when not, the test is skipped, except under
/// `MESHWIRE_REQUIRE_ALL` (CI), where that is a failure naming `what`.
pub fn runnable(what: &str) -> bool {
    if available() {
        return true;
    }
    assert!(
        std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
        "{what} needs root, netconfd and openssh-server"
    );
    eprintln!("SKIP: {what} needs root, netconfd and openssh-server");
    false
}

impl Appliance {
    /// Starts one with `modules` (YANG files) loaded; returns once sshd accepts connections.
    pub fn start(modules: &[PathBuf]) -> Result<Appliance, ApplianceError> {
        let dir = tempfile::tempdir().map_err(|e| err("temp dir", e))?;
        let d = dir.path().to_path_buf();
        let port = crate::ports::free_port().map_err(|e| err("pick a port", e))?;
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
    /// Starts snmpd in a namespace of its own (a management veth to the host, a data link
    /// `data0`/`data1` inside). With `trap_port`, it sends linkDown/linkUp notifications (v2c,
    /// community `public`) to that UDP port on the host end of the management veth.
    pub fn start(trap_port: Option<u16>) -> Result<SnmpAgent, ApplianceError> {
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
        let mut conf = String::from(
            "rocommunity public 169.254.0.0/16\ncreateUser mwuser SHA-256 \"authpass123\" AES \"privpass123\"\nrouser mwuser priv\n",
        );
        if let Some(port) = trap_port {
            conf.push_str(&format!(
                "createUser mwinternal\nrouser mwinternal noauth\niquerySecName mwinternal\ntrap2sink 169.254.{k}.1:{port} public\n{LINK_MONITORS}"
            ));
        }
        std::fs::write(format!("{d}/snmpd.conf"), conf).map_err(|e| err("snmpd.conf", e))?;
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

/// snmpd's own checks of ifOperStatus (every second) that send RFC 2863 linkDown/linkUp.
const LINK_MONITORS: &str = "notificationEvent mwLinkUp .1.3.6.1.6.3.1.1.5.4 .1.3.6.1.2.1.2.2.1.1 .1.3.6.1.2.1.2.2.1.7 .1.3.6.1.2.1.2.2.1.8\nnotificationEvent mwLinkDown .1.3.6.1.6.3.1.1.5.3 .1.3.6.1.2.1.2.2.1.1 .1.3.6.1.2.1.2.2.1.7 .1.3.6.1.2.1.2.2.1.8\nmonitor -S -r 1 -e mwLinkUp \"linkUp\" .1.3.6.1.2.1.2.2.1.8 != 2\nmonitor -S -r 1 -e mwLinkDown \"linkDown\" .1.3.6.1.2.1.2.2.1.8 == 2\n";

/// Our appliance YANG model, as the lab's emulated devices load it.
pub const MESHWIRE_APPLIANCE_YANG: (&str, &str) = (
    "meshwire-appliance@2026-11-23.yang",
    include_str!("../../ensm-adapters/yang/meshwire-appliance@2026-11-23.yang"),
);

/// The NETCONF port of lab appliances (in their own namespace, so it never collides).
pub const LAB_NETCONF_PORT: u16 = 830;
/// Where lab appliances send linkDown/linkUp traps: this port on the management bridge's
/// host address (unique per lab).
pub const LAB_TRAP_PORT: u16 = 16162;

/// The trap port of a lab's `n`th appliance (each eNSM listens on its own).
pub fn lab_trap_port(n: usize) -> u16 {
    LAB_TRAP_PORT + n as u16
}

/// How to reach a lab appliance (a `kind: meshwire-appliance` node) from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabAppliance {
    pub netns: String,
    pub dir: PathBuf,
    pub mgmt: std::net::Ipv4Addr,
    pub port: u16,
    /// The host's address on the management network, and the port there traps go to.
    pub host: std::net::Ipv4Addr,
    pub trap_port: u16,
    pub client_key: PathBuf,
    pub fingerprint: String,
    /// The node's data interfaces (its link ends), for SNMP monitoring.
    pub data_interfaces: Vec<String>,
}

/// Whether snmpd answers and reports every interface up: it loads its MIBs for a second or
/// so, and its interface table starts out stale (links read down for a few seconds).
async fn snmp_answers(addr: std::net::Ipv4Addr) -> bool {
    let out = tokio::process::Command::new("snmpbulkwalk")
        .args([
            "-v2c",
            "-c",
            "public",
            "-t",
            "0.2",
            "-r",
            "0",
            "-Oqv",
            &format!("{addr}:161"),
            "1.3.6.1.2.1.2.2.1.8",
        ])
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            !text.trim().is_empty() && text.lines().all(|l| l.trim() == "1" || l.trim() == "up")
        }
        _ => false,
    }
}

/// Runs a command that daemonizes: no pipes (a daemon holding them would keep us waiting).
async fn daemon(step: &str, args: &[&str]) -> Result<(), ApplianceError> {
    let st = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| err(step, format!("cannot run ip: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(err(
            step,
            format!("exited with {st} (see the log in the appliance's directory)"),
        ))
    }
}

async fn sh(step: &str, program: &str, args: &[&str]) -> Result<String, ApplianceError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| err(step, format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(step, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Starts a lab appliance's device daemons inside its namespace, detached (the lab's `down`
/// kills everything in the namespace): sshd on port 830 with the netconf subsystem, netconfd
/// with our YANG model and the node's startup configuration, and snmpd (community `public`)
/// sending linkDown/linkUp traps to the host. Keys and logs live in `dir`.
pub async fn start_lab_appliance(
    lab: &crate::spec::Lab,
    node: &crate::spec::LabNode,
    dir: &Path,
    mgmt: std::net::Ipv4Addr,
    host: std::net::Ipv4Addr,
    trap_port: u16,
) -> Result<LabAppliance, ApplianceError> {
    let ns = lab.netns(&node.name);
    std::fs::create_dir_all(dir.join("yang")).map_err(|e| err("state dir", e))?;
    std::fs::create_dir_all("/run/sshd").map_err(|e| err("/run/sshd", e))?;
    let p = |f: &str| dir.join(f).display().to_string();
    for k in ["hostkey", "client"] {
        sh(
            "ssh-keygen",
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", &p(k)],
        )
        .await?;
    }
    std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys"))
        .map_err(|e| err("authorized_keys", e))?;
    let port = LAB_NETCONF_PORT;
    let sock = p("ncx.sock");
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nSubsystem netconf \"/usr/sbin/netconf-subsystem --ncxserver-sockname={port}@{sock}\"\n",
            p("hostkey"),
            p("sshd.pid"),
            p("authorized_keys"),
        ),
    )
    .map_err(|e| err("sshd_config", e))?;
    let (yang_name, yang_text) = MESHWIRE_APPLIANCE_YANG;
    std::fs::write(dir.join("yang").join(yang_name), yang_text).map_err(|e| err("yang", e))?;
    match &node.startup {
        Some(f) => std::fs::copy(f, dir.join("startup.xml"))
            .map(|_| ())
            .map_err(|e| err("startup config", format!("{}: {e}", f.display())))?,
        None => std::fs::write(
            dir.join("startup.xml"),
            "<config xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"/>\n",
        )
        .map_err(|e| err("startup config", e))?,
    }
    let home = format!("HOME={}", dir.display());
    daemon(
        "start netconfd",
        &[
            "netns",
            "exec",
            &ns,
            "env",
            &home,
            "setsid",
            "-f",
            "/usr/sbin/netconfd",
            &format!("--port={port}"),
            &format!("--ncxserver-sockname={sock}"),
            &format!("--startup={}", p("startup.xml")),
            "--superuser=root",
            &format!("--modpath={}:/usr/share/yuma/modules", p("yang")),
            &format!("--module={}", dir.join("yang").join(yang_name).display()),
            &format!("--log={}", p("netconfd.log")),
        ],
    )
    .await?;
    daemon(
        "start sshd",
        &[
            "netns",
            "exec",
            &ns,
            "/usr/sbin/sshd",
            "-f",
            &p("sshd_config"),
            "-E",
            &p("sshd.log"),
        ],
    )
    .await?;
    std::fs::write(
        dir.join("snmpd.conf"),
        format!(
            "rocommunity public\nrwcommunity mwlabrw 127.0.0.1\ncreateUser mwinternal\nrouser mwinternal noauth\niquerySecName mwinternal\ntrap2sink {host}:{trap_port} public\n{LINK_MONITORS}"
        ),
    )
    .map_err(|e| err("snmpd.conf", e))?;
    daemon(
        "start snmpd",
        &[
            "netns",
            "exec",
            &ns,
            "env",
            // Not `dir`: snmpd writes its persistent state to <dir>/snmpd.conf.
            &format!("SNMP_PERSISTENT_DIR={}", dir.join("snmp-state").display()),
            "snmpd",
            "-Lf",
            &p("snmpd.log"),
            "-p",
            &p("snmpd.pid"),
            "-C",
            "-c",
            &p("snmpd.conf"),
            &format!("udp:{mgmt}:161,udp:127.0.0.1:161"),
        ],
    )
    .await?;
    for _ in 0..500 {
        if dir.join("ncx.sock").exists()
            && tokio::net::TcpStream::connect((mgmt, port)).await.is_ok()
            && snmp_answers(mgmt).await
        {
            // snmpd caches its interface table for 3 s; a device that notices a link within
            // a second is closer to real hardware (which traps from the driver's event).
            sh(
                "snmpset nsCacheTimeout",
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "snmpset",
                    "-v2c",
                    "-c",
                    "mwlabrw",
                    "127.0.0.1:161",
                    "1.3.6.1.4.1.8072.1.5.3.1.2.1.3.6.1.2.1.2.2",
                    "i",
                    "1",
                ],
            )
            .await?;
            let fp = sh("ssh-keygen -lf", "ssh-keygen", &["-lf", &p("hostkey.pub")]).await?;
            let fingerprint = fp
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| err("ssh-keygen -lf", "no fingerprint"))?
                .to_string();
            let data_interfaces = lab
                .links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .filter(|e| e.node == node.name)
                .map(|e| e.interface.clone())
                .collect();
            return Ok(LabAppliance {
                netns: ns,
                dir: dir.to_path_buf(),
                mgmt,
                port,
                host,
                trap_port,
                client_key: dir.join("client"),
                fingerprint,
                data_interfaces,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(err(
        "wait",
        format!(
            "netconfd or sshd did not come up in {ns}; netconfd log: {}",
            std::fs::read_to_string(dir.join("netconfd.log")).unwrap_or_default()
        ),
    ))
}
