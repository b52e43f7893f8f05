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
        };
        let netconfd = Command::new("/usr/sbin/netconfd")
            .args(&args)
            .current_dir(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start netconfd", e))?;
        a.children.push(netconfd);
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start sshd", e))?;
        a.children.push(sshd);
        for _ in 0..250 {
            if sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(a);
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
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
