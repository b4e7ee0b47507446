//! The Kubernetes backend: every shard gets its own namespace, built from the
//! same `ephem.toml` as the Docker backend (a pod and a Service per service,
//! a Secret for generated values, a ResourceQuota and a LimitRange), removed
//! on every exit path and swept by TTL when the runner dies hard.
//!
//! - [`labels`]: names, labels and annotations everything is found by.
//! - [`quantity`]: Kubernetes resource quantities (`500m`, `1Gi`), checked.
//! - [`render`]: the objects of one shard, from the configuration (pure; what
//!   `cargo ephem render` prints and provisioning applies).
//! - [`client`]: reaching the cluster (kubeconfig, context, in-cluster).
//! - [`denial`]: who refused a request (RBAC, Pod Security, a webhook, a
//!   quota, a LimitRange, ...), from the API server's message.
//! - [`cleanup`]: the safety nets' side ([`crate::Cleanup`]).
//! - [`KubernetesBackend`]: the [`crate::Backend`] itself: provisioning
//!   (`provision`), the run's prepull (`prepull`), readiness and service
//!   deaths (`readiness`), reaching the services (`forward`), the optional
//!   chart (`helm`), teardown.

mod backend;
pub mod cleanup;
pub mod client;
pub mod denial;
mod forward;
mod helm;
pub mod labels;
mod prepull;
mod provision;
pub mod quantity;
mod readiness;
pub mod render;

pub use backend::{KubernetesBackend, DEFAULT_TEARDOWN_WAIT, DEFAULT_WATCH_RETRY};
