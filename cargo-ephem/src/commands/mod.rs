//! Wiring of each subcommand to the library crates.

mod env;
mod gc;
mod junit;
mod list;
mod reap;
mod test;

use ephem_core::Result;

use crate::cli::{App, Command};

/// Runs a parsed command; returns the exit code.
pub fn run(app: App) -> Result<i32> {
    match app.command {
        Command::Test(args) => test::test(args),
        Command::List(args) => list::list(args),
        Command::Junit(cmd) => junit::junit(cmd),
        Command::Up(args) => env::up(args),
        Command::Down(args) => env::down(args),
        Command::Gc(args) => gc::gc(args),
        Command::Reap { run, docker, log } => reap::reap(&run, docker, &log),
    }
}

/// A multi-threaded runtime for the async parts (environments, the run).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ephem_core::EphemError::Internal(format!("starting the async runtime: {e}")))
}
