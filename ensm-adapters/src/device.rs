//! The device file an eNSM is started with: which appliance, how to reach it (NETCONF over SSH,
//! SNMP), which profile configures it, and the endpoints it offers. Checked at load time; every
//! error names the file and the field.
//!
//! ```yaml
//! apiVersion: meshwire.io/v1
//! kind: EnsmDevice
//! metadata: {name: fw1}
//! spec:
//!   profile: meshwire-appliance          # a profile name (looked up in the profile dirs) or a path
//!   underlayAddress: 192.168.70.2        # where tunnels terminate on the device
//!   netconf:
//!     host: 100.127.5.10
//!     port: 830
//!     user: admin
//!     keyFile: /etc/meshwire/keys/fw1    # or passwordEnv: FW1_PASSWORD / passwordFile: ...
//!     hostKey: {fingerprint: "SHA256:..."}   # or {knownHosts: /etc/meshwire/known_hosts}
//!   snmp:                                # optional: health polling and linkDown/linkUp traps
//!     address: 100.127.5.10:161
//!     community: public                  # or v3: {user, authPasswordEnv, privPasswordEnv}
//!     interfaces: [eth1]                 # data interfaces (ifDescr) the endpoints depend on
//!     pollInterval: 1s
//!     trapListen: 100.127.5.1:16210      # optional
//!   endpoints:
//!     - name: fw1
//!       services: [firewall]
//!       labels: {app: firewall}
//!       capacity: 16
//!       ipamPrefix: 172.16.20.0/24
//!       routes: [10.70.0.0/16]
//!       next: {service: secure-intranet-connectivity, labels: {app: firewall}}   # optional:
//!                                        # a chain element, passing each connection on
//! ```
//! Credentials are read from the environment or files named here, never stored in the
//! controller, never logged and never returned by any API.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use meshwire_models::{Labels, MechanismKind};
use serde::Deserialize;

use crate::netconf::client::{Auth, HostKey, Target};
use crate::snmp::{SnmpAuth, SnmpTarget};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device file {file}: {reason}")]
pub struct DeviceFileError {
    pub file: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    profile: String,
    underlay_address: IpAddr,
    #[serde(default)]
    address: Option<IpAddr>,
    #[serde(default)]
    labels: Labels,
    netconf: RawNetconf,
    #[serde(default)]
    snmp: Option<RawSnmp>,
    endpoints: Vec<RawEndpoint>,
    /// Restrict the mechanisms offered to these (default: every one the profile has).
    #[serde(default)]
    mechanisms: Vec<MechanismKind>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNetconf {
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    user: String,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    host_key: RawHostKey,
    #[serde(default, with = "humantime_serde_opt")]
    timeout: Option<Duration>,
}

fn default_port() -> u16 {
    830
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHostKey {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    known_hosts: Option<PathBuf>,
    /// Labs only, and only when written out explicitly.
    #[serde(default)]
    accept_any: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSnmp {
    address: SocketAddr,
    #[serde(default)]
    community: Option<String>,
    #[serde(default)]
    v3: Option<RawV3>,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default, with = "humantime_serde_opt")]
    poll_interval: Option<Duration>,
    #[serde(default)]
    trap_listen: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawV3 {
    user: String,
    auth_password_env: String,
    priv_password_env: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    services: Vec<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default)]
    ipam_prefix: Option<IpNet>,
    #[serde(default)]
    routes: Vec<IpNet>,
    /// The device interfaces (ifDescr) this endpoint depends on; when one goes down the
    /// endpoint is withdrawn. Default: all of `snmp.interfaces`.
    #[serde(default)]
    interfaces: Option<Vec<String>>,
    #[serde(default)]
    next: Option<NextHop>,
}

/// A chain element: for each connection it accepts, the controller requests `service` onward
/// (the device as the client, with `labels`) and the device joins the two (the profile's
/// `crossConnect`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextHop {
    pub service: String,
    #[serde(default)]
    pub labels: Labels,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One endpoint the device offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    pub services: Vec<String>,
    pub labels: Labels,
    pub capacity: Option<u32>,
    pub ipam_prefix: Option<IpNet>,
    pub routes: Vec<IpNet>,
    pub interfaces: Vec<String>,
    /// Pass connections on along a service chain.
    pub next: Option<NextHop>,
}

/// SNMP monitoring of the device.
#[derive(Clone)]
pub struct SnmpSpec {
    pub target: SnmpTarget,
    pub interfaces: Vec<String>,
    pub poll_interval: Duration,
    pub trap_listen: Option<SocketAddr>,
    /// v2c community accepted on traps (v3 traps are not accepted).
    pub trap_community: Option<String>,
}

impl std::fmt::Debug for SnmpSpec {
    // The trap community is a credential: only whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnmpSpec")
            .field("target", &self.target)
            .field("interfaces", &self.interfaces)
            .field("poll_interval", &self.poll_interval)
            .field("trap_listen", &self.trap_listen)
            .field(
                "trap_community",
                &self.trap_community.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// A loaded, checked device file.
#[derive(Clone)]
pub struct DeviceFile {
    pub file: String,
    pub name: String,
    pub profile: String,
    pub underlay_address: IpAddr,
    pub address: Option<IpAddr>,
    pub labels: Labels,
    pub netconf: Target,
    pub snmp: Option<SnmpSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub mechanisms: Vec<MechanismKind>,
}

impl std::fmt::Debug for DeviceFile {
    // Credentials stay out of logs: only where and who.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFile")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .field(
                "netconf",
                &format!(
                    "{}@{}:{}",
                    self.netconf.user, self.netconf.host, self.netconf.port
                ),
            )
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl DeviceFile {
    pub fn load(path: &Path) -> Result<DeviceFile, DeviceFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeviceFileError {
            file: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        DeviceFile::parse(path, &text, &|k| std::env::var(k).ok())
    }

    /// Parses `text`; relative paths in it are taken from `path`'s directory; `env` resolves
    /// `*Env` secrets.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DeviceFile, DeviceFileError> {
        let file = path.display().to_string();
        let err = |reason: String| DeviceFileError {
            file: file.clone(),
            reason,
        };
        let (name, s): (String, RawSpec) = crate::doc::parse(text, "EnsmDevice").map_err(err)?;
        if !valid_name(&name) {
            return Err(err(format!(
                "metadata.name {name:?}: letters, digits, '-', '_', '.' (at most 63)"
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let n = s.netconf;
        let secret_env = |field: &str, var: &str| {
            env(var).ok_or_else(|| err(format!("{field}: environment variable {var} is not set")))
        };
        let auth = match (&n.key_file, &n.password_env, &n.password_file) {
            (Some(k), None, None) => Auth::Key {
                path: rel(k),
                passphrase: None,
            },
            (None, Some(v), None) => Auth::Password(secret_env("netconf.passwordEnv", v)?),
            (None, None, Some(f)) => Auth::Password(
                std::fs::read_to_string(rel(f))
                    .map_err(|e| err(format!("netconf.passwordFile {}: {e}", f.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            _ => {
                return Err(err(
                    "netconf: give exactly one of keyFile, passwordEnv, passwordFile".into(),
                ))
            }
        };
        let host_key = match (n.host_key.fingerprint, n.host_key.known_hosts, n.host_key.accept_any) {
            (Some(f), None, false) => {
                if !f.starts_with("SHA256:") {
                    return Err(err(format!(
                        "netconf.hostKey.fingerprint {f:?}: expected SHA256:… as `ssh-keygen -lf` prints it"
                    )));
                }
                HostKey::Fingerprint(f)
            }
            (None, Some(k), false) => HostKey::KnownHosts(rel(&k)),
            (None, None, true) => HostKey::AcceptAny,
            _ => {
                return Err(err(
                    "netconf.hostKey: give exactly one of fingerprint, knownHosts (acceptAny: true only in labs)".into(),
                ))
            }
        };
        let netconf = Target {
            device: name.clone(),
            host: n.host,
            port: n.port,
            user: n.user,
            auth,
            host_key,
            timeout: n.timeout.unwrap_or(Duration::from_secs(10)),
        };
        let snmp = match s.snmp {
            None => None,
            Some(sn) => {
                let auth = match (&sn.community, &sn.v3) {
                    (Some(c), None) => SnmpAuth::V2c {
                        community: c.clone(),
                    },
                    (None, Some(v3)) => SnmpAuth::V3 {
                        user: v3.user.clone(),
                        auth_password: secret_env(
                            "snmp.v3.authPasswordEnv",
                            &v3.auth_password_env,
                        )?,
                        priv_password: secret_env(
                            "snmp.v3.privPasswordEnv",
                            &v3.priv_password_env,
                        )?,
                    },
                    _ => return Err(err("snmp: give exactly one of community, v3".into())),
                };
                let poll_interval = sn.poll_interval.unwrap_or(Duration::from_secs(2));
                if poll_interval < Duration::from_millis(100) {
                    return Err(err("snmp.pollInterval: at least 100ms".into()));
                }
                Some(SnmpSpec {
                    target: SnmpTarget {
                        device: name.clone(),
                        addr: sn.address,
                        auth,
                        timeout: Duration::from_secs(1),
                    },
                    interfaces: sn.interfaces,
                    poll_interval,
                    trap_listen: sn.trap_listen,
                    trap_community: sn.community,
                })
            }
        };
        if s.endpoints.is_empty() {
            return Err(err(
                "spec.endpoints: a device offers at least one endpoint".into()
            ));
        }
        let known: Vec<String> = snmp
            .as_ref()
            .map(|s| s.interfaces.clone())
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        let mut seen = BTreeMap::new();
        for (i, e) in s.endpoints.into_iter().enumerate() {
            let at = format!("spec.endpoints[{i}]");
            if !valid_name(&e.name) {
                return Err(err(format!(
                    "{at}.name {:?}: letters, digits, '-', '_', '.'",
                    e.name
                )));
            }
            if seen.insert(e.name.clone(), ()).is_some() {
                return Err(err(format!("{at}.name {:?}: listed twice", e.name)));
            }
            if e.services.is_empty() {
                return Err(err(format!("{at}.services: at least one service")));
            }
            if e.capacity == Some(0) {
                return Err(err(format!(
                    "{at}.capacity: 0 would never accept a connection (omit it for unlimited)"
                )));
            }
            let interfaces = match e.interfaces {
                Some(list) => {
                    if let Some(x) = list.iter().find(|x| !known.contains(x)) {
                        return Err(err(format!(
                            "{at}.interfaces: {x} is not among snmp.interfaces {known:?}"
                        )));
                    }
                    list
                }
                None => known.clone(),
            };
            endpoints.push(EndpointSpec {
                name: e.name,
                services: e.services,
                labels: e.labels,
                capacity: e.capacity,
                ipam_prefix: e.ipam_prefix,
                routes: e.routes,
                interfaces,
                next: e.next,
            });
        }
        Ok(DeviceFile {
            file,
            name,
            profile: s.profile,
            underlay_address: s.underlay_address,
            address: s.address,
            labels: s.labels,
            netconf,
            snmp,
            endpoints,
            mechanisms: s.mechanisms,
        })
    }

    /// The profile file: a path as given, else `<name>.yaml` in the first of `dirs` that has it.
    pub fn profile_path(&self, dirs: &[PathBuf]) -> Result<PathBuf, DeviceFileError> {
        let p = Path::new(&self.profile);
        if self.profile.contains('/') || self.profile.ends_with(".yaml") {
            let base = Path::new(&self.file).parent().unwrap_or(Path::new("."));
            return Ok(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            });
        }
        dirs.iter()
            .map(|d| d.join(format!("{}.yaml", self.profile)))
            .find(|f| f.exists())
            .ok_or_else(|| DeviceFileError {
                file: self.file.clone(),
                reason: format!(
                    "spec.profile {}: no {}.yaml in {}",
                    self.profile,
                    self.profile,
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: meshwire.io/v1\nkind: EnsmDevice\nmetadata: {name: fw1}\nspec:\n  profile: meshwire-appliance\n  underlayAddress: 192.168.70.2\n  netconf:\n    host: 10.0.0.1\n    user: admin\n    passwordEnv: FW1_PW\n    hostKey: {fingerprint: \"SHA256:abc\"}\n  snmp:\n    address: 10.0.0.1:161\n    community: public\n    interfaces: [eth1, eth2]\n  endpoints:\n    - name: fw1\n      services: [firewall]\n      capacity: 4\n      interfaces: [eth1]\n";

    fn parse(t: &str) -> Result<DeviceFile, String> {
        DeviceFile::parse(Path::new("/etc/dev/fw1.yaml"), t, &|k| {
            (k == "FW1_PW").then(|| "s3cret".to_string())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn good_file_loads_and_keeps_secrets_out_of_debug() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.netconf.port, 830);
        assert!(matches!(&d.netconf.auth, Auth::Password(p) if p == "s3cret"));
        assert_eq!(d.endpoints[0].interfaces, vec!["eth1".to_string()]);
        assert!(!format!("{d:?}").contains("s3cret"));
        // The SNMP community (used for polls and accepted on traps) is a credential too.
        let snmp = d.snmp.as_ref().unwrap();
        assert_eq!(snmp.trap_community.as_deref(), Some("public"));
        assert!(!format!("{snmp:?}").contains("public"), "{snmp:?}");
    }

    #[test]
    fn bad_files_name_the_field() {
        for (from, to, want) in [
            ("kind: EnsmDevice", "kind: Device", "kind EnsmDevice"),
            (
                "passwordEnv: FW1_PW",
                "passwordEnv: NOPE",
                "NOPE is not set",
            ),
            (
                "hostKey: {fingerprint: \"SHA256:abc\"}",
                "hostKey: {}",
                "netconf.hostKey",
            ),
            (
                "hostKey: {fingerprint: \"SHA256:abc\"}",
                "hostKey: {fingerprint: abc}",
                "SHA256:",
            ),
            (
                "      interfaces: [eth1]",
                "      interfaces: [eth9]",
                "eth9 is not among",
            ),
            ("      capacity: 4", "      capacity: 0", "capacity"),
            ("name: fw1}", "name: \"fw 1\"}", "metadata.name"),
            (
                "    passwordEnv: FW1_PW\n",
                "    passwordEnv: FW1_PW\n    keyFile: k\n",
                "exactly one of keyFile",
            ),
        ] {
            let t = GOOD.replace(from, to);
            assert_ne!(t, GOOD, "{from}");
            let e = parse(&t).unwrap_err();
            assert!(e.contains(want), "{from} -> {e}");
            assert!(e.starts_with("device file /etc/dev/fw1.yaml"), "{e}");
        }
    }
}
