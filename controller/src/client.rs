//! The one REST client of the controller's REST API (served by `meshwire-northbound`): the
//! CLI's commands and a remote eNSM's registrar speak through it. It lives here, below both,
//! so a crate that talks to a controller never depends on the northbound server (and so may any Rust tool of an operator's OSS/BSS).
//! Every call has a timeout; every failure says whether it reached the controller, and what the
//! controller answered (its problem document's `code` and `detail`).

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
    base: String,
    http: reqwest::Client,
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
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: b.build().map_err(|e| ClientError::Setup(e.to_string()))?,
        })
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// A manifest file as text (`POST`, or `DELETE` to remove its objects), named `file` in
    /// the controller's errors.
    pub async fn manifest<T: DeserializeOwned>(
        &self,
        file: &str,
        text: String,
        delete: bool,
    ) -> Result<T, ClientError> {
        let url = self.url("/api/v1/manifests");
        let rb = if delete {
            self.http.delete(url)
        } else {
            self.http.post(url)
        };
        self.send(rb.query(&[("file", file)]).body(text)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends; an empty answer (204) reads as JSON `null`.
    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            base: self.base.clone(),
            reason: e.to_string(),
        };
        let resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
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
