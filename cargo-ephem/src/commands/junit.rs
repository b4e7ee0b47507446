//! `cargo ephem junit merge`.

use ephem_core::report::junit;
use ephem_core::{exit_codes, Result};

use crate::cli::JunitCommand;

pub fn junit(cmd: JunitCommand) -> Result<i32> {
    match cmd {
        JunitCommand::Merge { output, inputs } => {
            let (report, stats) = junit::merge_reports("cargo-ephem", &inputs)?;
            junit::write_report(&report, &output)?;
            let dups = if stats.duplicates > 0 {
                format!(
                    " ({} duplicate test cases dropped: the same test was in two inputs)",
                    stats.duplicates
                )
            } else {
                String::new()
            };
            eprintln!(
                "merged {} files: {} suites, {} test cases into {output}{dups}",
                stats.files, stats.suites, stats.tests
            );
            Ok(exit_codes::OK)
        }
    }
}
