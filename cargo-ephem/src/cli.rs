//! Command-line definitions, and how each maps onto `ephem-core`'s options.
//! Only parsing lives here; every command is one call into `ephem-core`.

use std::ffi::OsString;
use std::time::Duration;

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ephem_core::archive::ArchiveOptions;
use ephem_core::discover::{CargoOptions, TargetSelection};
use ephem_core::limits;
use ephem_core::options::{
    ArchiveInput, ConfigSource, DownOptions, EnvOptions, ExecOptions, ExecShards, GcOptions,
    ImagesAction, ImagesOptions, ListFormat, ListOptions, MaxFail, NoTests, ReapOptions,
    ReaperLaunch, RerunFrom, Sharding, TestOptions, UpOptions, VarsFormat,
};
use ephem_core::partition::PartitionSpec;
use ephem_core::profile::OutputLevels;
use ephem_core::report::levels::{FinalStatusLevel, OutputDisplay, Reporting, StatusLevel};
use ephem_core::test_list::{IgnoredMode, TestFilter};
use ephem_core::{BackendKind, RenderBackend, RenderOptions, RenderShards};

const EXIT_CODES: &str = "\
Exit codes:
  0    all selected tests passed (flaky tests count as passed), or none to run
  2    usage or configuration error
  4    no test matched the filters and --no-tests=fail
  100  one or more tests failed or timed out
  101  the build failed
  102  an environment could not be prepared or provisioned
  104  a test binary could not be listed
  130  interrupted by Ctrl-C (128 + signal: 143 for SIGTERM, 129 for SIGHUP)
  1    unexpected internal error";

const EXEC_EXIT_CODES: &str = "\
Exit codes (a command's own code passes through, so these can overlap with it;
cargo-ephem's own failures are announced with an `error:` line):
  N    the command's exit code; with several, that of the lowest-numbered shard
       that failed (0 when every command succeeded)
  128+S  a command was killed by signal S, as shells report it; or cargo-ephem was
       stopped by signal S (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)
  127  the command was not found (126: found but could not be run)
  102  an environment could not be started (no command was run), or could not be
       removed after commands that succeeded
  2    usage or configuration error
  1    unexpected internal error";

const REPORT_EXIT_CODES: &str = "\
Exit codes:
  0    the page was written (whatever the runs' results)
  2    usage error: no records, an unreadable or invalid record, records of one
       group that disagree on the plan, an unwritable --html path
  1    unexpected internal error, or the page could not be written";

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
    Test(Box<TestArgs>),
    /// Build and list the tests, grouped by binary.
    #[command(after_help = EXIT_CODES)]
    List(Box<ListArgs>),
    /// Build the tests once and pack them, with what they need at run time,
    /// into one archive that `test --archive-file` runs elsewhere.
    #[command(after_help = EXIT_CODES)]
    Archive(Box<ArchiveArgs>),
    /// Work with JUnit reports.
    #[command(subcommand)]
    Junit(JunitCommand),
    /// Draw one self-contained HTML page from run records (a CI matrix's).
    ///
    /// `cargo ephem test --junit PATH` writes a run record beside the report
    /// (<stem>.record.json, or <stem>-shard-<M>.record.json for --partition).
    /// Records of one matrix share a group key (EPHEM_RUN_GROUP, else
    /// GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT, else CI_PIPELINE_ID) and are drawn
    /// together on one time axis; other groups get sections of their own.
    #[command(after_help = REPORT_EXIT_CODES)]
    Report(ReportArgs),
    /// Start one shard's environment for local development and keep it until
    /// Ctrl-C or `cargo ephem down`.
    #[command(after_help = EXIT_CODES)]
    Up(UpArgs),
    /// Remove environments started by `cargo ephem up` in this workspace.
    Down(DownArgs),
    /// Run any command (nextest, cargo test, a script) in each shard's
    /// environment, then remove it; exit with the command's code.
    ///
    /// The command gets the shard's exports, EPHEM_RUN_ID, EPHEM_SHARD and
    /// EPHEM_SHARD_COUNT; `{shard}` and `{shards}` in its words become the
    /// shard's number and the count:
    ///
    ///   cargo ephem exec --shards 4 -- cargo nextest run --partition hash:{shard}/{shards}
    ///
    /// One command keeps the terminal (stdin, colours); with several, stdin is
    /// empty and each line of output is prefixed with `[shard M]`. Ctrl-C or
    /// SIGTERM is forwarded to the commands (SIGKILL 10 s later, or at once on
    /// a second signal), then everything is removed.
    #[command(after_help = EXEC_EXIT_CODES)]
    Exec(ExecArgs),
    /// Remove resources of abandoned runs: runner gone, or expiry passed.
    ///
    /// Lists each resource with its run, shard, age and why it is removed.
    /// Never touches a resource without cargo-ephem labels, nor one of a run
    /// whose runner is alive.
    Gc(GcArgs),
    /// Print the Kubernetes objects each shard would get, without contacting
    /// any cluster.
    ///
    /// One YAML stream (`---` between objects) in the order they are applied:
    /// the prepull DaemonSet when `[kubernetes] prepull` is on, then per shard
    /// its namespace, quota, limits, Secret, and each service's Service and
    /// pod. Generated secrets are printed as ***; the run id is `render` and
    /// the clock fixed, so two renders diff clean.
    Render(RenderArgs),
    /// The configuration's images and the warm image cache (--image-cache
    /// DIR, EPHEM_IMAGE_CACHE or [images] cache).
    #[command(after_help = EXIT_CODES)]
    Images(ImagesArgs),
    /// The out-of-process reaper (started by `test` and `up`; not for direct use).
    #[command(name = "__reap", hide = true)]
    Reap(ReapArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the page here.
    #[arg(long, value_name = "FILE")]
    pub html: Utf8PathBuf,
    /// Run records (e.g. out/junit-shard-*.record.json).
    #[arg(required = true, value_name = "RECORD")]
    pub records: Vec<Utf8PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// The run to watch.
    #[arg(long)]
    run: String,
    /// The backend holding the run's environments, if any.
    #[arg(long, value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// The run's configuration, for backends that need it to be reached.
    #[arg(long)]
    config: Option<Utf8PathBuf>,
    /// Where to write, if there is anything to say.
    #[arg(long)]
    log: Utf8PathBuf,
}

impl ReapArgs {
    pub fn options(self) -> ReapOptions {
        ReapOptions {
            run_id: self.run,
            backend: self.backend,
            config: self.config,
            log: self.log,
        }
    }
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Path to Cargo.toml (to find the workspace and its ephem.toml).
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<Utf8PathBuf>,
    /// Environment configuration [default: ephem.toml at the workspace root].
    #[arg(long, value_name = "PATH")]
    config: Option<Utf8PathBuf>,
    /// The backend whose objects to print [default: the configuration's `backend`]; only kubernetes has any.
    #[arg(long, value_name = "NAME", value_parser = parse_render_backend)]
    backend: Option<RenderBackend>,
    /// Print shards 1 to N (1 to 1024) [default: 1].
    #[arg(long, value_name = "N", value_parser = limits::parse_shard_count, conflicts_with = "shard")]
    shards: Option<u32>,
    /// Print only shard M (1 to 1024).
    #[arg(long, value_name = "M", value_parser = limits::parse_shard_count)]
    shard: Option<u32>,
    /// The expiry the janitor annotations show.
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, default_value = "30m")]
    env_ttl: Duration,
}

impl RenderArgs {
    pub fn options(self) -> RenderOptions {
        RenderOptions {
            manifest_path: self.manifest_path,
            config: config_source(self.config, false),
            backend: self.backend,
            shards: match (self.shard, self.shards) {
                (Some(m), _) => RenderShards::Only(m),
                (None, n) => RenderShards::Count(n.unwrap_or(1)),
            },
            env_ttl: self.env_ttl,
        }
    }
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Docker: also runs from other hosts, once expired (their runner's
    /// process cannot be checked from here). Kubernetes (where expired runs
    /// of any host go without it): also runs that have not expired, unless
    /// kept with --keep-env or their runner runs here; they may be live.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    workspace: WorkspaceEnvArgs,
    /// Remove only this run, now: environments kept with --keep-env, or
    /// whatever a run left (never a run whose runner still runs).
    #[arg(long, value_name = "RUN_ID", conflicts_with = "all")]
    run: Option<String>,
}

impl GcArgs {
    pub fn options(self) -> GcOptions {
        GcOptions {
            manifest_path: self.workspace.manifest_path,
            env: EnvOptions {
                config: config_source(self.workspace.config, false),
                backend: self.workspace.backend,
                ..Default::default()
            },
            dry_run: self.dry_run,
            all_hosts: self.all,
            run: self.run,
        }
    }
}

/// Where the environment configuration comes from.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Environments")]
pub struct EnvArgs {
    /// Environment configuration [default: ephem.toml at the workspace root, if present].
    #[arg(long, value_name = "PATH", conflicts_with = "no_env")]
    config: Option<Utf8PathBuf>,
    /// Run without environments even if ephem.toml exists.
    #[arg(long)]
    no_env: bool,
    /// The backend that provisions environments [default: the configuration's `backend`, else docker].
    #[arg(long, value_name = "NAME", value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// Environments count as abandoned this long after their last sign of
    /// life; the deadline is pushed forward while the run is alive.
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, default_value = "30m")]
    env_ttl: Duration,
    /// Keep images in this folder (an OCI image layout) and restore missing
    /// ones from it [default: EPHEM_IMAGE_CACHE, else [images] cache].
    #[arg(long, value_name = "DIR")]
    image_cache: Option<Utf8PathBuf>,
    /// Provision services with `snapshot` normally and build no snapshot this run (also EPHEM_SNAPSHOT=0).
    #[arg(long)]
    no_snapshot: bool,
}

impl EnvArgs {
    fn options(self) -> EnvOptions {
        EnvOptions {
            config: config_source(self.config, self.no_env),
            backend: self.backend,
            env_ttl: self.env_ttl,
            image_cache: self.image_cache,
            no_snapshot: self.no_snapshot,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    action: ImagesCommand,
    /// Path to Cargo.toml (to find the workspace and its ephem.toml).
    #[arg(long, value_name = "PATH", global = true)]
    manifest_path: Option<Utf8PathBuf>,
    /// Environment configuration [default: ephem.toml at the workspace root, if present].
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<Utf8PathBuf>,
    /// The image cache [default: EPHEM_IMAGE_CACHE, else [images] cache].
    #[arg(long, value_name = "DIR", global = true)]
    image_cache: Option<Utf8PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Make every image of the configuration present in the daemon (through
    /// the cache when there is one); prints where each came from.
    Pull,
    /// List the cache's images: reference, digest, size, last used.
    Ls,
    /// Remove cache entries, then every blob no entry references; keeps the
    /// configuration's images unless --all. Waits for processes filling or
    /// restoring from the cache.
    Prune {
        /// Only entries unused for this long (e.g. 7days).
        #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration)]
        older_than: Option<Duration>,
        /// Then remove least recently used entries until the cache fits (e.g. 2GB, 500MiB).
        #[arg(long, value_name = "SIZE", value_parser = ephem_core::images::parse_size)]
        max_size: Option<u64>,
        /// Also the images the configuration references.
        #[arg(long)]
        all: bool,
        /// Keep blobs no entry names, and temporary files, younger than
        /// this (a fill may be writing them; default 1h, 0s for none).
        #[arg(long, value_name = "DURATION", value_parser = ephem_core::images::parse_grace)]
        grace: Option<Duration>,
    },
    /// Ask the registry what each tag points at now, and refill changed images.
    Update,
}

impl ImagesArgs {
    pub fn options(self) -> ImagesOptions {
        ImagesOptions {
            manifest_path: self.manifest_path,
            env: EnvOptions {
                config: config_source(self.config, false),
                image_cache: self.image_cache,
                ..Default::default()
            },
            action: match self.action {
                ImagesCommand::Pull => ImagesAction::Pull,
                ImagesCommand::Ls => ImagesAction::Ls,
                ImagesCommand::Prune {
                    older_than,
                    max_size,
                    all,
                    grace,
                } => ImagesAction::Prune {
                    older_than,
                    max_size,
                    all,
                    grace,
                },
                ImagesCommand::Update => ImagesAction::Update,
            },
        }
    }
}

fn config_source(config: Option<Utf8PathBuf>, no_env: bool) -> ConfigSource {
    match (config, no_env) {
        (_, true) => ConfigSource::Disabled,
        (Some(path), false) => ConfigSource::File(path),
        (None, false) => ConfigSource::WorkspaceDefault,
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum EnvFormat {
    /// `NAME=value` lines (shell-quoted where needed).
    #[default]
    Env,
    /// One JSON object.
    Json,
}

/// The workspace, its configuration and backend, for `up` and `gc`.
#[derive(Debug, Args)]
pub struct WorkspaceEnvArgs {
    /// Path to Cargo.toml (to find the workspace and its ephem.toml).
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<Utf8PathBuf>,
    /// Environment configuration [default: ephem.toml at the workspace root, if present].
    #[arg(long, value_name = "PATH")]
    config: Option<Utf8PathBuf>,
    /// The backend [default: the configuration's `backend`, else docker].
    #[arg(long, value_name = "NAME", value_parser = parse_backend)]
    backend: Option<BackendKind>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    workspace: WorkspaceEnvArgs,
    /// Which shard's environment to start (sets ${shard}).
    #[arg(long, value_name = "M", default_value_t = 1, value_parser = limits::parse_shard_count)]
    shard: u32,
    /// How to print the exported variables on stdout.
    #[arg(long, value_enum, default_value_t)]
    format: EnvFormat,
    /// The environment counts as abandoned this long after `up` stops
    /// renewing it (it renews every third of it while alive).
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, default_value = "30m")]
    env_ttl: Duration,
    /// Keep images in this folder and restore missing ones from it
    /// [default: EPHEM_IMAGE_CACHE, else [images] cache].
    #[arg(long, value_name = "DIR")]
    image_cache: Option<Utf8PathBuf>,
}

impl UpArgs {
    pub fn options(self) -> UpOptions {
        UpOptions {
            manifest_path: self.workspace.manifest_path,
            env: EnvOptions {
                config: config_source(self.workspace.config, false),
                backend: self.workspace.backend,
                env_ttl: self.env_ttl,
                image_cache: self.image_cache,
                no_snapshot: false,
            },
            shard: self.shard,
            format: match self.format {
                EnvFormat::Env => VarsFormat::Env,
                EnvFormat::Json => VarsFormat::Json,
            },
            reaper: ReaperLaunch::ThisExecutable,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run N commands at once, each in its own shard's environment (1 to 1024).
    #[arg(long, value_name = "N", value_parser = limits::parse_shard_count, conflicts_with = "partition")]
    shards: Option<u32>,
    /// Run only shard M of N, for CI matrix jobs: one command, {shard} = M, {shards} = N.
    #[arg(long, value_name = "M/N", value_parser = parse_exec_partition)]
    partition: Option<ExecShards>,
    /// Keep the environments after the commands end and print how to reach and remove them.
    #[arg(long)]
    keep_env: bool,
    /// Environment configuration [default: the nearest ephem.toml from the current directory up].
    #[arg(long, value_name = "PATH")]
    config: Option<Utf8PathBuf>,
    /// The backend that provisions environments [default: the configuration's `backend`, else docker].
    #[arg(long, value_name = "NAME", value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// Environments count as abandoned this long after their last sign of
    /// life; the deadline is pushed forward while the commands run.
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, default_value = "30m")]
    env_ttl: Duration,
    /// Keep images in this folder (an OCI image layout) and restore missing
    /// ones from it [default: EPHEM_IMAGE_CACHE, else [images] cache].
    #[arg(long, value_name = "DIR")]
    image_cache: Option<Utf8PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

impl ExecArgs {
    pub fn options(self) -> ExecOptions {
        let mut options = ExecOptions::new(self.command);
        options.env = EnvOptions {
            config: config_source(self.config, false),
            backend: self.backend,
            env_ttl: self.env_ttl,
            image_cache: self.image_cache,
            no_snapshot: false,
        };
        options.shards = match (self.partition, self.shards) {
            (Some(one), _) => one,
            (None, count) => ExecShards::All {
                count: count.unwrap_or(1),
            },
        };
        options.keep_env = self.keep_env;
        options
    }
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Path to Cargo.toml (to find the workspace).
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<Utf8PathBuf>,
    /// Only the environment of this shard [default: all started by `up`].
    #[arg(long, value_name = "M", value_parser = limits::parse_shard_count)]
    shard: Option<u32>,
    /// The backend [default: the one `up` recorded].
    #[arg(long, value_name = "NAME", value_parser = parse_backend)]
    backend: Option<BackendKind>,
}

impl DownArgs {
    pub fn options(self) -> DownOptions {
        DownOptions {
            manifest_path: self.manifest_path,
            shard: self.shard,
            backend: self.backend,
        }
    }
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
    workspace: bool,
    /// Package to test (repeatable).
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    packages: Vec<String>,
    /// Exclude a package with --workspace (repeatable).
    #[arg(long, value_name = "SPEC")]
    exclude: Vec<String>,
    /// Features to activate (space- or comma-separated, repeatable).
    #[arg(short = 'F', long, value_name = "FEATURES")]
    features: Vec<String>,
    /// Activate all features.
    #[arg(long)]
    all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    no_default_features: bool,
    /// Build in release mode.
    #[arg(long)]
    release: bool,
    /// Cargo profile to build with (cargo's --profile).
    #[arg(long, value_name = "NAME")]
    cargo_profile: Option<String>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<Utf8PathBuf>,
    /// Directory for all generated artifacts.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<Utf8PathBuf>,
    #[command(flatten)]
    targets: TargetArgs,
}

/// Which targets of the selected packages to test, as `cargo test` takes them.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Target selection")]
pub struct TargetArgs {
    /// Test only this package's library.
    #[arg(long)]
    lib: bool,
    /// Test only the named binary (repeatable).
    #[arg(long = "bin", value_name = "NAME")]
    bin: Vec<String>,
    /// Test all binaries.
    #[arg(long)]
    bins: bool,
    /// Test only the named test target (repeatable).
    #[arg(long = "test", value_name = "NAME")]
    test: Vec<String>,
    /// Test all test targets.
    #[arg(long)]
    tests: bool,
    /// Test only the named example (repeatable).
    #[arg(long = "example", value_name = "NAME")]
    example: Vec<String>,
    /// Test all examples.
    #[arg(long)]
    examples: bool,
    /// Test only the named bench target (repeatable).
    #[arg(long = "bench", value_name = "NAME")]
    bench: Vec<String>,
    /// Test all bench targets.
    #[arg(long)]
    benches: bool,
    /// Test all targets.
    #[arg(long)]
    all_targets: bool,
}

impl CargoArgs {
    fn options(self) -> CargoOptions {
        let t = self.targets;
        CargoOptions {
            workspace: self.workspace,
            packages: self.packages,
            exclude: self.exclude,
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
            cargo_profile: self.cargo_profile,
            manifest_path: self.manifest_path,
            target_dir: self.target_dir,
            targets: TargetSelection {
                lib: t.lib,
                bins: t.bin,
                all_bins: t.bins,
                tests: t.test,
                all_tests: t.tests,
                examples: t.example,
                all_examples: t.examples,
                benches: t.bench,
                all_benches: t.benches,
                all_targets: t.all_targets,
            },
        }
    }
}

/// Which tests to run, by name, like `cargo test`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Test selection")]
pub struct FilterArgs {
    /// Run tests whose name contains one of these (all tests when none).
    #[arg(value_name = "FILTER")]
    filters: Vec<String>,
    /// Filters must match the whole test name.
    #[arg(long)]
    exact: bool,
    /// Leave out tests whose name contains this (repeatable).
    #[arg(long, value_name = "PATTERN")]
    skip: Vec<String>,
    /// Run only tests marked #[ignore].
    #[arg(long, conflicts_with = "include_ignored")]
    ignored: bool,
    /// Run tests marked #[ignore] too.
    #[arg(long)]
    include_ignored: bool,
    /// Test filterset, nextest's language: e.g. 'package(app) & test(/^db::/)', 'rdeps(core) - kind(bench)' (repeatable: OR-ed; combined with name filters by AND). See https://nexte.st/docs/filtersets.
    #[arg(short = 'E', long = "filterset", alias = "filter-expr", value_name = "EXPR", action = clap::ArgAction::Append)]
    filtersets: Vec<String>,
}

impl FilterArgs {
    fn filter(self) -> TestFilter {
        TestFilter {
            filtersets: self.filtersets,
            patterns: self.filters,
            exact: self.exact,
            skip: self.skip,
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

/// What to do when no test of the whole selection is to run.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum NoTestsArg {
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
    cargo: CargoArgs,

    #[command(flatten)]
    filter: FilterArgs,

    /// What to do when no test of the whole selection (every shard) is to run.
    #[arg(long, value_enum, default_value_t, help_heading = "Test selection")]
    no_tests: NoTestsArg,

    /// Tests to run at once, across all shards; each shard runs at most ceil(N / shards), or `[shards] test-threads` [default: number of CPUs].
    #[arg(short = 'j', long = "test-threads", value_name = "N", value_parser = limits::parse_test_threads, help_heading = "Running")]
    test_threads: Option<usize>,

    /// Retry a failing test up to N more times; one that then passes is reported as flaky [default: the profile's `retries`, else 0].
    #[arg(long, value_name = "N", value_parser = limits::parse_retries, help_heading = "Running")]
    retries: Option<u32>,

    /// Kill a test (its whole process group) after this long and report it as timed out (e.g. 60s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, help_heading = "Running")]
    test_timeout: Option<Duration>,

    /// Report a test as slow after this long [default: the profile's `slow-timeout`, else 60s].
    #[arg(long, value_name = "DURATION", value_parser = limits::parse_duration, help_heading = "Running")]
    slow_timeout: Option<Duration>,

    /// Run every test even after failures [default: the profile's `fail-fast`, else stop scheduling after the first failure].
    #[arg(long, help_heading = "Running", conflicts_with = "max_fail")]
    no_fail_fast: bool,

    /// Stop scheduling new tests after the first failure, whatever the profile's `fail-fast` says.
    #[arg(long, help_heading = "Running", conflicts_with_all = ["no_fail_fast", "max_fail"])]
    fail_fast: bool,

    /// Stop scheduling new tests after N failures (`all`: never), as nextest's --max-fail.
    #[arg(long, value_name = "N", value_parser = parse_max_fail, help_heading = "Running")]
    max_fail: Option<MaxFail>,

    /// The nextest profile of .config/nextest.toml to apply (retries, slow-timeout, fail-fast, test-threads, test groups, overrides, junit.path) [default: `default`].
    #[arg(
        short = 'P',
        long,
        value_name = "NAME",
        env = "NEXTEST_PROFILE",
        help_heading = "Running"
    )]
    profile: Option<String>,

    /// Run N shards at once in this invocation, each with its own environment (1 to 1024).
    #[arg(long, value_name = "N", value_parser = limits::parse_shard_count, help_heading = "Sharding", conflicts_with = "partition")]
    shards: Option<u32>,

    /// Run only shard M of N, for CI matrix jobs: KIND:M/N with KIND hash, slice or duration.
    #[arg(long, value_name = "KIND:M/N", value_parser = parse_partition, help_heading = "Sharding")]
    partition: Option<PartitionSpec>,

    /// JUnit report of an earlier run (merged or per shard) giving durations for duration sharding (repeatable).
    #[arg(long, value_name = "FILE", help_heading = "Sharding")]
    timings: Vec<Utf8PathBuf>,

    /// Write the merged JUnit report here, one per shard beside it (<stem>-shard-<M>.xml), and the run record (<stem>.record.json; <stem>-shard-<M>.record.json with --partition).
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    junit: Option<Utf8PathBuf>,

    /// Write a self-contained HTML picture of the run here: totals, a timeline per shard, the slowest tests, failures with their output, flaky tests.
    #[arg(long, value_name = "FILE", help_heading = "Reporting")]
    html: Option<Utf8PathBuf>,

    #[command(flatten)]
    env: EnvArgs,

    /// Keep the environments after the run and print how to reach them.
    #[arg(long, help_heading = "Environments")]
    keep_env: bool,

    /// Take over the environments an earlier --reuse run of this workspace kept (same services and images) without waiting for a container: services with `reset` are reset, per-test databases cloned anew. This run's are kept for the next ([reuse] ttl unused, default 30m; `cargo ephem down` removes them). Docker only.
    #[arg(
        long,
        env = "EPHEM_REUSE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue,
        help_heading = "Environments"
    )]
    reuse: bool,

    #[command(flatten)]
    archive: ArchiveInputArgs,

    #[command(flatten)]
    reporting: ReportingArgs,

    /// Run only the tests the last run of this workspace left failed, timed out or not run (its record in target/ephem/runs/), with the same environments configuration; or those of run records from elsewhere (--rerun-failed FILE, repeatable: a CI job's <stem>.record.json, several shards'). Other filters still apply (AND). `-R latest` is the same as the flag alone.
    #[arg(
        short = 'R',
        long = "rerun-failed",
        value_name = "FILE",
        num_args = 0..=1,
        default_missing_value = "latest",
        action = clap::ArgAction::Append,
        help_heading = "Test selection"
    )]
    rerun_failed: Vec<Utf8PathBuf>,
}

impl TestArgs {
    pub fn options(self) -> TestOptions {
        TestOptions {
            cargo: self.cargo.options(),
            filter: self.filter.filter(),
            no_tests: match self.no_tests {
                NoTestsArg::Pass => NoTests::Pass,
                NoTestsArg::Warn => NoTests::Warn,
                NoTestsArg::Fail => NoTests::Fail,
            },
            test_threads: self.test_threads,
            retries: self.retries,
            test_timeout: self.test_timeout,
            slow_timeout: self.slow_timeout,
            fail_fast: match (self.fail_fast, self.no_fail_fast, self.max_fail) {
                (true, _, _) => Some(MaxFail::FIRST),
                (_, true, _) => Some(MaxFail::All),
                (_, _, max_fail) => max_fail,
            },
            profile: self.profile,
            sharding: match (self.partition, self.shards) {
                (Some(p), _) => Sharding::Partition(p),
                (None, count) => Sharding::All {
                    count: count.unwrap_or(1),
                },
            },
            timings: self.timings,
            junit: self.junit,
            html: self.html,
            env: self.env.options(),
            keep_env: self.keep_env,
            reuse: self.reuse,
            reaper: ReaperLaunch::ThisExecutable,
            archive: self.archive.input(),
            rerun: rerun_from(self.rerun_failed),
            output_flags: self.reporting.flags(),
            reporting: self.reporting.reporting(),
        }
    }
}

/// What the run shows, as nextest's flags and variables say it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Reporting")]
pub struct ReportingArgs {
    /// Run tests one at a time with the terminal as their stdout and stderr (nothing is captured, no progress bar); environments still start.
    #[arg(
        long,
        alias = "nocapture",
        env = "NEXTEST_NO_CAPTURE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    no_capture: bool,
    /// Test results shown during the run, as in nextest: each level also shows those before it [default: the profile's `status-level`, else pass].
    #[arg(long, value_name = "LEVEL", env = "NEXTEST_STATUS_LEVEL", value_parser = named::<StatusLevel>(StatusLevel::NAMES, &[]))]
    status_level: Option<StatusLevel>,
    /// Test results listed again at the end of the run (`retry` means `flaky`) [default: the profile's, else flaky].
    #[arg(long, value_name = "LEVEL", env = "NEXTEST_FINAL_STATUS_LEVEL", value_parser = named::<FinalStatusLevel>(FinalStatusLevel::NAMES, &[("retry", "flaky")]))]
    final_status_level: Option<FinalStatusLevel>,
    /// When a failing test's output is shown: right after its result, at the end, both, or never [default: the profile's, else immediate].
    #[arg(long, value_name = "WHEN", env = "NEXTEST_FAILURE_OUTPUT", value_parser = named::<OutputDisplay>(OutputDisplay::NAMES, &[]))]
    failure_output: Option<OutputDisplay>,
    /// When a passing test's output is shown: right after its result, at the end, both, or never [default: the profile's, else never].
    #[arg(long, value_name = "WHEN", env = "NEXTEST_SUCCESS_OUTPUT", value_parser = named::<OutputDisplay>(OutputDisplay::NAMES, &[]))]
    success_output: Option<OutputDisplay>,
}

impl ReportingArgs {
    /// The flags given; the profile fills in the rest, then nextest's
    /// defaults ([`Reporting::default`]).
    fn flags(&self) -> OutputLevels {
        OutputLevels {
            status_level: self.status_level,
            final_status_level: self.final_status_level,
            failure_output: self.failure_output,
            success_output: self.success_output,
        }
    }

    fn reporting(self) -> Reporting {
        let default = Reporting::default();
        Reporting {
            status_level: self.status_level.unwrap_or(default.status_level),
            final_status_level: self
                .final_status_level
                .unwrap_or(default.final_status_level),
            failure_output: self.failure_output.unwrap_or(default.failure_output),
            success_output: self.success_output.unwrap_or(default.success_output),
            no_capture: self.no_capture,
        }
    }
}

/// A parser for one of `names` (and `aliases`, as `(alias, name)`), listed
/// in `--help` and in the error for any other value.
fn named<T>(
    names: &'static [&'static str],
    aliases: &'static [(&'static str, &'static str)],
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Debug,
{
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(names.iter().map(|&name| {
        aliases
            .iter()
            .filter(|(_, of)| *of == name)
            .fold(PossibleValue::new(name), |v, (alias, _)| v.alias(alias))
    }))
    .map(|given| given.parse::<T>().expect("clap accepted only listed names"))
}

fn parse_max_fail(text: &str) -> Result<MaxFail, String> {
    text.parse()
}

/// `--rerun-failed` alone or `-R latest`: the workspace's last run; else
/// the files given.
fn rerun_from(values: Vec<Utf8PathBuf>) -> Option<RerunFrom> {
    if values.is_empty() {
        None
    } else if values.iter().any(|v| v == "latest") {
        Some(RerunFrom::Latest)
    } else {
        Some(RerunFrom::Files(values))
    }
}

/// Run the tests an archive holds instead of building (no cargo needed).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Archive")]
pub struct ArchiveInputArgs {
    /// An archive written by `cargo ephem archive`.
    #[arg(long, value_name = "FILE")]
    archive_file: Option<Utf8PathBuf>,
    /// Where the archived workspace's sources are on this machine [default: where they were built].
    #[arg(long, value_name = "DIR", requires = "archive_file")]
    workspace_remap: Option<Utf8PathBuf>,
}

impl ArchiveInputArgs {
    fn input(self) -> Option<ArchiveInput> {
        Some(ArchiveInput {
            file: self.archive_file?,
            workspace_remap: self.workspace_remap,
        })
    }
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    cargo: CargoArgs,
    /// Where to write the archive (zstd-compressed tar).
    #[arg(long, value_name = "FILE")]
    archive_file: Utf8PathBuf,
    /// Archive only the binaries this filterset can match (repeatable: OR-ed); nextest's language without test() and group(), which an archive of whole binaries cannot honour.
    #[arg(short = 'E', long = "filterset", alias = "filter-expr", value_name = "EXPR", action = clap::ArgAction::Append, help_heading = "Test selection")]
    filtersets: Vec<String>,
}

impl ArchiveArgs {
    pub fn options(self) -> ArchiveOptions {
        ArchiveOptions {
            cargo: self.cargo.options(),
            archive_file: self.archive_file,
            filtersets: self.filtersets,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    cargo: CargoArgs,

    #[command(flatten)]
    filter: FilterArgs,

    /// Output format: human-readable, or nextest-compatible JSON (TestListSummary).
    #[arg(long, value_enum, default_value_t)]
    message_format: MessageFormat,

    #[command(flatten)]
    archive: ArchiveInputArgs,
}

impl ListArgs {
    pub fn options(self) -> ListOptions {
        ListOptions {
            cargo: self.cargo.options(),
            filter: self.filter.filter(),
            format: match self.message_format {
                MessageFormat::Human => ListFormat::Human,
                MessageFormat::Json => ListFormat::Json,
            },
            archive: self.archive.input(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum MessageFormat {
    #[default]
    Human,
    Json,
}

fn parse_partition(s: &str) -> Result<PartitionSpec, String> {
    s.parse()
}

fn parse_exec_partition(s: &str) -> Result<ExecShards, String> {
    s.parse()
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

fn parse_render_backend(s: &str) -> Result<RenderBackend, String> {
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

    fn parse(args: &[&str]) -> Result<App, clap::Error> {
        App::try_parse_from(std::iter::once("cargo ephem").chain(args.iter().copied()))
    }

    #[test]
    fn shards_and_partition_conflict() {
        let err = parse(&["test", "--shards", "2", "--partition", "slice:1/2"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_partition_is_a_usage_error() {
        let err = parse(&["test", "--partition", "slice:3/2"]).unwrap_err();
        assert!(err.to_string().contains("between 1 and 2"), "{err}");
    }

    #[test]
    fn target_selection_passes_through_to_cargo() {
        let Command::Test(args) = parse(&[
            "test",
            "--lib",
            "--bin",
            "cli",
            "--bins",
            "--test",
            "db",
            "--test",
            "cache",
            "--tests",
            "--example",
            "demo",
            "--examples",
            "--bench",
            "b",
            "--benches",
            "--all-targets",
        ])
        .unwrap()
        .command
        else {
            panic!("not a test command");
        };
        let cargo_args = args.options().cargo.build_args();
        let joined = cargo_args.join(" ");
        for expected in [
            "--lib",
            "--bins",
            "--tests",
            "--examples",
            "--benches",
            "--all-targets",
            "--bin cli",
            "--test db --test cache",
            "--example demo",
            "--bench b",
        ] {
            assert!(
                joined.contains(expected),
                "{expected:?} missing from {joined:?}"
            );
        }
    }

    #[test]
    fn absurd_numbers_are_usage_errors_naming_the_range() {
        for (args, range) in [
            (
                &["test", "--test-timeout", "10000000000000000000s"][..],
                "1ms to 365days",
            ),
            (
                &["test", "--env-ttl", "10000000000000000000s"][..],
                "1ms to 365days",
            ),
            (
                &["test", "--slow-timeout", "10000000000000000000s"][..],
                "1ms to 365days",
            ),
            (&["test", "--shards", "4000000000"][..], "1 to 1024"),
            (
                &["test", "--partition", "slice:1/4000000000"][..],
                "1 to 1024",
            ),
            (&["test", "--retries", "4294967295"][..], "0 to 100"),
            (&["test", "-j", "18446744073709551616"][..], "1 to 4096"),
            (&["up", "--shard", "4000000000"][..], "1 to 1024"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.to_string().contains(range), "{args:?}: {err}");
        }
    }

    #[test]
    fn render_takes_a_shard_count_or_one_shard() {
        let shards = |args: &[&str]| match parse(args).unwrap().command {
            Command::Render(args) => args.options().shards,
            other => panic!("not render: {other:?}"),
        };
        assert_eq!(shards(&["render"]), RenderShards::Count(1));
        assert_eq!(shards(&["render", "--shards", "3"]), RenderShards::Count(3));
        assert_eq!(shards(&["render", "--shard", "2"]), RenderShards::Only(2));
        let err = parse(&["render", "--shards", "2", "--shard", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        for args in [
            &["render", "--shards", "0"][..],
            &["render", "--shard", "1025"][..],
        ] {
            assert!(parse(args).unwrap_err().to_string().contains("1 to 1024"));
        }
        let Command::Render(args) = parse(&["render", "--backend", "kubernetes"])
            .unwrap()
            .command
        else {
            panic!("not render");
        };
        assert_eq!(args.options().backend, Some(RenderBackend::Kubernetes));
    }

    #[test]
    fn images_take_the_cache_and_prune_limits() {
        let Command::Images(args) = parse(&[
            "images",
            "prune",
            "--older-than",
            "7days",
            "--max-size",
            "2GiB",
            "--image-cache",
            "/c",
        ])
        .unwrap()
        .command
        else {
            panic!("not images");
        };
        let options = args.options();
        assert_eq!(
            options.env.image_cache.as_deref(),
            Some(camino::Utf8Path::new("/c"))
        );
        assert_eq!(
            options.action,
            ImagesAction::Prune {
                older_than: Some(Duration::from_secs(7 * 24 * 3600)),
                max_size: Some(2 << 30),
                all: false,
                grace: None,
            }
        );
        let err = parse(&["images", "prune", "--max-size", "2 parsecs"]).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let err = parse(&["images", "prune", "--older-than", "soon"]).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        let Command::Test(args) = parse(&["test", "--image-cache", "/d"]).unwrap().command else {
            panic!("not test");
        };
        assert_eq!(
            args.options().env.image_cache.as_deref(),
            Some(camino::Utf8Path::new("/d"))
        );
    }

    #[test]
    fn exec_leaves_the_commands_flags_to_the_command() {
        let options = |args: &[&str]| match parse(args).unwrap().command {
            Command::Exec(args) => args.options(),
            other => panic!("not exec: {other:?}"),
        };
        let nextest = [
            "cargo",
            "nextest",
            "run",
            "--partition",
            "hash:{shard}/{shards}",
        ];
        for with_dashes in [true, false] {
            let mut args = vec!["exec", "--partition", "2/4", "--keep-env"];
            if with_dashes {
                args.push("--");
            }
            args.extend(nextest);
            let options = options(&args);
            assert_eq!(options.shards, ExecShards::One { shard: 2, count: 4 });
            assert!(options.keep_env);
            assert_eq!(options.command, nextest.map(OsString::from));
        }
        let err = parse(&["exec", "--partition", "hash:1/2", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("without a kind"), "{err}");
        let err = parse(&["exec", "--shards", "0", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("1 to 1024"), "{err}");
    }

    #[test]
    fn rerun_failed_takes_latest_or_files_and_filtersets_repeat() {
        let test = |args: &[&str]| match parse(args).unwrap().command {
            Command::Test(args) => args.options(),
            other => panic!("not test: {other:?}"),
        };
        assert_eq!(test(&["test"]).rerun, None);
        assert_eq!(
            test(&["test", "--rerun-failed"]).rerun,
            Some(RerunFrom::Latest)
        );
        assert_eq!(
            test(&["test", "-R", "latest"]).rerun,
            Some(RerunFrom::Latest)
        );
        let files = test(&["test", "-R", "a.json", "--rerun-failed", "b.json", "db_"]);
        assert_eq!(
            files.rerun,
            Some(RerunFrom::Files(vec!["a.json".into(), "b.json".into()]))
        );
        assert_eq!(files.filter.patterns, ["db_"]);
        let exprs = test(&["test", "-E", "package(a)", "--filterset", "kind(test)"]);
        assert_eq!(exprs.filter.filtersets, ["package(a)", "kind(test)"]);
        let Command::List(list) = parse(&["list", "--filter-expr", "all()"]).unwrap().command
        else {
            panic!("not list");
        };
        assert_eq!(list.options().filter.filtersets, ["all()"]);
        let Command::Archive(archive) = parse(&[
            "archive",
            "--archive-file",
            "a.tar.zst",
            "-E",
            "rdeps(core)",
        ])
        .unwrap()
        .command
        else {
            panic!("not archive");
        };
        assert_eq!(archive.options().filtersets, ["rdeps(core)"]);
    }

    #[test]
    fn an_unknown_backend_names_the_ones_that_exist() {
        for command in ["test", "up", "down", "gc", "render"] {
            let err = parse(&[command, "--backend", "podman"]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("unknown backend \"podman\""), "{text}");
            assert!(text.contains(&BackendKind::names()), "{text}");
        }
    }
}
