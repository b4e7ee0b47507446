//! What each command is asked to do, as typed values: the command line maps
//! onto these, and library users build them directly.

use std::time::Duration;

use camino::Utf8PathBuf;
use ephem_fixtures::BackendKind;

use crate::discover::CargoOptions;
use crate::error::{EphemError, Result};
use crate::limits::{MAX_DURATION, MAX_RETRIES, MAX_SHARDS, MAX_TEST_THREADS};
use crate::partition::{PartitionKind, PartitionSpec};
pub use crate::profile::MaxFail;
use crate::report::levels::Reporting;
pub use crate::rerun::RerunFrom;
use crate::test_list::TestFilter;

/// Everything `cargo ephem test` needs to know.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// What cargo builds.
    pub cargo: CargoOptions,
    /// Which tests run.
    pub filter: TestFilter,
    /// What an empty selection means.
    pub no_tests: NoTests,
    /// Tests at once across all shards; `None`: the profile's
    /// `test-threads`, else the number of CPUs.
    pub test_threads: Option<usize>,
    /// Extra attempts of a failing test, for every test; `None`: the
    /// profile's `retries` (0 without one).
    pub retries: Option<u32>,
    /// Kill a test after this long; `None`: the profile's
    /// `slow-timeout.terminate-after` periods, if set.
    pub test_timeout: Option<Duration>,
    /// Report a test as slow after this long; `None`: the profile's
    /// `slow-timeout` (60s without one).
    pub slow_timeout: Option<Duration>,
    /// When failures stop the run (`--max-fail`, `--no-fail-fast`);
    /// `None`: the profile's `fail-fast` (the first failure without one).
    pub fail_fast: Option<MaxFail>,
    /// The nextest profile of `.config/nextest.toml` (`--profile`,
    /// `NEXTEST_PROFILE`); `None`: `default`.
    pub profile: Option<String>,
    /// How tests split into shards, and which run here.
    pub sharding: Sharding,
    /// JUnit reports of earlier runs, for `duration` partitions.
    pub timings: Vec<Utf8PathBuf>,
    /// Where the merged JUnit report goes (per-shard ones beside it).
    pub junit: Option<Utf8PathBuf>,
    /// Where the HTML picture of the run goes (`--html`).
    pub html: Option<Utf8PathBuf>,
    /// Where environments come from.
    pub env: EnvOptions,
    /// Keep environments after the run.
    pub keep_env: bool,
    /// `--reuse`: take over environments kept by an earlier run with the
    /// same key, and keep this run's for the next (idle TTL `[reuse] ttl`).
    pub reuse: bool,
    /// How the run's reaper is started.
    pub reaper: ReaperLaunch,
    /// Run from an archive instead of building.
    pub archive: Option<ArchiveInput>,
    /// `--rerun-failed`: only what an earlier run left failed or not run.
    pub rerun: Option<RerunFrom>,
    /// What the display shows (status levels, test output) and
    /// `--no-capture`.
    pub reporting: Reporting,
    /// The display settings given as flags (or `NEXTEST_*` variables):
    /// they win over the profile's, which win over nextest's defaults.
    pub output_flags: crate::profile::OutputLevels,
}

/// `--archive-file FILE [--workspace-remap DIR]`: tests built elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveInput {
    /// The archive `cargo ephem archive` wrote.
    pub file: Utf8PathBuf,
    /// Where the archived workspace's sources are here (default: where
    /// they were when the archive was made).
    pub workspace_remap: Option<Utf8PathBuf>,
}

/// How a run starts its out-of-process reaper, the program that cleans up
/// when the runner is killed (see [`crate::teardown::reaper`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReaperLaunch {
    /// `<this executable> __reap ...`: right for the `cargo-ephem` binary.
    #[default]
    ThisExecutable,
    /// `<program> __reap ...`: for programs that embed this library but
    /// do not serve `__reap` (give it the `cargo-ephem` binary).
    Program(Utf8PathBuf),
    /// No reaper: a runner killed by SIGKILL leaves its test processes, and
    /// its environments until the next sweep. For tests of the library.
    Disabled,
}

impl TestOptions {
    /// Options with the defaults of `cargo ephem test`.
    pub fn new(cargo: CargoOptions) -> TestOptions {
        TestOptions {
            cargo,
            filter: TestFilter::default(),
            no_tests: NoTests::default(),
            test_threads: None,
            retries: None,
            test_timeout: None,
            slow_timeout: None,
            fail_fast: None,
            profile: None,
            sharding: Sharding::default(),
            timings: Vec::new(),
            junit: None,
            html: None,
            env: EnvOptions::default(),
            keep_env: false,
            reuse: false,
            reaper: ReaperLaunch::default(),
            archive: None,
            rerun: None,
            reporting: Reporting::default(),
            output_flags: Default::default(),
        }
    }

    /// Every number in range and the flags consistent: the checks the
    /// command line makes, for callers that build options directly.
    pub fn check(&self) -> Result<()> {
        let usage = |m: String| Err(EphemError::Usage(m));
        if let Some(j) = self.test_threads {
            if !(1..=MAX_TEST_THREADS).contains(&j) {
                return usage(format!(
                    "--test-threads {j} is out of range (allowed: 1 to {MAX_TEST_THREADS})"
                ));
            }
        }
        if let Some(retries) = self.retries.filter(|r| *r > MAX_RETRIES) {
            return usage(format!(
                "--retries {retries} is out of range (allowed: 0 to {MAX_RETRIES})"
            ));
        }
        for (flag, d) in [
            ("--test-timeout", self.test_timeout),
            ("--slow-timeout", self.slow_timeout),
            ("--env-ttl", Some(self.env.env_ttl)),
        ] {
            if let Some(d) = d.filter(|d| d.is_zero() || *d > MAX_DURATION) {
                return usage(format!(
                    "{flag} {} is out of range (allowed: 1ms to 365days)",
                    humantime::format_duration(d)
                ));
            }
        }
        let count = self.sharding.count();
        if !(1..=MAX_SHARDS).contains(&count) {
            return usage(format!(
                "{count} shards is out of range (allowed: 1 to {MAX_SHARDS})"
            ));
        }
        if let Sharding::Partition(p) = self.sharding {
            if p.shard == 0 || p.shard > p.count {
                return usage(format!(
                    "--partition {}:{}/{}: the shard number must be between 1 and {}",
                    p.kind, p.shard, p.count, p.count
                ));
            }
        }
        if self.reuse && self.keep_env {
            return usage(
                "--reuse and --keep-env both keep environments; use --reuse for the next run to \
                 take them over, --keep-env to look at them by hand"
                    .to_owned(),
            );
        }
        if self.archive.is_some() && self.cargo.builds_something() {
            return usage(
                "--archive-file runs the tests the archive holds: cargo's build and package \
                 selection flags do not apply (select tests with filters, or make another archive)"
                    .to_owned(),
            );
        }
        if self.sharding.kind(!self.timings.is_empty()) == PartitionKind::Duration
            && self.timings.is_empty()
        {
            return usage(
                "--partition duration:M/N needs --timings FILE (a JUnit report of an earlier run); \
                 use slice:M/N when there is none"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// How a run splits its tests into shards and which of them it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharding {
    /// `--shards N`: all N shards, here, at once (N = 1 without the flag).
    All {
        /// Number of shards.
        count: u32,
    },
    /// `--partition KIND:M/N`: only shard M, for a CI matrix job.
    Partition(PartitionSpec),
}

impl Default for Sharding {
    fn default() -> Self {
        Sharding::All { count: 1 }
    }
}

impl Sharding {
    /// Shards in the whole plan.
    pub fn count(self) -> u32 {
        match self {
            Sharding::All { count } => count,
            Sharding::Partition(p) => p.count,
        }
    }

    /// How tests are assigned: the partition's kind, or for `--shards`,
    /// `duration` when past timings are given and `slice` otherwise.
    pub fn kind(self, have_timings: bool) -> PartitionKind {
        match self {
            Sharding::Partition(p) => p.kind,
            Sharding::All { .. } if have_timings => PartitionKind::Duration,
            Sharding::All { .. } => PartitionKind::Slice,
        }
    }

    /// The shards this invocation runs, 1-based.
    pub fn shards_here(self) -> Vec<u32> {
        match self {
            Sharding::All { count } => (1..=count).collect(),
            Sharding::Partition(p) => vec![p.shard],
        }
    }
}

/// What a selection without tests to run means (`--no-tests`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoTests {
    /// Exit 0 silently.
    Pass,
    /// Exit 0 with a note.
    #[default]
    Warn,
    /// Exit 4.
    Fail,
}

/// Where a command's environment configuration comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// `ephem.toml` at the workspace root, when it exists.
    #[default]
    WorkspaceDefault,
    /// `--config PATH`: this file, which must exist.
    File(Utf8PathBuf),
    /// `--no-env`: no environments, even if `ephem.toml` exists.
    Disabled,
}

/// Where environments come from and how long they outlive a dead runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOptions {
    /// The configuration file.
    pub config: ConfigSource,
    /// `--backend NAME`, overriding the configuration's `backend`.
    pub backend: Option<BackendKind>,
    /// Environments count as abandoned this long after their last renewal.
    pub env_ttl: Duration,
    /// `--image-cache DIR`: the warm image cache, overriding
    /// `EPHEM_IMAGE_CACHE` and `[images] cache`.
    pub image_cache: Option<Utf8PathBuf>,
    /// `--no-snapshot`: services with `snapshot` are provisioned normally
    /// and no snapshot is built (as with `EPHEM_SNAPSHOT=0`).
    pub no_snapshot: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            config: ConfigSource::WorkspaceDefault,
            backend: None,
            env_ttl: Duration::from_secs(30 * 60),
            image_cache: None,
            no_snapshot: false,
        }
    }
}

/// What `cargo ephem images` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImagesAction {
    /// Make every image of the configuration present in the daemon.
    Pull,
    /// List the cache's images.
    Ls,
    /// Remove cache entries and unreferenced blobs.
    Prune {
        /// Only entries unused for this long.
        older_than: Option<Duration>,
        /// Then drop least recently used entries until the cache fits.
        max_size: Option<u64>,
        /// Also the images the configuration references.
        all: bool,
        /// Age below which blobs no entry names, and temporary files, are
        /// kept (an hour when `None`).
        grace: Option<Duration>,
    },
    /// Re-resolve tags at the registry and refill changed images.
    Update,
}

/// Everything `cargo ephem images` needs to know.
#[derive(Clone, Debug)]
pub struct ImagesOptions {
    /// The workspace whose `ephem.toml` names the images.
    pub manifest_path: Option<Utf8PathBuf>,
    /// The configuration and the cache (`--image-cache`).
    pub env: EnvOptions,
    /// The subcommand.
    pub action: ImagesAction,
}

/// How `cargo ephem list` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListFormat {
    /// Tests grouped by binary.
    #[default]
    Human,
    /// nextest-metadata's `TestListSummary` as JSON.
    Json,
}

/// Everything `cargo ephem list` needs to know.
#[derive(Clone, Debug)]
pub struct ListOptions {
    /// What cargo builds.
    pub cargo: CargoOptions,
    /// Which tests are listed as selected.
    pub filter: TestFilter,
    /// How to print.
    pub format: ListFormat,
    /// List what an archive holds instead of building.
    pub archive: Option<ArchiveInput>,
}

/// Everything `cargo ephem gc` needs to know.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// The workspace whose `ephem.toml` names the backend.
    pub manifest_path: Option<Utf8PathBuf>,
    /// Which backend to clean, and its configuration.
    pub env: EnvOptions,
    /// List, remove nothing.
    pub dry_run: bool,
    /// Docker: also other hosts' runs, once expired. Kubernetes: also runs
    /// that have not expired (see [`ephem_fixtures::sweep::plan_expiry_sweep`]).
    pub all_hosts: bool,
    /// Only this run, now, whatever its expiry or `--keep-env` (never while
    /// its runner lives).
    pub run: Option<String>,
}

/// How `cargo ephem up` prints the environment's variables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VarsFormat {
    /// `NAME=value` lines, shell-quoted where needed.
    #[default]
    Env,
    /// One JSON object.
    Json,
}

/// Everything `cargo ephem up` needs to know.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The workspace (its target folder keeps `up`'s state).
    pub manifest_path: Option<Utf8PathBuf>,
    /// Where the environment comes from.
    pub env: EnvOptions,
    /// Which shard's environment (`${shard}`).
    pub shard: u32,
    /// How to print the variables.
    pub format: VarsFormat,
    /// How `up`'s reaper is started.
    pub reaper: ReaperLaunch,
}

/// Everything `cargo ephem down` needs to know.
#[derive(Clone, Debug, Default)]
pub struct DownOptions {
    /// The workspace whose `up` environments go.
    pub manifest_path: Option<Utf8PathBuf>,
    /// Only this shard's.
    pub shard: Option<u32>,
    /// `--backend NAME`, for environments whose state does not say.
    pub backend: Option<BackendKind>,
}

/// What the hidden `__reap` command is told by the runner that starts it.
#[derive(Clone, Debug)]
pub struct ReapOptions {
    /// The run to watch.
    pub run_id: String,
    /// The backend whose resources of the run to remove, if it has any.
    pub backend: Option<BackendKind>,
    /// The configuration, for backends that need it to be reached.
    pub config: Option<Utf8PathBuf>,
    /// Where to write, should it have to act.
    pub log: Utf8PathBuf,
}

/// Which shards `cargo ephem exec` starts here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecShards {
    /// `--shards N`: N commands at once, each with its own environment.
    All {
        /// Number of shards (1 without the flag).
        count: u32,
    },
    /// `--partition M/N`: one command, shard M of N (a CI matrix job).
    One {
        /// 1-based shard number.
        shard: u32,
        /// Shards in the whole plan.
        count: u32,
    },
}

impl Default for ExecShards {
    fn default() -> Self {
        ExecShards::All { count: 1 }
    }
}

impl ExecShards {
    /// Shards in the whole plan (`{shards}`, `EPHEM_SHARD_COUNT`).
    pub fn count(self) -> u32 {
        match self {
            ExecShards::All { count } | ExecShards::One { count, .. } => count,
        }
    }

    /// The shards started here, 1-based.
    pub fn here(self) -> Vec<u32> {
        match self {
            ExecShards::All { count } => (1..=count).collect(),
            ExecShards::One { shard, .. } => vec![shard],
        }
    }
}

impl std::str::FromStr for ExecShards {
    type Err = String;

    /// `M/N` of `exec --partition M/N`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((kind, _)) = s.split_once(':') {
            return Err(format!(
                "exec takes --partition M/N without a kind ({kind:?} in {s:?}): the command \
                 splits its own tests; pass the kind to it, e.g. `-- cargo nextest run \
                 --partition {kind}:{{shard}}/{{shards}}`"
            ));
        }
        let usage = "expected M/N, shard M of N (e.g. 2/4)";
        let (m, n) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid partition {s:?}: {usage}"))?;
        let max = u64::from(MAX_SHARDS);
        let count = crate::limits::parse_in_range(n, 1, max)
            .map_err(|e| format!("invalid partition {s:?}: the shard count {e}"))?;
        let shard = crate::limits::parse_in_range(m, 1, count)
            .map_err(|e| format!("invalid partition {s:?}: the shard number {e}"))?;
        Ok(ExecShards::One {
            shard: shard as u32,
            count: count as u32,
        })
    }
}

/// Everything `cargo ephem exec` needs to know.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The configuration (`--config`, else the nearest `ephem.toml` from the
    /// current directory up), the backend and the expiry.
    pub env: EnvOptions,
    /// Which shards start here.
    pub shards: ExecShards,
    /// The command and its arguments; `{shard}` and `{shards}` are replaced
    /// in each.
    pub command: Vec<std::ffi::OsString>,
    /// Keep the environments after the commands end.
    pub keep_env: bool,
    /// Between the forwarded signal and SIGKILL when the commands are stopped.
    pub grace: Duration,
    /// How the run's reaper is started.
    pub reaper: ReaperLaunch,
}

impl ExecOptions {
    /// Options with the defaults of `cargo ephem exec` for this command.
    pub fn new(command: Vec<std::ffi::OsString>) -> ExecOptions {
        ExecOptions {
            env: EnvOptions::default(),
            shards: ExecShards::default(),
            command,
            keep_env: false,
            grace: Duration::from_secs(10),
            reaper: ReaperLaunch::default(),
        }
    }

    /// The checks the command line makes, for callers that build options
    /// directly.
    pub fn check(&self) -> Result<()> {
        let usage = |m: String| Err(EphemError::Usage(m));
        if self.command.is_empty() {
            return usage(
                "exec needs a command: `cargo ephem exec [OPTIONS] -- COMMAND [ARGS]...`".into(),
            );
        }
        let count = self.shards.count();
        if !(1..=MAX_SHARDS).contains(&count) {
            return usage(format!(
                "{count} shards is out of range (allowed: 1 to {MAX_SHARDS})"
            ));
        }
        if let ExecShards::One { shard, count } = self.shards {
            if shard == 0 || shard > count {
                return usage(format!(
                    "--partition {shard}/{count}: the shard number must be between 1 and {count}"
                ));
            }
        }
        if self.env.config == ConfigSource::Disabled {
            return usage("exec starts environments: --no-env does not apply".into());
        }
        let ttl = self.env.env_ttl;
        if ttl.is_zero() || ttl > MAX_DURATION {
            return usage(format!(
                "--env-ttl {} is out of range (allowed: 1ms to 365days)",
                humantime::format_duration(ttl)
            ));
        }
        Ok(())
    }
}
