//! The kubelet's side of registration, for places without a kubelet (tests, labs, trials): a
//! `Registration` server on `kubelet.sock` in a plugin directory that hands every request it
//! gets to its owner. Creating `kubelet.sock` is what a starting kubelet does, so a running
//! plugin registers with it as with a real one.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{pb, KUBELET_SOCKET};

/// Registrations waiting for their reader.
const QUEUE: usize = 64;

struct Registrar {
    tx: mpsc::Sender<pb::RegisterRequest>,
}

#[tonic::async_trait]
impl pb::registration_server::Registration for Registrar {
    async fn register(
        &self,
        req: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::Empty>, tonic::Status> {
        self.tx
            .send(req.into_inner())
            .await
            .map_err(|_| tonic::Status::unavailable("the stand-in kubelet is stopping"))?;
        Ok(tonic::Response::new(pb::Empty {}))
    }
}

/// A stand-in kubelet serving `kubelet.sock`; dropping it stops it (the socket file stays, as a
/// crashed kubelet's does).
pub struct StandInKubelet {
    _stop: oneshot::Sender<()>,
    registered: mpsc::Receiver<pb::RegisterRequest>,
}

impl StandInKubelet {
    /// Serves `dir/kubelet.sock` (replacing one left there).
    pub fn serve(dir: &Path) -> std::io::Result<StandInKubelet> {
        let path = dir.join(KUBELET_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let incoming = futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let (tx, registered) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::registration_server::RegistrationServer::new(
                    Registrar { tx },
                ))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Ok(StandInKubelet {
            _stop: stop,
            registered,
        })
    }

    /// The next registration, or `None` when none comes within `within`.
    pub async fn registration(&mut self, within: Duration) -> Option<pb::RegisterRequest> {
        tokio::time::timeout(within, self.registered.recv())
            .await
            .ok()
            .flatten()
    }
}
