//! The runner behind `cargo ephem`: discover a workspace's tests, split them
//! into shards, run each test in its own process (each shard in its own
//! environment), and report to the terminal and to JUnit.
//!
//! Modules follow the data's path: [`discover`] → [`test_list`] →
//! [`partition`] → [`run`] → [`report`].

pub mod discover;
pub mod error;
pub mod mask;
pub mod partition;
pub mod report;
pub mod run;
pub mod test_list;

pub use error::{exit_codes, EphemError, Result};
