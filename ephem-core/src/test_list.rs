//! The tests of a workspace: binaries, their test cases, and which of them a
//! run selects.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::filterset::Filtersets;
use crate::rerun::RerunSet;
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
    /// The target's name, e.g. `integration` (nextest's binary name, what
    /// `binary()` matches).
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
    /// Binaries a filterset rules out whatever their tests: not listed, no
    /// test of theirs known (nextest's "skipped" suites), sorted by id.
    pub skipped: Vec<(TestBinary, SkipReason)>,
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
            skipped: Vec::new(),
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

    /// Applies a name filter to every test.
    pub fn select(&self, filter: &TestFilter) -> Vec<Selection> {
        self.tests.iter().map(|t| filter.select(t)).collect()
    }

    /// Sets the binaries a filterset ruled out before listing, by id.
    pub fn set_skipped(&mut self, mut skipped: Vec<(TestBinary, SkipReason)>) {
        skipped.sort_by(|a, b| a.0.binary_id.cmp(&b.0.binary_id));
        self.skipped = skipped;
    }

    /// Moves the binaries `set_aside` rules out (and their tests) to
    /// [`skipped`](Self::skipped): for a list that was read rather than
    /// discovered (an archive's), so it reads as a discovered one would.
    pub fn set_aside(&mut self, set_aside: impl Fn(&TestBinary) -> Option<SkipReason>) {
        let reasons: Vec<Option<SkipReason>> = self.binaries.iter().map(set_aside).collect();
        if reasons.iter().all(Option::is_none) {
            return;
        }
        let mut renumber = vec![usize::MAX; self.binaries.len()];
        let mut kept = Vec::new();
        let mut skipped = std::mem::take(&mut self.skipped);
        for (idx, (binary, reason)) in std::mem::take(&mut self.binaries)
            .into_iter()
            .zip(reasons)
            .enumerate()
        {
            match reason {
                Some(reason) => skipped.push((binary, reason)),
                None => {
                    renumber[idx] = kept.len();
                    kept.push(binary);
                }
            }
        }
        self.binaries = kept;
        self.tests.retain(|t| renumber[t.binary] != usize::MAX);
        for t in &mut self.tests {
            t.binary = renumber[t.binary];
        }
        self.set_skipped(skipped);
    }

    /// The list as nextest-metadata's `TestListSummary`, so tools that read
    /// `cargo nextest list --message-format json` read ours; `decisions`
    /// (one per test) say which tests match and why the others do not.
    pub fn to_summary(&self, decisions: &[Decision]) -> TestListSummary {
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
                .zip(decisions)
                .filter(|(t, _)| t.binary == idx)
                .map(|(t, decision)| {
                    let filter_match = match decision.mismatch {
                        None => FilterMatch::Matches,
                        Some(reason) => FilterMatch::Mismatch { reason },
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
            let suite = binary.suite_summary(RustTestSuiteStatusSummary::LISTED, test_cases);
            suites.insert(suite.binary.binary_id.clone(), suite);
        }
        for (binary, reason) in &self.skipped {
            let status = match reason {
                SkipReason::Expression => RustTestSuiteStatusSummary::SKIPPED,
                SkipReason::DefaultFilter => RustTestSuiteStatusSummary::SKIPPED_DEFAULT_FILTER,
            };
            let suite = binary.suite_summary(status, Default::default());
            suites.insert(suite.binary.binary_id.clone(), suite);
        }
        summary.rust_suites = suites;
        summary
    }
}

impl TestBinary {
    /// Where it runs, as nextest says: a proc-macro crate's tests are built
    /// for the host, everything else for the target.
    pub fn build_platform(&self) -> BuildPlatform {
        if self.kind == "proc-macro" {
            BuildPlatform::Host
        } else {
            BuildPlatform::Target
        }
    }

    fn suite_summary(
        &self,
        status: RustTestSuiteStatusSummary,
        test_cases: BTreeMap<TestCaseName, RustTestCaseSummary>,
    ) -> RustTestSuiteSummary {
        RustTestSuiteSummary {
            package_name: self.package_name.clone(),
            binary: RustTestBinarySummary {
                binary_id: RustBinaryId::new(&self.binary_id),
                binary_name: self.binary_name.clone(),
                package_id: self.package_id.clone(),
                kind: RustTestBinaryKind::new(self.kind.clone()),
                binary_path: self.path.clone(),
                build_platform: self.build_platform(),
            },
            cwd: self.cwd.clone(),
            status,
            test_cases,
        }
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
    /// `-E` filterset expressions, as given (OR-ed; compiled by
    /// [`crate::filterset::Filtersets::parse`] against the workspace).
    pub filtersets: Vec<String>,
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

/// Why a binary was not listed at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// No `-E` expression can match a test of it.
    Expression,
    /// It is outside the default set (a profile's `default-filter`).
    DefaultFilter,
}

/// What the selection decided for one test, and why, in nextest's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the run does with it.
    pub selection: Selection,
    /// Why it does not match, as `cargo nextest list` reports it (the first
    /// reason in nextest's order: ignored, name, expression, default set);
    /// `None` when it matches.
    pub mismatch: Option<MismatchReason>,
}

/// Everything that selects tests: name filters, `--ignored`, `-E`
/// filtersets and, for `--rerun-failed`, the tests of an earlier run.
/// A test runs only if every part accepts it (nextest's AND).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// Name filters and which ignored tests run.
    pub filter: TestFilter,
    /// The compiled `-E` expressions.
    pub filtersets: Filtersets,
    /// `--rerun-failed`: only these tests (by binary id and name).
    pub rerun: Option<Arc<RerunSet>>,
}

impl Selector {
    /// A selector of name filters only.
    pub fn by_name(filter: TestFilter) -> Selector {
        Selector {
            filter,
            ..Default::default()
        }
    }

    /// Decides every test of `list`, in list order.
    pub fn decide(&self, list: &TestList) -> Vec<Decision> {
        let mut decisions = Vec::with_capacity(list.tests.len());
        let mut current: Option<(usize, crate::filterset::BinaryFilter<'_>)> = None;
        for test in &list.tests {
            if current.as_ref().map(|(b, _)| *b) != Some(test.binary) {
                let binary = &list.binaries[test.binary];
                current = Some((test.binary, self.filtersets.for_binary(binary)));
            }
            let (_, exprs) = current.as_ref().expect("set just above");
            let binary_id = &list.binaries[test.binary].binary_id;
            decisions.push(self.decide_one(test, binary_id, exprs));
        }
        decisions
    }

    /// What the run does with each test of `list`.
    pub fn select(&self, list: &TestList) -> Vec<Selection> {
        self.decide(list).into_iter().map(|d| d.selection).collect()
    }

    fn decide_one(
        &self,
        test: &TestCase,
        binary_id: &str,
        exprs: &crate::filterset::BinaryFilter<'_>,
    ) -> Decision {
        let out = |reason| Decision {
            selection: Selection::FilteredOut,
            mismatch: Some(reason),
        };
        if let Some(rerun) = &self.rerun {
            if !rerun.contains(binary_id, &test.name) {
                return out(MismatchReason::RerunAlreadyPassed);
            }
        }
        // A rerun runs an ignored test that failed: the earlier run ran it.
        let ignored = match (self.filter.ignored, &self.rerun) {
            (IgnoredMode::Default, Some(_)) => IgnoredMode::Include,
            (mode, _) => mode,
        };
        let ignored_mismatch = match ignored {
            IgnoredMode::Default => test.ignored,
            IgnoredMode::Only => !test.ignored,
            IgnoredMode::Include => false,
        };
        let rejected = if !self.filter.name_matches(&test.name) {
            Some(MismatchReason::String)
        } else {
            exprs.mismatch(&test.name)
        };
        match (rejected, ignored_mismatch) {
            // nextest names the ignored mismatch first.
            (Some(_), true) => out(MismatchReason::Ignored),
            (Some(reason), false) => out(reason),
            (None, true) if ignored == IgnoredMode::Default => Decision {
                selection: Selection::SkipIgnored,
                mismatch: Some(MismatchReason::Ignored),
            },
            (None, true) => out(MismatchReason::Ignored),
            (None, false) => Decision {
                selection: Selection::Run,
                mismatch: None,
            },
        }
    }
}

impl TestFilter {
    /// Whether a test's name passes the patterns and `--skip`.
    pub fn name_matches(&self, name: &str) -> bool {
        let matches =
            self.patterns.is_empty() || self.patterns.iter().any(|p| self.pattern_matches(p, name));
        matches && !self.skip.iter().any(|p| self.pattern_matches(p, name))
    }

    fn pattern_matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// Decides what happens to one test.
    pub fn select(&self, test: &TestCase) -> Selection {
        if !self.name_matches(&test.name) {
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

    fn two_binaries() -> TestList {
        let bin = |id: &str| TestBinary {
            binary_id: id.into(),
            ..binary_at("/ws/target/debug/deps/x")
        };
        TestList::new(
            vec![
                (bin("a"), vec![("t1".into(), false), ("t2".into(), true)]),
                (bin("b"), vec![("t1".into(), false), ("t3".into(), false)]),
            ],
            "/ws/target".into(),
        )
    }

    #[test]
    fn mismatch_reasons_follow_nextests_order() {
        let list = two_binaries();
        let selector = Selector::by_name(TestFilter {
            patterns: vec!["t1".into()],
            ..Default::default()
        });
        let got: Vec<_> = selector
            .decide(&list)
            .iter()
            .map(|d| (d.selection, d.mismatch))
            .collect();
        assert_eq!(
            got,
            [
                (Selection::Run, None),
                // Ignored and not matching the name: nextest says "ignored".
                (Selection::FilteredOut, Some(MismatchReason::Ignored)),
                (Selection::Run, None),
                (Selection::FilteredOut, Some(MismatchReason::String)),
            ]
        );
    }

    #[test]
    fn a_rerun_runs_its_tests_only_ignored_ones_included() {
        let list = two_binaries();
        let rerun = RerunSet::from_tests([
            ("a".to_owned(), "t2".to_owned()),
            ("b".to_owned(), "t1".to_owned()),
        ]);
        let selector = Selector {
            rerun: Some(Arc::new(rerun)),
            ..Default::default()
        };
        assert_eq!(
            selector.select(&list),
            [
                Selection::FilteredOut,
                Selection::Run,
                Selection::Run,
                Selection::FilteredOut
            ]
        );
    }

    #[test]
    fn set_aside_binaries_take_their_tests_along() {
        let mut list = two_binaries();
        list.set_aside(|b| (b.binary_id == "a").then_some(SkipReason::Expression));
        assert_eq!(list.binaries.len(), 1);
        assert_eq!(list.skipped.len(), 1);
        let names: Vec<_> = list
            .tests
            .iter()
            .map(|t| (t.binary, t.name.as_str()))
            .collect();
        assert_eq!(names, [(0, "t1"), (0, "t3")]);
        assert_eq!(list.binary_id(1), "b");
        let summary = list.to_summary(&Selector::default().decide(&list));
        assert_eq!(
            summary.rust_suites[&RustBinaryId::new("a")].status,
            RustTestSuiteStatusSummary::SKIPPED
        );
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
