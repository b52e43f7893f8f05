//! Highly available controllers on etcd: every `meshwire controller` on one etcd campaigns;
//! one leads, the others stand by. A standby serves the REST API's reads from its replica of
//! the store (`controller::replica`, kept from the store's watch), with the same tokens, and
//! answers every write (and the event stream) `503 not-leader` naming the leader, where the
//! clients go; it binds nothing else, so agents and NSM clients move on to the next
//! controller of their list. The leader's store is fenced (each write compares the leader key),
//! its data plane calls are guarded by the lease ([`meshwire_controller::driver::LeaderGuard`]),
//! and when its leadership ends it starts over as a standby: it executes itself again, with
//! the same arguments, so nothing of the old leader's memory survives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use meshwire_controller::store::election::{Candidate, Election, Leadership};
use meshwire_controller::store::etcd_store::EtcdStore;
use meshwire_controller::store::Store;
use tokio::sync::watch;

#[derive(clap::Args, Debug, Clone)]
pub struct HaArgs {
    /// With an etcd store: the URL this controller's REST API is reached at by clients and the
    /// other controllers (standbys name the leader's to clients). Default: http(s)://--listen.
    #[arg(long, env = "MESHWIRE_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// With an etcd store: the leader's lease. A leader that stops renewing it (killed, paused,
    /// cut off) is replaced once it runs out. etcd rounds it up to its own minimum (2 s with
    /// etcd's default election timeout).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
}

/// A name for this process as a candidate: host, pid and start time.
fn candidate_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into());
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{host}-{}-{:x}", std::process::id(), t & 0xffff_ffff)
}

/// Stands by until this controller leads; returns the leader's fenced store and the leadership.
pub async fn lead(
    ha: &HaArgs,
    etcd: EtcdStore,
    listen: SocketAddr,
    tls: Option<Arc<meshwire_northbound::tls::ServerConfig>>,
    agents: Option<String>,
    tokens: Option<meshwire_northbound::auth::Tokens>,
    config: meshwire_controller::Config,
) -> anyhow::Result<(Arc<dyn Store>, Arc<Leadership>, Front)> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let me = Candidate {
        id: candidate_id(),
        api: ha
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{listen}")),
        agents,
    };
    let election = Election::new(etcd.client(), etcd.describe(), ha.leader_lease, me);
    tracing::info!(id = %election.me().id, api = %election.me().api, lease = ?ha.leader_lease, "campaigning for leadership");
    let (stop_tx, stop_rx) = watch::channel(false);
    // One server for the standby and then the leader (see [`Front`]).
    let std_listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("listener {listen}"))?;
    // The replica is read in the background (again and again while etcd cannot answer, as
    // without quorum): the standby answers meanwhile, reads with 503 until it is ready.
    let reads: Arc<std::sync::OnceLock<axum::Router>> = Arc::default();
    let replica = {
        let (reads, store, tokens, leader) = (
            reads.clone(),
            Arc::new(etcd.reader()) as Arc<dyn Store>,
            tokens.clone(),
            election.leader(),
        );
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match meshwire_controller::Controller::replica(store.clone(), config.clone()).await
                {
                    Ok((ctl, follow)) => {
                        let _ = reads.set(read_router(ctl, tokens, leader));
                        return follow;
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = meshwire_controller::backoff::Backoff::RECONNECT
                            .delay(failures, u64::from(std::process::id()));
                        tracing::warn!(error = %e, retry_in = ?wait, "the standby cannot read the store yet");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    };
    let (phase, phase_rx) = watch::channel(Phase::Standby);
    let standby = {
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .with_context(|| format!("listener {listen}"))?;
        crate::daemon::announce_ready(&listen.to_string());
        let app = front_router(phase_rx, standby_router(election.leader(), reads));
        let mut stop = stop_rx.clone();
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::spawn(async move {
            match tls {
                Some(cfg) => meshwire_northbound::tls::serve(listener, app, cfg, stopping).await,
                None => {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(stopping)
                        .await
                    {
                        tracing::error!(error = %e, "standby API stopped");
                    }
                }
            }
        })
    };
    let campaign = election.campaign();
    let leadership = tokio::select! {
        l = campaign => l.context("campaigning for leadership")?,
        _ = crate::daemon::shutdown() => {
            tracing::info!("shutting down as a standby");
            std::process::exit(0);
        }
    };
    // Requests wait from here until the leader's API is ready (none is dropped or refused).
    phase.send_replace(Phase::Starting);
    // The replica (and the task keeping it) goes.
    replica.abort();
    drop(replica);
    let store: Arc<dyn Store> = Arc::new(etcd.fenced(leadership.fence()));
    let front = Front {
        phase,
        stop: stop_tx,
        task: standby,
    };
    Ok((store, Arc::new(leadership), front))
}

/// Which API the front door serves: the standby's, none yet (leadership won, the leader's
/// API is being built: requests wait), or the leader's.
#[derive(Clone)]
enum Phase {
    Standby,
    Starting,
    Leader(axum::Router),
}

/// The one server on the controller's REST address, from standby to leader: at the handover
/// no connection is closed and no request is refused; the API behind it changes.
pub struct Front {
    phase: watch::Sender<Phase>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Serves the leader's API from now on, until `stopping` completes; then stops gracefully.
    pub async fn lead(self, app: axum::Router, stopping: impl std::future::Future<Output = ()>) {
        self.phase.send_replace(Phase::Leader(app));
        stopping.await;
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How long a request waits for the leader's API after leadership is won.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

fn front_router(phase: watch::Receiver<Phase>, standby: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (mut phase, standby) = (phase.clone(), standby.clone());
        async move {
            let ready = tokio::time::timeout(
                HANDOVER_WAIT,
                phase.wait_for(|p| !matches!(p, Phase::Starting)),
            )
            .await
            .map(|r| r.map(|p| p.clone()));
            let app = match ready {
                Ok(Ok(Phase::Leader(app))) => app,
                Ok(Ok(_)) => standby,
                _ => return not_leader(None),
            };
            match app.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    })
}

/// When leadership ends: say so, and start over as a standby (this process, executed again).
pub fn follow(leadership: Arc<Leadership>) {
    tokio::spawn(async move {
        let why = leadership.lost().await;
        if why == meshwire_controller::store::election::RESIGNED {
            // This process is shutting down and handed leadership over: nothing to start.
            return;
        }
        tracing::error!(reason = %why, "no longer the leader: the reconcile loop and the data plane calls stop now; starting again as a standby");
        restart_as_standby();
    });
}

fn restart_as_standby() -> ! {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe();
    let err = match exe {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    // exec only returns on failure: a supervisor restarts us.
    tracing::error!(error = %err, "could not start again as a standby; exiting");
    std::process::exit(75)
}

/// A standby's reads: the REST API over its replica, with the leader's tokens; anything but
/// `GET`/`HEAD` goes to the leader.
fn read_router(
    replica: meshwire_controller::Controller,
    tokens: Option<meshwire_northbound::auth::Tokens>,
    leader: watch::Receiver<Option<Candidate>>,
) -> axum::Router {
    meshwire_northbound::router_with(
        replica,
        meshwire_northbound::Options {
            tokens,
            ..Default::default()
        },
    )
    .layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let leader = at(&leader);
            async move {
                match *req.method() {
                    axum::http::Method::GET | axum::http::Method::HEAD => next.run(req).await,
                    _ => not_leader(leader),
                }
            }
        },
    ))
}

fn at(l: &watch::Receiver<Option<Candidate>>) -> Option<String> {
    l.borrow().as_ref().map(|c| c.api.clone())
}

/// What a standby answers: probes; reads from its replica once read; for writes and the
/// event stream, where the leader is.
fn standby_router(
    leader: watch::Receiver<Option<Candidate>>,
    reads: Arc<std::sync::OnceLock<axum::Router>>,
) -> axum::Router {
    use axum::routing::{any, get};
    use tower::ServiceExt;
    let (l1, l2, l3) = (leader.clone(), leader.clone(), leader.clone());
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let leader = at(&l1);
                async move { axum::Json(serde_json::json!({"role": "standby", "leader": leader})) }
            }),
        )
        .route(
            "/api/v1/events",
            any(move || {
                let leader = at(&l2);
                async move { not_leader(leader) }
            }),
        )
        .fallback(move |req: axum::extract::Request| {
            let (reads, leader) = (reads.get().cloned(), at(&l3));
            async move {
                match reads {
                    Some(r) => match r.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    },
                    None => not_leader(leader),
                }
            }
        })
}

fn not_leader(leader: Option<String>) -> axum::response::Response {
    let detail = match &leader {
        Some(l) => format!("this controller is a standby (it serves reads); the leader is at {l}: send writes there (the CLI and the agents follow by themselves with a list of controllers)"),
        None => "this controller is a standby and no leader is known: an election is under way, or the store cannot hold one now (etcd without quorum); nothing was changed, retry shortly".to_string(),
    };
    let body = serde_json::json!({
        "type": format!("urn:meshwire:problem:{}", meshwire_controller::client::NOT_LEADER),
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
        "code": meshwire_controller::client::NOT_LEADER,
        "leader": leader,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (axum::http::header::CONTENT_TYPE, "application/problem+json"),
            (axum::http::header::RETRY_AFTER, "1"),
        ],
        body.to_string(),
    )
        .into_response()
}
