//! `cargo ephem`: the command-line front of cargo-ephem. Parsing is in
//! `cli`; every command is one call into `ephem-core`, whose result becomes
//! the exit code.

mod cli;

use clap::error::ErrorKind;
use clap::Parser;

use cli::{App, Command, JunitCommand};

fn main() {
    // As a cargo subcommand we are run as `cargo-ephem ephem test ...`;
    // run directly it is `cargo-ephem test ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "ephem") {
        args.remove(1);
    }
    let app = match App::try_parse_from(args) {
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
    install_panic_hook();
    // A panic is a bug, but it must neither look like a build failure (Rust
    // exits 101 on a panic, our code for that) nor leak an environment:
    // unwinding drops the reaper's pipe, and the reaper removes the run.
    let code = match std::panic::catch_unwind(|| run(app.command)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            // Secrets a failing service printed, URLs with credentials in
            // their query: masked, whatever the command.
            eprintln!("error: {}", ephem_core::mask::error_text(&e.to_string()));
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

/// Each command is one call into the library.
fn run(command: Command) -> ephem_core::Result<i32> {
    match command {
        Command::Test(args) => ephem_core::test(&args.options()),
        Command::List(args) => ephem_core::list(&args.options()),
        Command::Archive(args) => ephem_core::archive(&args.options()),
        Command::Junit(JunitCommand::Merge { output, inputs }) => {
            ephem_core::merge_junit(&output, &inputs)
        }
        Command::Report(args) => ephem_core::report(&args.html, &args.records),
        Command::Up(args) => ephem_core::up(&args.options()),
        Command::Down(args) => ephem_core::down(&args.options()),
        Command::Exec(args) => ephem_core::exec(&args.options()),
        Command::Gc(args) => ephem_core::gc(&args.options()),
        Command::Render(args) => ephem_core::render(&args.options()),
        Command::Images(args) => ephem_core::images(&args.options()),
        Command::Reap(args) => ephem_core::reap(&args.options()),
    }
}

/// A panic prints one line saying where (the backtrace only when
/// RUST_BACKTRACE asks for it); the error line that ends the run follows.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default(info);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "note: cargo-ephem panicked{place}: {}",
            ephem_core::mask::error_text(&message)
        );
    }));
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
