//! The safety nets beyond a shard's own teardown: the reaper that outlives a
//! dead runner, the sweep of abandoned runs at the start of every run, and
//! `cargo ephem gc`. All go through the backend's
//! [`Cleanup`](ephem_fixtures::Cleanup), so every backend gets them.

pub mod gc;
pub mod reaper;

pub use gc::{gc, sweep_at_start};
pub use reaper::{Reaper, RunEnd};
