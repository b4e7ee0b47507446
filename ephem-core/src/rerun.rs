//! `--rerun-failed [FILE]` (`-R latest`): run only the tests an earlier run
//! did not settle (failed, timed out, or not run), found in its run record.
//!
//! Every `cargo ephem test` leaves its record at
//! `<target>/ephem/runs/latest.record.json` (with or without `--junit`), so
//! `-R latest` always has the last run of the workspace. A record from
//! elsewhere (a CI job's artifact, one shard's record, several shards')
//! works the same: tests are matched by binary id and name only, never by
//! path, so a record made in another checkout applies here.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{EphemError, Result};
use crate::options::{ConfigSource, EnvOptions};
use crate::report::record::{self, RecordEnvironments, RecordVerdict, RunRecord, TestRef};
use crate::test_list::{Selection, TestList};

/// The skip reason the dispatcher gives `#[ignore]`d tests: those were not
/// meant to run, so a rerun leaves them alone.
const IGNORED: &str = "ignored";

/// Records bigger than this are refused rather than read into memory: a
/// record of 100,000 failing tests with full output tails is far smaller.
const MAX_RECORD_BYTES: u64 = 512 * 1024 * 1024;

/// Which earlier run `--rerun-failed` takes its tests from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RerunFrom {
    /// `-R latest` (or `--rerun-failed` alone): the last run of this
    /// workspace.
    Latest,
    /// `--rerun-failed FILE...`: run records from elsewhere (a CI job's).
    Files(Vec<Utf8PathBuf>),
}

/// Where every run of a workspace leaves its record.
pub fn latest_path(target_dir: &Utf8Path) -> Utf8PathBuf {
    target_dir
        .join("ephem")
        .join("runs")
        .join("latest.record.json")
}

/// The tests to rerun, by binary id and name.
#[derive(Clone, Debug, Default)]
pub struct RerunSet {
    tests: HashSet<(String, String)>,
}

impl RerunSet {
    /// Whether the test is to be rerun.
    pub fn contains(&self, binary_id: &str, name: &str) -> bool {
        // The set is small; a lookup by owned pair keeps the type simple.
        self.tests
            .contains(&(binary_id.to_owned(), name.to_owned()))
    }

    /// A set of these `(binary id, name)` pairs.
    pub fn from_tests(tests: impl IntoIterator<Item = (String, String)>) -> RerunSet {
        RerunSet {
            tests: tests.into_iter().collect(),
        }
    }

    /// How many tests it holds.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }
}

/// What an earlier run left to do, read from its record(s).
#[derive(Clone, Debug)]
pub struct Rerun {
    /// The tests to rerun.
    pub set: Arc<RerunSet>,
    /// Why each test is in the set.
    why: BTreeMap<(String, String), Why>,
    /// Where the records came from, with their run ids and start times.
    sources: Vec<Source>,
    /// The environments configuration of the earlier run, if recorded.
    environments: Option<RecordEnvironments>,
}

/// Why a test is to be rerun.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Failed,
    TimedOut,
    NotRun,
}

#[derive(Clone, Debug)]
struct Source {
    path: Utf8PathBuf,
    run_id: String,
    started_at: record::Timestamp,
}

impl Rerun {
    /// Reads the record(s) `from` names. No earlier run (no latest record)
    /// is exit 2 saying so; a corrupt, forged or foreign file is exit 2
    /// naming it.
    pub fn load(from: &RerunFrom, target_dir: &Utf8Path) -> Result<Rerun> {
        let paths = match from {
            RerunFrom::Latest => {
                let latest = latest_path(target_dir);
                if !latest.is_file() {
                    return Err(EphemError::Usage(format!(
                        "--rerun-failed: no earlier run of this workspace ({latest} does not exist); \
                         run `cargo ephem test` first, or give a run record: --rerun-failed FILE"
                    )));
                }
                vec![latest]
            }
            RerunFrom::Files(paths) => paths.clone(),
        };
        let mut rerun = Rerun {
            set: Arc::default(),
            why: BTreeMap::new(),
            sources: Vec::new(),
            environments: None,
        };
        let mut set = RerunSet::default();
        for path in paths {
            let record = read_bounded(&path)?;
            rerun.add(&record, &mut set);
            if rerun.environments.is_none() {
                rerun.environments = record.environments.clone();
            }
            rerun.sources.push(Source {
                path,
                run_id: record.run_id,
                started_at: record.started_at,
            });
        }
        rerun.set = Arc::new(set);
        Ok(rerun)
    }

    fn add(&mut self, record: &RunRecord, set: &mut RerunSet) {
        let mut take = |binary_id: &str, name: &str, why: Why| {
            let key = (binary_id.to_owned(), name.to_owned());
            set.tests.insert(key.clone());
            let entry = self.why.entry(key).or_insert(why);
            *entry = (*entry).min(why);
        };
        for (_, test) in record.tests() {
            let why = match test.verdict {
                RecordVerdict::Failed => Why::Failed,
                RecordVerdict::TimedOut => Why::TimedOut,
                RecordVerdict::Skipped if test.reason.as_deref() != Some(IGNORED) => Why::NotRun,
                _ => continue,
            };
            take(&test.binary_id, &test.name, why);
        }
        for test in &record.outstanding {
            take(&test.binary_id, &test.name, Why::NotRun);
        }
    }

    /// The environments configuration of the earlier run, unless this
    /// invocation chose one (`--config`, `--no-env`): a rerun provisions
    /// what the run it repeats had. A recorded file that is not here is
    /// left for the default, with a note.
    pub fn environments(&self, options: &EnvOptions, root: &Utf8Path) -> EnvOptions {
        let mut options = options.clone();
        let Some(recorded) = &self.environments else {
            return options;
        };
        if options.config != ConfigSource::WorkspaceDefault {
            return options;
        }
        options.config = match &recorded.config {
            None => ConfigSource::Disabled,
            Some(file) => {
                let path = root.join(file);
                if !path.is_file() {
                    eprintln!(
                        "note: the earlier run's environment configuration {file} is not in this \
                         workspace ({path}); using the default"
                    );
                    return options;
                }
                ConfigSource::File(path)
            }
        };
        options
    }

    /// The line that says what is rerun and from where, and notes for
    /// tests of the record that this workspace no longer has.
    pub fn announce(&self, list: &TestList, selection: &[Selection]) -> String {
        let mut picked: BTreeMap<Why, usize> = BTreeMap::new();
        let mut present = HashSet::new();
        for (test, sel) in list.tests.iter().zip(selection) {
            let key = (
                list.binaries[test.binary].binary_id.clone(),
                test.name.clone(),
            );
            if let Some(why) = self.why.get(&key) {
                present.insert(key);
                if *sel != Selection::FilteredOut {
                    *picked.entry(*why).or_default() += 1;
                }
            }
        }
        let total: usize = picked.values().sum();
        let parts: Vec<String> = [
            (Why::Failed, "failed"),
            (Why::TimedOut, "timed out"),
            (Why::NotRun, "not run"),
        ]
        .iter()
        .filter_map(|(why, word)| picked.get(why).map(|n| format!("{n} {word}")))
        .collect();
        let mut text = format!(
            "Rerunning {total} test{} ({}) from {}",
            if total == 1 { "" } else { "s" },
            if parts.is_empty() {
                "none left".to_owned()
            } else {
                parts.join(", ")
            },
            self.describe_sources()
        );
        let skipped_binaries: HashSet<&str> = list
            .skipped
            .iter()
            .map(|(b, _)| b.binary_id.as_str())
            .collect();
        let gone: Vec<String> = self
            .why
            .keys()
            .filter(|k| !present.contains(*k) && !skipped_binaries.contains(k.0.as_str()))
            .map(|(b, n)| format!("{b} {n}"))
            .collect();
        if !gone.is_empty() {
            let shown: Vec<&str> = gone.iter().take(10).map(String::as_str).collect();
            text.push_str(&format!(
                "\nnote: {} test{} of the earlier run {} not in this workspace any more: {}{}",
                gone.len(),
                if gone.len() == 1 { "" } else { "s" },
                if gone.len() == 1 { "is" } else { "are" },
                shown.join(", "),
                if gone.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        text
    }

    /// The tests of the set this run leaves for later: present, but left
    /// out by this invocation's other filters. The run's record keeps them
    /// (`outstanding`), so the next `-R latest` still has them.
    pub fn outstanding(&self, list: &TestList, selection: &[Selection]) -> Vec<TestRef> {
        list.tests
            .iter()
            .zip(selection)
            .filter(|(_, sel)| **sel == Selection::FilteredOut)
            .filter_map(|(test, _)| {
                let binary_id = &list.binaries[test.binary].binary_id;
                self.set.contains(binary_id, &test.name).then(|| TestRef {
                    binary_id: binary_id.clone(),
                    name: test.name.clone(),
                })
            })
            .collect()
    }

    fn describe_sources(&self) -> String {
        let one = |s: &Source| {
            let when = chrono::DateTime::from_timestamp_millis(s.started_at.unix_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| s.started_at.rfc3339());
            format!("run {} of {when} ({})", short_id(&s.run_id), s.path)
        };
        self.sources.iter().map(one).collect::<Vec<_>>().join(", ")
    }
}

fn short_id(run_id: &str) -> &str {
    run_id.get(..8).unwrap_or(run_id)
}

/// Reads a record, refusing files too big to be one before reading them.
fn read_bounded(path: &Utf8Path) -> Result<RunRecord> {
    if !path.exists() {
        // `--rerun-failed db_` takes `db_` as its file: say how to mean a filter.
        return Err(EphemError::Input {
            path: path.to_owned(),
            message: "no such run record; to rerun the last run's failures with a name filter, \
                      put the filter before the flag (`cargo ephem test FILTER --rerun-failed`)"
                .to_owned(),
        });
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.len() > MAX_RECORD_BYTES {
            return Err(EphemError::Input {
                path: path.to_owned(),
                message: format!(
                    "{} bytes is too big for a run record (at most {MAX_RECORD_BYTES}); give the \
                     <stem>.record.json a run wrote",
                    meta.len()
                ),
            });
        }
        if meta.is_dir() {
            return Err(EphemError::Input {
                path: path.to_owned(),
                message: "is a folder; give a run record file (<stem>.record.json)".to_owned(),
            });
        }
    }
    record::read_record(path)
}

/// Leaves this run's record where `-R latest` finds it. A failure to write
/// it is a warning: it must never cost the run its result.
pub fn record_latest(record: &RunRecord, target_dir: &Utf8Path) {
    let path = latest_path(target_dir);
    if let Err(e) = record::write_record(record, &path) {
        eprintln!("warning: cannot keep this run's record for --rerun-failed: {e}");
    }
}

/// The environments configuration a run used, as its record keeps it:
/// relative to the workspace root when inside it, so that it applies to
/// another checkout of the same workspace.
pub fn recorded_environments(config: Option<&Utf8Path>, root: &Utf8Path) -> RecordEnvironments {
    RecordEnvironments {
        config: config.map(|path| {
            path.strip_prefix(root)
                .map(|rel| rel.to_string())
                .unwrap_or_else(|_| path.to_string())
        }),
    }
}
