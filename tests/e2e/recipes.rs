//! The CI recipes of `examples/ci/`, played here: every job in a clean
//! folder that has only what the CI system would give it (the sources, the
//! artifacts of the jobs it needs, the cache), the scripts run as written
//! with bash, artifacts and caches moved by copying folders. The shard jobs
//! get no cargo on PATH. The merged report must equal a single full run, and
//! a second pipeline must partition by the first one's timings.
//!
//! Both recipes also validate against the schemas GitHub and GitLab publish
//! (check-jsonschema's vendored copies, installed by
//! scripts/provision-test-env.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::*;

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci")
        .join(name)
}

fn yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture workspace's tracked files, as a checkout gives them.
fn checkout(dest: &Path) {
    let fixture = fixture_manifest().parent().unwrap().to_path_buf();
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&fixture)
        .output()
        .unwrap();
    for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture.join(rel), to).unwrap();
    }
}

/// Copies a file or a folder's content into `dest` (created).
fn copy_into(src: &Path, dest: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dest).unwrap();
        for entry in std::fs::read_dir(src).unwrap().flatten() {
            copy_into(&entry.path(), &dest.join(entry.file_name()));
        }
    } else if src.is_file() {
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src, dest).unwrap();
    }
}

/// Files matching `pattern` (relative to `dir`; `*` within the last part).
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let path = dir.join(pattern.trim_end_matches('/'));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    if !name.contains('*') {
        return if path.exists() {
            vec![path]
        } else {
            Vec::new()
        };
    }
    let (prefix, suffix) = name.split_once('*').unwrap();
    let Ok(entries) = std::fs::read_dir(path.parent().unwrap()) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()
        })
        .collect();
    found.sort();
    found
}

/// What a played pipeline left: the final folders and each shard's stderr.
struct Played {
    /// The merged report and the page, from the last job.
    out: PathBuf,
    /// What the shard jobs printed.
    shard_logs: Vec<String>,
}

/// Runs one script in `dir` with bash (`-e`), as a CI runner would; returns
/// whether it succeeded and what it printed.
fn script(
    dir: &Path,
    text: &str,
    env: &BTreeMap<String, String>,
    with_cargo: bool,
) -> (bool, String) {
    let mut cmd = Command::new("bash");
    cmd.args(["-e", "-o", "pipefail", "-c", text])
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir.join(".home"))
        .env("CI", "true")
        .envs(env);
    if with_cargo {
        // The build job's toolchain, wherever rustup keeps it; one target
        // folder for every pipeline's build keeps the fixture's deps built.
        let home = std::env::var("HOME").unwrap();
        let var = |k: &str, default: String| std::env::var(k).unwrap_or(default);
        cmd.env("PATH", std::env::var("PATH").unwrap())
            .env("RUSTUP_HOME", var("RUSTUP_HOME", format!("{home}/.rustup")))
            .env("CARGO_HOME", var("CARGO_HOME", format!("{home}/.cargo")))
            .env(
                "CARGO_TARGET_DIR",
                dir.parent().unwrap().join("build-target"),
            );
    } else {
        cmd.env("PATH", "/usr/bin:/bin");
    }
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

/// Where the "installed" cargo-ephem goes: the binary under test.
fn install_cargo_ephem(at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_cargo-ephem"), at).unwrap();
}

// --- GitHub Actions ---------------------------------------------------------

struct GitHub {
    base: PathBuf,
    run_id: u32,
}

impl GitHub {
    fn expand(&self, text: &str, matrix: Option<&str>) -> String {
        text.replace("${{ matrix.shard }}", matrix.unwrap_or(""))
            .replace("${{ github.run_id }}", &self.run_id.to_string())
            .replace("${{ github.run_attempt }}", "1")
            .replace("${{ github.ref_name }}", "main")
    }

    fn env_of(&self, node: &Value, matrix: Option<&str>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(map) = node.get("env").and_then(Value::as_mapping) {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                };
                env.insert(k.as_str().unwrap().to_owned(), self.expand(&v, matrix));
            }
        }
        env
    }

    /// Plays one job; returns its log (every step's output).
    fn job(&self, workflow: &Value, name: &str, matrix: Option<&str>) -> String {
        let job = &workflow["jobs"][name];
        let dir = self.base.join(format!(
            "job-{name}-{}-{}",
            matrix.unwrap_or("0"),
            self.run_id
        ));
        std::fs::create_dir_all(dir.join(".home")).unwrap();
        let mut env = self.env_of(workflow, matrix);
        env.extend(self.env_of(job, matrix));
        let mut failed = false;
        let mut log = String::new();
        for step in job["steps"].as_sequence().unwrap() {
            let always = step.get("if").and_then(Value::as_str) == Some("always()");
            if failed && !always {
                continue;
            }
            let with = |key: &str| {
                step.get("with")
                    .and_then(|w| w.get(key))
                    .and_then(Value::as_str)
                    .map(|s| self.expand(s, matrix))
            };
            let step_name = step.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(uses) = step.get("uses").and_then(Value::as_str) {
                let action = uses.split('@').next().unwrap();
                match action {
                    "actions/checkout" => checkout(&dir),
                    "dtolnay/rust-toolchain" => {}
                    "actions/upload-artifact" => {
                        self.upload(&dir, &with("name").unwrap(), &with("path").unwrap())
                    }
                    "actions/download-artifact" => {
                        self.download(&dir, with("name"), with("pattern"), with("path"))
                    }
                    "actions/cache/restore" => copy_into(
                        &self.base.join("cache").join(with("path").unwrap()),
                        &dir.join(with("path").unwrap()),
                    ),
                    "actions/cache/save" => copy_into(
                        &dir.join(with("path").unwrap()),
                        &self.base.join("cache").join(with("path").unwrap()),
                    ),
                    other => panic!("the player does not know the action {other}"),
                }
                continue;
            }
            let run = step["run"].as_str().unwrap();
            if step_name == "Install cargo-ephem" {
                // `cargo install` from crates.io is out of reach here.
                install_cargo_ephem(&dir.join(".home/.cargo/bin/cargo-ephem"));
                continue;
            }
            let mut step_env = env.clone();
            step_env.extend(self.env_of(step, matrix));
            // The build job has a toolchain (and ~/.cargo/bin on PATH); the
            // others have neither.
            let with_cargo = name == "build";
            let text = format!("export PATH=\"$HOME/.cargo/bin:$PATH\"\n{run}");
            let (ok, out) = script(&dir, &text, &step_env, with_cargo);
            log.push_str(&out);
            failed |= !ok;
        }
        log
    }

    fn upload(&self, dir: &Path, name: &str, paths: &str) {
        let store = self.base.join("artifacts").join(name);
        let mut files = Vec::new();
        for pattern in paths.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let pattern = pattern.replace("~/", ".home/");
            files.extend(glob(dir, &pattern));
        }
        // Like upload-artifact: paths relative to the files' common folder.
        let common = files
            .iter()
            .map(|f| f.parent().unwrap().to_path_buf())
            .reduce(|a, b| {
                a.ancestors()
                    .find(|p| b.starts_with(p))
                    .unwrap()
                    .to_path_buf()
            });
        for file in &files {
            let rel = if file.is_dir() {
                PathBuf::new()
            } else {
                file.strip_prefix(common.as_ref().unwrap())
                    .unwrap()
                    .to_path_buf()
            };
            copy_into(file, &store.join(rel));
        }
    }

    fn download(
        &self,
        dir: &Path,
        name: Option<String>,
        pattern: Option<String>,
        path: Option<String>,
    ) {
        let dest = dir.join(path.unwrap_or_default());
        let store = self.base.join("artifacts");
        match (name, pattern) {
            (Some(name), _) => copy_into(&store.join(name), &dest),
            (None, Some(pattern)) => {
                for artifact in glob(&store, &pattern) {
                    copy_into(&artifact, &dest);
                }
            }
            _ => panic!("download-artifact without name or pattern"),
        }
    }

    /// Plays build, the test matrix, and report; returns the report job's folder.
    fn pipeline(&mut self, workflow: &Value) -> Played {
        self.run_id += 1;
        let log = self.job(workflow, "build", None);
        assert!(log.contains("Archived"), "build job: {log}");
        let shards: Vec<String> = workflow["jobs"]["test"]["strategy"]["matrix"]["shard"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap().to_string())
            .collect();
        let shard_logs = shards
            .iter()
            .map(|m| self.job(workflow, "test", Some(m)))
            .collect();
        let log = self.job(workflow, "report", None);
        assert!(log.contains("merged"), "report job: {log}");
        Played {
            out: self.base.join(format!("job-report-0-{}/out", self.run_id)),
            shard_logs,
        }
    }
}

// --- GitLab CI --------------------------------------------------------------

struct GitLab {
    base: PathBuf,
    pipeline_id: u32,
}

impl GitLab {
    fn variables(&self, node: &Value) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        if let Some(map) = node.get("variables").and_then(Value::as_mapping) {
            for (k, v) in map {
                let v = v
                    .as_str()
                    .unwrap()
                    .replace("$CI_PIPELINE_ID", &self.pipeline_id.to_string());
                vars.insert(k.as_str().unwrap().to_owned(), v);
            }
        }
        vars
    }

    fn strings(node: &Value) -> Vec<String> {
        node.as_sequence()
            .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Plays one job instance (`node` of `total` for `parallel`).
    fn job(&self, pipeline: &Value, name: &str, node: Option<(u32, u32)>) -> String {
        let job = &pipeline[name];
        let instance = node.map_or(String::new(), |(i, _)| format!("-{i}"));
        let dir = self
            .base
            .join(format!("{name}{instance}-{}", self.pipeline_id));
        std::fs::create_dir_all(dir.join(".home")).unwrap();
        checkout(&dir);
        // Artifacts of the jobs it needs come back at their paths.
        for needed in Self::strings(&job["needs"]) {
            copy_into(&self.base.join("artifacts").join(&needed), &dir);
        }
        // `cache:` is one cache or a list of them.
        let caches: Vec<(Vec<String>, String)> = match &job.get("cache") {
            None => Vec::new(),
            Some(Value::Sequence(list)) => list.iter().map(Self::cache).collect(),
            Some(one) => vec![Self::cache(one)],
        };
        for (paths, policy) in &caches {
            if policy.contains("pull") {
                for p in paths {
                    copy_into(&self.base.join("cache").join(p), &dir.join(p));
                }
            }
        }
        let mut env = self.variables(pipeline);
        env.extend(self.variables(job));
        env.insert("CI_PIPELINE_ID".into(), self.pipeline_id.to_string());
        env.insert("CI_COMMIT_REF_SLUG".into(), "main".into());
        if let Some((i, total)) = node {
            env.insert("CI_NODE_INDEX".into(), i.to_string());
            env.insert("CI_NODE_TOTAL".into(), total.to_string());
        }
        let mut log = String::new();
        let mut ok = true;
        for line in Self::strings(&job["script"]) {
            if line.starts_with("cargo install") {
                install_cargo_ephem(&dir.join(".ephem/bin/cargo-ephem"));
                continue;
            }
            let (line_ok, out) = script(&dir, &line, &env, name == "build");
            log.push_str(&out);
            if !line_ok {
                ok = false;
                break;
            }
        }
        let artifacts = &job["artifacts"];
        let when_always = artifacts.get("when").and_then(Value::as_str) == Some("always");
        if ok || when_always {
            let store = self.base.join("artifacts").join(name);
            for p in Self::strings(&artifacts["paths"]) {
                for found in glob(&dir, &p) {
                    copy_into(&found, &store.join(found.strip_prefix(&dir).unwrap()));
                }
            }
        }
        for (paths, policy) in &caches {
            if policy.contains("push") {
                for p in paths {
                    copy_into(&dir.join(p), &self.base.join("cache").join(p));
                }
            }
        }
        log
    }

    /// A cache's paths and policy (`pull-push` when not given).
    fn cache(c: &Value) -> (Vec<String>, String) {
        let paths = Self::strings(&c["paths"]);
        let policy = c
            .get("policy")
            .and_then(Value::as_str)
            .unwrap_or("pull-push")
            .to_owned();
        (paths, policy)
    }

    fn pipeline(&mut self, pipeline: &Value) -> Played {
        self.pipeline_id += 1;
        let _ = std::fs::remove_dir_all(self.base.join("artifacts"));
        let log = self.job(pipeline, "build", None);
        assert!(log.contains("Archived"), "build job: {log}");
        let total = pipeline["test"]["parallel"].as_u64().unwrap() as u32;
        let shard_logs = (1..=total)
            .map(|i| self.job(pipeline, "test", Some((i, total))))
            .collect();
        let log = self.job(pipeline, "report", None);
        assert!(log.contains("merged"), "report job: {log}");
        Played {
            out: self
                .base
                .join(format!("report-{}/merged", self.pipeline_id)),
            shard_logs,
        }
    }
}

// --- the checks -------------------------------------------------------------

/// (suite, test, outcome) of every test case.
fn outcomes(path: &Path) -> BTreeSet<(String, String, &'static str)> {
    let report = read_junit(path);
    cases(&report)
        .into_iter()
        .map(|(suite, case)| {
            let outcome = if is_success(case) {
                "pass"
            } else if is_skipped(case) {
                "skip"
            } else {
                "fail"
            };
            (suite.to_owned(), case.name.to_string(), outcome)
        })
        .collect()
}

/// The fixture's whole suite in one invocation, as the recipes run it.
fn single_full_run(dir: &Path) -> PathBuf {
    let junit = dir.join("single/junit.xml");
    let out = run(ephem_test()
        .args(["--no-fail-fast", "--no-env", "--junit"])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    junit
}

fn check_played(played: &Played, single: &Path, partition: &str) {
    let merged = played.out.join("junit.xml");
    validate_xsd(&merged);
    assert_eq!(
        outcomes(&merged),
        outcomes(single),
        "the matrix ran other tests than one run"
    );
    for log in &played.shard_logs {
        assert!(log.contains(&format!("({partition} partition)")), "{log}");
    }
    let page = std::fs::read_to_string(played.out.join("report.html")).unwrap();
    assert!(
        page.contains("tests::fail_assert"),
        "the page lacks a failure"
    );
}

fn validates(recipe: &Path, schema: &str) {
    let out = Command::new("check-jsonschema")
        .args(["--builtin-schema", schema])
        .arg(recipe)
        .output()
        .expect("check-jsonschema is installed (scripts/provision-test-env.sh installs it)");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_recipes_validate_against_the_published_schemas() {
    validates(&recipe("github-actions.yml"), "vendor.github-workflows");
    validates(&recipe("gitlab-ci.yml"), "vendor.gitlab-ci");
}

#[test]
fn the_github_actions_recipe_played_locally_equals_a_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let single = single_full_run(dir.path());
    let workflow = yaml(&recipe("github-actions.yml"));
    let mut gh = GitHub {
        base: dir.path().join("gh"),
        run_id: 100,
    };
    let first = gh.pipeline(&workflow);
    check_played(&first, &single, "slice");
    // The next run finds the merged report in the cache: duration shards.
    let second = gh.pipeline(&workflow);
    check_played(&second, &single, "duration");
}

#[test]
fn the_gitlab_recipe_played_locally_equals_a_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let single = single_full_run(dir.path());
    let pipeline = yaml(&recipe("gitlab-ci.yml"));
    let mut gl = GitLab {
        base: dir.path().join("gl"),
        pipeline_id: 500,
    };
    let first = gl.pipeline(&pipeline);
    check_played(&first, &single, "slice");
    let second = gl.pipeline(&pipeline);
    check_played(&second, &single, "duration");
}
