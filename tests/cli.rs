//! Input: the `meshwire` binary as a user runs it: a controller daemon on a free loopback port
//! with a store in a temp dir, and client commands against it.
//! Output: what the commands print and exit with, before and after a daemon restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_meshwire");

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

struct Daemon {
    child: Child,
    url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir` as `tls.crt` and
/// `tls.key`.
fn self_signed(dir: &Path) -> (rcgen::CertifiedKey, PathBuf, PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (ck, cert, key)
}

fn free_port() -> u16 {
    meshwire_labs::ports::free_port().unwrap()
}

fn daemon(store: &str) -> Daemon {
    daemon_with(store, &[], &[])
}

/// A controller on a free port with `extra` arguments and `env`, once it accepts connections
/// (20 s at most: CI starts many at once right after the build).
fn daemon_with(store: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "controller",
            "--store",
            store,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--reconcile-interval",
            "200ms",
            "--log",
            "warn",
        ])
        .args(if extra.contains(&"--grpc-listen") {
            &[][..]
        } else {
            &["--grpc-listen", "off"][..]
        })
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The daemon says `ready <address>` on stdout once it accepts connections.
    match ready_line(&mut child, std::time::Duration::from_secs(20)) {
        Ok(_) => Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
        },
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("controller did not start: {why}");
        }
    }
}

/// Waits for a daemon's `ready ...` line on its (piped) stdout.
fn ready_line(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Result<String, String> {
    use std::io::BufRead;
    let out = child.stdout.take().ok_or("stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Its log shares stdout: the ready line is the one that starts with `ready `. The thread
    // keeps draining so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && l.starts_with("ready ") {
                sent = tx.send(l).is_ok();
            }
        }
    });
    match rx.recv_timeout(within) {
        Ok(l) => Ok(l),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("exited: {:?}", child.try_wait()))
        }
        Err(_) => Err(format!("no ready line within {within:?}")),
    }
}

fn run(d: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MESHWIRE_CONTROLLER", &d.url)
        .output()
        .unwrap()
}

/// The seed's request: sarah's client asks for secure-intranet-connectivity.
fn request_sarah(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&ok(
        d,
        &[
            "request",
            "secure-intranet-connectivity",
            "--client",
            "client",
            "--label",
            "app=sarah",
            "-o",
            "json",
        ],
    ))
    .unwrap()
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = run(d, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = run(d, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
    err
}

fn round_trip(store: String) {
    let vpn = example("vpn-gateway.yaml");
    let vpn = vpn.to_str().unwrap();
    let id = {
        let d = daemon(&store);
        let out = ok(&d, &["apply", "-f", vpn]);
        assert!(
            out.contains("NetworkService/secure-intranet-connectivity created"),
            "{out}"
        );
        assert!(ok(&d, &["apply", "-f", vpn]).contains("unchanged"));
        assert!(
            ok(&d, &["get", "endpoints", "--selector", "app=vpn-gateway"])
                .contains("vpn-gateway-1")
        );
        assert!(!ok(
            &d,
            &[
                "get",
                "endpoints",
                "--service",
                "secure-intranet-connectivity",
                "-l",
                "app=other"
            ]
        )
        .contains("vpn-gateway-1"));
        let out = ok(&d, &["get", "services"]);
        assert!(
            out.contains("secure-intranet-connectivity") && out.contains("IP"),
            "{out}"
        );
        let c = request_sarah(&d);
        assert_eq!(c["state"], "up");
        assert_eq!(
            c["hops"][0]["mechanism"]["type"], "vxlan",
            "different nodes: VXLAN"
        );
        assert_eq!(c["hops"][0]["mechanism"]["vni"], 5000);
        assert_eq!(c["ip_context"]["src_routes"][0]["prefix"], "10.60.0.0/16");
        // The kernel forwarders of these nodes cannot do GRE: refused with the reason per endpoint.
        let err = fails(
            &d,
            &[
                "request",
                "secure-intranet-connectivity",
                "--client",
                "client",
                "--label",
                "app=sarah",
                "--mechanism",
                "gre",
            ],
        );
        assert!(err.contains("no capable endpoint for network service \"secure-intranet-connectivity\": vpn-gateway-1: gre: client's forwarder cannot wire it"), "{err}");
        c["id"].as_str().unwrap().to_string()
    };
    // Restarted on the same store: everything is still there.
    let d = daemon(&store);
    let conns: serde_json::Value =
        serde_json::from_str(&ok(&d, &["get", "connections", "-o", "json"])).unwrap();
    assert_eq!(conns[0]["id"], id.as_str());
    let table = ok(&d, &["get", "all"]);
    assert!(
        table.contains("vpn-gateway-1") && table.contains("client-gateway") && table.contains(&id),
        "{table}"
    );
    assert!(ok(&d, &["get", "endpoints", "-o", "yaml"]).contains("connections: 1"));
    ok(&d, &["close", &id]);
    let err = fails(&d, &["close", &id]);
    assert!(
        err.contains(&format!("unknown connection \"{id}\"")),
        "{err}"
    );
    let res: serde_json::Value =
        serde_json::from_str(&ok(&d, &["get", "resources", "-o", "json"])).unwrap();
    assert!(
        res["pools"].as_object().unwrap().values().all(|v| v == 0),
        "{res}"
    );
    ok(&d, &["delete", "-f", vpn]);
    assert_eq!(ok(&d, &["get", "services", "-o", "json"]).trim(), "[]");
}

#[test]
fn nb_cli_round_trip_and_restart_redb() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(format!("redb:{}", dir.path().join("m.redb").display()));
}

#[test]
fn nb_cli_round_trip_and_restart_etcd() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = match rt.block_on(meshwire_labs::etcd::LocalEtcd::start()) {
        Ok(e) => e,
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => return eprintln!("SKIP: {e}"),
        Err(e) => panic!("etcd is required: {e}"),
    };
    round_trip(format!("etcd://{}", etcd.endpoint));
}

/// Input: the vpn-gateway example applied. Output: `get topology -o dot` is a Graphviz graph
/// with both nodes, the link with its MTU and the endpoint on its node; `-o dot` for anything
/// else is refused in one line.
#[test]
fn nb_cli_topology_as_graphviz() {
    let d = daemon("memory");
    ok(
        &d,
        &["apply", "-f", example("vpn-gateway.yaml").to_str().unwrap()],
    );
    let g = ok(&d, &["get", "topology", "-o", "dot"]);
    assert!(g.starts_with("graph meshwire {"), "{g}");
    for want in [
        "\"client\" [shape=box",
        "\"gateway\" [shape=box",
        "\"client\" -- \"gateway\" [label=\"client-gateway mtu 1500\"]",
        "\"endpoint/vpn-gateway-1\" -- \"gateway\" [style=dotted]",
    ] {
        assert!(g.contains(want), "{want} in {g}");
    }
    let e = fails(&d, &["get", "services", "-o", "dot"]);
    assert!(e.contains("-o dot draws the topology only"), "{e}");
}

#[test]
fn nb_cli_bad_input_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e1}\nspec:\n  network_service_names: [s]\n  location: {node: n}\n  mechanisms: {vxlan: {vniRange: {start: 5000, end: 4000}}}\n").unwrap();
    let d = daemon("memory");
    let err = fails(&d, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("bad.yaml: document 1 (NetworkServiceEndpoint/e1): spec.mechanisms.vxlan.vniRange: start 5000 is above end 4000"), "{err}");
    let err = fails(&d, &["validate", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("start 5000 is above end 4000"), "{err}");
    let err = fails(&d, &["request", "nope", "--client", "x"]);
    assert!(err.contains("unknown network service \"nope\""), "{err}");
    // Argument errors come from clap, with a pointer to --help.
    let out = run(&d, &["request", "s", "--client", "x", "--label", "novalue"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is not of the form key=value")
    );
    let err = fails(&d, &["apply", "-f", "/nonexistent/x.yaml"]);
    assert!(err.contains("cannot read /nonexistent/x.yaml"), "{err}");
    // No daemon there: says so and how to point at one.
    let out = Command::new(BIN)
        .args(["get", "services"])
        .env(
            "MESHWIRE_CONTROLLER",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `meshwire controller` running?"));
    // Upstream's own manifests validate as they are.
    let upstream = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/upstream-nsm");
    let out = ok(&d, &["validate", "-f", upstream.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 10, "{out}");
}

/// Reads SSE text from `resp` until `until` appears (5 s at most).
async fn sse_until(resp: &mut reqwest::Response, text: &mut String, until: &str) {
    while !text.contains(until) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {until:?} in {text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {until:?}: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn sse_ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[test]
fn nb_events_stream_live_and_resume_from_an_id() {
    let d = daemon("memory");
    let vpn = example("vpn-gateway.yaml");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut live = http
            .get(format!("{}/api/v1/events", d.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            live.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        ok(&d, &["apply", "-f", vpn.to_str().unwrap()]);
        let mut text = String::new();
        sse_until(&mut live, &mut text, "secure-intranet-connectivity").await;
        let c = request_sarah(&d);
        let id = c["id"].as_str().unwrap();
        sse_until(&mut live, &mut text, id).await;
        assert!(
            text.contains("event: connection") && text.contains("\"state\":\"up\""),
            "{text}"
        );
        let ids = sse_ids(&text);
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "increasing ids: {ids:?}"
        );
        // Resume after the first event: everything after it is replayed, in order.
        let mut resumed = http
            .get(format!("{}/api/v1/events", d.url))
            .header("Last-Event-ID", ids[0].to_string())
            .send()
            .await
            .unwrap();
        let mut again = String::new();
        sse_until(&mut resumed, &mut again, id).await;
        assert_eq!(sse_ids(&again).first(), Some(&(ids[0] + 1)), "{again}");
        // `?since=` does the same.
        let mut q = http
            .get(format!(
                "{}/api/v1/events?since={}",
                d.url,
                ids[ids.len() - 2]
            ))
            .send()
            .await
            .unwrap();
                let mut tail = String::new();
        sse_until(&mut q, &mut tail, id).await;
        assert_eq!(sse_ids(&tail), vec![ids[ids.len() - 1]], "{tail}");
        // The same state in /metrics.
        let m = http
            .get(format!("{}/metrics", d.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("meshwire_connections{state=\"up\"} 1"), "{m}");
        assert!(m.contains("meshwire_endpoints{state=\"up\"} 1"), "{m}");
        assert!(
            m.contains("meshwire_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/connections\",status=\"2xx\"} 1"),
            "{m}"
        );
        assert!(m.contains("meshwire_driver_errors_total 0"), "{m}");
    });
}

#[test]
fn nb_bearer_tokens_401_without_403_below_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tokens.yaml");
    std::fs::write(
        &table,
        "tokens:\n  - {name: dash, role: viewer, tokenEnv: T_VIEW}\n  - {name: oss, role: operator, tokenEnv: T_OP}\n  - {name: ops, role: admin, tokenEnv: T_ADMIN}\n",
    )
    .unwrap();
    let (view, op, admin) = (
        "viewer-token-0123456789",
        "operator-token-0123456789",
        "admin-token-0123456789",
    );
    let d = daemon_with(
        "memory",
        &["--tokens", table.to_str().unwrap()],
        &[("T_VIEW", view), ("T_OP", op), ("T_ADMIN", admin)],
    );
    let url = d.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let status = |rb: reqwest::RequestBuilder| async move {
            let r = rb.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        };
        assert_eq!(
            status(http.get(format!("{url}/healthz"))).await.0,
            200,
            "probes stay open"
        );
        for path in ["/api/v1/services", "/metrics", "/api/v1/events"] {
            let (s, body) = status(http.get(format!("{url}{path}"))).await;
            assert_eq!(s, 401, "{path}: {body}");
            assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
        }
        let (s, _) = status(
            http.get(format!("{url}/api/v1/services"))
                .bearer_auth("wrong-token-0123456789"),
        )
        .await;
        assert_eq!(s, 401);
        let (s, _) = status(http.get(format!("{url}/api/v1/services")).bearer_auth(view)).await;
        assert_eq!(s, 200);
        let (s, body) = status(
            http.post(format!("{url}/api/v1/connections"))
                .bearer_auth(view)
                .json(&serde_json::json!({"network_service": "x", "client": {"node": "n"}})),
        )
        .await;
        assert_eq!(s, 403, "{body}");
        assert!(
            body.contains("needs role operator; token dash has viewer"),
            "{body}"
        );
        let device = serde_json::json!([{"kind": "Device", "object": {"name": "fw9", "kind": "meshwire-appliance", "mechanisms": {}}}]);
        let (s, body) = status(
            http.post(format!("{url}/api/v1/registry/objects"))
                .bearer_auth(op)
                .json(&device),
        )
        .await;
        assert_eq!(s, 403, "devices are the admin's: {body}");
        let (s, body) = status(
            http.post(format!("{url}/api/v1/registry/objects"))
                .bearer_auth(admin)
                .json(&device),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    });
    // The CLI sends MESHWIRE_TOKEN.
    let vpn = example("vpn-gateway.yaml");
    let out = Command::new(BIN)
        .args(["apply", "-f", vpn.to_str().unwrap()])
        .env("MESHWIRE_CONTROLLER", &d.url)
        .env("MESHWIRE_TOKEN", op)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["get", "services"])
        .env("MESHWIRE_CONTROLLER", &d.url)
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("bearer token is required")
    );
}

/// Input: the controller with a token table, and schemathesis (PyPI) generating requests from
/// `/openapi.json`: valid and invalid bodies, queries and headers, missing and wrong tokens, and
/// stateful sequences following the API's links. Output: no server error, every status and
/// content type documented, every response body and SSE event valid against its schema, and
/// bad tokens refused. Needs schemathesis (`st`); skipped without it unless MESHWIRE_REQUIRE_ALL.
#[test]
fn nb_schemathesis_no_server_errors_no_schema_violations() {
    if Command::new("st").arg("--version").output().is_err() {
        if std::env::var("MESHWIRE_REQUIRE_ALL").is_ok() {
            panic!("schemathesis (st) is required: python3 -m pip install schemathesis");
        }
        return eprintln!("SKIP: schemathesis (st) not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tokens.yaml");
    std::fs::write(
        &table,
        "tokens:\n  - {name: fuzz, role: admin, tokenEnv: T_FUZZ}\n",
    )
    .unwrap();
    let secret = "schemathesis-admin-token-1";
    let d = daemon_with(
        "memory",
        &["--tokens", table.to_str().unwrap()],
        &[("T_FUZZ", secret)],
    );
    let out = Command::new("st")
        .args([
            "run",
            &format!("{}/openapi.json", d.url),
            "-H",
            &format!("Authorization: Bearer {secret}"),
            "--checks",
            "all",
            // Valid-by-schema documents may still break rules the schema cannot say (an
            // endpoint on an unknown node): refusing those with 4xx is right.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            "--wait-for-schema",
            "20",
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
}

/// Input: the controller with --tls-cert/--tls-key (a certificate made for the test). Output:
/// the API answers over HTTPS to a client trusting the certificate, plain HTTP on the same port
/// gets no answer, and the CLI works over HTTPS with MESHWIRE_CA_CERT.
#[test]
fn nb_rest_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, cert, key) = self_signed(dir.path());
    let d = daemon_with(
        "memory",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let https = d.url.replace("http://", "https://");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        let r = http.get(format!("{https}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let untrusted = reqwest::Client::new()
            .get(format!("{https}/healthz"))
            .send()
            .await;
        assert!(
            untrusted.is_err(),
            "a client not trusting the certificate must fail"
        );
        let plain = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap()
            .get(format!("{}/healthz", d.url))
            .send()
            .await;
        assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    });
    let out = Command::new(BIN)
        .args(["get", "services"])
        .env("MESHWIRE_CONTROLLER", &https)
        .env("MESHWIRE_CA_CERT", &cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Input: a controller serving the NSM gRPC API, and `meshwire nsc-init` with the environment
/// the webhook gives the init container (NSM_NETWORK_SERVICES with two URLs, NODE_NAME,
/// POD_NAME). Output: both connections made for the pod, with the interface names and labels
/// of the URLs; an unknown service and a malformed annotation fail with a one-line error.
#[test]
fn nb_nsc_init_requests_the_annotated_services() {
    let grpc_port = free_port();
    let d = daemon_with(
        "memory",
        &["--grpc-listen", &format!("127.0.0.1:{grpc_port}")],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("w.yaml");
    std::fs::write(&world, "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n1}}\n").unwrap();
    ok(&d, &["apply", "-f", world.to_str().unwrap()]);
    let init = |services: &str| {
        Command::new(BIN)
            .arg("nsc-init")
            .env("NSM_NETWORK_SERVICES", services)
            .env("MESHWIRE_GRPC", format!("127.0.0.1:{grpc_port}"))
            .env("NODE_NAME", "n1")
            .env("POD_NAME", "pod-a")
            .args(["--timeout", "10s"])
            .output()
            .unwrap()
    };
    let out = init("kernel://vpn/nsm-1?app=x,kernel://vpn/nsm-2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 2, "{printed}");
    let conns = ok(&d, &["get", "connections", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&conns).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2, "{conns}");
    let mut ifaces: Vec<&str> = items
        .iter()
        .map(|c| c["interface"].as_str().unwrap())
        .collect();
    ifaces.sort();
    assert_eq!(ifaces, ["nsm-1", "nsm-2"]);
    assert!(items.iter().all(|c| c["client"]["name"] == "pod-a"));
    assert!(items.iter().any(|c| c["labels"]["app"] == "x"));
    assert!(items.iter().all(|c| c["labels"]["podName"] == "pod-a"));

    // A vL3: the pod's resolver file gets the vL3's resolver first and its zone searched; the
    // cluster's nameserver stays after it.
    std::fs::write(&world, "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: db}\nspec: {payload: IP, vl3: {prefix: 10.90.0.0/16}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: r1}\nspec: {network_service_names: [db], location: {node: n1, netns: r1}}\n").unwrap();
    ok(&d, &["apply", "-f", world.to_str().unwrap()]);
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("nsc-init")
        .env("NSM_NETWORK_SERVICES", "kernel://db/nsm-3")
        .env("MESHWIRE_GRPC", format!("127.0.0.1:{grpc_port}"))
        .env("NODE_NAME", "n1")
        .env("POD_NAME", "pod-a")
        .args([
            "--timeout",
            "10s",
            "--resolv-conf",
            resolv.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&resolv).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "nameserver 10.90.0.1",
            "search default.svc.cluster.local svc.cluster.local cluster.local db",
            "nameserver 10.96.0.10",
            "options ndots:5"
        ],
        "{text}"
    );
    let conns: serde_json::Value =
        serde_json::from_str(&ok(&d, &["get", "connections", "-o", "json"])).unwrap();
    let member = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["network_service"] == "db")
        .unwrap();
    assert_eq!(member["vl3"]["name"], "pod-a", "{member}");

    for (services, want) in [
        ("kernel://nope/nsm-1", "nope"),
        ("vpn", "NSM_NETWORK_SERVICES"),
    ] {
        let out = init(services);
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// Input: a controller serving REST and gRPC over TLS with bearer tokens (as `deploy/` runs it),
/// and `meshwire nsc-init` with the CA and a token file holding a wrong token at first (a secret
/// not yet rotated in). Output: nsc-init retries while UNAUTHENTICATED, picks up the right token
/// when the file changes and gets the connection; a plain-text client is refused.
#[test]
fn nb_nsc_init_over_tls_with_a_token_file() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = self_signed(dir.path());
    let table = dir.path().join("tokens.yaml");
    std::fs::write(
        &table,
        "tokens:\n  - {name: nsc, role: operator, tokenEnv: T_NSC}\n  - {name: ops, role: admin, tokenEnv: T_ADMIN}\n",
    )
    .unwrap();
    let (nsc, admin) = ("nsc-token-0123456789", "admin-token-0123456789");
    let grpc_port = free_port();
    let d = daemon_with(
        "memory",
        &[
            "--grpc-listen",
            &format!("127.0.0.1:{grpc_port}"),
            "--tokens",
            table.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("T_NSC", nsc), ("T_ADMIN", admin)],
    );
    let world = dir.path().join("w.yaml");
    std::fs::write(&world, "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n1}}\n").unwrap();
    let out = Command::new(BIN)
        .args(["apply", "-f", world.to_str().unwrap()])
        .env("MESHWIRE_CONTROLLER", d.url.replace("http://", "https://"))
        .env("MESHWIRE_CA_CERT", &cert)
        .env("MESHWIRE_TOKEN", admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not-the-token-000000").unwrap();
    let init = |ca: Option<&std::path::Path>, timeout: &str| {
        let mut c = Command::new(BIN);
        c.arg("nsc-init")
            .env("NSM_NETWORK_SERVICES", "kernel://vpn/nsm-1")
            .env("MESHWIRE_GRPC", format!("127.0.0.1:{grpc_port}"))
            .env("MESHWIRE_TOKEN_FILE", &token_file)
            .env("NODE_NAME", "n1")
            .env("POD_NAME", "pod-a")
            .env_remove("MESHWIRE_CA_CERT")
            .args(["--timeout", timeout])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = ca {
            c.env("MESHWIRE_CA_CERT", ca);
        }
        c.spawn().unwrap()
    };
    let mut child = init(Some(&cert), "60s");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let retrying = line.contains("(retrying)");
        said.push(line);
        if retrying {
            break;
        }
    }
    assert!(
        said.last().is_some_and(|l| l.contains("vpn:")),
        "nsc-init never retried: {said:?}"
    );
    // The secret is rotated in: the next try reads it.
    std::fs::write(&token_file, nsc).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{said:?} {rest:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.starts_with("vpn nsm-1 via gw"), "{printed}");

    // Plain text toward a TLS listener never gets through.
    let out = init(None, "3s").wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error:")),
        "{err}"
    );
}

/// Input: daemons asked to listen off loopback without credentials: the controller's REST and
/// gRPC APIs without --tokens, its agent listener without --agent-tokens (and kernel and agents
/// both asked to wire kernel nodes), an eNSM's call API without its token. Output: each refuses to
/// start, with one line naming the listener and what to give.
#[test]
fn nb_exposed_listeners_refused_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("fw1.yaml");
    std::fs::write(&device, "apiVersion: meshwire.io/v1\nkind: EnsmDevice\nmetadata: {name: fw1}\nspec:\n  profile: meshwire-appliance\n  underlayAddress: 192.168.70.2\n  netconf: {host: 127.0.0.1, user: root, passwordEnv: NOPE, hostKey: {fingerprint: \"SHA256:x\"}}\n  endpoints: [{name: fw1, services: [firewall]}]\n").unwrap();
    let port = free_port().to_string();
    for (args, want) in [
        (
            vec![
                "controller",
                "--store",
                "memory",
                "--listen",
                "0.0.0.0:0",
                "--grpc-listen",
                "off",
            ],
            "--listen 0.0.0.0:0 is not a loopback address and no --tokens",
        ),
        (
            vec![
                "controller",
                "--store",
                "memory",
                "--grpc-listen",
                "0.0.0.0:0",
                "--listen",
                "127.0.0.1:0",
            ],
            "--grpc-listen 0.0.0.0:0 is not a loopback address and no --tokens",
        ),
        (
            vec![
                "controller",
                "--store",
                "memory",
                "--grpc-listen",
                "off",
                "--listen",
                "127.0.0.1:0",
                "--dataplane",
                "agents",
                "--agent-listen",
                "0.0.0.0:0",
            ],
            "--agent-listen 0.0.0.0:0 is not a loopback address and no --agent-tokens",
        ),
        (
            vec![
                "controller",
                "--store",
                "memory",
                "--grpc-listen",
                "off",
                "--listen",
                "127.0.0.1:0",
                "--dataplane",
                "kernel,agents",
            ],
            "--dataplane kernel,agents: both would wire kernel nodes",
        ),
        (
            vec![
                "ensm",
                "--device",
                device.to_str().unwrap(),
                "--listen",
                "0.0.0.0:7610",
                "--controller",
                &format!("http://127.0.0.1:{port}"),
            ],
            "MESHWIRE_ENSM_TOKEN is not set",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("MESHWIRE_ENSM_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
