//! `[services.NAME] tests = "FILTERSET"`: which tests get which services.
//! A test gets the exports, the waits and the resets of the services whose
//! scope matches it, and only those; a test matching none starts as soon
//! as it is built and never waits for an environment.
//!
//! A shard that needs an environment starts all its services (the backend
//! provisions, keeps and reuses a shard's services as one unit), so the
//! dependencies of a matched service are up too; their exports still go
//! only to the tests their own scope matches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use camino::Utf8Path;
use ephem_fixtures::EphemConfig;
use guppy::graph::PackageGraph;
use nextest_filtering::Filterset;

use crate::error::Result;
use crate::filterset::{parse_scope, scope_matches};
use crate::test_list::{TestIdx, TestList};

/// Every service's scope, compiled against the workspace's packages.
#[derive(Clone, Debug)]
pub struct ServiceScopes {
    services: Vec<ScopedService>,
}

#[derive(Clone, Debug)]
struct ScopedService {
    name: String,
    /// `None`: every test (no `tests`, or `all()`).
    filter: Option<Filterset>,
    /// The names it exports.
    exports: Vec<String>,
    /// It resets between tests: its tests run one at a time.
    serial: bool,
}

/// What one test gets of its shard's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestScope {
    /// The services whose scope matches it, by name; empty: it needs no
    /// environment at all.
    pub services: Vec<String>,
    /// Every service matches: nothing to leave out.
    pub all: bool,
    /// The variables it may see: the exports of its services.
    pub exports: HashSet<String>,
    /// It matches a service that resets between tests: it runs while no
    /// other such test of its shard runs.
    pub serial: bool,
}

impl TestScope {
    /// Whether the test waits for its shard's environment.
    pub fn needs_env(&self) -> bool {
        !self.services.is_empty()
    }
}

impl ServiceScopes {
    /// Compiles each service's `tests` against `graph`; a bad expression is
    /// a usage error (exit 2) naming the service and `path`, with nextest's
    /// diagnostic.
    pub fn parse(config: &EphemConfig, path: &Utf8Path, graph: &PackageGraph) -> Result<Self> {
        let mut services = Vec::new();
        for spec in &config.services {
            let filter = match &spec.tests {
                Some(expr) => {
                    let label = format!("services.{}.tests in {path}", spec.name);
                    parse_scope(expr, graph, &label)?
                }
                None => None,
            };
            services.push(ScopedService {
                name: spec.name.clone(),
                filter,
                exports: spec.export.iter().map(|(name, _)| name.clone()).collect(),
                serial: spec.needs_serial_tests(),
            });
        }
        Ok(ServiceScopes { services })
    }

    /// Whether any service has a scope narrower than every test.
    pub fn any_scoped(&self) -> bool {
        self.services.iter().any(|s| s.filter.is_some())
    }

    /// Whether every service has a narrower scope: which shards need an
    /// environment is known only once the tests are.
    pub fn all_scoped(&self) -> bool {
        !self.services.is_empty() && self.services.iter().all(|s| s.filter.is_some())
    }

    /// Whether a configuration's services need the package graph to be
    /// compiled (some has `tests`).
    pub fn needed(config: &EphemConfig) -> bool {
        config.services.iter().any(|s| s.tests.is_some())
    }

    /// The scope of each test of `list`, by index; tests that match the
    /// same services share one.
    pub fn of_tests(&self, list: &TestList) -> Vec<Arc<TestScope>> {
        let mut shared: HashMap<Vec<bool>, Arc<TestScope>> = HashMap::new();
        (0..list.tests.len())
            .map(|test: TestIdx| {
                let case = &list.tests[test];
                let binary = &list.binaries[case.binary];
                let matched: Vec<bool> = self
                    .services
                    .iter()
                    .map(|s| {
                        s.filter
                            .as_ref()
                            .is_none_or(|f| scope_matches(f, binary, &case.name))
                    })
                    .collect();
                shared
                    .entry(matched)
                    .or_insert_with_key(|matched| Arc::new(self.scope(matched)))
                    .clone()
            })
            .collect()
    }

    fn scope(&self, matched: &[bool]) -> TestScope {
        let services: Vec<&ScopedService> = self
            .services
            .iter()
            .zip(matched)
            .filter_map(|(s, &m)| m.then_some(s))
            .collect();
        TestScope {
            all: services.len() == self.services.len(),
            exports: services
                .iter()
                .flat_map(|s| s.exports.iter().cloned())
                .collect(),
            serial: services.iter().any(|s| s.serial),
            services: services.iter().map(|s| s.name.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> PackageGraph {
        let manifest = camino::Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/filtersets/Cargo.toml");
        let ws = crate::discover::Workspace::load_with_graph(&crate::discover::CargoOptions {
            manifest_path: Some(manifest),
            ..Default::default()
        })
        .unwrap();
        crate::filterset::package_graph(&ws.graph_json.unwrap()).unwrap()
    }

    fn config(text: &str) -> EphemConfig {
        EphemConfig::parse(text, "ephem.toml").unwrap()
    }

    fn list(names: &[&str]) -> TestList {
        let binary = crate::test_list::TestBinary {
            binary_id: "fs-core".into(),
            binary_name: "fs_core".into(),
            package_id: "fs-core 0.1.0".into(),
            package_name: "fs-core".into(),
            kind: "lib".into(),
            path: "/nonexistent".into(),
            cwd: "/nonexistent".into(),
            env: Arc::new(Vec::new()),
        };
        let tests = names.iter().map(|n| (n.to_string(), false)).collect();
        TestList::new(vec![(binary, tests)], "/nonexistent".into())
    }

    const TWO: &str = r#"
[services.db]
image = "postgres:16"
ports = [5432]
reset = "postgres"
export = { DATABASE_URL = "postgres://${host}:${port.5432}/x" }
tests = "test(/^db::/)"
[services.cache]
image = "redis:7"
export = { CACHE = "redis" }
tests = "test(/cache/)"
"#;

    #[test]
    fn each_test_gets_the_services_its_scopes_match() {
        let scopes = ServiceScopes::parse(&config(TWO), "ephem.toml".into(), &graph()).unwrap();
        assert!(scopes.all_scoped());
        let list = list(&["db::a", "db::cache", "unit::b"]);
        let of = scopes.of_tests(&list);
        assert_eq!(of[0].services, ["db"]);
        assert!(of[0].serial && of[0].exports.contains("DATABASE_URL"));
        assert!(!of[0].exports.contains("CACHE"));
        assert_eq!(of[1].services, ["cache", "db"]);
        assert!(of[1].all);
        assert!(!of[2].needs_env() && !of[2].serial && of[2].exports.is_empty());
    }

    #[test]
    fn no_scope_or_all_is_every_test() {
        let text = TWO
            .replace("tests = \"test(/^db::/)\"", "tests = \"all()\"")
            .replace("tests = \"test(/cache/)\"\n", "");
        let scopes = ServiceScopes::parse(&config(&text), "ephem.toml".into(), &graph()).unwrap();
        assert!(!scopes.any_scoped());
        let of = scopes.of_tests(&list(&["x"]));
        assert!(of[0].all && of[0].serial);
    }

    #[test]
    fn a_bad_scope_names_the_service_and_the_file() {
        let text = TWO.replace("test(/cache/)", "tset(cache)");
        let err =
            ServiceScopes::parse(&config(&text), "/w/ephem.toml".into(), &graph()).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit_codes::USAGE);
        let text = err.to_string();
        assert!(
            text.contains("services.cache.tests in /w/ephem.toml"),
            "{text}"
        );
        assert!(text.contains("tset(cache)"), "{text}");
    }
}
