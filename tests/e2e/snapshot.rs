//! Environment snapshots on the real daemon: the baseline fixture's
//! Postgres (a `setup` that leaves a table, roles and database settings)
//! snapshotted into a fresh image cache, then started from the snapshot;
//! every key input changed in turn rebuilds it; a corrupt one is discarded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

const SETUP: &str = r#"["psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "app", "-c", "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('seed'); CREATE ROLE app_owner; CREATE ROLE reader; CREATE ROLE other; ALTER DATABASE app OWNER TO app_owner; REVOKE ALL ON DATABASE app FROM PUBLIC; GRANT CONNECT ON DATABASE app TO reader; GRANT TEMPORARY ON DATABASE app TO reader WITH GRANT OPTION; SET ROLE reader; GRANT TEMPORARY ON DATABASE app TO other; RESET ROLE; ALTER DATABASE app SET app.tenant = 'seed''s'; ALTER DATABASE app SET search_path = \"$user\", public, \"Odd Schema\"; ALTER ROLE reader IN DATABASE app SET statement_timeout = '5s'; COMMENT ON DATABASE app IS 'the baseline'; ALTER DATABASE app CONNECTION LIMIT 50"]"#;

/// A workspace folder with its own ephem.toml, migrations and image cache;
/// the snapshot images the runs put into the daemon are removed on drop.
struct Workspace {
    dir: tempfile::TempDir,
    /// Makes this test's keys its own (tests run at once).
    case: &'static str,
    extra_env: String,
    extra_setup: String,
}

impl Workspace {
    fn new(case: &'static str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        std::fs::write(dir.path().join("migrations/001.sql"), "CREATE TABLE a ();").unwrap();
        let ws = Workspace {
            dir,
            case,
            extra_env: String::new(),
            extra_setup: String::new(),
        };
        ws.write();
        ws
    }

    fn write(&self) {
        let setup = if self.extra_setup.is_empty() {
            SETUP.to_owned()
        } else {
            SETUP.replace(
                "CONNECTION LIMIT 50\"]",
                &format!("CONNECTION LIMIT 50; {}\"]", self.extra_setup),
            )
        };
        let text = format!(
            r#"[images]
mirror = "localhost:5000"

[services.postgres]
image = "postgres:15-bookworm"
env = {{ POSTGRES_PASSWORD = "${{random}}", POSTGRES_DB = "app", TZ = "UTC", POSTGRES_INITDB_ARGS = "--no-sync", EPHEM_TEST_CASE = "{case}"{extra} }}
ports = [5432]
args = ["-c", "fsync=off"]
wait = {{ log = "database system is ready to accept connections", times = 2 }}
startup-timeout = "120s"
setup = {{ exec = {setup} }}
reset = "postgres"
snapshot = {{ inputs = ["migrations/**"] }}
export = {{ DATABASE_URL = "postgres://postgres:${{env.POSTGRES_PASSWORD}}@${{host}}:${{port.5432}}/${{database}}" }}
"#,
            case = self.case,
            extra = self.extra_env,
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("ephem.toml")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = ephem();
        cmd.arg("test")
            .arg("--manifest-path")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/baseline/Cargo.toml"),
            )
            .arg("--config")
            .arg(self.config())
            .arg("--image-cache")
            .arg(self.cache())
            .env_remove("EPHEM_SNAPSHOT")
            .args(args)
            .args(["pg_", "attrs_"]);
        cmd
    }

    /// One run of the fixture's Postgres tests (7, one at a time after a
    /// reset each), which must pass; its stderr.
    fn run(&self, args: &[&str]) -> String {
        let out = run(&mut self.command(args));
        self.passed(&out)
    }

    fn passed(&self, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(run_id) = run_id_of(&stderr) {
            assert_nothing_left(&run_id);
        }
        assert_eq!(out.status.code(), Some(0), "{}", describe(out));
        let summary = stderr
            .lines()
            .find(|l| l.starts_with("Summary"))
            .unwrap_or_default();
        assert!(
            summary.contains("7 tests run: 7 passed"),
            "{}",
            describe(out)
        );
        stderr
    }

    /// The snapshot tags this test's cache holds.
    fn snapshots(&self) -> Vec<String> {
        let index = std::fs::read_to_string(self.cache().join("index.json")).unwrap_or_default();
        let index: serde_json::Value = serde_json::from_str(&index).unwrap_or_default();
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .filter(|r| r.starts_with("cargo-ephem-snapshot/"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for tag in self.snapshots() {
            let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
        }
    }
}

fn built(stderr: &str) -> bool {
    stderr.contains("built by shard")
}

fn started_from_snapshot(stderr: &str) -> bool {
    stderr.contains("starting from snapshot cargo-ephem-snapshot/postgres:")
}

/// The first run builds the snapshot (its tests pass as usual); the next
/// starts every shard from it, with no init and no setup, and the same
/// tests (seed rows, roles, database settings, privileges) pass; a run with
/// --no-snapshot or EPHEM_SNAPSHOT=0 provisions normally. No lock file is
/// left in the cache.
#[test]
fn a_snapshot_is_built_once_then_started_from() {
    let _daemon = shared_daemon();
    let ws = Workspace::new("built-once");
    let first = ws.run(&["--shards", "2"]);
    assert!(built(&first), "{first}");
    assert!(
        first.contains("building a snapshot (none in the image cache yet)"),
        "{first}"
    );
    assert_eq!(
        first.matches("built by shard").count(),
        1,
        "one shard builds: {first}"
    );
    assert_eq!(ws.snapshots().len(), 1);
    // The build's lock file goes once the snapshot is stored.
    let locks: Vec<_> = std::fs::read_dir(ws.cache())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");

    let ls = run(ephem()
        .args(["images", "ls", "--config"])
        .arg(ws.config())
        .arg("--image-cache")
        .arg(ws.cache()));
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert_eq!(ls.status.code(), Some(0), "{}", describe(&ls));
    let row = listing
        .lines()
        .skip_while(|l| !l.starts_with("SNAPSHOT OF"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        row.starts_with("postgres ")
            && row.contains("postgres:15-bookworm")
            && row.contains("1 input files"),
        "{listing}"
    );

    let second = ws.run(&["--shards", "2"]);
    assert!(started_from_snapshot(&second), "{second}");
    assert!(!built(&second), "{second}");

    let off = ws.run(&["--no-snapshot"]);
    assert!(!started_from_snapshot(&off) && !built(&off), "{off}");
    let off = run(ws.command(&[]).env("EPHEM_SNAPSHOT", "0"));
    let off = ws.passed(&off);
    assert!(!started_from_snapshot(&off) && !built(&off), "{off}");
}

/// Each key input changed in turn (an input file, the env, setup) makes the
/// next run build a new snapshot and say which input changed; the
/// unchanged key is found again. (The image id and the format version are
/// covered by the key's unit test.)
#[test]
fn a_changed_key_input_rebuilds_the_snapshot() {
    let _daemon = shared_daemon();
    let mut ws = Workspace::new("changed-key");
    assert!(built(&ws.run(&[])));
    assert!(started_from_snapshot(&ws.run(&[])));

    std::fs::write(
        ws.dir.path().join("migrations/001.sql"),
        "CREATE TABLE b ();",
    )
    .unwrap();
    let out = ws.run(&[]);
    assert!(out.contains("input:migrations/001.sql changed"), "{out}");
    assert!(built(&out), "{out}");

    ws.extra_env = r#", EXTRA = "1""#.into();
    ws.write();
    let out = ws.run(&[]);
    assert!(out.contains("env.EXTRA is new"), "{out}");
    assert!(built(&out), "{out}");

    ws.extra_setup = "CREATE TABLE more (id int)".into();
    ws.write();
    let out = ws.run(&[]);
    assert!(out.contains("setup changed"), "{out}");
    assert!(built(&out), "{out}");

    assert!(started_from_snapshot(&ws.run(&[])));
    assert_eq!(ws.snapshots().len(), 4, "one snapshot per key");
}

/// A snapshot whose layer was truncated in the cache (and is not in the
/// daemon) is discarded with a warning; the service is provisioned
/// normally and the snapshot built again.
#[test]
fn a_corrupt_snapshot_is_discarded_and_rebuilt() {
    let _daemon = shared_daemon();
    let ws = Workspace::new("corrupt");
    assert!(built(&ws.run(&[])));
    let tag = ws.snapshots().pop().unwrap();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    // The snapshot's own layer: the largest blob written last.
    let blobs = ws.cache().join("blobs/sha256");
    let newest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 100_000)
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let out = ws.run(&[]);
    assert!(out.contains("is corrupt or incomplete"), "{out}");
    assert!(!started_from_snapshot(&out), "{out}");
    assert!(built(&out), "{out}");
    assert!(started_from_snapshot(&ws.run(&[])));
}

/// The Kubernetes backend has no snapshots yet: refused before anything
/// starts, with exit 2 and the way out; --no-snapshot gets past the check.
#[test]
fn kubernetes_refuses_snapshot_with_exit_2() {
    let ws = Workspace::new("kubernetes");
    let out = run(&mut ws.command(&["--backend", "kubernetes"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr.contains("services.postgres.snapshot: snapshots work with the docker backend only"),
        "{stderr}"
    );
    let out = run(&mut ws.command(&["--backend", "kubernetes", "--no-snapshot"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(".snapshot:"), "{stderr}");
}

/// Two runs of one workspace started at the same moment, three rounds:
/// one of them builds the snapshot, the other provisions normally (or
/// starts from the finished one); the cache holds one valid snapshot that
/// the next run starts from.
#[test]
fn two_runs_at_once_build_one_snapshot() {
    let _daemon = shared_daemon();
    for round in 0..3 {
        let mut ws = Workspace::new("two-at-once");
        ws.extra_env = format!(r#", ROUND = "{round}""#);
        ws.write();
        let outputs: Vec<Output> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| run(&mut ws.command(&[]))))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let stderrs: Vec<String> = outputs.iter().map(|o| ws.passed(o)).collect();
        let builds: usize = stderrs
            .iter()
            .map(|e| e.matches("built by shard").count())
            .sum();
        assert_eq!(builds, 1, "round {round}: {stderrs:#?}");
        assert_eq!(ws.snapshots().len(), 1, "round {round}");
        assert!(started_from_snapshot(&ws.run(&[])), "round {round}");
    }
}

/// Snapshots live in the image cache: without one, the run provisions
/// normally and says once why no snapshot is kept.
#[test]
fn without_an_image_cache_a_snapshot_is_warned_about_not_silently_dropped() {
    let _daemon = shared_daemon();
    let ws = Workspace::new("no-cache");
    let mut cmd = ephem();
    cmd.arg("test")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/baseline/Cargo.toml"))
        .arg("--config")
        .arg(ws.config())
        .env_remove("EPHEM_SNAPSHOT")
        .env_remove("EPHEM_IMAGE_CACHE")
        .args(["pg_", "attrs_"]);
    let out = run(&mut cmd);
    let stderr = ws.passed(&out);
    let warned = stderr
        .lines()
        .filter(|l| l.contains("snapshots are kept in the image cache, which is off"))
        .count();
    assert_eq!(warned, 1, "{stderr}");
    assert!(!built(&stderr), "{stderr}");
}

/// Replaces the daemon's snapshot image `tag` with one that starts from the
/// snapshot's data and then fails: `entrypoint` runs first (as root, the
/// data directory in place), then the image's own entrypoint.
fn plant_broken(tag: &str, entrypoint: &str) {
    let name = format!("ephem-e2e-broken-snapshot-{}", std::process::id());
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", describe(&out));
    };
    docker(&["create", "--name", &name, tag]);
    let change = format!(
        r#"ENTRYPOINT ["sh", "-c", {}, "--"]"#,
        serde_json::to_string(&format!("{entrypoint}; exec docker-entrypoint.sh \"$@\"")).unwrap()
    );
    let committed = Command::new("docker")
        .args(["commit", "--change", &change, &name, tag])
        .output()
        .unwrap();
    docker(&["rm", "-v", &name]);
    assert!(committed.status.success(), "{}", describe(&committed));
}

/// A snapshot in the daemon that starts but never becomes ready does not
/// fail the run: it is discarded with a warning naming the service and the
/// key, the service is provisioned normally (setup and all), and the
/// snapshot built again, which the next run starts from. Twice: a broken
/// data directory (the server exits), and a server that never starts
/// (the snapshot start's shorter limit runs out: a quarter of 120 s).
#[test]
fn a_snapshot_that_does_not_become_ready_is_discarded_and_rebuilt() {
    let _daemon = shared_daemon();
    let ws = Workspace::new("not-ready");
    assert!(built(&ws.run(&[])));
    let tag = ws.snapshots().pop().unwrap();
    let key = &tag[tag.rfind(':').unwrap() + 1..];
    let in_daemon = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .unwrap()
            .status
            .success()
    };
    if !in_daemon(&tag) {
        assert!(started_from_snapshot(&ws.run(&[])));
    }
    let cases = [
        (r#"echo 99 > "$PGDATA/PG_VERSION""#, "exited with code"),
        ("sleep 3600", "timed out after 30s"),
    ];
    for (entrypoint, why) in cases {
        plant_broken(&tag, entrypoint);
        let out = ws.run(&[]);
        let warning = format!(
            "services.postgres: snapshot {tag} (key {}) did not become ready: ",
            &key[..16]
        );
        let line = out.lines().find(|l| l.contains(&warning));
        assert!(line.is_some_and(|l| l.contains(why)), "{why}: {out}");
        assert!(
            out.contains("discarded from the daemon and the image cache, provisioning normally"),
            "{out}"
        );
        assert!(built(&out), "{out}");
        assert_eq!(ws.snapshots(), std::slice::from_ref(&tag));
        let next = ws.run(&[]);
        assert!(started_from_snapshot(&next), "{next}");
        assert!(!next.contains("did not become ready"), "{next}");
    }
}
