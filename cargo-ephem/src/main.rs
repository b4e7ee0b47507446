//! `cargo ephem`: the command-line front of cargo-ephem. Parsing is in
//! `cli`, the wiring of each subcommand in `commands`; all logic lives in
//! `ephem-core` and `ephem-fixtures`.

mod cli;
mod commands;

use clap::Parser;


fn main() {
    // As a cargo subcommand we are run as `cargo-ephem ephem test ...`;
    // run directly it is `cargo-ephem test ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "ephem") {
        args.remove(1);
    }
    let app = cli::App::parse_from(args);
    let code = match commands::run(app) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

