//! The one REST client of the controller's REST API (served by `meshwire-northbound`): the
//! CLI's commands and a remote eNSM's registrar speak through it. It lives here, below both,
//! so a crate that talks to a controller never depends on the northbound server (and so may any Rust tool of an operator's OSS/BSS).
//! Every call has a timeout; every failure says whether it reached the controller, and what the
//! controller answered (its problem document's `code` and `detail`).
//!
//! Highly available controllers: the base may list several (`URL,URL,URL`). A call goes to the
//! one that answered last; one that cannot be reached or answers `503 not-leader` (a standby)
//! has not acted on the call, so the call goes to the next, and to the leader a standby names.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long reaching the controller may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one call may take (a request waits for the data plane, a device's commit included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Nothing came back (connect refused, timed out, TLS refused).
    #[error("cannot reach the controller at {base} ({reason}); is `meshwire controller` running? (--controller URL)")]
    Unreachable { base: String, reason: String },
    /// The controller answered with an error.
    #[error("{detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// The answer could not be read as what the call expects.
    #[error("unexpected answer from the controller ({status}): {reason}")]
    Unreadable { status: u16, reason: String },
    /// The client could not be built (an unreadable CA certificate).
    #[error("controller client: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether the same call may work later without anyone acting (the controller unreachable,
    /// or failing on its side, a store that did not answer).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// How to reach the controller.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// A PEM CA certificate to trust for an https controller with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Per call; [`CALL_TIMEOUT`] when unset.
    pub timeout: Option<Duration>,
}

#[derive(Clone)]
pub struct Client {
    bases: Vec<String>,
    /// The base that answered last.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
}

/// How long a call waits for a leader while only standbys answer (an election under way).
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// The problem code of a standby controller's answer to a call only the leader takes.
pub const NOT_LEADER: &str = "not-leader";

/// One call's outcome: status and body, or the failure with whether the call never left (a
/// refused or timed-out connect: nothing was acted upon).
type Outcome = Result<(u16, Vec<u8>), (ClientError, bool)>;

/// Whether an answer means the call was not acted upon and another controller should take it.
fn elsewhere(r: &Outcome) -> Option<Option<String>> {
    match r {
        Err((_, true)) => Some(None),
        Ok((503, body)) => {
            let p: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            (p["code"] == NOT_LEADER).then(|| p["leader"].as_str().map(str::to_string))
        }
        _ => None,
    }
}

impl Client {
    pub fn new(base: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &opts.token {
            let v = format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| ClientError::Setup("the token is not a valid header value".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut b = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(opts.timeout.unwrap_or(CALL_TIMEOUT));
        if let Some(pem) = &opts.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Setup(format!("CA certificate: {e}")))?;
            b = b.add_root_certificate(ca);
        }
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Setup("no controller URL given".into()));
        }
        Ok(Client {
            bases,
            current: Default::default(),
            http: b.build().map_err(|e| ClientError::Setup(e.to_string()))?,
        })
    }

    /// The controller's base URL (of several, the one that answered last).
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(|base| self.http.get(format!("{base}{path}")))
            .await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(|base| self.http.post(format!("{base}{path}")).json(body))
            .await
    }

    /// `POST` with an `Idempotency-Key`: the controller does it at most once per key, so
    /// this call may go again to another controller after any failure, even one that left
    /// it unknown whether the first was done (a timeout, a connection cut mid-answer).
    pub async fn post_once<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: &str,
    ) -> Result<T, ClientError> {
        let send = |base: &str| {
            self.http
                .post(format!("{base}{path}"))
                .header("idempotency-key", key)
                .json(body)
        };
        match self.send(send).await {
            // Sent, then lost (a timeout, a broken answer): with the key it is safe to ask
            // the controllers again, once.
            Err(ClientError::Unreachable { .. }) if self.bases.len() > 1 => self.send(send).await,
            r => r,
        }
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(|base| self.http.put(format!("{base}{path}")).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(|base| self.http.delete(format!("{base}{path}")))
            .await
    }

    /// Every controller this client was given (one, or several highly available ones).
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// `GET path` from one given controller, without going elsewhere: its status and body
    /// (`meshwire get leader` asks each one in turn).
    pub async fn probe(&self, base: &str, path: &str) -> Result<(u16, String), ClientError> {
        let r = self
            .once(base, self.http.get(format!("{base}{path}")))
            .await;
        let (status, body) = r.map_err(|(e, _)| e)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A manifest file as text (`POST`, or `DELETE` to remove its objects), named `file` in
    /// the controller's errors.
    pub async fn manifest<T: DeserializeOwned>(
        &self,
        file: &str,
        text: String,
        delete: bool,
    ) -> Result<T, ClientError> {
        self.send(|base| {
            let url = format!("{base}/api/v1/manifests");
            let rb = if delete {
                self.http.delete(url)
            } else {
                self.http.post(url)
            };
            rb.query(&[("file", file)]).body(text.clone())
        })
        .await
    }

    /// One call to one base: the status and body, or why nothing came back. Only a failure to
    /// connect counts as unreachable here; a call that was sent may have been acted upon.
    async fn once(&self, base: &str, rb: reqwest::RequestBuilder) -> Outcome {
        let unreachable = |e: reqwest::Error| {
            let never_left = e.is_connect();
            (
                ClientError::Unreachable {
                    base: base.to_string(),
                    reason: e.to_string(),
                },
                never_left,
            )
        };
        let resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends to the controller that answered last, else to the next of the list (and to the
    /// leader a standby names); an empty answer (204) reads as JSON `null`. While standbys
    /// answer and no leader does (an election under way), it tries again for up to
    /// [`ELECTION_WAIT`].
    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let deadline = std::time::Instant::now() + ELECTION_WAIT;
        loop {
            let (r, standby) = self.round(&build).await;
            if !standby || elsewhere(&r).is_none() || std::time::Instant::now() >= deadline {
                return Self::read(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One pass over the controllers: the first answer that is not "go elsewhere", else the
    /// last one; and whether a standby answered.
    async fn round(&self, build: &impl Fn(&str) -> reqwest::RequestBuilder) -> (Outcome, bool) {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut named: Option<String> = None;
        let mut standby = false;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let r = self.once(&self.bases[at], build(&self.bases[at])).await;
            match elsewhere(&r) {
                Some(leader) => {
                    standby |= r.is_ok();
                    named = named.or(leader);
                    last = Some(r);
                }
                None => {
                    self.current.store(at, Ordering::Relaxed);
                    return (r, standby);
                }
            }
        }
        if let Some(leader) = named.filter(|l| !self.bases.contains(l)) {
            let r = self.once(&leader, build(&leader)).await;
            if elsewhere(&r).is_none() {
                return (r, standby);
            }
            last = Some(r);
        }
        let r =
            last.unwrap_or_else(|| Err((ClientError::Setup("no controller URL".into()), false)));
        (r, standby)
    }

    fn read<T: DeserializeOwned>(r: Outcome) -> Result<T, ClientError> {
        let (status, bytes) = r.map_err(|(e, _)| e)?;
        let status =
            reqwest::StatusCode::from_u16(status).map_err(|e| ClientError::Unreadable {
                status,
                reason: e.to_string(),
            })?;
        if !status.is_success() {
            let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                code: problem["code"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| status.as_u16().to_string()),
                detail: problem["detail"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string()),
            });
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::Unreadable {
            status: status.as_u16(),
            reason: e.to_string(),
        })
    }
}
