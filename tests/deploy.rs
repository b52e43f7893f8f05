//! Input: the shipped Kubernetes manifests (`deploy/`), built with `kubectl kustomize` (offline,
//! client only). Output: every resource valid against the Kubernetes 1.33 API schemas
//! (`kubernetes-validate --strict`, from PyPI, which ships them), and every flag a Meshwire
//! container is started with is one its subcommand accepts. No cluster is involved.
//! Skipped without kubectl or kubernetes-validate unless MESHWIRE_REQUIRE_ALL is set.

use std::process::Command;

use serde::Deserialize;

const BIN: &str = env!("CARGO_BIN_EXE_meshwire");

fn have(cmd: &str) -> bool {
    let ok = Command::new(cmd)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
            "{cmd} is required (scripts/install-deps.sh, scripts/test.sh)"
        );
        eprintln!("SKIP: {cmd} not installed");
    }
    ok
}

fn kustomized() -> Option<String> {
    if !have("kubectl") {
        return None;
    }
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn nb_deploy_manifests_are_valid_kubernetes_1_33() {
    let Some(all) = kustomized() else { return };
    if !have("kubernetes-validate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, &all).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    let docs = all.split("\n---\n").filter(|d| d.contains("kind:")).count();
    assert_eq!(passed, docs, "every resource checked: {text}");
    for kind in [
        "DaemonSet",
        "Deployment",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
    ] {
        assert!(all.contains(&format!("kind: {kind}")), "{kind} shipped");
    }
}

#[test]
fn nb_deploy_flags_are_ones_meshwire_accepts() {
    let Some(all) = kustomized() else { return };
    let mut checked = 0;
    for doc in serde_yaml::Deserializer::from_str(&all) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        let spec = &v["spec"]["template"]["spec"];
        let containers = [&spec["containers"], &spec["initContainers"]];
        for c in containers
            .into_iter()
            .filter_map(|c| c.as_sequence())
            .flatten()
        {
            if !c["image"].as_str().unwrap_or("").contains("meshwire") {
                continue;
            }
            let args: Vec<&str> = c["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            let Some(sub) = args.first() else { continue };
            let help = Command::new(BIN).args([sub, "--help"]).output().unwrap();
            assert!(help.status.success(), "meshwire {sub} --help");
            let help = String::from_utf8_lossy(&help.stdout);
            for a in &args[1..] {
                let flag = a.split('=').next().unwrap();
                if flag.starts_with("--") {
                    assert!(
                        help.contains(&format!("{flag} "))
                            || help.contains(&format!("{flag}="))
                            || help.contains(&format!("{flag} <")),
                        "meshwire {sub} has no {flag} (from {})",
                        v["metadata"]["name"].as_str().unwrap_or("?")
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} flags found in deploy/");
}
