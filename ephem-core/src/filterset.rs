//! `-E/--filterset EXPR`: nextest's filterset language, parsed and
//! evaluated by nextest's own crate (`nextest-filtering`), so an expression
//! selects here exactly what it selects under `cargo nextest`.
//!
//! Parsing needs the workspace's package graph (`package()`, `deps()`,
//! `rdeps()`, `binary()` and `binary_id()` are resolved against it, and an
//! operand that matches nothing is an error, as in nextest); evaluation needs
//! only each binary's package id, id, name, kind and platform, and the test's
//! name.

use std::io::IsTerminal;

use guppy::graph::PackageGraph;
use guppy::PackageId;
use miette::{GraphicalReportHandler, GraphicalTheme};
use nextest_filtering::{
    BinaryQuery, CompiledExpr, EvalContext, Filterset, FiltersetKind, GroupLookup, KnownGroups,
    NameMatcher, ParseContext, TestQuery,
};
use nextest_metadata::{
    BuildPlatform, MismatchReason, RustBinaryId, RustTestBinaryKind, TestCaseName,
};

use crate::error::{EphemError, Result};
use crate::test_list::{SkipReason, TestBinary};

/// Where the language is described, for error messages.
const REFERENCE: &str = "https://nexte.st/docs/filtersets";

/// Which command the expressions are for: `archive` refuses `test()` and
/// `group()` (an archive holds whole binaries), as nextest's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiltersetUse {
    /// `test` and `list`.
    Test,
    /// `archive`: chooses which binaries go in.
    Archive,
}

/// The `-E` expressions of a command, compiled, with the default set they
/// are bounded by. No expression selects everything.
#[derive(Clone, Debug)]
pub struct Filtersets {
    /// OR-ed together, as nextest does with repeated `-E`.
    sets: Vec<Filterset>,
    /// What `default()` means, and what every selection is intersected with.
    default_filter: DefaultFilter,
}

/// A profile's `default-filter`: the seam where profiles plug in. Without a
/// profile it is `all()`, nextest's default, so `default()` selects every
/// test and bounds nothing.
#[derive(Clone, Debug)]
pub struct DefaultFilter {
    compiled: CompiledExpr,
}

impl Default for DefaultFilter {
    fn default() -> Self {
        DefaultFilter {
            compiled: CompiledExpr::ALL,
        }
    }
}

impl DefaultFilter {
    /// A profile's `default-filter` expression, parsed as nextest parses
    /// it (`default()` and `group()` are refused inside it).
    pub fn parse(expr: &str, graph: &PackageGraph) -> Result<DefaultFilter> {
        let cx = ParseContext::new(graph);
        let parsed = Filterset::parse(
            expr.to_owned(),
            &cx,
            FiltersetKind::DefaultFilter,
            &KnownGroups::Unavailable,
        )
        .map_err(|e| parse_error("default-filter", &[e]))?;
        Ok(DefaultFilter {
            compiled: parsed.compiled,
        })
    }

    fn is_all(&self) -> bool {
        self.compiled == CompiledExpr::ALL
    }
}

/// A profile override's `filter`, parsed as nextest parses one
/// (`group()` refused: overrides decide the groups).
#[derive(Clone, Debug)]
pub struct OverrideFilter {
    compiled: CompiledExpr,
}

impl OverrideFilter {
    /// Parses `expr` against `graph`; the error carries nextest's diagnostic.
    pub fn parse(expr: &str, graph: &PackageGraph) -> Result<OverrideFilter> {
        let cx = ParseContext::new(graph);
        let parsed = Filterset::parse(
            expr.to_owned(),
            &cx,
            FiltersetKind::OverrideFilter,
            &KnownGroups::Unavailable,
        )
        .map_err(|e| parse_error("override filter", &[e]))?;
        Ok(OverrideFilter {
            compiled: parsed.compiled,
        })
    }

    /// Whether the test `name` of `binary` matches.
    pub fn matches(&self, binary: &TestBinary, name: &str) -> bool {
        let keys = BinaryKeys::of(binary);
        let name = TestCaseName::new(name);
        let query = TestQuery {
            binary_query: keys.query(binary),
            test_name: &name,
        };
        let ecx = EvalContext {
            default_filter: &CompiledExpr::ALL,
        };
        self.compiled.matches_test(&query, &ecx)
    }
}

/// Reads `cargo metadata`'s JSON into the package graph filtersets are
/// parsed against.
pub fn package_graph(json: &str) -> Result<PackageGraph> {
    PackageGraph::from_json(json).map_err(|e| {
        EphemError::Internal(format!(
            "cargo metadata's output is not a package graph guppy reads: {e}"
        ))
    })
}

impl Default for Filtersets {
    fn default() -> Self {
        Filtersets::none()
    }
}

impl Filtersets {
    /// No `-E`: every test, bounded by nothing.
    pub fn none() -> Filtersets {
        Filtersets {
            sets: Vec::new(),
            default_filter: DefaultFilter::default(),
        }
    }

    /// Parses every expression against `graph`. All errors of all
    /// expressions are reported at once, each with nextest's diagnostic
    /// (the expression, a caret under the fault, what is wrong): exit 2.
    pub fn parse(exprs: &[String], graph: &PackageGraph, kind: FiltersetUse) -> Result<Filtersets> {
        let cx = ParseContext::new(graph);
        let kind = match kind {
            FiltersetUse::Test => FiltersetKind::Test,
            FiltersetUse::Archive => FiltersetKind::TestArchive,
        };
        // Without profiles there are no custom test groups: every test is
        // in `@global`, the only group `group()` may name.
        let groups = match kind {
            FiltersetKind::Test => KnownGroups::Known {
                custom_groups: Default::default(),
            },
            _ => KnownGroups::Unavailable,
        };
        let mut sets = Vec::new();
        let mut errors = Vec::new();
        for expr in exprs {
            match Filterset::parse(expr.clone(), &cx, kind, &groups) {
                Ok(set) => sets.push(set),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(parse_error("-E", &errors));
        }
        Ok(Filtersets {
            sets,
            default_filter: DefaultFilter::default(),
        })
    }

    /// Replaces the default set (a profile's `default-filter`).
    pub fn with_default_filter(mut self, default_filter: DefaultFilter) -> Filtersets {
        self.default_filter = default_filter;
        self
    }

    /// Whether no `-E` was given.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The expressions as given, for the rerun command.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.sets.iter().map(|s| s.input.as_str())
    }

    /// Whether `binary` can hold a selected test: `Some(reason)` when no
    /// test of it can match, so it need not even be listed.
    pub fn set_aside(&self, binary: &TestBinary) -> Option<SkipReason> {
        let keys = BinaryKeys::of(binary);
        let query = keys.query(binary);
        let ecx = self.ecx();
        let possible = |r: Option<bool>| r != Some(false);
        if !self.sets.is_empty()
            && !self
                .sets
                .iter()
                .any(|s| possible(s.matches_binary(&query, &ecx)))
        {
            return Some(SkipReason::Expression);
        }
        if !possible(self.default_filter.compiled.matches_binary(&query, &ecx)) {
            return Some(SkipReason::DefaultFilter);
        }
        None
    }

    /// A matcher for the tests of one binary.
    pub fn for_binary<'a>(&'a self, binary: &'a TestBinary) -> BinaryFilter<'a> {
        BinaryFilter {
            sets: self,
            keys: BinaryKeys::of(binary),
            binary,
        }
    }

    fn ecx(&self) -> EvalContext<'_> {
        EvalContext {
            default_filter: &self.default_filter.compiled,
        }
    }
}

/// The filtersets applied to the tests of one binary.
pub struct BinaryFilter<'a> {
    sets: &'a Filtersets,
    keys: BinaryKeys,
    binary: &'a TestBinary,
}

impl BinaryFilter<'_> {
    /// `None` when the test is selected, else why not: `Expression` (no
    /// `-E` matches) or `DefaultFilter` (outside the default set).
    pub fn mismatch(&self, name: &str) -> Option<MismatchReason> {
        if self.sets.sets.is_empty() && self.sets.default_filter.is_all() {
            return None;
        }
        let name = TestCaseName::new(name);
        let query = TestQuery {
            binary_query: self.keys.query(self.binary),
            test_name: &name,
        };
        let ecx = self.sets.ecx();
        let groups = GlobalGroupOnly;
        if !self.sets.sets.is_empty()
            && !self
                .sets
                .sets
                .iter()
                .any(|s| s.matches_test_with_groups(&query, &ecx, &groups))
        {
            return Some(MismatchReason::Expression);
        }
        if !self.sets.default_filter.is_all()
            && !self.sets.default_filter.compiled.matches_test(&query, &ecx)
        {
            return Some(MismatchReason::DefaultFilter);
        }
        None
    }
}

/// The owned values a [`BinaryQuery`] borrows, made once per binary.
struct BinaryKeys {
    package_id: PackageId,
    binary_id: RustBinaryId,
    kind: RustTestBinaryKind,
}

impl BinaryKeys {
    fn of(binary: &TestBinary) -> BinaryKeys {
        BinaryKeys {
            package_id: PackageId::new(binary.package_id.clone()),
            binary_id: RustBinaryId::new(&binary.binary_id),
            kind: RustTestBinaryKind::new(binary.kind.clone()),
        }
    }

    fn query<'a>(&'a self, binary: &'a TestBinary) -> BinaryQuery<'a> {
        BinaryQuery {
            package_id: &self.package_id,
            binary_id: &self.binary_id,
            binary_name: &binary.binary_name,
            kind: &self.kind,
            platform: match binary.build_platform() {
                BuildPlatform::Host => guppy::graph::cargo::BuildPlatform::Host,
                BuildPlatform::Target => guppy::graph::cargo::BuildPlatform::Target,
            },
        }
    }
}

/// Parses a service's `tests` scope as nextest parses `-E` (`label` names
/// it in the error: the file and key); `None` when it is `all()`.
pub(crate) fn parse_scope(
    expr: &str,
    graph: &PackageGraph,
    label: &str,
) -> Result<Option<Filterset>> {
    let cx = ParseContext::new(graph);
    let groups = KnownGroups::Known {
        custom_groups: Default::default(),
    };
    let set = Filterset::parse(expr.to_owned(), &cx, FiltersetKind::Test, &groups)
        .map_err(|e| parse_error(label, &[e]))?;
    Ok((set.compiled != CompiledExpr::ALL).then_some(set))
}

/// Whether a service's scope matches the test `name` of `binary`
/// (`default()` there is every test: services have no default set).
pub(crate) fn scope_matches(set: &Filterset, binary: &TestBinary, name: &str) -> bool {
    let keys = BinaryKeys::of(binary);
    let name = TestCaseName::new(name);
    let query = TestQuery {
        binary_query: keys.query(binary),
        test_name: &name,
    };
    let ecx = EvalContext {
        default_filter: &CompiledExpr::ALL,
    };
    set.matches_test_with_groups(&query, &ecx, &GlobalGroupOnly)
}

/// Test groups without profiles: every test is in `@global`, as in nextest
/// when no test group is configured. Profiles will bring a real lookup.
#[derive(Debug)]
struct GlobalGroupOnly;

impl GroupLookup for GlobalGroupOnly {
    fn is_member_test(&self, _test: &TestQuery<'_>, matcher: &NameMatcher) -> bool {
        matcher.is_match(nextest_metadata::GLOBAL_TEST_GROUP)
    }
}

/// Every parse error of every expression as nextest renders it (miette's
/// graphical report: the expression, a caret under the fault, the cause),
/// under one line that says what failed and where the language is
/// described.
fn parse_error(flag: &str, all: &[nextest_filtering::errors::FiltersetParseErrors]) -> EphemError {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    theme.characters.error = "error:".into();
    let handler = GraphicalReportHandler::new_themed(theme);
    let mut rendered = String::new();
    let mut count = 0;
    for errors in all {
        for single in &errors.errors {
            count += 1;
            let report = miette::Report::new(single.clone()).with_source_code(errors.input.clone());
            let mut one = String::new();
            if handler.render_report(&mut one, report.as_ref()).is_err() {
                one = format!("{single}\n");
            }
            if !rendered.is_empty() {
                rendered.push('\n');
            }
            rendered.push_str(&one);
        }
    }
    let inputs: Vec<String> = all.iter().map(|e| format!("{:?}", e.input)).collect();
    EphemError::Usage(format!(
        "invalid filterset {flag} {} ({count} error{}; the language: {REFERENCE}):\n{}",
        inputs.join(", "),
        if count == 1 { "" } else { "s" },
        rendered.trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The filtersets fixture's metadata (fs-app -> fs-storage -> fs-core,
    /// fs-app -> fs-macros, fs-tools alone), read once with cargo.
    fn json() -> &'static str {
        static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        JSON.get_or_init(|| {
            let manifest = camino::Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/filtersets/Cargo.toml");
            let ws = crate::discover::Workspace::load_with_graph(&crate::discover::CargoOptions {
                manifest_path: Some(manifest),
                ..Default::default()
            })
            .unwrap();
            ws.graph_json.unwrap().to_string()
        })
    }

    fn graph() -> PackageGraph {
        package_graph(json()).unwrap()
    }

    fn binary(package: &str, kind: &str, name: &str) -> TestBinary {
        let graph = graph();
        let id = graph
            .packages()
            .find(|p| p.name() == package)
            .map(|p| p.id().repr().to_owned())
            .unwrap();
        TestBinary {
            binary_id: crate::discover::binary_id(package, kind, name),
            binary_name: name.into(),
            package_id: id,
            package_name: package.into(),
            kind: kind.into(),
            path: "/nonexistent".into(),
            cwd: "/ws".into(),
            env: Arc::new(Vec::new()),
        }
    }

    fn parse(exprs: &[&str]) -> Result<Filtersets> {
        let exprs: Vec<String> = exprs.iter().map(|s| s.to_string()).collect();
        Filtersets::parse(&exprs, &graph(), FiltersetUse::Test)
    }

    #[test]
    fn expressions_are_ored_and_binaries_set_aside() {
        let sets = parse(&["package(fs-core)", "test(=it_works)"]).unwrap();
        let core = binary("fs-core", "lib", "fs_core");
        let app_it = binary("fs-app", "test", "app_flow");
        assert_eq!(sets.set_aside(&core), None);
        assert_eq!(sets.set_aside(&app_it), None, "test() may match any binary");
        assert_eq!(sets.for_binary(&core).mismatch("anything"), None);
        assert_eq!(sets.for_binary(&app_it).mismatch("it_works"), None);
        assert_eq!(
            sets.for_binary(&app_it).mismatch("other"),
            Some(MismatchReason::Expression)
        );
        let only_core = parse(&["package(fs-core)"]).unwrap();
        assert_eq!(only_core.set_aside(&app_it), Some(SkipReason::Expression));
    }

    #[test]
    fn deps_rdeps_kind_platform_and_groups() {
        let core = binary("fs-core", "lib", "fs_core");
        let app = binary("fs-app", "lib", "fs_app");
        let tools = binary("fs-tools", "lib", "fs_tools");
        let macros = binary("fs-macros", "proc-macro", "fs_macros");
        let rdeps = parse(&["rdeps(fs-core)"]).unwrap();
        assert_eq!(rdeps.set_aside(&app), None);
        assert_eq!(
            rdeps.set_aside(&core),
            None,
            "a package is among its own rdeps"
        );
        assert_eq!(rdeps.set_aside(&tools), Some(SkipReason::Expression));
        let deps = parse(&["deps(fs-app) - package(fs-app)"]).unwrap();
        assert_eq!(deps.set_aside(&app), Some(SkipReason::Expression));
        assert_eq!(deps.set_aside(&core), None);
        let host = parse(&["platform(host)"]).unwrap();
        assert_eq!(host.set_aside(&macros), None);
        assert_eq!(host.set_aside(&core), Some(SkipReason::Expression));
        let global = parse(&["group(@global) and kind(lib)"]).unwrap();
        assert_eq!(global.for_binary(&core).mismatch("t"), None);
        assert!(
            parse(&["group(serial)"]).is_err(),
            "no such group without profiles"
        );
        let default = parse(&["default()"]).unwrap();
        assert_eq!(default.for_binary(&app).mismatch("t"), None);
    }

    #[test]
    fn errors_carry_nextests_diagnostic() {
        let err = parse(&["test(a) & pakage(foo)", "package(nope)"]).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.exit_code(), crate::exit_codes::USAGE);
        assert!(
            text.starts_with("invalid filterset -E \"test(a) & pakage(foo)\", \"package(nope)\""),
            "{text}"
        );
        assert!(text.contains("error: expected expression"), "{text}");
        assert!(text.contains("1 │ test(a) & pakage(foo)"), "{text}");
        assert!(text.contains("no packages matched this"), "{text}");
        assert!(text.contains("╰──"), "the caret: {text}");
    }

    #[test]
    fn archive_filters_refuse_test_predicates() {
        let err =
            Filtersets::parse(&["test(x)".into()], &graph(), FiltersetUse::Archive).unwrap_err();
        assert!(
            err.to_string()
                .contains("predicate not allowed in `archive-filter` expressions"),
            "{err}"
        );
    }

    #[test]
    fn a_default_filter_bounds_the_selection_and_defines_default() {
        let g = graph();
        let df = DefaultFilter::parse("package(fs-core)", &g).unwrap();
        let sets = Filtersets::parse(&["all()".into()], &g, FiltersetUse::Test)
            .unwrap()
            .with_default_filter(df);
        let app = binary("fs-app", "lib", "fs_app");
        assert_eq!(sets.set_aside(&app), Some(SkipReason::DefaultFilter));
        assert_eq!(
            sets.for_binary(&app).mismatch("t"),
            Some(MismatchReason::DefaultFilter)
        );
        assert!(DefaultFilter::parse("default()", &g).is_err());
    }
}
