//! Kubernetes: the registry as `networkservicemesh.io/v1` custom resources ([`sync`]) and the
//! mutating admission webhook that gives annotated pods their network services ([`webhook`]).
//! Manifests to deploy both are in `deploy/`.
//!
//! Tested here without an API server (none is available to the tests): the sync against kube's
//! mocked service (`tower-test`), checking every request it makes, and the webhook over real
//! HTTPS with AdmissionReview documents as kube-apiserver sends them. Not tested against a live
//! cluster.

pub mod sync;
pub mod webhook;
