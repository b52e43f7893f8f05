//! The harness of the highly-available controller tests: controllers on a local etcd
//! cluster, asked as a user would (the CLI, `/readyz`), node agents, namespaces; everything
//! stopped or removed when a test ends, even on failure.
#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshwire_controller::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshwire");

pub struct Ctl {
    pub child: Child,
    pub port: u16,
    pub pid: u32,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly; its re-executed self has the
        // same pid.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    meshwire_labs::ports::free_port().unwrap()
}

/// A controller on `spec` with `extra` arguments, once it says `ready` (as a standby or as
/// the leader).
pub fn controller_with(spec: &str, extra: &[&str]) -> Ctl {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["controller", "--store", spec, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .args(if extra.contains(&"--grpc-listen") {
            &[][..]
        } else {
            &["--grpc-listen", "off"][..]
        })
        .args(["--leader-lease", "1s"])
        .args(["--reconcile-interval", "200ms", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && l.starts_with("ready ") {
                sent = tx.send(()).is_ok();
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the controller says ready");
    let pid = child.id();
    Ctl { child, port, pid }
}

/// The controllers' REST URLs as a client's list (`A,B,C`).
pub fn urls_of(ctls: &[Ctl]) -> String {
    ctls.iter()
        .map(|c| format!("http://127.0.0.1:{}", c.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `/readyz` says: `Some(true)` leader, `Some(false)` standby, `None` no answer.
pub fn leads(port: u16) -> Option<bool> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    if !r.starts_with("HTTP/1.") {
        return None;
    }
    Some(!r.contains("\"standby\""))
}

/// Waits (bounded) until exactly one of `ctls` leads; its index.
pub fn leader(ctls: &[&Ctl], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let l: Vec<usize> = (0..ctls.len())
            .filter(|i| leads(ctls[*i].port) == Some(true))
            .collect();
        if l.len() == 1 {
            return l[0];
        }
        assert!(Instant::now() < deadline, "no single leader: {l:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn cli(urls: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("MESHWIRE_CONTROLLER", urls)
        .output()
        .unwrap()
}

pub fn request(urls: &str, name: &str) -> Result<String, String> {
    let out = cli(
        urls,
        &[
            "request",
            "secure-intranet-connectivity",
            "--client",
            "client",
            "--name",
            name,
            "-o",
            "json",
        ],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

pub fn connections(urls: &str) -> Vec<serde_json::Value> {
    let out = cli(urls, &["get", "connections", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// The etcd store's revision now.
pub fn revision(spec: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = meshwire_controller::store::open_etcd(spec, &Default::default())
            .await
            .unwrap();
        s.list("/meshwire/v1/leader").await.unwrap().1
    })
}

/// Whether the controller on `port` has `node`'s agent attached (its topology status).
pub fn agent_attached(port: u16, node: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if write!(s, "GET /api/v1/topology/status HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["agents"][node]["state"] == "attached"
}

/// A node agent process, stopped when the test ends.
pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Network namespaces made for one test, deleted when it ends (even on failure).
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn new(names: &[String]) -> Namespaces {
        for n in names {
            let ok = Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .unwrap();
            assert!(ok.success(), "ip netns add {n}");
            let _ = Command::new("ip")
                .args(["-n", n, "link", "set", "lo", "up"])
                .status();
        }
        Namespaces(names.to_vec())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

pub fn ifindex(ns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", ifname])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
