//! The lab harness the integration tests share: a lab brought up with `meshwire lab up` as a
//! user would, and brought down when the test ends, even on failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshwire");

pub fn root() -> bool {
    let ok = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "lab tests need root"
        );
        eprintln!("SKIP: not root");
    }
    ok
}

/// A running lab, brought down when the test ends, even on failure.
pub struct Lab {
    pub name: String,
    pub url: String,
    // Tests of the same lab take turns (a lab's namespaces have fixed names).
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn turn(name: &str) -> std::sync::MutexGuard<'static, ()> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static LOCKS: OnceLock<Mutex<HashMap<String, &'static Mutex<()>>>> = OnceLock::new();
    let m: &'static Mutex<()> = {
        let mut all = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_string())
            .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))))
            .to_owned()
    };
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lab {
    pub fn up(name: &str) -> Lab {
        Lab::up_with(name, &[])
    }

    /// [`Lab::up`] with more `lab up` arguments (`--in-process`).
    pub fn up_with(name: &str, extra: &[&str]) -> Lab {
        Lab::up_file(name, &lab_file(name), extra)
    }

    /// Lab `name` from `file`, with more `lab up` arguments.
    pub fn up_file(name: &str, file: &Path, extra: &[&str]) -> Lab {
        let turn = turn(name);
        let _ = Command::new(BIN).args(["lab", "down", name]).output();
        let out = Command::new(BIN)
            .args(["lab", "up", file.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url =
            std::fs::read_to_string(format!("/run/meshwire/labs/{name}/controller.url")).unwrap();
        Lab {
            name: name.to_string(),
            url,
            _turn: turn,
        }
    }

    pub fn meshwire(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("MESHWIRE_CONTROLLER", &self.url)
            .output()
            .unwrap()
    }

    pub fn request(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["request"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.meshwire(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Follows the lab controller's event stream (SSE, from the start of its log, so an event
    /// that came before the call counts) and returns the first event `pred` accepts, or `None`
    /// when `within` passes first.
    pub fn wait_event(
        &self,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        use std::io::{BufRead, Write};
        let addr = self
            .url
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(within)).ok()?;
        // HTTP/1.0: the body is the bare stream, one event per `data:` line.
        write!(
            s,
            "GET /api/v1/events?since=0 HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .ok()?;
        let start = Instant::now();
        for line in std::io::BufReader::new(s).lines() {
            let line = line.ok()?;
            if start.elapsed() > within {
                return None;
            }
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                if pred(&v) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// The connection `id` as the controller has it now.
    pub fn connection(&self, id: &str) -> serde_json::Value {
        let out = self.meshwire(&["get", "connections", "-o", "json"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        all.as_array()
            .into_iter()
            .flatten()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap_or_default()
    }

    /// A one-off iperf3 server on `node`, returned once it listens: iperf3 says so on stdout
    /// (flushed), which is the event waited for.
    pub fn iperf3_server(&self, node: &str, port: u16) -> Background {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .args([
                "iperf3",
                "-s",
                "-1",
                "--forceflush",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = false;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if !said && line.contains("Server listening") {
                    said = true;
                    let _ = tx.send(());
                }
            }
        });
        let srv = Background(child);
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("iperf3 server on {node}:{port} did not start listening"));
        srv
    }

    /// Waits up to 15 s for `ifname` to exist on `node` (an appliance's agent programs its
    /// data plane from the device's running config, asynchronously).
    pub fn wait_link(&self, node: &str, ifname: &str) -> bool {
        self.wait_links(node, Duration::from_secs(15), |links| {
            links
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ifname))
        })
    }

    /// Waits until `pred` holds of `ip -br link` on `node`, looking again at each link event
    /// of its namespace (`ip monitor link`), with a once-a-second look as a safety net for an
    /// event that came before the monitor listened.
    pub fn wait_links(&self, node: &str, within: Duration, pred: impl Fn(&str) -> bool) -> bool {
        use std::io::BufRead;
        let links = || {
            String::from_utf8_lossy(&self.exec(node, &["ip", "-br", "link"]).stdout).into_owned()
        };
        let mut mon = Background(
            Command::new("ip")
                .args(["-n", &self.ns(node), "monitor", "link"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let out = mon.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + within;
        loop {
            if pred(&links()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = rx.recv_timeout(left.min(Duration::from_secs(1)));
        }
    }

    /// The lab controller's log, every appliance agent's and every node agent's, for failure
    /// messages.
    pub fn logs(&self) -> String {
        let d = format!("/run/meshwire/labs/{}", self.name);
        let mut out = format!(
            "controller: {}",
            std::fs::read_to_string(format!("{d}/controller.log")).unwrap_or_default()
        );
        for e in std::fs::read_dir(format!("{d}/agents"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        {
            out.push_str(&format!(
                "\nnode agent {}: {}",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            ));
        }
        for e in std::fs::read_dir(format!("{d}/appliance"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&format!(
                "\nagent {}: {}",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default()
            ));
        }
        out
    }

    pub fn ns(&self, node: &str) -> String {
        format!("clab-{}-{node}", self.name)
    }

    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// Whether `addr` stays silent for 5 s (no reply to pings every 200 ms).
    pub fn silent(&self, node: &str, addr: &str) -> bool {
        !self
            .exec(node, &["ping", "-c", "1", "-i", "0.2", "-w", "5", addr])
            .status
            .success()
    }

    /// Whether `addr` answers within 15 s, probing every 200 ms (a new bridge port may stay
    /// disabled until the kernel's rate-limited link-watch work runs; an appliance's agent
    /// programs its data plane from the device's running config, which on a loaded machine can
    /// take seconds).
    pub fn ping(&self, node: &str, addr: &str) -> bool {
        self.exec(node, &["ping", "-c", "1", "-i", "0.2", "-w", "15", addr])
            .status
            .success()
    }
}

/// A background process in a lab namespace, killed and reaped when dropped.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["lab", "down", &self.name]).output();
    }
}

/// Python stubs of the upstream NSM protos (tests/interop/nsm-api), generated by grpcio-tools
/// into a temporary directory; `None` (skip) without grpcio-tools, unless MESHWIRE_REQUIRE_ALL.
pub fn nsm_stubs() -> Option<tempfile::TempDir> {
    let have = Command::new("python3")
        .args(["-c", "import grpc_tools, grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        if std::env::var("MESHWIRE_REQUIRE_ALL").is_ok() {
            panic!("grpcio-tools is required: python3 -m pip install grpcio-tools");
        }
        eprintln!("SKIP: grpcio-tools not installed");
        return None;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let stubs = tempfile::tempdir().unwrap();
    let protos = here.join("nsm-api");
    let gen = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(
            [
                "connection.proto",
                "connectioncontext.proto",
                "networkservice.proto",
                "registry.proto",
            ]
            .map(|f| protos.join(f)),
        )
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    Some(stubs)
}

/// A plain HTTP/1.0 GET (no client library in these tests); the response, headers included.
/// iperf3's `-J` output of a run through an outage: prints how many intervals carried data
/// (and the rate), and asserts there were at least `min` intervals and none was empty.
pub fn assert_every_interval_carried_data(stdout: &[u8], what: &str, min: usize) {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_default();
    let bytes: Vec<u64> = v["intervals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "iperf3 {what}: {}/{} half-second intervals carried data, {:.1} Gbit/s",
        bytes.iter().filter(|b| **b > 0).count(),
        bytes.len(),
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    );
    assert!(bytes.len() >= min, "iperf3 ran: {v}");
    assert!(
        bytes.iter().all(|b| *b > 0),
        "no interval without traffic: {bytes:?}"
    );
}

pub fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn lab_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("labs")
        .join(name)
        .join("lab.yaml")
}
