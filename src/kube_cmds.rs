//! The Kubernetes side of the binary: `meshwire webhook` (the mutating admission webhook) and
//! `meshwire nsc-init` (what the webhook injects: it requests the pod's network services over
//! the NSM gRPC API before the app starts).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use meshwire_models::nsurl::NsUrl;
use meshwire_northbound::grpc::pb::{
    connection as c, connectioncontext as cc, networkservice as ns,
};
use meshwire_northbound::k8s::webhook::SRIOV_TOKEN_LABEL;

#[derive(clap::Args)]
pub struct WebhookArgs {
    /// Where the webhook listens (HTTPS only: the API server requires it).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain the API server trusts (the caBundle of the webhook configuration).
    #[arg(long, value_name = "FILE")]
    tls_cert: std::path::PathBuf,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: std::path::PathBuf,
    /// The image of the injected init container (it runs `meshwire nsc-init`).
    #[arg(long, env = "MESHWIRE_IMAGE")]
    image: String,
    /// The controller's NSM gRPC address, as the injected container reaches it.
    #[arg(
        long,
        env = "MESHWIRE_GRPC",
        default_value = "meshwire.nsm-system:7601"
    )]
    controller_grpc: String,
    /// The Secret, in each annotated pod's namespace, holding `token` (a bearer token with role
    /// operator) and `ca.crt` (the CA of the controller's certificate); the init container
    /// mounts it, speaks TLS and sends the token. `none` for an open, plain-text controller.
    #[arg(long, env = "MESHWIRE_NSC_SECRET", default_value = "meshwire-nsc")]
    nsc_secret: String,
    #[arg(long, env = "MESHWIRE_LOG", default_value = "info")]
    log: String,
}

pub async fn webhook(args: WebhookArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_target(false)
        .init();
    let cfg = meshwire_northbound::tls::server_config(&args.tls_cert, &args.tls_key)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, image = %args.image, "admission webhook ready");
    let app =
        meshwire_northbound::k8s::webhook::router(meshwire_northbound::k8s::webhook::Injection {
            image: args.image,
            controller_grpc: args.controller_grpc,
            credentials: (args.nsc_secret != "none").then_some(args.nsc_secret),
        });
    meshwire_northbound::tls::serve(listener, app, cfg, crate::daemon::shutdown()).await;
    Ok(())
}

#[derive(clap::Args)]
pub struct NscInitArgs {
    /// The services to request, as NSM URLs (`kernel://vpn-gateway/nsm-1?app=foo`, several
    /// comma-separated): the pod's `networkservicemesh.io` annotation.
    #[arg(long, env = "NSM_NETWORK_SERVICES")]
    services: String,
    /// The controller's NSM gRPC address (HOST:PORT, http://HOST:PORT or https://HOST:PORT),
    /// or several highly available controllers' (comma-separated: each call goes to one that
    /// answers, the leader). With --ca-cert, a bare HOST:PORT is reached over TLS.
    #[arg(long, env = "MESHWIRE_GRPC", default_value = "127.0.0.1:7601")]
    grpc: String,
    /// The PEM CA that signed the controller's certificate: the API is reached over TLS.
    #[arg(long, env = "MESHWIRE_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// A file holding the bearer token (a mounted secret; read again before each retry, so a
    /// rotated or late secret is picked up). MESHWIRE_TOKEN is used when no file is given.
    #[arg(long, env = "MESHWIRE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The node this pod runs on (the `nodeName` label of the request).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The workload: the pod's name.
    #[arg(long, env = "POD_NAME")]
    pod: String,
    /// Give up after this long (the controller may still be starting).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The pod's resolver file. A connection with a DNS context (a vL3's) puts its resolver
    /// first there and its domains in the search list; the pod's own nameservers stay after
    /// it and answer everything the vL3's resolver refuses (names outside its zone). The
    /// runtime shares this file among the pod's containers. `off`: left as it is.
    #[arg(long, env = "MESHWIRE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
}

/// What a resolver file says with `servers` first and `domains` searched after the file's own
/// (idempotent: what is there already is not added again).
pub fn merge_resolv(original: &str, servers: &[String], domains: &[String]) -> String {
    let has_server = |s: &str| {
        original.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("nameserver") && w.next() == Some(s)
        })
    };
    let mut out = String::new();
    let new: Vec<&String> = servers.iter().filter(|s| !has_server(s)).collect();
    if !new.is_empty() {
        out.push_str(
            "# meshwire nsc-init: the network service's resolver first; the pod's own after it\n",
        );
    }
    for s in new {
        out.push_str(&format!("nameserver {s}\n"));
    }
    // The resolver reads the last `search` line: that one gets the domains.
    let last_search = original
        .lines()
        .enumerate()
        .filter(|(_, l)| l.split_whitespace().next() == Some("search"))
        .map(|(i, _)| i)
        .last();
    let mut searched = false;
    for (i, l) in original.lines().enumerate() {
        let mut w = l.split_whitespace();
        if w.next() == Some("search") && Some(i) == last_search {
            let mut all: Vec<&str> = w.collect();
            for d in domains {
                if !all.contains(&d.as_str()) {
                    all.push(d);
                }
            }
            out.push_str(&format!("search {}\n", all.join(" ")));
            searched = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !searched && !domains.is_empty() {
        out.push_str(&format!("search {}\n", domains.join(" ")));
    }
    out
}

/// Puts a connection's DNS context into the resolver file at `path`.
fn set_resolver(path: &str, dns: &cc::DnsContext) -> anyhow::Result<()> {
    let servers: Vec<String> = dns
        .configs
        .iter()
        .flat_map(|c| c.dns_server_ips.iter().cloned())
        .collect();
    let domains: Vec<String> = dns
        .configs
        .iter()
        .flat_map(|c| c.search_domains.iter().cloned())
        .collect();
    if servers.is_empty() {
        return Ok(());
    }
    let original = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("--resolv-conf {path}")),
    };
    let merged = merge_resolv(&original, &servers, &domains);
    if merged != original {
        // In place: the file is a bind mount, which a rename would not reach.
        std::fs::write(path, merged).with_context(|| format!("--resolv-conf {path}"))?;
    }
    Ok(())
}

/// The bearer token: the token file's (read now), else MESHWIRE_TOKEN, else none.
fn token(args: &NscInitArgs) -> anyhow::Result<Option<String>> {
    match &args.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
            // Not mounted yet: the request goes without one and is retried.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("--token-file {}", p.display())),
        },
        None => Ok(std::env::var("MESHWIRE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())),
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// One NSM request for `u`, in upstream's shape.
pub fn request_for(
    u: &NsUrl,
    node: &str,
    pod: &str,
    token: Option<&str>,
) -> ns::NetworkServiceRequest {
    let mut labels: HashMap<String, String> = u
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != SRIOV_TOKEN_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("nodeName".into(), node.to_string());
    // Upstream's clients name themselves so (a vL3 names its members by it).
    labels
        .entry("podName".into())
        .or_insert_with(|| pod.to_string());
    let mut parameters = HashMap::new();
    if let Some(i) = &u.interface {
        parameters.insert("name".to_string(), i.clone());
    }
    // Upstream's SR-IOV client: the token goes on the mechanism as `tokenID`.
    if let Some(t) = token {
        parameters.insert("tokenID".to_string(), t.to_string());
    }
    ns::NetworkServiceRequest {
        connection: Some(c::Connection {
            network_service: u.service.clone(),
            labels,
            path: Some(c::Path {
                index: 0,
                path_segments: vec![c::PathSegment {
                    name: pod.to_string(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        mechanism_preferences: vec![c::Mechanism {
            cls: "LOCAL".into(),
            r#type: u.mechanism.as_str().to_uppercase(),
            parameters,
        }],
    }
}

/// The SR-IOV tokens the kubelet gave this container, by pool (`NSM_SRIOV_TOKENS_<pool>=a,b`).
pub fn sriov_tokens(env: impl Iterator<Item = (String, String)>) -> BTreeMap<String, Vec<String>> {
    env.filter_map(|(k, v)| {
        let pool = k.strip_prefix("NSM_SRIOV_TOKENS_")?.to_string();
        let ids: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Some((pool, ids))
    })
    .collect()
}

/// One token per URL naming a pool (`?sriovToken=<pool>`), each token used once.
pub fn tokens_for(
    urls: &[NsUrl],
    mut tokens: BTreeMap<String, Vec<String>>,
) -> anyhow::Result<Vec<Option<String>>> {
    urls.iter()
        .map(|u| match u.labels.get(SRIOV_TOKEN_LABEL) {
            None => Ok(None),
            Some(pool) => {
                let ids = tokens.get_mut(pool).filter(|ids| !ids.is_empty()).with_context(|| {
                    format!(
                        "{}: sriovToken={pool}, but this container has no (more) NSM_SRIOV_TOKENS_{pool} from the kubelet (does it request the resource {pool}?)",
                        u.service
                    )
                })?;
                Ok(Some(ids.remove(0)))
            }
        })
        .collect()
}

pub async fn nsc_init(args: NscInitArgs) -> anyhow::Result<()> {
    let urls = NsUrl::parse_list(&args.services)
        .map_err(|e| anyhow::anyhow!("NSM_NETWORK_SERVICES: {e}"))?;
    let tokens = tokens_for(&urls, sriov_tokens(std::env::vars()))?;
    // Several controllers (highly available): a balanced channel sends each call to one that
    // answers; standbys bind no gRPC port, so calls reach the leader.
    let mut endpoints = Vec::new();
    let mut targets = Vec::new();
    for g in args
        .grpc
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        let tls = args.ca_cert.is_some() || g.starts_with("https://");
        let target = if g.contains("://") {
            g.to_string()
        } else if tls {
            format!("https://{g}")
        } else {
            format!("http://{g}")
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(target.clone())
            .context("MESHWIRE_GRPC")?
            .connect_timeout(Duration::from_secs(3));
        if tls {
            let ca = args.ca_cert.as_ref().with_context(|| {
                format!("{target}: TLS needs the CA of the controller's certificate (--ca-cert or MESHWIRE_CA_CERT)")
            })?;
            let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
            let cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            endpoint = endpoint
                .tls_config(cfg)
                .with_context(|| format!("TLS toward {target}"))?;
        }
        endpoints.push(endpoint);
        targets.push(target);
    }
    anyhow::ensure!(
        !endpoints.is_empty(),
        "MESHWIRE_GRPC: no controller address"
    );
    let target = targets.join(",");
    let deadline = Instant::now() + args.timeout;
    let channel = if endpoints.len() > 1 {
        tonic::transport::Channel::balance_list(endpoints.into_iter())
    } else {
        let endpoint = endpoints.remove(0);
        loop {
            match endpoint.connect().await {
                Ok(ch) => break ch,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for the controller at {target}: {}", chain(&e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => anyhow::bail!(
                    "controller at {target} unreachable for {:?}: {}",
                    args.timeout,
                    chain(&e)
                ),
            }
        }
    };
    let mut nsc = ns::network_service_client::NetworkServiceClient::new(channel);
    for (u, sriov) in urls.iter().zip(&tokens) {
        let conn = loop {
            let mut req =
                tonic::Request::new(request_for(u, &args.node, &args.pod, sriov.as_deref()));
            if let Some(token) = token(&args)? {
                let v = format!("Bearer {token}")
                    .parse()
                    .context("the token is not a valid header value")?;
                req.metadata_mut().insert("authorization", v);
            }
            match nsc.request(req).await {
                Ok(c) => break c.into_inner(),
                // Transient: no endpoint yet, the controller busy, or a token secret not yet
                // mounted or just rotated; retried until the deadline.
                Err(s)
                    if Instant::now() < deadline
                        && matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::ResourceExhausted
                                | tonic::Code::Aborted
                                | tonic::Code::Unauthenticated
                        ) =>
                {
                    eprintln!("{}: {} (retrying)", u.service, s.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(s) => anyhow::bail!("{}: {}", u.service, s.message()),
            }
        };
        if let Some(dns) = conn.context.as_ref().and_then(|c| c.dns_context.as_ref()) {
            if args.resolv_conf != "off" {
                // The connection is up: a resolver file that cannot be written (a read-only
                // one) costs the names, not the connection.
                if let Err(e) = set_resolver(&args.resolv_conf, dns) {
                    eprintln!(
                        "{}: the connection is up, but its resolver was not set: {e:#}",
                        u.service
                    );
                }
            }
        }
        let addrs = conn
            .context
            .as_ref()
            .and_then(|c| c.ip_context.as_ref())
            .map(|ip| ip.src_ip_addrs.join(" "))
            .unwrap_or_default();
        println!(
            "{} {} via {} ({})",
            u.service,
            u.interface.as_deref().unwrap_or("nsm-1"),
            conn.network_service_endpoint_name,
            addrs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vl3_resolver_goes_first_and_the_pods_own_stays() {
        let pod = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";
        let merged = merge_resolv(pod, &["10.90.0.1".into()], &["db-replication".into()]);
        let lines: Vec<&str> = merged.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "nameserver 10.90.0.1",
                "search default.svc.cluster.local svc.cluster.local cluster.local db-replication",
                "nameserver 10.96.0.10",
                "options ndots:5"
            ]
        );
        assert_eq!(
            merge_resolv(&merged, &["10.90.0.1".into()], &["db-replication".into()]),
            merged,
            "applied twice: the same"
        );
        assert_eq!(
            merge_resolv("", &["10.90.0.1".into()], &["z".into()])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["nameserver 10.90.0.1", "search z"]
        );
        // The resolver reads the last search line: that one is extended.
        let two = merge_resolv("search a\nsearch b\n", &["10.90.0.1".into()], &["z".into()]);
        assert!(two.contains("search a\nsearch b z\n"), "{two}");
    }

    #[test]
    fn sriov_urls_take_one_token_each_from_the_kubelets_variables() {
        let urls = NsUrl::parse_list(
            "kernel://a/nsm-1?sriovToken=worker.domain/10G&app=x,kernel://b/nsm-2?sriovToken=worker.domain/10G,kernel://c",
        )
        .unwrap();
        let env = [
            (
                "NSM_SRIOV_TOKENS_worker.domain/10G".to_string(),
                "sriov-1,sriov-2".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let tokens = tokens_for(&urls, sriov_tokens(env.into_iter())).unwrap();
        assert_eq!(
            tokens,
            [
                Some("sriov-1".to_string()),
                Some("sriov-2".to_string()),
                None
            ]
        );
        let r = request_for(&urls[0], "n1", "pod", tokens[0].as_deref());
        assert_eq!(r.mechanism_preferences[0].parameters["tokenID"], "sriov-1");
        let labels = &r.connection.as_ref().unwrap().labels;
        assert!(!labels.contains_key("sriovToken"));
        assert_eq!(labels["app"], "x");
        // More URLs than tokens: said clearly.
        let e = tokens_for(&urls, sriov_tokens(std::iter::empty())).unwrap_err();
        assert!(
            e.to_string().contains("NSM_SRIOV_TOKENS_worker.domain/10G"),
            "{e}"
        );
    }
}
