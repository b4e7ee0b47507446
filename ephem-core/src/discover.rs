//! Builds a workspace's tests with cargo and lists every test of every binary.

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};
use cargo_metadata::{Artifact, Package};
use rayon::prelude::*;

use crate::error::{EphemError, Result};
use crate::test_list::{SkipReason, TestBinary, TestList};

pub use crate::cargo_build::BuildControl;
use crate::cargo_build::{build, BuildOutput};

/// Cargo's package selection and build flags, passed through to `cargo test --no-run`.
#[derive(Clone, Debug, Default)]
pub struct CargoOptions {
    /// `--workspace`.
    pub workspace: bool,
    /// `-p/--package`.
    pub packages: Vec<String>,
    /// `--exclude`.
    pub exclude: Vec<String>,
    /// `--features`.
    pub features: Vec<String>,
    /// `--all-features`.
    pub all_features: bool,
    /// `--no-default-features`.
    pub no_default_features: bool,
    /// `--release`.
    pub release: bool,
    /// `--cargo-profile` (cargo's `--profile`).
    pub cargo_profile: Option<String>,
    /// `--manifest-path`.
    pub manifest_path: Option<Utf8PathBuf>,
    /// `--target-dir`.
    pub target_dir: Option<Utf8PathBuf>,
    /// Which targets of the selected packages are built and run.
    pub targets: TargetSelection,
}

/// cargo's target selection flags, as `cargo test` and `cargo nextest run`
/// take them. Empty: cargo's default (lib, bins, tests, examples built
/// only, doc tests aside).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetSelection {
    /// `--lib`.
    pub lib: bool,
    /// `--bin NAME` (repeatable).
    pub bins: Vec<String>,
    /// `--bins`.
    pub all_bins: bool,
    /// `--test NAME` (repeatable).
    pub tests: Vec<String>,
    /// `--tests`.
    pub all_tests: bool,
    /// `--example NAME` (repeatable).
    pub examples: Vec<String>,
    /// `--examples`.
    pub all_examples: bool,
    /// `--bench NAME` (repeatable).
    pub benches: Vec<String>,
    /// `--benches`.
    pub all_benches: bool,
    /// `--all-targets`.
    pub all_targets: bool,
}

impl TargetSelection {
    /// The flags as cargo takes them.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |on: bool, name: &str| {
            if on {
                args.push(name.to_owned());
            }
        };
        flag(self.lib, "--lib");
        flag(self.all_bins, "--bins");
        flag(self.all_tests, "--tests");
        flag(self.all_examples, "--examples");
        flag(self.all_benches, "--benches");
        flag(self.all_targets, "--all-targets");
        for (name, values) in [
            ("--bin", &self.bins),
            ("--test", &self.tests),
            ("--example", &self.examples),
            ("--bench", &self.benches),
        ] {
            for value in values {
                args.extend([name.to_owned(), value.clone()]);
            }
        }
        args
    }
}

impl CargoOptions {
    /// The flags as cargo takes them, shared by `cargo test` and `cargo metadata`
    /// where they apply.
    pub fn build_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.workspace {
            args.push("--workspace".to_owned());
        }
        for p in &self.packages {
            args.extend(["--package".to_owned(), p.clone()]);
        }
        for e in &self.exclude {
            args.extend(["--exclude".to_owned(), e.clone()]);
        }
        if !self.features.is_empty() {
            args.extend(["--features".to_owned(), self.features.join(",")]);
        }
        if self.all_features {
            args.push("--all-features".to_owned());
        }
        if self.no_default_features {
            args.push("--no-default-features".to_owned());
        }
        if self.release {
            args.push("--release".to_owned());
        }
        if let Some(p) = &self.cargo_profile {
            args.extend(["--profile".to_owned(), p.clone()]);
        }
        args.extend(self.targets.args());
        args.extend(self.common_args());
        args
    }

    fn common_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(m) = &self.manifest_path {
            args.extend(["--manifest-path".to_owned(), m.to_string()]);
        }
        if let Some(t) = &self.target_dir {
            args.extend(["--target-dir".to_owned(), t.to_string()]);
        }
        args
    }

    /// The folder of the target directory the build writes to: `debug` for
    /// the dev and test profiles, `release` for release and bench, else the
    /// custom profile's name.
    pub fn profile_dir(&self) -> &str {
        match (self.release, self.cargo_profile.as_deref()) {
            (_, Some("dev" | "test")) => "debug",
            (_, Some("release" | "bench")) => "release",
            (_, Some(custom)) => custom,
            (true, None) => "release",
            (false, None) => "debug",
        }
    }

    /// Whether any flag asks cargo for a particular build or selection
    /// (everything but `--manifest-path`).
    pub fn builds_something(&self) -> bool {
        let only_manifest = CargoOptions {
            manifest_path: self.manifest_path.clone(),
            ..Default::default()
        };
        self.build_args() != only_manifest.build_args()
    }

    /// The same selection as flags for `cargo ephem test`, for the rerun hint.
    pub fn rerun_args(&self) -> Vec<String> {
        self.build_args()
            .into_iter()
            .map(|a| {
                if a == "--profile" {
                    "--cargo-profile".to_owned()
                } else {
                    a
                }
            })
            .collect()
    }
}

/// The cargo executable: `$CARGO` when run as a cargo subcommand, else `cargo`.
pub fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A cargo workspace as `cargo metadata` describes it, read before the build.
pub struct Workspace {
    /// The workspace's root directory (where `ephem.toml` lives).
    pub root: Utf8PathBuf,
    /// The target directory (`--target-dir` or cargo's).
    pub target_dir: Utf8PathBuf,
    packages: HashMap<String, Package>,
    /// `cargo metadata`'s JSON with the dependency graph, when it was read
    /// with one ([`Workspace::load_with_graph`]): what filtersets' package
    /// predicates are parsed against, and what an archive carries.
    pub graph_json: Option<Arc<str>>,
}

impl Workspace {
    /// A workspace known only by its folders (a run from an archive, with no
    /// cargo to ask): it cannot build.
    pub fn at(root: Utf8PathBuf, target_dir: Utf8PathBuf) -> Workspace {
        Workspace {
            root,
            target_dir,
            packages: HashMap::new(),
            graph_json: None,
        }
    }

    /// Reads the workspace's metadata: no build, no dependency resolution.
    pub fn load(opts: &CargoOptions) -> Result<Workspace> {
        let mut cmd = cargo_metadata::MetadataCommand::new();
        cmd.cargo_path(cargo_path()).no_deps();
        if let Some(m) = &opts.manifest_path {
            cmd.manifest_path(m);
        }
        let metadata = cmd.exec().map_err(metadata_error)?;
        Ok(Workspace::from_metadata(metadata, opts, None))
    }

    /// Reads the workspace's metadata with its resolved dependency graph, as
    /// nextest reads it (`--all-features --filter-platform <host>`), so that
    /// `deps()` and `rdeps()` see the same edges. One `cargo metadata` run:
    /// its JSON is kept for the filtersets and for archives.
    pub fn load_with_graph(opts: &CargoOptions) -> Result<Workspace> {
        let mut cmd = cargo_metadata::MetadataCommand::new();
        cmd.cargo_path(cargo_path())
            .features(cargo_metadata::CargoOpt::AllFeatures);
        if let Some(m) = &opts.manifest_path {
            cmd.manifest_path(m);
        }
        if let Some(host) = host_triple() {
            cmd.other_options(vec!["--filter-platform".to_owned(), host]);
        }
        let mut command = cmd.cargo_command();
        let output = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                EphemError::Usage(format!(
                    "cannot run `{}`: {e}; is cargo on PATH?",
                    cargo_path()
                ))
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(metadata_error(stderr.trim()));
        }
        let json = String::from_utf8(output.stdout)
            .map_err(|_| metadata_error("`cargo metadata` printed invalid UTF-8"))?;
        let metadata = cargo_metadata::MetadataCommand::parse(&json).map_err(metadata_error)?;
        Ok(Workspace::from_metadata(metadata, opts, Some(json.into())))
    }

    fn from_metadata(
        metadata: cargo_metadata::Metadata,
        opts: &CargoOptions,
        graph_json: Option<Arc<str>>,
    ) -> Workspace {
        Workspace {
            root: metadata.workspace_root,
            target_dir: opts.target_dir.clone().unwrap_or(metadata.target_directory),
            packages: metadata
                .packages
                .into_iter()
                .map(|p| (p.id.repr.clone(), p))
                .collect(),
            graph_json,
        }
    }

    /// Builds the tests, then lists every test of every test binary.
    pub fn discover(&self, opts: &CargoOptions) -> Result<TestList> {
        self.discover_with(opts, &BuildControl::default(), &|_| None)
    }

    /// Like [`discover`](Self::discover), with `control` able to stop the
    /// build from another thread. A binary for which `set_aside` gives a
    /// reason is not run to list its tests (a filterset rules it out
    /// whatever its tests): it is kept in [`TestList::skipped`], as nextest
    /// reports it.
    pub fn discover_with(
        &self,
        opts: &CargoOptions,
        control: &BuildControl,
        set_aside: &(dyn Fn(&TestBinary) -> Option<SkipReason> + Sync),
    ) -> Result<TestList> {
        let build = build(opts, control)?;
        let toolchain_libs = toolchain_lib_dirs(&self.root);
        let binaries = test_binaries(&build, &self.packages, &toolchain_libs);
        let (binaries, skipped): (Vec<_>, Vec<_>) = binaries
            .into_iter()
            .map(|b| {
                let reason = set_aside(&b);
                (b, reason)
            })
            .partition(|(_, reason)| reason.is_none());
        let listed = binaries
            .into_par_iter()
            .map(|(b, _)| {
                let tests = list_binary(&b)?;
                Ok((b, tests))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut list = TestList::new(listed, self.target_dir.clone());
        list.profile_dir = Utf8PathBuf::from(opts.profile_dir());
        list.set_skipped(
            skipped
                .into_iter()
                .filter_map(|(b, r)| Some((b, r?)))
                .collect(),
        );
        Ok(list)
    }
}

fn metadata_error(e: impl std::fmt::Display) -> EphemError {
    EphemError::Usage(format!(
        "cannot read the workspace's metadata: {}; run inside a cargo workspace or pass --manifest-path",
        one_line(&e.to_string())
    ))
}

/// The host's target triple (`rustc -vV`), which nextest filters the
/// package graph by; `None` if rustc cannot say (no filter then).
fn host_triple() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .arg("-vV")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
}

/// Reads the workspace, builds its tests and lists them.
pub fn discover(opts: &CargoOptions) -> Result<TestList> {
    Workspace::load(opts)?.discover(opts)
}

/// The toolchain's library folders that test binaries linking the shared
/// std (proc-macro crates, `-C prefer-dynamic`) need: `rustc --print
/// target-libdir` (where `libstd-*.so` lives) and the sysroot's `lib`.
/// Asked in the workspace, so a `rust-toolchain` file there picks the same
/// toolchain as the build.
pub(crate) fn toolchain_lib_dirs(root: &Utf8Path) -> Vec<Utf8PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let print = |what: &str| -> Option<Utf8PathBuf> {
        let out = Command::new(&rustc)
            .args(["--print", what])
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8(out.stdout).ok()?;
        Some(Utf8PathBuf::from(text.trim()))
    };
    let mut dirs = Vec::new();
    dirs.extend(print("target-libdir"));
    dirs.extend(print("sysroot").map(|s| s.join("lib")));
    dirs
}

/// nextest's binary id scheme, so reports and timings line up with nextest's.
pub fn binary_id(package: &str, kind: &str, target: &str) -> String {
    match kind {
        "lib" | "proc-macro" | "rlib" | "dylib" | "cdylib" | "staticlib" => package.to_owned(),
        "test" => format!("{package}::{target}"),
        other => format!("{package}::{other}/{target}"),
    }
}

/// A test binary's kind as nextest names it (what `kind()` matches): `lib`
/// for any library crate type (`rlib`, `cdylib`, ...), else the target's
/// kind (`proc-macro`, `test`, `bin`, `example`, `bench`).
pub fn binary_kind(kinds: &[cargo_metadata::TargetKind]) -> String {
    use cargo_metadata::TargetKind as K;
    let library = kinds
        .iter()
        .any(|k| matches!(k, K::Lib | K::RLib | K::DyLib | K::CDyLib | K::StaticLib));
    match kinds.first() {
        _ if library => "lib".to_owned(),
        Some(first) => first.to_string(),
        None => "lib".to_owned(),
    }
}

fn test_binaries(
    build: &BuildOutput,
    packages: &HashMap<String, Package>,
    toolchain_libs: &[Utf8PathBuf],
) -> Vec<TestBinary> {
    let mut seen = BTreeSet::new();
    let mut binaries = Vec::new();
    for artifact in &build.artifacts {
        let Some(exe) = artifact.executable.clone() else {
            continue;
        };
        if !seen.insert(exe.clone()) {
            continue;
        }
        let package = packages.get(&artifact.package_id.repr);
        let package_name = package
            .map(|p| p.name.to_string())
            .unwrap_or_else(|| artifact.target.name.clone());
        let kind = binary_kind(&artifact.target.kind);
        let cwd = artifact
            .manifest_path
            .parent()
            .map(Utf8Path::to_path_buf)
            .unwrap_or_default();
        // nextest's binary name is the target's (what `binary()` matches).
        let binary_name = artifact.target.name.clone();
        let env = binary_env(&exe, artifact, package, build, toolchain_libs);
        binaries.push(TestBinary {
            binary_id: binary_id(&package_name, &kind, &artifact.target.name),
            binary_name,
            package_id: artifact.package_id.repr.clone(),
            package_name,
            kind,
            path: exe,
            cwd,
            env: Arc::new(env),
        });
    }
    binaries
}

/// Variables cargo sets when it runs a test binary, plus the library search path.
fn binary_env(
    exe: &Utf8Path,
    artifact: &Artifact,
    package: Option<&Package>,
    build: &BuildOutput,
    toolchain_libs: &[Utf8PathBuf],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("CARGO".to_owned(), cargo_path()),
        (
            "CARGO_MANIFEST_DIR".to_owned(),
            artifact
                .manifest_path
                .parent()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        ),
        (
            "CARGO_MANIFEST_PATH".to_owned(),
            artifact.manifest_path.to_string(),
        ),
        (
            "CARGO_CRATE_NAME".to_owned(),
            artifact.target.name.replace('-', "_"),
        ),
    ];
    if let Some(p) = package {
        let v = &p.version;
        env.extend([
            ("CARGO_PKG_NAME".to_owned(), p.name.to_string()),
            ("CARGO_PKG_VERSION".to_owned(), v.to_string()),
            ("CARGO_PKG_VERSION_MAJOR".to_owned(), v.major.to_string()),
            ("CARGO_PKG_VERSION_MINOR".to_owned(), v.minor.to_string()),
            ("CARGO_PKG_VERSION_PATCH".to_owned(), v.patch.to_string()),
            ("CARGO_PKG_VERSION_PRE".to_owned(), v.pre.to_string()),
            ("CARGO_PKG_AUTHORS".to_owned(), p.authors.join(":")),
            (
                "CARGO_PKG_DESCRIPTION".to_owned(),
                p.description.clone().unwrap_or_default(),
            ),
        ]);
        // Integration tests find the package's binaries like under `cargo test`.
        if artifact.target.kind.iter().any(|k| k.to_string() == "test") {
            let profile_dir = exe.parent().and_then(Utf8Path::parent);
            for target in &p.targets {
                if target.kind.iter().any(|k| k.to_string() == "bin") {
                    if let Some(dir) = profile_dir {
                        env.push((
                            format!("CARGO_BIN_EXE_{}", target.name),
                            dir.join(&target.name).to_string(),
                        ));
                    }
                }
            }
        }
    }
    if let Some(out_dir) = build.out_dirs.get(&artifact.package_id.repr) {
        env.push(("OUT_DIR".to_owned(), out_dir.to_string()));
    }
    env.push((
        dylib_path_var().to_owned(),
        dylib_path(exe, build, toolchain_libs),
    ));
    env
}

fn dylib_path_var() -> &'static str {
    if cfg!(target_os = "macos") {
        "DYLD_FALLBACK_LIBRARY_PATH"
    } else {
        "LD_LIBRARY_PATH"
    }
}

/// The search path cargo and nextest give test binaries, for listing and
/// running alike: the target's deps and profile directories, build-script
/// link paths inside the target directory, the toolchain's libs, then
/// whatever the user had.
fn dylib_path(exe: &Utf8Path, build: &BuildOutput, toolchain_libs: &[Utf8PathBuf]) -> String {
    let mut dirs: Vec<String> = Vec::new();
    let deps = exe.parent();
    let profile = deps.and_then(Utf8Path::parent);
    let target = profile.and_then(Utf8Path::parent);
    if let Some(d) = deps {
        dirs.push(d.to_string());
    }
    if let Some(p) = profile {
        dirs.push(p.to_string());
    }
    for paths in build.linked_paths.values() {
        for path in paths {
            // cargo reports `-L` values; keep only the directory.
            let s = path.as_str();
            let dir = s.split_once('=').map(|(_, d)| d).unwrap_or(s);
            if target.is_some_and(|t| Utf8Path::new(dir).starts_with(t)) {
                dirs.push(dir.to_owned());
            }
        }
    }
    dirs.extend(toolchain_libs.iter().map(|d| d.to_string()));
    if let Ok(existing) = std::env::var(dylib_path_var()) {
        if !existing.is_empty() {
            dirs.push(existing);
        }
    }
    let mut seen = BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs.join(":")
}

/// Lists one binary's tests: `--list --format terse`, then `--ignored`.
pub fn list_binary(binary: &TestBinary) -> Result<Vec<(String, bool)>> {
    let (all, ignored) = rayon::join(|| run_list(binary, false), || run_list(binary, true));
    let ignored: BTreeSet<String> = ignored?.into_iter().collect();
    Ok(all?
        .into_iter()
        .map(|name| {
            let is_ignored = ignored.contains(&name);
            (name, is_ignored)
        })
        .collect())
}

fn run_list(binary: &TestBinary, ignored: bool) -> Result<Vec<String>> {
    let mut cmd = Command::new(&binary.path);
    cmd.args(["--list", "--format", "terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let listing_err = |reason: String| EphemError::Listing {
        binary_id: binary.binary_id.clone(),
        path: binary.path.clone(),
        reason,
    };
    let output = cmd
        .current_dir(&binary.cwd)
        .envs(binary.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| listing_err(format!("cannot run it: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(listing_err(format!(
            "`--list` exited with {}: {last}",
            output.status
        )));
    }
    let stdout = String::from_utf8(output.stdout)
        .map_err(|_| listing_err("`--list` printed invalid UTF-8".to_owned()))?;
    parse_terse_list(&stdout).map_err(listing_err)
}

/// Parses libtest's `--list --format terse` output: `<name>: test` lines;
/// benchmarks are left out.
pub fn parse_terse_list(stdout: &str) -> std::result::Result<Vec<String>, String> {
    let mut tests = Vec::new();
    for (n, line) in stdout.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_suffix(": test") {
            tests.push(name.to_owned());
        } else if line.ends_with(": benchmark") {
            continue;
        } else {
            return Err(format!(
                "line {} of its `--list --format terse` output is {:?}, expected `<name>: test`; \
                 does the binary use a custom test harness (harness = false)?",
                n + 1,
                truncate(line, 80)
            ));
        }
    }
    Ok(tests)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_ids_follow_nextest() {
        assert_eq!(binary_id("app", "lib", "app"), "app");
        assert_eq!(binary_id("app", "test", "integration"), "app::integration");
        assert_eq!(binary_id("app", "bin", "app-cli"), "app::bin/app-cli");
        assert_eq!(binary_id("app", "example", "demo"), "app::example/demo");
    }

    #[test]
    fn binary_kinds_follow_nextest() {
        use cargo_metadata::TargetKind as K;
        assert_eq!(binary_kind(&[K::CDyLib, K::RLib]), "lib");
        assert_eq!(binary_kind(&[K::ProcMacro]), "proc-macro");
        assert_eq!(binary_kind(&[K::Test]), "test");
        assert_eq!(binary_kind(&[K::Example]), "example");
    }

    #[test]
    fn terse_list_parses_tests_and_skips_benchmarks() {
        let out = "a::b: test\nc: benchmark\n\nd: test\n";
        assert_eq!(parse_terse_list(out).unwrap(), vec!["a::b", "d"]);
    }

    #[test]
    fn terse_list_rejects_unexpected_lines() {
        let err = parse_terse_list("a: test\nhello world\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("hello world"), "{err}");
    }
}
