//! What a data-plane failure is: the driver, the object, the reason, and whether trying again
//! may help.

/// A data-plane operation that failed, naming the driver, the object, the reason and what kind
/// of failure it was (so callers know whether trying again may help). Serializable, so it
/// crosses a wire (a remote eNSM, a node agent) unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{driver} driver: {target}: {reason}")]
pub struct DriverError {
    pub driver: String,
    /// What was being wired (`connection 1a2b…`, `netns clab-x-client`, `switch br-int`).
    pub target: String,
    pub reason: String,
    #[serde(default)]
    pub failure: Failure,
}

/// The kind of a data-plane failure.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Failure {
    /// The peer answered, and said no: `by` names it (`device fw1`, `switch n1`), `peer_error`
    /// is its own error (a NETCONF error-tag and message, an errno). The same request will be
    /// refused again until something changes.
    Refused { by: String, peer_error: String },
    /// The peer did not answer (connect failed, timed out, session closed). Later may work.
    Unreachable { peer: String },
    /// Something in the way is not Meshwire's (it carries no mark of ours), so it is left
    /// alone: an operator has to act.
    Conflict { object: String },
    /// The request cannot be expressed for this peer (a profile without the needed template, a
    /// number outside its range).
    Invalid,
    /// A local failure (an OS call, a namespace not there yet). Later may work.
    #[default]
    Local,
}

impl DriverError {
    /// A local failure (see [`Failure::Local`]); use [`with`](Self::with) to say otherwise.
    pub fn new(
        driver: impl Into<String>,
        target: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> DriverError {
        DriverError {
            driver: driver.into(),
            target: target.into(),
            reason: reason.to_string(),
            failure: Failure::Local,
        }
    }

    pub fn with(mut self, failure: Failure) -> DriverError {
        self.failure = failure;
        self
    }

    /// Whether the same operation may succeed later without anyone changing anything.
    pub fn retryable(&self) -> bool {
        matches!(self.failure, Failure::Unreachable { .. } | Failure::Local)
    }
}
