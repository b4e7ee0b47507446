//! The runner behind `cargo ephem`: discover a workspace's tests, split them
//! into shards, run each test in its own process (each shard in its own
//! environment), and report to the terminal and to JUnit.
//!
//! Every command is one call: [`test`], [`list`], [`merge_junit`], [`up`],
//! [`down`], [`exec`], [`gc`] and [`reap`], each driven by a typed options struct from
//! [`options`]. Modules follow the data's path: [`discover`] → [`test_list`]
//! → [`partition`] → [`plan`] → [`run`] → [`report`], with [`environments`]
//! and [`teardown`] beside them; [`pipeline`] strings them together.

pub mod archive;
mod cargo_build;
pub mod dev;
pub mod discover;
pub mod environments;
pub mod error;
pub mod exec;
pub mod filterset;
mod hold;
pub mod images;
pub mod limits;
pub mod mask;
pub mod options;
pub mod partition;
pub mod pipeline;
pub mod plan;
pub mod profile;
pub mod render;
pub mod report;
pub mod rerun;
pub mod run;
pub mod scopes;
pub mod select;
mod signals;
pub mod teardown;
pub mod test_list;

pub use archive::archive;
pub use dev::{down, up};
pub use ephem_fixtures::BackendKind;
pub use error::{exit_codes, EphemError, Result};
pub use exec::exec;
pub use images::images;
pub use pipeline::{list, merge_junit, test};
pub use render::{render, RenderBackend, RenderOptions, RenderShards};
pub use report::command::report;
pub use teardown::gc;

/// The hidden `__reap` command: the reaper of one run.
pub fn reap(options: &options::ReapOptions) -> Result<i32> {
    teardown::reaper::serve(options)
}

/// A multi-threaded runtime for the async parts (environments, the run).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| EphemError::Internal(format!("starting the async runtime: {e}")))
}
