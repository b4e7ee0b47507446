//! Environment backends for cargo-ephem.
//!
//! A backend gives every shard of a test run its own disposable environment
//! (Docker containers on a private network today, a Kubernetes namespace
//! later) and hands the shard's tests its connection details as environment
//! variables. The runner in `ephem-core` drives backends only through the
//! [`Backend`] trait, so a new backend slots in without touching the runner.

mod backend;
pub mod cleanup;
pub mod config;
pub mod docker;
pub mod image_cache;
pub mod image_ref;
pub mod kubernetes;
pub mod process;
pub mod secret;
pub mod sweep;
pub mod template;

pub use backend::{
    AttemptEnv, Backend, BackendKind, EnvError, EnvEvent, Environment, EventSink, ExportedVar,
    RunContext, ShardContext, TestHooks,
};
pub use cleanup::{Cleanup, HoldingCondition, ResourceKind, RunResource, Terminating};
pub use config::{ConfigError, EphemConfig, SecretRef, ServiceSpec, WaitKind, WaitStrategy};
pub use docker::DockerBackend;
pub use image_ref::ImageRef;
