//! Input: our NETCONF client against the real netconfd (yuma123) behind a real sshd, with the
//! ietf-interfaces YANG module loaded (netconfd validates every edit against it). Output: the
//! hello and framing, candidate + validate + commit, a refused edit with the device's own
//! error (tag, path, message) and nothing changed, a confirmed commit cancelled, and a wrong
//! host key refused with the fingerprint shown.
//! Needs root, netconfd and openssh-server; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::time::Duration;

use meshwire_labs::appliance::{self, Appliance};

use meshwire_ensm_adapters::netconf::framing::Framing;
use meshwire_ensm_adapters::netconf::{
    xml, Auth, Datastore, DefaultOperation, HostKey, NetconfError, Operation, Session, Target,
};

const IF_NS: &str = "urn:ietf:params:xml:ns:yang:ietf-interfaces";

fn device() -> Option<Appliance> {
    if !appliance::runnable("the NETCONF test") {
        return None;
    }
    Some(Appliance::start(&Appliance::ietf_interfaces()).unwrap())
}

fn target(dev: &Appliance, host_key: HostKey) -> Target {
    Target {
        device: "fw-1".into(),
        host: "127.0.0.1".into(),
        port: dev.port,
        user: "root".into(),
        auth: Auth::Key {
            path: dev.client_key(),
            passphrase: None,
        },
        host_key,
        timeout: Duration::from_secs(10),
    }
}

fn interface(name: &str, description: &str) -> String {
    format!("<interfaces xmlns=\"{IF_NS}\"><interface><name>{name}</name><description>{description}</description><type xmlns:ianaift=\"urn:ietf:params:xml:ns:yang:iana-if-type\">ianaift:l2vlan</type><enabled>true</enabled></interface></interfaces>")
}

#[tokio::test]
async fn dev_real_netconfd_candidate_commit_errors_confirmed_commit_and_host_key() {
    let Some(dev) = device() else { return };
    let s = Session::connect(&target(
        &dev,
        HostKey::Fingerprint(dev.fingerprint().unwrap()),
    ))
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
    let e = Session::connect(&target(
        &dev,
        HostKey::Fingerprint("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
    ))
    .await
    .err()
    .unwrap();
    match e {
        NetconfError::HostKey { fingerprint, .. } => {
            assert_eq!(fingerprint, dev.fingerprint().unwrap())
        }
        other => panic!("{other:?}"),
    }
    // known_hosts: not listed → refused; listed → accepted.
    let kh = dev.path("known_hosts");
    std::fs::write(&kh, "").unwrap();
    assert!(matches!(
        Session::connect(&target(&dev, HostKey::KnownHosts(kh.clone()))).await,
        Err(NetconfError::HostKey { .. })
    ));
    std::fs::write(&kh, dev.known_hosts_line().unwrap()).unwrap();
    let s = Session::connect(&target(&dev, HostKey::KnownHosts(kh)))
        .await
        .unwrap();
    s.close().await.unwrap();
}

/// Input: the shipped meshwire-appliance profile and YANG module, a VXLAN connection to the
/// device, and the real netconfd with that module. Output: the rendered config is accepted (the
/// device validates it against the model), carries Meshwire's mark, and the profile's undo
/// removes exactly it.
#[tokio::test]
async fn dev_real_netconfd_appliance_profile_applies_and_removes_a_tunnel() {
    use meshwire_ensm_adapters::profile::Profile;
    if !appliance::runnable("the appliance profile test") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev = Appliance::start(&[root.join("yang/meshwire-appliance@2026-11-23.yang")]).unwrap();
    let profile = Profile::load(&root.join("profiles/meshwire-appliance.yaml")).unwrap();
    let conn: meshwire_models::Connection = serde_json::from_value(serde_json::json!({
        "id": "5eed0001-aaaa-bbbb-cccc-000000000001",
        "network_service": "firewall",
        "network_service_endpoint_name": "fw-1",
        "payload": "IP",
        "client": {"node": "n1"},
        "interface": "nsm-1",
        "path": [{"name": "n1", "link": "l1"}, {"name": "fw-1"}],
        "hops": [{"from": "n1", "to": "fw-1", "mechanism": {"type": "vxlan", "vni": 5042, "src_ip": "192.168.1.1", "dst_ip": "192.168.1.9", "port": 4789}}],
        "placement": {},
        "ip_context": {"src_ip_addrs": ["172.20.0.1/31"], "dst_ip_addrs": ["172.20.0.0/31"]},
        "mtu": 1450,
        "state": "programming",
        "created_at_ms": 0, "updated_at_ms": 0, "generation": 0
    }))
    .unwrap();
    let (config, remove) = profile.render_for(&conn).unwrap();
    let s = Session::connect(&target(
        &dev,
        HostKey::Fingerprint(dev.fingerprint().unwrap()),
    ))
    .await
    .unwrap();
    // Apply as an eNSM does: lock, edit, confirmed commit, confirm, unlock.

    s.apply_config(DefaultOperation::Merge, &config, profile.confirm_timeout)
        .await
        .unwrap();
    let running = s.get_config(Datastore::Running, None).await.unwrap();
    assert!(
        running.contains("<vni>5042</vni>")
            && running.contains("meshwire:5eed0001-aaaa-bbbb-cccc-000000000001")
            && running.contains("<name>mw5eed0001</name>"),
        "{running}"
    );
    // A config the device refuses: its error comes back, nothing changes, the lock is released.
    let bad = config.replace("<vni>5042</vni>", "<vni>0</vni>");
    let e = s
        .apply_config(DefaultOperation::Merge, &bad, None)
        .await
        .unwrap_err();
    assert!(e.error_tag().is_some(), "{e}");
    assert!(s
        .get_config(Datastore::Running, None)
        .await
        .unwrap()
        .contains("<vni>5042</vni>"));
    // Undo: exactly that tunnel goes.
    s.apply_config(DefaultOperation::None, &remove, None)
        .await
        .unwrap();
    let running = s.get_config(Datastore::Running, None).await.unwrap();
    assert!(!running.contains("mw5eed0001"), "{running}");
    s.close().await.unwrap();
}
