//! Command-line definitions. Only parsing lives here; `main.rs` wires the
//! parsed options to `ephem-core`.

use std::time::Duration;

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ephem_core::discover::CargoOptions;
use ephem_core::partition::PartitionSpec;

const EXIT_CODES: &str = "\
Exit codes:
  0    all selected tests passed (flaky tests count as passed)
  2    usage or configuration error
  4    no test matched the filters and --no-tests=fail
  100  one or more tests failed or timed out
  101  the build failed
  102  an environment could not be prepared or provisioned
  104  a test binary could not be listed
  130  interrupted by Ctrl-C (128 + signal: 143 for SIGTERM, 129 for SIGHUP)
  1    unexpected internal error";

/// cargo-ephem: runs a workspace's tests, one process each, split into shards
/// that each get their own disposable environment.
#[derive(Debug, Parser)]
#[command(name = "cargo ephem", bin_name = "cargo ephem", version, after_help = EXIT_CODES)]
pub struct App {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, list, shard and run the tests, then report.
    #[command(after_help = EXIT_CODES)]
    Test(TestArgs),
    /// Build and list the tests, grouped by binary.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Work with JUnit reports.
    #[command(subcommand)]
    Junit(JunitCommand),
    /// Start one shard's environment for local development and keep it until
    /// Ctrl-C or `cargo ephem down`.
    #[command(after_help = EXIT_CODES)]
    Up(UpArgs),
    /// Remove environments started by `cargo ephem up` in this workspace.
    Down(DownArgs),
    /// Remove resources of abandoned runs: runner gone, or lease expired.
    ///
    /// Lists each resource with its run, shard, age and why it is removed.
    /// Never touches a resource without cargo-ephem labels, nor one of a run
    /// whose runner is alive.
    Gc(GcArgs),
    /// The out-of-process reaper (started by `test`; not for direct use).
    #[command(name = "__reap", hide = true)]
    Reap {
        /// The run to watch.
        #[arg(long)]
        run: String,
        /// The run has Docker environments to remove.
        #[arg(long)]
        docker: bool,
        /// Where to write, if there is anything to say.
        #[arg(long)]
        log: Utf8PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also resources created from other hosts (judged by their expiry, since
    /// their runner's process cannot be checked from here).
    #[arg(long)]
    pub all: bool,
}

/// Where the environment configuration comes from.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Environments")]
pub struct EnvArgs {
    /// Environment configuration [default: ephem.toml at the workspace root, if present].
    #[arg(long, value_name = "PATH", conflicts_with = "no_env")]
    pub config: Option<Utf8PathBuf>,
    /// Run without environments even if ephem.toml exists.
    #[arg(long)]
    pub no_env: bool,
    /// Environments count as abandoned this long after their last sign of
    /// life; the deadline is pushed forward while the run is alive.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30m")]
    pub env_ttl: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum EnvFormat {
    /// `NAME=value` lines (shell-quoted where needed).
    #[default]
    Env,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Path to Cargo.toml (to find the workspace and its ephem.toml).
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<Utf8PathBuf>,
    /// Environment configuration [default: ephem.toml at the workspace root].
    #[arg(long, value_name = "PATH")]
    pub config: Option<Utf8PathBuf>,
    /// Which shard's environment to start (sets ${shard}).
    #[arg(long, value_name = "M", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub shard: u32,
    /// How to print the exported variables on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub format: EnvFormat,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Path to Cargo.toml (to find the workspace).
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<Utf8PathBuf>,
    /// Only the environment of this shard [default: all started by `up`].
    #[arg(long, value_name = "M")]
    pub shard: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum JunitCommand {
    /// Merge the JUnit reports of partitioned CI jobs into one.
    ///
    /// Same-named suites from different files become one suite; counts are
    /// recomputed from the test cases; suite time is the sum of its cases.
    Merge {
        /// Where to write the merged report.
        #[arg(short, long, value_name = "OUT")]
        output: Utf8PathBuf,
        /// Reports to merge (e.g. junit-shard-*.xml).
        #[arg(required = true, value_name = "IN")]
        inputs: Vec<Utf8PathBuf>,
    },
}

/// Cargo's package selection and build flags, passed to `cargo test --no-run`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Package selection and build")]
pub struct CargoArgs {
    /// Test all packages in the workspace.
    #[arg(long)]
    pub workspace: bool,
    /// Package to test (repeatable).
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    pub packages: Vec<String>,
    /// Exclude a package with --workspace (repeatable).
    #[arg(long, value_name = "SPEC")]
    pub exclude: Vec<String>,
    /// Features to activate (space- or comma-separated, repeatable).
    #[arg(short = 'F', long, value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Activate all features.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    pub no_default_features: bool,
    /// Build in release mode.
    #[arg(long)]
    pub release: bool,
    /// Cargo profile to build with (cargo's --profile).
    #[arg(long, value_name = "NAME")]
    pub cargo_profile: Option<String>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<Utf8PathBuf>,
    /// Directory for all generated artifacts.
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<Utf8PathBuf>,
}

impl CargoArgs {
    pub fn to_options(&self) -> CargoOptions {
        CargoOptions {
            workspace: self.workspace,
            packages: self.packages.clone(),
            exclude: self.exclude.clone(),
            features: self
                .features
                .iter()
                .flat_map(|f| f.split([' ', ',']))
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
            all_features: self.all_features,
            no_default_features: self.no_default_features,
            release: self.release,
            cargo_profile: self.cargo_profile.clone(),
            manifest_path: self.manifest_path.clone(),
            target_dir: self.target_dir.clone(),
        }
    }
}

/// Which tests to run, by name, like `cargo test`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Test selection")]
pub struct FilterArgs {
    /// Run tests whose name contains one of these (all tests when none).
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Filters must match the whole test name.
    #[arg(long)]
    pub exact: bool,
    /// Leave out tests whose name contains this (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub skip: Vec<String>,
    /// Run only tests marked #[ignore].
    #[arg(long, conflicts_with = "include_ignored")]
    pub ignored: bool,
    /// Run tests marked #[ignore] too.
    #[arg(long)]
    pub include_ignored: bool,
}

impl FilterArgs {
    pub fn to_filter(&self) -> ephem_core::test_list::TestFilter {
        use ephem_core::test_list::{IgnoredMode, TestFilter};
        TestFilter {
            patterns: self.filters.clone(),
            exact: self.exact,
            skip: self.skip.clone(),
            ignored: if self.ignored {
                IgnoredMode::Only
            } else if self.include_ignored {
                IgnoredMode::Include
            } else {
                IgnoredMode::Default
            },
        }
    }
}

/// What to do when the filters match no test.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum NoTests {
    /// Exit 0 silently.
    Pass,
    /// Exit 0 with a note.
    #[default]
    Warn,
    /// Exit 4.
    Fail,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub cargo: CargoArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// What to do when no test matches the filters.
    #[arg(long, value_enum, default_value_t, help_heading = "Test selection")]
    pub no_tests: NoTests,

    /// Tests to run at once, across all shards; each shard runs at most ceil(N / shards) [default: number of CPUs].
    #[arg(
        short = 'j',
        long = "test-threads",
        value_name = "N",
        help_heading = "Running"
    )]
    pub test_threads: Option<usize>,

    /// Retry a failing test up to N more times; one that then passes is reported as flaky.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Running")]
    pub retries: u32,

    /// Kill a test (its whole process group) after this long and report it as timed out (e.g. 60s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Running")]
    pub test_timeout: Option<Duration>,

    /// Report a test as slow after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s", help_heading = "Running")]
    pub slow_timeout: Duration,

    /// Run every test even after failures [default: stop scheduling after the first failure].
    #[arg(long, help_heading = "Running")]
    pub no_fail_fast: bool,

    /// Run N shards at once in this invocation, each with its own environment.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Sharding", conflicts_with = "partition")]
    pub shards: Option<u32>,

    /// Run only shard M of N, for CI matrix jobs: KIND:M/N with KIND hash, slice or duration.
    #[arg(long, value_name = "KIND:M/N", value_parser = parse_partition, help_heading = "Sharding")]
    pub partition: Option<PartitionSpec>,

    /// JUnit report of an earlier run (merged or per shard) giving durations for duration sharding (repeatable).
    #[arg(long, value_name = "FILE", help_heading = "Sharding")]
    pub timings: Vec<Utf8PathBuf>,

    /// Write the merged JUnit report here, and one per shard beside it (<stem>-shard-<M>.xml).
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub junit: Option<Utf8PathBuf>,

    #[command(flatten)]
    pub env: EnvArgs,

    /// Keep the environments after the run and print how to reach and remove them.
    #[arg(long, help_heading = "Environments")]
    pub keep_env: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub cargo: CargoArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Output format: human-readable, or nextest-compatible JSON (TestListSummary).
    #[arg(long, value_enum, default_value_t)]
    pub message_format: MessageFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum MessageFormat {
    #[default]
    Human,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration like 30s, 2m or 1h30m"))?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

fn parse_partition(s: &str) -> Result<PartitionSpec, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        App::command().debug_assert();
    }

    #[test]
    fn shards_and_partition_conflict() {
        let err = App::try_parse_from([
            "cargo ephem",
            "test",
            "--shards",
            "2",
            "--partition",
            "slice:1/2",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_partition_is_a_usage_error() {
        let err =
            App::try_parse_from(["cargo ephem", "test", "--partition", "slice:3/2"]).unwrap_err();
        assert!(err.to_string().contains("between 1 and 2"), "{err}");
    }
}
