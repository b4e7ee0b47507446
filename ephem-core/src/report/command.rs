//! `cargo ephem report`: one HTML page from the run records of a CI matrix
//! (or of any runs), each matrix group drawn in its own section.

use camino::{Utf8Path, Utf8PathBuf};

use super::html;
use super::record::{self, group_records, SourcedRecord};
use crate::error::{exit_codes, EphemError, Result};

/// How to fix an `--html` path that is a folder.
pub(crate) const HTML_IS_A_FOLDER: &str = "give a file name, e.g. run.html";

/// Runs `cargo ephem report --html FILE RECORD...`; returns the exit code.
pub fn report(html_path: &Utf8Path, records: &[Utf8PathBuf]) -> Result<i32> {
    if records.is_empty() {
        return Err(EphemError::Usage(
            "report: no run records given; pass the <stem>.record.json files that \
             `cargo ephem test --junit` writes"
                .to_owned(),
        ));
    }
    record::check_writable("--html", html_path, HTML_IS_A_FOLDER)?;
    let sourced = records
        .iter()
        .map(|path| {
            Ok(SourcedRecord {
                source: path.to_string(),
                record: record::read_record(path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = group_records(sourced)?;
    html::write_html(&groups, html_path)?;
    let shards: usize = groups.iter().map(|g| g.shards().len()).sum();
    let tests: usize = groups
        .iter()
        .flat_map(|g| &g.records)
        .map(|r| r.record.tests().count())
        .sum();
    eprintln!(
        "     HTML {html_path}: {} group{}, {shards} shard{}, {tests} tests from {} record{}",
        groups.len(),
        plural(groups.len()),
        plural(shards),
        records.len(),
        plural(records.len()),
    );
    Ok(exit_codes::OK)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::record::tests::{list, meta, result};
    use crate::report::record::{write_record, RunRecord};

    fn utf8(p: std::path::PathBuf) -> Utf8PathBuf {
        Utf8PathBuf::from_path_buf(p).unwrap()
    }

    #[test]
    fn records_of_two_groups_give_one_page_with_two_sections() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for group in ["one", "two"] {
            let path = utf8(dir.path().join(format!("{group}.record.json")));
            write_record(
                &RunRecord::from_run(&result(), &list(), meta(group, 2)),
                &path,
            )
            .unwrap();
            paths.push(path);
        }
        let page = utf8(dir.path().join("html/page.html"));
        assert_eq!(report(&page, &paths).unwrap(), 0);
        let html = std::fs::read_to_string(&page).unwrap();
        assert_eq!(html.matches("<section class=\"group\"").count(), 2);
    }

    #[test]
    fn no_records_is_a_usage_error_and_a_bad_one_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let page = utf8(dir.path().join("page.html"));
        let err = report(&page, &[]).unwrap_err();
        assert_eq!(err.exit_code(), exit_codes::USAGE);
        let bad = utf8(dir.path().join("bad.record.json"));
        std::fs::write(&bad, "not json").unwrap();
        let err = report(&page, std::slice::from_ref(&bad)).unwrap_err();
        assert_eq!(err.exit_code(), exit_codes::USAGE);
        assert!(err.to_string().starts_with(bad.as_str()), "{err}");
        assert!(!page.exists(), "no page from bad records");
    }

    #[test]
    fn an_unwritable_page_is_a_usage_error_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let folder = utf8(dir.path().to_owned());
        let err = report(&folder, &[utf8(dir.path().join("missing.json"))]).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
    }
}
