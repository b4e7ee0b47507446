//! `cargo ephem`: the command-line front of cargo-ephem. Parsing is in
//! `cli`, the wiring of each subcommand in `commands`; all logic lives in
//! `ephem-core` and `ephem-fixtures`.

mod cli;
mod commands;

use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    // As a cargo subcommand we are run as `cargo-ephem ephem test ...`;
    // run directly it is `cargo-ephem test ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "ephem") {
        args.remove(1);
    }
    let app = match cli::App::try_parse_from(args) {
        Ok(app) => app,
        Err(e)
            if e.use_stderr()
                && e.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("{}", one_line(&e));
            std::process::exit(ephem_core::exit_codes::USAGE);
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    // A panic is a bug, but it must neither look like a build failure (Rust
    // exits 101 on a panic, our code for that) nor leak an environment:
    // unwinding drops the reaper's pipe, and the reaper removes the run.
    let code = match std::panic::catch_unwind(|| commands::run(app)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
        Err(_) => {
            eprintln!(
                "error: internal error: cargo-ephem panicked (please report this bug); \
                 its environments are being removed by the reaper"
            );
            ephem_core::exit_codes::INTERNAL
        }
    };
    std::process::exit(code);
}

/// Clap's error as one line: what is wrong and its tip, without the usage
/// block, so that CI logs show the whole error in one place.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    format!("{}; see --help for every flag", parts.join("; "))
}
