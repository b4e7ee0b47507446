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
//! - [`cleanup`]: the safety nets' side ([`crate::Cleanup`]).

pub mod cleanup;
pub mod client;
pub mod labels;
pub mod quantity;
pub mod render;
