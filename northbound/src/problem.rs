//! Errors as RFC 9457 `application/problem+json` documents with a stable `code`: the one
//! mapping from controller errors to HTTP statuses, and the extractors that refuse bad queries
//! and bodies as problems naming the field.

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use meshwire_controller::ControllerError;
use serde::{Deserialize, Serialize};

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:meshwire:problem:{code}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            field: None,
        }
    }
}

impl From<ControllerError> for Problem {
    fn from(e: ControllerError) -> Problem {
        use ControllerError::*;
        let status = match &e {
            UnknownService { .. }
            | UnknownConnection { .. }
            | NotFound { .. }
            | UnknownNode { .. } => StatusCode::NOT_FOUND,
            NoEndpoint { .. }
            | NoMatchingEndpoint { .. }
            | NoPath { .. }
            | NoCapableEndpoint { .. }
            | ChainCycle { .. }
            | Chain { .. }
            | Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Sriov {
                exhausted: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Sriov { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AlreadyExists { .. } => StatusCode::CONFLICT,
            PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            NoCapacity { .. } | PoolExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InUse { .. } => StatusCode::CONFLICT,
            // What the data plane said decides: nobody answered (try later), something not ours
            // is in the way (an operator must act), or a refusal.
            Driver { source, .. } => match source.failure {
                meshwire_controller::driver::Failure::Unreachable { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                meshwire_controller::driver::Failure::Conflict { .. } => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            },
            Store(_) | Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The store's own words (addresses, paths, backend errors) go to the log; callers get
        // a stable message that says what to do.
        let detail = match &e {
            Store(_) => "the controller's store did not answer; nothing was changed that is not recorded. Retry shortly.".to_string(),
            Corrupt { .. } => "a stored record could not be read; see the controller's log".to_string(),
            other => other.to_string(),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, code = e.code(), "request failed");
        }
        let field = match &e {
            Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let mut p = Problem::new(status, e.code(), detail);
        p.field = field;
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// A problem, boxed so handler results stay small.
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(Box::new(p))
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        Problem::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A query string, refused as a problem document (not axum's plain text) when it does not fit.
pub struct Q<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| Q(q))
            .map_err(|e| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-query", e.body_text()).into()
            })
    }
}

/// A JSON request body, refused as a problem document naming the field when it does not fit.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(what: &str, body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            format!("{what}: {}", e.inner()),
        );
        if path != "." {
            p.field = Some(path);
        }
        p.into()
    })
}
