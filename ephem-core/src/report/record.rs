//! The run record: what one `cargo ephem test` invocation did, as JSON
//! beside its JUnit report, so that `cargo ephem report` can draw a whole CI
//! matrix from the records its jobs upload.
//!
//! Times are RFC 3339 in UTC with milliseconds (`2026-11-26T20:36:46.123Z`),
//! durations whole milliseconds (`duration_ms`). Fields may be added without
//! a new `format`; readers ignore fields they do not know. A change that
//! older readers would misread bumps [`FORMAT`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{EphemError, Result};
use crate::run::{Attempt, AttemptStatus, RunResult, Span, TestOutcome, Verdict};
use crate::test_list::TestList;

/// The record format this cargo-ephem writes and reads.
pub const FORMAT: u32 = 1;

/// Most lines kept of a failing attempt's output, per stream.
const TAIL_LINES: usize = 100;

/// Most bytes kept of a failing attempt's output, per stream: a test that
/// prints one endless line must not make the record huge.
const TAIL_BYTES: usize = 16 * 1024;

/// A moment, to the millisecond; written as RFC 3339 in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

impl Timestamp {
    /// The moment `t`, cut to the millisecond.
    pub fn of(t: SystemTime) -> Timestamp {
        let unix_ms = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Timestamp { unix_ms }
    }

    /// RFC 3339, UTC, milliseconds.
    pub fn rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.unix_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| format!("@{}ms", self.unix_ms))
    }

    /// Milliseconds from `earlier` to this moment (negative if before).
    pub fn ms_since(self, earlier: Timestamp) -> i64 {
        self.unix_ms.saturating_sub(earlier.unix_ms)
    }

    /// This moment plus `ms` milliseconds.
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp {
            unix_ms: self
                .unix_ms
                .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| Timestamp {
                unix_ms: t.timestamp_millis(),
            })
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

/// A stretch of time, both ends to the millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSpan {
    /// When it began.
    pub start: Timestamp,
    /// When it ended.
    pub end: Timestamp,
}

impl RecordSpan {
    fn of(span: &Span) -> RecordSpan {
        RecordSpan {
            start: Timestamp::of(span.start),
            end: Timestamp::of(span.end),
        }
    }

    /// Its length in milliseconds (zero if the ends are reversed).
    pub fn ms(&self) -> u64 {
        u64::try_from(self.end.ms_since(self.start)).unwrap_or(0)
    }
}

/// What one `cargo ephem test` invocation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always [`FORMAT`] when written by this version.
    pub format: u32,
    /// The cargo-ephem version that wrote it.
    pub cargo_ephem: String,
    /// The run's id (`EPHEM_RUN_ID`).
    pub run_id: String,
    /// Records of one CI matrix share this key (see [`group_key`]).
    pub group: String,
    /// Shards in the whole plan.
    pub shard_count: u32,
    /// How tests were split: `hash`, `slice` or `duration`.
    pub partition: String,
    /// When the run started.
    pub started_at: Timestamp,
    /// How long it took, preparation and teardown included.
    pub duration_ms: u64,
    /// The run-wide environment preparation (image pulls), if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<RecordSpan>,
    /// The shards run here, by number.
    pub shards: Vec<ShardRecord>,
    /// Environment failures (shard 0: the run-wide preparation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_errors: Vec<EnvErrorRecord>,
    /// Services that died while their shard's tests ran, described.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_deaths: Vec<String>,
    /// The signal that stopped the run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<i32>,
    /// A runner task panicked (a bug) and the run was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_error: Option<String>,
    /// The environments configuration the run used, for `--rerun-failed`
    /// to provision the same (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<RecordEnvironments>,
    /// Tests a `--rerun-failed` run was to rerun but left out (other
    /// filters): still to be rerun by the next one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outstanding: Vec<TestRef>,
}

/// Which environments configuration a run used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEnvironments {
    /// The configuration file, relative to the workspace root when inside
    /// it; absent when the run had no environments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// A test by binary id and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRef {
    /// Its binary.
    pub binary_id: String,
    /// Its full name.
    pub name: String,
}

/// One environment failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvErrorRecord {
    /// The shard, or 0 for the run-wide preparation.
    pub shard: u32,
    /// The error as the terminal showed it.
    pub message: String,
}

/// One shard: its environment's phases and its tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// 1-based shard number.
    pub shard: u32,
    /// From the provisioning request to ready (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<RecordSpan>,
    /// Whether provisioning failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provision_failed: bool,
    /// When the environment was ready for tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    /// From the teardown request to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<RecordSpan>,
    /// Every selected test of the shard, in list order.
    pub tests: Vec<TestRecord>,
}

/// The final word on a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordVerdict {
    /// Passed on its first attempt.
    Passed,
    /// Failed, then passed on a retry.
    Flaky,
    /// Failed every attempt.
    Failed,
    /// Its last attempt was killed after `--test-timeout`.
    TimedOut,
    /// Not run; `reason` says why.
    Skipped,
}

/// One test of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRecord {
    /// Its binary (`pkg`, `pkg::integration`, `pkg::bin/name`).
    pub binary_id: String,
    /// Its full name.
    pub name: String,
    /// How it ended.
    pub verdict: RecordVerdict,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the environment may be to blame (a service that died mid-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
    /// Every attempt, in order; none when skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
}

impl TestRecord {
    /// Time of all its attempts together: what it cost the job.
    pub fn total_ms(&self) -> u64 {
        self.attempts.iter().map(|a| a.duration_ms).sum()
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Exit code 0.
    Passed,
    /// Exited non-zero or died of a signal.
    Failed,
    /// Killed after `--test-timeout`.
    TimedOut,
    /// Killed because the run was stopped.
    Cancelled,
    /// The process could not be started.
    SpawnFailed,
}

/// One attempt of a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When it started.
    pub started_at: Timestamp,
    /// How long it ran.
    pub duration_ms: u64,
    /// How it ended.
    pub status: AttemptOutcome,
    /// The exit status or spawn error, when it did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The end of its standard output, when it did not pass (masked, no ANSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_tail: Option<String>,
    /// The end of its standard error, when it did not pass (masked, no ANSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
}

impl AttemptRecord {
    /// When it ended.
    pub fn end(&self) -> Timestamp {
        self.started_at.plus_ms(self.duration_ms)
    }
}

/// What a record says about its run besides the result: who ran it, in
/// which matrix, under which plan.
#[derive(Clone, Debug)]
pub struct RunMeta {
    /// The run's id.
    pub run_id: String,
    /// Its matrix group key (see [`group_key`]).
    pub group: String,
    /// Shards in the whole plan.
    pub shard_count: u32,
    /// The plan's partition kind.
    pub partition: String,
}

impl RunRecord {
    /// The record of a finished run; `list` names its tests.
    pub fn from_run(result: &RunResult, list: &TestList, meta: RunMeta) -> RunRecord {
        let mut shards: BTreeMap<u32, ShardRecord> = BTreeMap::new();
        for t in &result.timelines {
            let ready = t.provision.filter(|_| !t.provision_failed);
            shards.insert(
                t.shard,
                ShardRecord {
                    shard: t.shard,
                    provision: t.provision.as_ref().map(RecordSpan::of),
                    provision_failed: t.provision_failed,
                    ready_at: ready.map(|s| Timestamp::of(s.end)),
                    teardown: t.teardown.as_ref().map(RecordSpan::of),
                    tests: Vec::new(),
                },
            );
        }
        for o in &result.outcomes {
            shards
                .entry(o.shard)
                .or_insert_with(|| empty_shard(o.shard))
                .tests
                .push(test_record(o, list));
        }
        RunRecord {
            format: FORMAT,
            cargo_ephem: env!("CARGO_PKG_VERSION").to_owned(),
            run_id: meta.run_id,
            group: meta.group,
            shard_count: meta.shard_count,
            partition: meta.partition,
            started_at: Timestamp::of(result.started_at),
            duration_ms: millis(result.duration),
            prepare: result.prepare.as_ref().map(RecordSpan::of),
            shards: shards.into_values().collect(),
            env_errors: result
                .env_errors
                .iter()
                .map(|(shard, e)| EnvErrorRecord {
                    shard: *shard,
                    message: crate::mask::error_text(&e.to_string()),
                })
                .collect(),
            service_deaths: result.service_deaths.clone(),
            interrupted: result.interrupted,
            internal_error: result
                .internal_error
                .as_deref()
                .map(crate::mask::error_text),
            environments: None,
            outstanding: Vec::new(),
        }
    }

    /// When the run ended.
    pub fn ended_at(&self) -> Timestamp {
        self.started_at.plus_ms(self.duration_ms)
    }

    /// Every test of every shard, with its shard number.
    pub fn tests(&self) -> impl Iterator<Item = (u32, &TestRecord)> {
        self.shards
            .iter()
            .flat_map(|s| s.tests.iter().map(move |t| (s.shard, t)))
    }
}

fn empty_shard(shard: u32) -> ShardRecord {
    ShardRecord {
        shard,
        provision: None,
        provision_failed: false,
        ready_at: None,
        teardown: None,
        tests: Vec::new(),
    }
}

fn test_record(o: &TestOutcome, list: &TestList) -> TestRecord {
    let (verdict, reason) = match &o.verdict {
        Verdict::Passed => (RecordVerdict::Passed, None),
        Verdict::Flaky => (RecordVerdict::Flaky, None),
        Verdict::Failed => (RecordVerdict::Failed, None),
        Verdict::TimedOut => (RecordVerdict::TimedOut, None),
        Verdict::Skipped(why) => (RecordVerdict::Skipped, Some(why.clone())),
    };
    TestRecord {
        binary_id: list.binary_id(o.test).to_owned(),
        name: list.tests[o.test].name.clone(),
        verdict,
        reason,
        diagnosis: o.diagnosis.clone(),
        attempts: o.attempts.iter().map(attempt_record).collect(),
    }
}

fn attempt_record(a: &Attempt) -> AttemptRecord {
    let (status, detail) = match &a.status {
        AttemptStatus::Passed => (AttemptOutcome::Passed, None),
        AttemptStatus::Failed(exit) => (AttemptOutcome::Failed, Some(exit.clone())),
        AttemptStatus::TimedOut => (AttemptOutcome::TimedOut, None),
        AttemptStatus::Cancelled => (AttemptOutcome::Cancelled, None),
        AttemptStatus::SpawnFailed(e) => (AttemptOutcome::SpawnFailed, Some(e.clone())),
    };
    // Output of passing attempts is never kept (the dispatcher drops it).
    let keep = status != AttemptOutcome::Passed;
    let tail_of = |text: &str| Some(output_tail(text)).filter(|t| keep && !t.is_empty());
    AttemptRecord {
        started_at: Timestamp::of(a.started_at),
        duration_ms: millis(a.duration),
        status,
        detail,
        stdout_tail: tail_of(&a.stdout),
        stderr_tail: tail_of(&a.stderr),
    }
}

/// Whole milliseconds, rounded to the nearest.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().saturating_add(500) / 1000).unwrap_or(u64::MAX)
}

/// The last [`TAIL_LINES`] lines of `text` and at most [`TAIL_BYTES`],
/// ANSI escapes removed, with a first line saying what was cut.
pub fn output_tail(text: &str) -> String {
    let clean = String::from_utf8_lossy(&strip_ansi_escapes::strip(text)).into_owned();
    let lines: Vec<&str> = clean.lines().collect();
    let kept = lines.len().min(TAIL_LINES);
    let mut tail = lines[lines.len() - kept..].join("\n");
    let mut cut_lines = lines.len() - kept;
    if tail.len() > TAIL_BYTES {
        let mut start = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        cut_lines += tail[..start].matches('\n').count();
        tail = format!("[...]{}", &tail[start..]);
    }
    if cut_lines > 0 {
        format!("[... {cut_lines} earlier lines cut; the JUnit report has more ...]\n{tail}")
    } else {
        tail
    }
}

/// The key that puts the records of one CI matrix together: `EPHEM_RUN_GROUP`
/// if set, else GitHub's `GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT`, else GitLab's
/// `CI_PIPELINE_ID`, else the run id (a record of its own).
pub fn group_key(run_id: &str) -> String {
    group_key_from(|name| std::env::var(name).ok(), run_id)
}

/// [`group_key`] over any source of variables; empty values count as unset.
pub fn group_key_from(var: impl Fn(&str) -> Option<String>, run_id: &str) -> String {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(group) = var("EPHEM_RUN_GROUP") {
        return group;
    }
    if let Some(id) = var("GITHUB_RUN_ID") {
        return match var("GITHUB_RUN_ATTEMPT") {
            Some(attempt) => format!("{id}-{attempt}"),
            None => id,
        };
    }
    var("CI_PIPELINE_ID").unwrap_or_else(|| run_id.to_owned())
}

/// Where the record goes beside the merged JUnit report `junit`:
/// `<stem>-shard-<M>.record.json` when this invocation ran only shard M of
/// several, else `<stem>.record.json`.
pub fn record_path(junit: &Utf8Path, only_shard: Option<u32>) -> Utf8PathBuf {
    let stem = junit.file_stem().unwrap_or("junit");
    match only_shard {
        Some(m) => junit.with_file_name(format!("{stem}-shard-{m}.record.json")),
        None => junit.with_file_name(format!("{stem}.record.json")),
    }
}

/// Writes the record as one line of JSON, creating the parent folder.
pub fn write_record(record: &RunRecord, path: &Utf8Path) -> Result<()> {
    let json = serde_json::to_string(record)
        .map_err(|e| EphemError::Internal(format!("serializing the run record: {e}")))?;
    write_atomically(path, &format!("{json}\n"), "cannot write run record")
}

/// Writes next to `path`, then renames, so a reader never sees half a file;
/// every secret is masked on the way (the record and the page both come
/// through here).
pub(crate) fn write_atomically(path: &Utf8Path, text: &str, action: &'static str) -> Result<()> {
    let io = |source| EphemError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, crate::mask::mask(text)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Fails now, before the build, if the file `what` (a flag, or what a flag
/// implies) could not be written at `path` later: its folder cannot be made
/// or written, or it is a folder (`if_folder` says how to fix that).
pub(crate) fn check_writable(what: &str, path: &Utf8Path, if_folder: &str) -> Result<()> {
    if path.is_dir() {
        return Err(EphemError::Usage(format!(
            "{what} {path}: is a folder; {if_folder}"
        )));
    }
    let unwritable = |e: std::io::Error| {
        EphemError::Usage(format!(
            "{what} {path}: cannot write there ({e}); give a path in a writable folder"
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(unwritable)?;
    }
    let mut probe = path.as_os_str().to_owned();
    probe.push(".tmp");
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Just enough of a record to know whether this version can read the rest.
#[derive(Deserialize)]
struct Header {
    format: Option<u64>,
    cargo_ephem: Option<String>,
}

/// Reads one record, with errors that name the file and what is wrong.
pub fn read_record(path: &Utf8Path) -> Result<RunRecord> {
    let bad = |message: String| EphemError::Input {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read this run record: {e}; check the path")))?;
    let header: Header = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not a run record ({e}); give the <stem>.record.json files that \
             `cargo ephem test --junit` writes"
        ))
    })?;
    match header.format {
        None => {
            return Err(bad(
                "not a run record: it has no \"format\" field; give the <stem>.record.json \
                 files that `cargo ephem test --junit` writes"
                    .to_owned(),
            ))
        }
        Some(f) if f != u64::from(FORMAT) => {
            return Err(bad(format!(
                "run record format {f} (written by cargo-ephem {}); this cargo-ephem {} reads \
                 format {FORMAT}: draw it with the cargo-ephem version that wrote it",
                header
                    .cargo_ephem
                    .as_deref()
                    .unwrap_or("of unknown version"),
                env!("CARGO_PKG_VERSION"),
            )))
        }
        Some(_) => {}
    }
    serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not a valid run record of format {FORMAT} ({e}); was it edited by hand?"
        ))
    })
}

/// A record and where it came from (a path, or "this run").
#[derive(Clone, Debug)]
pub struct SourcedRecord {
    /// The file it was read from, or a description.
    pub source: String,
    /// The record.
    pub record: RunRecord,
}

/// The records of one CI matrix (or of one lone run).
#[derive(Clone, Debug)]
pub struct Group {
    /// The group key the records share.
    pub key: String,
    /// Shards in the plan, which every record of the group agrees on.
    pub shard_count: u32,
    /// The partition kind, which every record of the group agrees on.
    pub partition: String,
    /// The records, by start time.
    pub records: Vec<SourcedRecord>,
}

impl Group {
    /// Every shard of the group with its record, by shard number.
    pub fn shards(&self) -> Vec<(&SourcedRecord, &ShardRecord)> {
        let mut shards: Vec<_> = self
            .records
            .iter()
            .flat_map(|r| r.record.shards.iter().map(move |s| (r, s)))
            .collect();
        shards.sort_by_key(|(_, s)| s.shard);
        shards
    }

    /// Shards of the plan that no record of the group holds.
    pub fn missing_shards(&self) -> Vec<u32> {
        let present: std::collections::HashSet<u32> =
            self.shards().iter().map(|(_, s)| s.shard).collect();
        (1..=self.shard_count)
            .filter(|m| !present.contains(m))
            .collect()
    }
}

/// Puts records of the same group together, groups ordered by their first
/// start. Records of one group must agree on the plan (shard count and
/// partition kind) and hold each shard once; otherwise the error names the
/// files, since drawing them together would mix two plans silently.
pub fn group_records(records: Vec<SourcedRecord>) -> Result<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|g| g.key == r.record.group) {
            Some(group) => {
                check_same_plan(group, &r)?;
                check_new_shards(group, &r)?;
                group.records.push(r);
            }
            None => groups.push(Group {
                key: r.record.group.clone(),
                shard_count: r.record.shard_count,
                partition: r.record.partition.clone(),
                records: vec![r],
            }),
        }
    }
    for g in &mut groups {
        g.records.sort_by_key(|r| r.record.started_at);
    }
    groups.sort_by_key(|g| g.records.first().map(|r| r.record.started_at));
    Ok(groups)
}

fn check_same_plan(group: &Group, r: &SourcedRecord) -> Result<()> {
    if r.record.shard_count == group.shard_count && r.record.partition == group.partition {
        return Ok(());
    }
    let first = &group.records[0];
    Err(EphemError::Usage(format!(
        "records of group {:?} disagree on the plan: {} has {} shards ({}), {} has {} shards \
         ({}); give the records of one matrix run, or set EPHEM_RUN_GROUP apart for each matrix",
        group.key,
        first.source,
        group.shard_count,
        group.partition,
        r.source,
        r.record.shard_count,
        r.record.partition
    )))
}

fn check_new_shards(group: &Group, r: &SourcedRecord) -> Result<()> {
    for shard in &r.record.shards {
        if let Some(other) = group
            .records
            .iter()
            .find(|o| o.record.shards.iter().any(|s| s.shard == shard.shard))
        {
            return Err(EphemError::Usage(format!(
                "shard {} of group {:?} is in two records: {} and {}; give each job's record \
                 once, or set EPHEM_RUN_GROUP apart for each matrix",
                shard.shard, group.key, other.source, r.source
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    use ephem_fixtures::EnvError;

    use crate::run::ShardTimeline;
    use crate::test_list::TestBinary;

    pub(crate) fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + ms)
    }

    pub(crate) fn list() -> Arc<TestList> {
        let binary = TestBinary {
            binary_id: "pkg".into(),
            binary_name: "pkg-0".into(),
            package_id: "pkg 0.1.0".into(),
            package_name: "pkg".into(),
            kind: "lib".into(),
            path: "/nonexistent/pkg-0".into(),
            cwd: "/nonexistent".into(),
            env: Arc::new(Vec::new()),
        };
        let tests = ["a_passes", "b_flaky", "c_fails", "d_times_out", "e_ignored"]
            .iter()
            .map(|n| (n.to_string(), *n == "e_ignored"))
            .collect();
        Arc::new(TestList::new(vec![(binary, tests)], "/nonexistent".into()))
    }

    fn attempt(status: AttemptStatus, start: u64, ms: u64, stderr: &str) -> Attempt {
        Attempt {
            status,
            started_at: at(start),
            duration: Duration::from_millis(ms),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        }
    }

    fn outcome(test: usize, shard: u32, verdict: Verdict, attempts: Vec<Attempt>) -> TestOutcome {
        TestOutcome {
            test,
            shard,
            attempts,
            verdict,
            diagnosis: None,
        }
    }

    /// A two-shard run with one test of every verdict.
    pub(crate) fn result() -> RunResult {
        let failed = || AttemptStatus::Failed("exit code 101".into());
        RunResult {
            outcomes: vec![
                outcome(
                    0,
                    1,
                    Verdict::Passed,
                    vec![attempt(AttemptStatus::Passed, 1000, 20, "")],
                ),
                outcome(
                    1,
                    1,
                    Verdict::Flaky,
                    vec![
                        attempt(failed(), 1030, 10, "flaky <b>\n"),
                        attempt(AttemptStatus::Passed, 1050, 12, ""),
                    ],
                ),
                outcome(
                    2,
                    2,
                    Verdict::Failed,
                    vec![
                        attempt(failed(), 1100, 30, "first\n"),
                        attempt(
                            failed(),
                            1140,
                            31,
                            "\x1b[31m<script>alert(1)</script>\x1b[0m\n",
                        ),
                    ],
                ),
                outcome(
                    3,
                    2,
                    Verdict::TimedOut,
                    vec![attempt(AttemptStatus::TimedOut, 1200, 500, "")],
                ),
                outcome(4, 2, Verdict::Skipped("ignored".into()), vec![]),
            ],
            interrupted: None,
            env_errors: vec![(2, EnvError::Other("teardown was slow".into()))],
            kept: Vec::new(),
            kept_for_reuse: None,
            service_deaths: Vec::new(),
            internal_error: None,
            started_at: at(0),
            duration: Duration::from_millis(2000),
            prepare: Some(Span {
                start: at(10),
                end: at(300),
            }),
            timelines: vec![
                ShardTimeline {
                    shard: 1,
                    provision: Some(Span {
                        start: at(300),
                        end: at(900),
                    }),
                    provision_failed: false,
                    teardown: Some(Span {
                        start: at(1100),
                        end: at(1300),
                    }),
                },
                ShardTimeline {
                    shard: 2,
                    provision: Some(Span {
                        start: at(300),
                        end: at(950),
                    }),
                    provision_failed: false,
                    teardown: Some(Span {
                        start: at(1800),
                        end: at(1990),
                    }),
                },
            ],
        }
    }

    pub(crate) fn meta(group: &str, shard_count: u32) -> RunMeta {
        RunMeta {
            run_id: format!("run-{group}"),
            group: group.to_owned(),
            shard_count,
            partition: "slice".to_owned(),
        }
    }

    pub(crate) fn record() -> RunRecord {
        RunRecord::from_run(&result(), &list(), meta("g", 2))
    }

    #[test]
    fn a_record_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = Utf8PathBuf::from_path_buf(dir.path().join("out/junit.record.json")).unwrap();
        let record = record();
        write_record(&record, &path).unwrap();
        assert_eq!(read_record(&path).unwrap(), record);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"format":1,"cargo_ephem":""#), "{text}");
        assert!(text.contains(r#""started_at":"2026-09-21T"#), "{text}");
    }

    #[test]
    fn verdicts_attempts_and_spans_come_from_the_run() {
        let r = record();
        assert_eq!((r.run_id.as_str(), r.shard_count), ("run-g", 2));
        assert_eq!(r.duration_ms, 2000);
        let origin = Timestamp::of(at(0));
        assert_eq!(r.prepare.unwrap().start.ms_since(origin), 10);
        assert_eq!(r.shards.len(), 2);
        let s1 = &r.shards[0];
        assert_eq!(s1.provision.unwrap().ms(), 600);
        assert_eq!(s1.ready_at.unwrap().ms_since(origin), 900);
        assert_eq!(s1.teardown.unwrap().end.ms_since(origin), 1300);
        let verdicts: Vec<_> = r
            .tests()
            .map(|(m, t)| (m, t.name.as_str(), t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                (1, "a_passes", RecordVerdict::Passed),
                (1, "b_flaky", RecordVerdict::Flaky),
                (2, "c_fails", RecordVerdict::Failed),
                (2, "d_times_out", RecordVerdict::TimedOut),
                (2, "e_ignored", RecordVerdict::Skipped),
            ]
        );
        let (_, skipped) = r.tests().last().unwrap();
        assert_eq!(skipped.reason.as_deref(), Some("ignored"));
        assert!(skipped.attempts.is_empty());
        let (_, failed) = r.tests().nth(2).unwrap();
        assert_eq!(failed.attempts.len(), 2);
        let last = &failed.attempts[1];
        assert_eq!(last.status, AttemptOutcome::Failed);
        assert_eq!(last.detail.as_deref(), Some("exit code 101"));
        assert_eq!(last.started_at.ms_since(origin), 1140);
        assert_eq!(last.duration_ms, 31);
        assert_eq!(
            last.stderr_tail.as_deref(),
            Some("<script>alert(1)</script>"),
            "ANSI escapes are removed"
        );
        assert_eq!(last.stdout_tail, None);
        assert_eq!(failed.total_ms(), 61);
        assert_eq!(r.env_errors[0].shard, 2);
        assert!(r.env_errors[0].message.contains("teardown was slow"));
    }

    #[test]
    fn a_failed_provisioning_has_no_ready_time() {
        let mut result = result();
        result.timelines[1].provision_failed = true;
        let r = RunRecord::from_run(&result, &list(), meta("g", 2));
        assert!(r.shards[1].provision_failed);
        assert_eq!(r.shards[1].ready_at, None);
        assert!(r.shards[1].provision.is_some());
    }

    #[test]
    fn output_tails_are_bounded() {
        let long: String = (1..=250).map(|i| format!("line {i}\n")).collect();
        let tail = output_tail(&long);
        assert!(tail.starts_with("[... 150 earlier lines cut"), "{tail}");
        assert!(tail.ends_with("line 250"));
        assert_eq!(tail.lines().count(), TAIL_LINES + 1);
        let wide = "é".repeat(TAIL_BYTES);
        assert!(output_tail(&wide).len() <= TAIL_BYTES + 10);
    }

    #[test]
    fn the_group_key_prefers_ephem_then_github_then_gitlab() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(group_key_from(env(&[]), "run1"), "run1");
        assert_eq!(group_key_from(env(&[("CI_PIPELINE_ID", "77")]), "r"), "77");
        let github = &[
            ("CI_PIPELINE_ID", "77"),
            ("GITHUB_RUN_ID", "555"),
            ("GITHUB_RUN_ATTEMPT", "2"),
        ];
        assert_eq!(group_key_from(env(github), "r"), "555-2");
        let ephem = &[("GITHUB_RUN_ID", "555"), ("EPHEM_RUN_GROUP", "nightly")];
        assert_eq!(group_key_from(env(ephem), "r"), "nightly");
        assert_eq!(group_key_from(env(&[("EPHEM_RUN_GROUP", " ")]), "r"), "r");
    }

    #[test]
    fn record_paths_sit_beside_the_junit_report() {
        let junit = Utf8Path::new("out/junit.xml");
        assert_eq!(record_path(junit, None), "out/junit.record.json");
        assert_eq!(record_path(junit, Some(3)), "out/junit-shard-3.record.json");
    }

    fn bad_file(dir: &tempfile::TempDir, name: &str, text: &str) -> Utf8PathBuf {
        let path = Utf8PathBuf::from_path_buf(dir.path().join(name)).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_records_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, expected) in [
            ("junk.json", "<testsuites/>", "not a run record"),
            ("empty.json", "{}", "no \"format\" field"),
            (
                "future.json",
                r#"{"format":2,"cargo_ephem":"9.0.0"}"#,
                "run record format 2 (written by cargo-ephem 9.0.0)",
            ),
            ("partial.json", r#"{"format":1}"#, "not a valid run record"),
        ] {
            let path = bad_file(&dir, name, text);
            let err = read_record(&path).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(path.as_str()), "{text}");
            assert!(text.contains(expected), "{text}");
            assert_eq!(err.exit_code(), crate::exit_codes::USAGE);
        }
        let err = read_record(Utf8Path::new("/nonexistent/x.record.json")).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    fn sourced(group: &str, shard_count: u32, shards: &[u32], start: u64) -> SourcedRecord {
        let mut record = RunRecord::from_run(&result(), &list(), meta(group, shard_count));
        record.shards.retain(|s| shards.contains(&s.shard));
        record.started_at = Timestamp::of(at(start));
        SourcedRecord {
            source: format!("{group}-{shards:?}.json"),
            record,
        }
    }

    #[test]
    fn records_of_one_group_go_together_and_others_apart() {
        let groups = group_records(vec![
            sourced("b", 2, &[2], 50),
            sourced("a", 3, &[1, 2], 100),
            sourced("b", 2, &[1], 10),
        ])
        .unwrap();
        let keys: Vec<_> = groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["b", "a"], "groups by first start");
        let shards: Vec<u32> = groups[0].shards().iter().map(|(_, s)| s.shard).collect();
        assert_eq!(shards, [1, 2]);
        assert!(groups[0].missing_shards().is_empty());
        assert_eq!(groups[1].missing_shards(), [3]);
    }

    #[test]
    fn records_that_disagree_within_a_group_are_an_error_naming_both() {
        let err =
            group_records(vec![sourced("m", 2, &[1], 0), sourced("m", 3, &[2], 0)]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("m-[1].json has 2 shards"), "{text}");
        assert!(text.contains("m-[2].json has 3 shards"), "{text}");
        assert_eq!(err.exit_code(), crate::exit_codes::USAGE);

        let mut other_kind = sourced("m", 2, &[2], 0);
        other_kind.record.partition = "hash".into();
        let err = group_records(vec![sourced("m", 2, &[1], 0), other_kind]).unwrap_err();
        assert!(err.to_string().contains("(hash)"), "{err}");

        let err =
            group_records(vec![sourced("m", 2, &[1], 0), sourced("m", 2, &[1, 2], 0)]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("shard 1 of group \"m\" is in two records"),
            "{text}"
        );
    }
}
