//! Input: the operator page (`/ui`) in headless Chromium, driven through WebDriver
//! (chromedriver), against a controller running a real lab (`meshwire lab up`) and against one
//! that requires tokens. Output: the page shows every node, device and link of the lab;
//! selecting a connection highlights exactly its path; an appliance's data link taken down turns
//! red and the connection heals on screen; without a token the page asks for one and shows no
//! data. Screenshots of the labs are written to `docs/ui/`.
//! Needs root, chromium and chromium-driver; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fantoccini::{Client, Locator};
use meshwire_labs::browser::{self, Chromedriver};
use serde_json::{json, Value};

mod support;
use support::lab::{root, Lab, BIN};

fn tools() -> bool {
    let ok = root() && browser::available();
    if !ok {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "the UI tests need root, chromium and chromium-driver"
        );
        eprintln!("SKIP: needs root, chromium and chromium-driver");
    }
    ok
}

async fn chromium() -> (Chromedriver, Client) {
    let d = Chromedriver::start().unwrap();
    let c = d.session(1400, 900).await.unwrap();
    (d, c)
}

async fn open(c: &Client, url: &str) -> String {
    browser::open_ui(c, url).await.expect("the page came up")
}

fn ids(v: Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn get(url: &str, path: &str) -> Value {
    let out = Command::new(BIN)
        .args(["get", path, "-o", "json"])
        .env("MESHWIRE_CONTROLLER", url.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the page must highlight for connection `c`: its path's vertices and links, and its
/// endpoint with the edge that attaches it.
fn path_ids(c: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for seg in c["path"].as_array().unwrap() {
        out.insert(format!("v:{}", seg["name"].as_str().unwrap()));
        if let Some(l) = seg["link"].as_str() {
            out.insert(format!("l:{l}"));
        }
    }
    let ep = c["network_service_endpoint_name"].as_str().unwrap();
    out.insert(format!("e:{ep}"));
    out.insert(format!("a:{ep}"));
    out
}

async fn select(c: &Client, id: &str) -> BTreeSet<String> {
    c.find(Locator::Css(&format!("#connections li[data-id='{id}']")))
        .await
        .expect("the connection is listed")
        .click()
        .await
        .unwrap();
    ids(c
        .execute(
            "return window.meshwire.cy.elements('.hl').map(e => e.id());",
            vec![],
        )
        .await
        .unwrap())
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ui");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Input: the ha-firewall lab (two firewall appliances, a worker node) and a connection from
/// its client. Output: the page's graph holds exactly the lab's nodes, devices and links; a click
/// on the connection highlights exactly its path; fw's data link taken down turns its link red
/// and moves the connection to the other appliance on screen within 2 s of the page hearing of
/// it (the figure is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_ui_shows_the_lab_highlights_a_path_and_a_link_failure_heals_on_screen() {
    if !tools() {
        return;
    }
    let lab = Lab::up("ha-firewall");
    let conn = lab.request(&[
        "firewall",
        "--client",
        "worker",
        "--name",
        "clab-ha-firewall-client",
    ]);
    let id = conn["id"].as_str().unwrap().to_string();
    let first = conn["network_service_endpoint_name"]
        .as_str()
        .unwrap()
        .to_string();
    let topo = get(&lab.url, "topology");
    let (_d, c) = chromium().await;
    assert_eq!(open(&c, &lab.url).await, "ready");

    // Every node, device and link of the lab, nothing else.
    let want_vertices: BTreeSet<String> = topo["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .chain(topo["devices"].as_object().unwrap().keys())
        .map(|n| format!("v:{n}"))
        .collect();
    let want_links: BTreeSet<String> = topo["links"]
        .as_object()
        .unwrap()
        .keys()
        .map(|n| format!("l:{n}"))
        .collect();
    let have = |sel: &str| format!("return window.meshwire.cy.elements('{sel}').map(e => e.id());");
    assert_eq!(
        ids(c.execute(&have("node.vertex"), vec![]).await.unwrap()),
        want_vertices
    );
    assert_eq!(
        ids(c.execute(&have("edge.link"), vec![]).await.unwrap()),
        want_links
    );

    // Selecting the connection highlights exactly its path.
    let lit = select(&c, &id).await;
    assert_eq!(lit, path_ids(&conn), "highlighted: {lit:?}");
    screenshot(&c, "ha-firewall").await;

    // The serving appliance's data link goes down: the link turns red, the connection heals onto
    // the other appliance, on screen.
    let link = topo["links"]
        .as_object()
        .unwrap()
        .values()
        .find(|l| {
            [&l["a"], &l["b"]]
                .iter()
                .any(|e| e["vertex"] == first.as_str() && e["interface"] == "eth1")
        })
        .and_then(|l| l["name"].as_str())
        .expect("the appliance's eth1 link")
        .to_string();
    // The page watches first (every update is checked), then the link is cut.
    let arm = r#"const [link, id, first] = [arguments[0], arguments[1], arguments[2]];
        const mw = window.meshwire;
        const w = { cut: performance.now(), red: null, healed: null, lit: null };
        window.__watch = w;
        const check = () => {
          if (w.red === null && mw.cy.getElementById("l:" + link).hasClass("down")) w.red = performance.now();
          const c = mw.connections.get(id);
          if (w.healed === null && w.red !== null && c && c.state === "up" && c.network_service_endpoint_name !== first) {
            w.healed = performance.now();
            w.lit = mw.cy.elements(".hl").map(e => e.id());
            removeEventListener("meshwire:update", check);
            dispatchEvent(new CustomEvent("test:healed"));
          }
        };
        addEventListener("meshwire:update", check);"#;
    c.execute(arm, vec![json!(link), json!(id), json!(first)])
        .await
        .unwrap();
    let t = Instant::now();
    assert!(Command::new("ip")
        .args([
            "-n",
            &format!("clab-ha-firewall-{first}"),
            "link",
            "set",
            "eth1",
            "down"
        ])
        .status()
        .unwrap()
        .success());
    let seen = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               if (window.__watch.healed !== null) return done(window.__watch);
               addEventListener("test:healed", () => done(window.__watch), { once: true });"#,
            vec![],
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the page did not show the heal within 30 s: {e}\n{}",
                lab.logs()
            )
        });
    let on_screen = t.elapsed();
    let healed = get(&lab.url, "connections");
    let healed = healed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_ne!(healed["network_service_endpoint_name"], first.as_str());
    // The selection follows the connection: the new path is what is lit now.
    assert_eq!(ids(seen["lit"].clone()), path_ids(&healed));
    let cut_ms = seen["cut"].as_f64().unwrap();
    let red = seen["red"].as_f64().unwrap() - cut_ms;
    let heal = seen["healed"].as_f64().unwrap() - cut_ms;
    eprintln!(
        "link {link} down -> red on the page after {red:.0} ms, healed onto {} on the page after {heal:.0} ms (cut to the test seeing it: {} ms)",
        healed["network_service_endpoint_name"],
        on_screen.as_millis()
    );
    assert!(heal < 2000.0, "healed on screen {heal:.0} ms after the cut");
    c.close().await.unwrap();
}

/// Input: the two-node lab on the page; n2's node agent stopped, then started again.
/// Output: n2's vertex is marked away, then lost when its lease ends, then neither once its
/// agent attaches again; the health line counts the agents away. All without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nb_ui_a_node_whose_agent_is_away_is_marked_until_it_returns() {
    if !tools() {
        return;
    }
    let lab = Lab::up("two-node");
    let (_d, c) = chromium().await;
    assert_eq!(open(&c, &lab.url).await, "ready");
    let classes = r#"const v = window.meshwire.cy.getElementById("v:n2");
        return [v.hasClass("away"), v.hasClass("lost"), document.getElementById("health").textContent];"#;
    let state = c.execute(classes, vec![]).await.unwrap();
    assert_eq!(
        (&state[0], &state[1]),
        (&json!(false), &json!(false)),
        "{state}"
    );
    // The page records every data-plane event for n2 it has taken (armed before anything
    // happens, so none is missed), and a waiter resolves once the one of `kind` is in.
    let arm = r#"window.__agent = new Set();
        addEventListener("meshwire:update", (e) => {
          const h = e.detail.event.happened;
          if (e.detail.kind === "data-plane" && h && h.node === "n2") {
            window.__agent.add(h.kind);
            dispatchEvent(new CustomEvent("test:agent"));
          }
        });"#;
    c.execute(arm, vec![]).await.unwrap();
    let wait = r#"const [kind, done] = [arguments[0], arguments[arguments.length - 1]];
        if (window.__agent.has(kind)) return done(true);
        addEventListener("test:agent", function f() {
          if (window.__agent.has(kind)) { removeEventListener("test:agent", f); done(true); }
        });"#;
    for (action, kind, away, lost) in [
        ("stop", "node-detached", true, false),
        ("", "node-lost", false, true),
        ("start", "node-attached", false, false),
    ] {
        if !action.is_empty() {
            let out = lab.meshwire(&["lab", "node-agent", "two-node", "n2", action]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c.execute_async(wait, vec![json!(kind)])
            .await
            .unwrap_or_else(|e| panic!("the page did not hear {kind}: {e}\n{}", lab.logs()));
        let state = c.execute(classes, vec![]).await.unwrap();
        assert_eq!(
            (&state[0], &state[1]),
            (&json!(away), &json!(lost)),
            "after {kind}: {state}"
        );
        let health = state[2].as_str().unwrap();
        let want = if away || lost {
            "node agents away: 1 of 2"
        } else {
            "node agents away: 0 of 2"
        };
        assert!(health.contains(want), "after {kind}: {health}");
    }
    c.close().await.unwrap();
}

/// Input: the vpn-gateway lab with a connection. Output: its screenshot, the connection lit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nb_ui_vpn_gateway_screenshot() {
    if !tools() {
        return;
    }
    let lab = Lab::up("vpn-gateway");
    let conn = lab.request(&[
        "secure-intranet-connectivity",
        "--client",
        "worker",
        "--name",
        "clab-vpn-gateway-client",
        "--label",
        "app=sarah",
    ]);
    let (_d, c) = chromium().await;
    assert_eq!(open(&c, &lab.url).await, "ready");
    let lit = select(&c, conn["id"].as_str().unwrap()).await;
    assert_eq!(lit, path_ids(&conn));
    screenshot(&c, "vpn-gateway").await;
    c.close().await.unwrap();
}

/// Input: a controller that requires tokens. Output: the page asks for one and has read no
/// data; a wrong token is refused on the page; a viewer's token shows the (empty) picture, and
/// nodes and a link an operator then applies appear on it without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nb_ui_without_a_token_asks_for_one_and_shows_nothing() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tokens.yaml");
    std::fs::write(
        &table,
        "tokens:\n  - {name: dash, role: viewer, tokenEnv: T_VIEW}\n  - {name: oss, role: operator, tokenEnv: T_OP}\n",
    )
    .unwrap();
    let port = meshwire_labs::ports::free_port().unwrap();
    let mut ctl = Command::new(BIN)
        .args([
            "controller",
            "--store",
            "memory",
            "--grpc-listen",
            "off",
            "--log",
            "warn",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tokens", table.to_str().unwrap()])
        .env("T_VIEW", "viewer-token-0123456789")
        .env("T_OP", "operator-token-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = ctl.stdout.take().unwrap();
    let ctl = Kill(ctl);
    let mut lines = std::io::BufReader::new(out).lines();
    assert!(
        lines
            .next()
            .and_then(Result::ok)
            .is_some_and(|l| l.starts_with("ready")),
        "the controller said it is ready"
    );
    let url = format!("http://127.0.0.1:{port}");
    let (_d, c) = chromium().await;
    assert_eq!(open(&c, &url).await, "login");
    let shown = c
        .execute(
            "return [document.getElementById('main').hidden, window.meshwire.connections.size, window.meshwire.topology];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!([true, 0, null]), "no data without a token");

    // A wrong token: still the prompt, saying so.
    let sign_in = |token: &'static str| {
        let c = &c;
        async move {
            c.find(Locator::Id("token"))
                .await
                .unwrap()
                .send_keys(token)
                .await
                .unwrap();
            c.execute_async(
                r#"const done = arguments[arguments.length - 1];
                   addEventListener("meshwire:ready", () => done("ready"), { once: true });
                   addEventListener("meshwire:login", () => done("login"), { once: true });
                   document.querySelector('#login button').click();"#,
                vec![],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(sign_in("wrong-token-0123456789").await, json!("login"));
    let said = c
        .find(Locator::Id("login-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(said.contains("refused"), "{said}");
    // The viewer's token: the picture (an empty controller).
    assert_eq!(sign_in("viewer-token-0123456789").await, json!("ready"));
    assert_eq!(
        c.execute("return document.getElementById('main').hidden;", vec![])
            .await
            .unwrap(),
        json!(false)
    );

    // An operator adds two nodes and a link: the page draws them when the events say so.
    c.execute(
        r#"window.__grown = new Promise((resolve) => {
             const f = () => { if (window.meshwire.cy.getElementById("l:a-b").nonempty()) {
               removeEventListener("meshwire:update", f); resolve(true); } };
             addEventListener("meshwire:update", f); });"#,
        vec![],
    )
    .await
    .unwrap();
    let manifest = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: a}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: b}\nspec: {forwarder: ovs}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: a-b}\nspec: {endpoints: [\"a:eth1\", \"b:eth1\"]}\n";
    let file = dir.path().join("ab.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out = Command::new(BIN)
        .args(["apply", "-f", file.to_str().unwrap()])
        .env("MESHWIRE_CONTROLLER", &url)
        .env("MESHWIRE_TOKEN", "operator-token-0123456789")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grown = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; window.__grown.then(() => done(window.meshwire.cy.elements('.vertex, .link').map(e => e.id()).sort()));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(grown, json!(["l:a-b", "v:a", "v:b"]));
    c.close().await.unwrap();
    drop(ctl);
}
