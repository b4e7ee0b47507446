//! `cargo ephem list`.

use std::io::Write;

use ephem_core::discover;
use ephem_core::test_list::Selection;
use ephem_core::{exit_codes, EphemError, Result};

use crate::cli::{ListArgs, MessageFormat};

pub fn list(args: ListArgs) -> Result<i32> {
    let list = discover::discover(&args.cargo.to_options())?;
    let selection = list.select(&args.filter.to_filter());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.message_format {
        MessageFormat::Json => {
            let summary = list.to_summary(&selection);
            serde_json::to_writer_pretty(&mut out, &summary)
                .map_err(|e| EphemError::Internal(format!("writing JSON: {e}")))?;
            let _ = writeln!(out);
        }
        MessageFormat::Human => {
            for (idx, binary) in list.binaries.iter().enumerate() {
                let tests: Vec<_> = list
                    .tests
                    .iter()
                    .zip(&selection)
                    .filter(|(t, s)| t.binary == idx && **s != Selection::FilteredOut)
                    .collect();
                if tests.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "{}:", binary.binary_id);
                for (t, s) in tests {
                    let note = if *s == Selection::SkipIgnored {
                        " (ignored)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "    {}{note}", t.name);
                }
            }
        }
    }
    Ok(exit_codes::OK)
}
