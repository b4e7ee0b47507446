//! The tests of a workspace: binaries, their test cases, and which of them a
//! run selects.

use std::collections::BTreeMap;
use std::sync::Arc;

use camino::Utf8PathBuf;
use nextest_metadata::{
    BuildPlatform, FilterMatch, MismatchReason, RustBinaryId, RustBuildMetaSummary,
    RustTestBinaryKind, RustTestBinarySummary, RustTestCaseSummary, RustTestKind,
    RustTestSuiteStatusSummary, RustTestSuiteSummary, TestCaseName, TestListSummary,
};

/// One test binary produced by `cargo test --no-run`.
#[derive(Clone, Debug)]
pub struct TestBinary {
    /// nextest-style id: `pkg`, `pkg::integration`, `pkg::bin/name`.
    pub binary_id: String,
    /// File name of the binary, e.g. `integration-0f3c...`.
    pub binary_name: String,
    /// Cargo package id.
    pub package_id: String,
    /// Package name.
    pub package_name: String,
    /// Target kind: `lib`, `test`, `bin`, `example`, `bench`, `proc-macro`.
    pub kind: String,
    /// Path of the executable.
    pub path: Utf8PathBuf,
    /// Directory the tests run in: the package's root, like `cargo test`.
    pub cwd: Utf8PathBuf,
    /// Variables every process of this binary gets (CARGO_PKG_*, library
    /// search path, ...), computed once.
    pub env: Arc<Vec<(String, String)>>,
}

/// One test case of one binary.
#[derive(Clone, Debug)]
pub struct TestCase {
    /// Index into [`TestList::binaries`].
    pub binary: usize,
    /// Full test name, e.g. `tests::it_works`.
    pub name: String,
    /// Marked `#[ignore]`.
    pub ignored: bool,
}

/// Every test of every test binary, sorted by binary id then name.
#[derive(Clone, Debug, Default)]
pub struct TestList {
    /// Test binaries, sorted by id.
    pub binaries: Vec<TestBinary>,
    /// Test cases, sorted by (binary id, name).
    pub tests: Vec<TestCase>,
    /// Target directory of the build.
    pub target_directory: Utf8PathBuf,
    /// The build's folder in it (`debug`, `release`, a custom profile's name),
    /// for when no binary says where it is.
    pub profile_dir: Utf8PathBuf,
}

/// Index of a test in [`TestList::tests`].
pub type TestIdx = usize;

impl TestList {
    /// Builds a list from binaries and their `(name, ignored)` tests; sorts both.
    pub fn new(
        mut binaries: Vec<(TestBinary, Vec<(String, bool)>)>,
        target_directory: Utf8PathBuf,
    ) -> Self {
        binaries.sort_by(|a, b| a.0.binary_id.cmp(&b.0.binary_id));
        let mut list = TestList {
            binaries: Vec::with_capacity(binaries.len()),
            tests: Vec::new(),
            target_directory,
            profile_dir: Utf8PathBuf::from("debug"),
        };
        for (idx, (binary, mut tests)) in binaries.into_iter().enumerate() {
            tests.sort();
            list.tests
                .extend(tests.into_iter().map(|(name, ignored)| TestCase {
                    binary: idx,
                    name,
                    ignored,
                }));
            list.binaries.push(binary);
        }
        list
    }

    /// The binary a test belongs to.
    pub fn binary_of(&self, test: TestIdx) -> &TestBinary {
        &self.binaries[self.tests[test].binary]
    }

    /// The binary id of a test (JUnit classname).
    pub fn binary_id(&self, test: TestIdx) -> &str {
        &self.binary_of(test).binary_id
    }

    /// Applies a filter to every test.
    pub fn select(&self, filter: &TestFilter) -> Vec<Selection> {
        self.tests.iter().map(|t| filter.select(t)).collect()
    }

    /// The list as nextest-metadata's `TestListSummary`, so tools that read
    /// `cargo nextest list --message-format json` read ours.
    pub fn to_summary(&self, selection: &[Selection]) -> TestListSummary {
        let meta = RustBuildMetaSummary {
            target_directory: self.target_directory.clone(),
            base_output_directories: self.base_output_directories(),
            ..Default::default()
        };
        let mut summary = TestListSummary::new(meta);
        summary.test_count = self.tests.len();
        let mut suites: BTreeMap<RustBinaryId, RustTestSuiteSummary> = BTreeMap::new();
        for (idx, binary) in self.binaries.iter().enumerate() {
            let test_cases = self
                .tests
                .iter()
                .zip(selection)
                .filter(|(t, _)| t.binary == idx)
                .map(|(t, sel)| {
                    let filter_match = match sel {
                        Selection::Run => FilterMatch::Matches,
                        Selection::SkipIgnored => FilterMatch::Mismatch {
                            reason: MismatchReason::Ignored,
                        },
                        Selection::FilteredOut => FilterMatch::Mismatch {
                            reason: MismatchReason::String,
                        },
                    };
                    (
                        TestCaseName::new(&t.name),
                        RustTestCaseSummary {
                            kind: Some(RustTestKind::TEST),
                            ignored: t.ignored,
                            filter_match,
                        },
                    )
                })
                .collect();
            let id = RustBinaryId::new(&binary.binary_id);
            suites.insert(
                id.clone(),
                RustTestSuiteSummary {
                    package_name: binary.package_name.clone(),
                    binary: RustTestBinarySummary {
                        binary_id: id,
                        binary_name: binary.binary_name.clone(),
                        package_id: binary.package_id.clone(),
                        kind: RustTestBinaryKind::new(binary.kind.clone()),
                        binary_path: binary.path.clone(),
                        build_platform: BuildPlatform::Target,
                    },
                    cwd: binary.cwd.clone(),
                    status: RustTestSuiteStatusSummary::LISTED,
                    test_cases,
                },
            );
        }
        summary.rust_suites = suites;
        summary
    }
}

impl TestList {
    /// Where the binaries were built, relative to the target directory, as
    /// nextest reports it: `debug`, `release`, `<triple>/debug`, ... Read off
    /// the binaries' paths (`<base>/deps/<binary>`); the profile's folder
    /// when there is no binary.
    pub fn base_output_directories(&self) -> std::collections::BTreeSet<Utf8PathBuf> {
        let mut dirs: std::collections::BTreeSet<Utf8PathBuf> = self
            .binaries
            .iter()
            .filter_map(|b| {
                let base = b.path.parent()?.parent()?;
                Some(base.strip_prefix(&self.target_directory).ok()?.to_owned())
            })
            .collect();
        if dirs.is_empty() {
            dirs.insert(self.profile_dir.clone());
        }
        dirs
    }
}

/// Which ignored tests a run includes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IgnoredMode {
    /// Run tests not marked `#[ignore]`; report ignored ones as skipped.
    #[default]
    Default,
    /// Run only ignored tests (`--ignored`).
    Only,
    /// Run all tests (`--include-ignored`).
    Include,
}

/// Selects tests by name, like `cargo test FILTER...`.
#[derive(Clone, Debug, Default)]
pub struct TestFilter {
    /// Substrings (or whole names with `exact`); empty matches everything.
    pub patterns: Vec<String>,
    /// Patterns must equal the whole test name.
    pub exact: bool,
    /// Patterns to leave out (`--skip`), by substring (or whole name with `exact`).
    pub skip: Vec<String>,
    /// Which ignored tests run.
    pub ignored: IgnoredMode,
}

/// What a run does with one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The test runs.
    Run,
    /// Matches the filter but is `#[ignore]`d: reported as skipped.
    SkipIgnored,
    /// Does not match the name filter (or is not ignored under `--ignored`):
    /// left out of the run and the report, like `cargo test`'s "filtered out".
    FilteredOut,
}

impl TestFilter {
    fn name_matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// Decides what happens to one test.
    pub fn select(&self, test: &TestCase) -> Selection {
        let matches = self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|p| self.name_matches(p, &test.name));
        let skipped = self.skip.iter().any(|p| self.name_matches(p, &test.name));
        if !matches || skipped {
            return Selection::FilteredOut;
        }
        match (self.ignored, test.ignored) {
            (IgnoredMode::Default, true) => Selection::SkipIgnored,
            (IgnoredMode::Only, false) => Selection::FilteredOut,
            _ => Selection::Run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, ignored: bool) -> TestCase {
        TestCase {
            binary: 0,
            name: name.into(),
            ignored,
        }
    }

    #[test]
    fn substring_and_exact_filters() {
        let f = TestFilter {
            patterns: vec!["db".into()],
            ..Default::default()
        };
        assert_eq!(f.select(&case("tests::db_insert", false)), Selection::Run);
        assert_eq!(
            f.select(&case("tests::cache", false)),
            Selection::FilteredOut
        );
        let f = TestFilter {
            patterns: vec!["tests::db".into()],
            exact: true,
            ..Default::default()
        };
        assert_eq!(f.select(&case("tests::db", false)), Selection::Run);
        assert_eq!(
            f.select(&case("tests::db_insert", false)),
            Selection::FilteredOut
        );
    }

    #[test]
    fn ignored_modes() {
        let mut f = TestFilter::default();
        assert_eq!(f.select(&case("a", true)), Selection::SkipIgnored);
        f.ignored = IgnoredMode::Only;
        assert_eq!(f.select(&case("a", true)), Selection::Run);
        assert_eq!(f.select(&case("b", false)), Selection::FilteredOut);
        f.ignored = IgnoredMode::Include;
        assert_eq!(f.select(&case("a", true)), Selection::Run);
        assert_eq!(f.select(&case("b", false)), Selection::Run);
    }

    #[test]
    fn skip_wins_over_match() {
        let f = TestFilter {
            skip: vec!["slow".into()],
            ..Default::default()
        };
        assert_eq!(f.select(&case("slow_one", false)), Selection::FilteredOut);
        assert_eq!(f.select(&case("fast_one", false)), Selection::Run);
    }

    fn binary_at(path: &str) -> TestBinary {
        TestBinary {
            binary_id: "pkg".into(),
            binary_name: "pkg-0".into(),
            package_id: "pkg 0.1.0".into(),
            package_name: "pkg".into(),
            kind: "lib".into(),
            path: path.into(),
            cwd: "/ws".into(),
            env: Arc::new(Vec::new()),
        }
    }

    #[test]
    fn base_output_directories_follow_the_profile() {
        let release = TestList::new(
            vec![(binary_at("/ws/target/release/deps/pkg-0"), vec![])],
            "/ws/target".into(),
        );
        assert_eq!(
            release
                .base_output_directories()
                .into_iter()
                .collect::<Vec<_>>(),
            [Utf8PathBuf::from("release")]
        );
        let custom = TestList::new(
            vec![(binary_at("/ws/target/ci-fast/deps/pkg-0"), vec![])],
            "/ws/target".into(),
        );
        assert_eq!(
            custom
                .base_output_directories()
                .into_iter()
                .collect::<Vec<_>>(),
            [Utf8PathBuf::from("ci-fast")]
        );
        let mut empty = TestList::new(vec![], "/ws/target".into());
        empty.profile_dir = "release".into();
        assert_eq!(
            empty
                .base_output_directories()
                .into_iter()
                .collect::<Vec<_>>(),
            [Utf8PathBuf::from("release")]
        );
    }
}
