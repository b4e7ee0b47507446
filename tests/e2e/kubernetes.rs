//! `--backend kubernetes` end to end: the built binary against the loopback
//! Kubernetes API stand-in (started in this process, with its kubelet
//! lifecycle on, `examples/kubernetes/rbac.yaml` applied, and each service's
//! port played by a small local server), through a kubeconfig in
//! `KUBECONFIG`. `the_example_runs_in_two_shards_on_a_real_cluster` runs the
//! example workspace on a real cluster when asked for with `--ignored` and
//! `EPHEM_TEST_KUBECONFIG`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ephem_kube_stand_in::{Fate, Lifecycle, StandIn};
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(crate) const RUN: &str = "cargo-ephem.dev/run";

/// A stand-in with its lifecycle on and `examples/kubernetes/rbac.yaml`
/// applied (the binary may do only what the manifest grants), a kubeconfig
/// for it, and a local HTTP server that plays every `web` pod's port 8080
/// (answering `ok`).
pub(crate) struct Cluster {
    pub(crate) api: StandIn,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn start(lifecycle: Lifecycle) -> Cluster {
        let api = StandIn::start_blocking().expect("stand-in starts");
        api.apply_rbac(include_str!("../../examples/kubernetes/rbac.yaml"))
            .expect("rbac.yaml applies");
        api.set_lifecycle(lifecycle);
        api.forward(None, "web", 8080, http_ok_server());
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("kubeconfig"), "stand-in")
            .unwrap();
        Cluster { api, dir }
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `cargo-ephem ARGS` with KUBECONFIG pointing here.
    pub(crate) fn ephem(&self, args: &[&str]) -> Command {
        let mut cmd = ephem();
        cmd.args(args).env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// `cargo-ephem test` of the basic fixture on this cluster with the
    /// busybox web service of `env-busybox.toml`.
    pub(crate) fn test(&self, args: &[&str]) -> Command {
        let mut cmd = ephem_test();
        cmd.arg("--config")
            .arg(config("env-busybox.toml"))
            .args(["--backend", "kubernetes"])
            .args(args)
            .env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// Namespaces cargo-ephem made that still exist (Terminating included).
    pub(crate) fn managed_namespaces(&self) -> Vec<Value> {
        self.api
            .namespaces()
            .into_iter()
            .filter(|n| n["metadata"]["labels"][MANAGED_BY] == "cargo-ephem")
            .collect()
    }

    /// Namespaces created through the API, by name, in order.
    pub(crate) fn created_namespaces(&self) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces")
            .filter_map(|r| r.json()?["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    pub(crate) fn deleted(&self, namespace: &str) -> bool {
        let path = format!("/api/v1/namespaces/{namespace}");
        self.api
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == path)
    }
}

pub(crate) fn lifecycle() -> Lifecycle {
    Lifecycle::new(Duration::from_millis(50), Duration::from_millis(100))
}

/// A local HTTP/1.0 server answering every request with `ok`, on threads.
fn http_ok_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\r\nok\n",
                );
            });
        }
    });
    addr
}

#[test]
fn two_shards_run_on_the_cluster_reach_their_service_and_leave_no_namespace() {
    let cluster = Cluster::start(lifecycle());
    let out_dir = tempfile::tempdir().unwrap();
    let junit = out_dir.path().join("junit.xml");
    let out = run(cluster
        .test(&["--shards", "2", "env_", "--junit"])
        .arg(&junit)
        .env("FIXTURE_OUT", out_dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run_id = run_id_of(&stderr).expect("the run id is printed");
    for shard in 1..=2 {
        assert!(
            stderr.contains(&format!("environment of shard {shard}/2")),
            "{stderr}"
        );
    }

    let created = cluster.created_namespaces();
    assert_eq!(created.len(), 2, "one namespace per shard: {created:?}");
    for ns in &created {
        assert!(cluster.deleted(ns), "{ns} was not deleted");
    }
    assert!(
        cluster.managed_namespaces().is_empty(),
        "namespaces left: {:?}",
        cluster.managed_namespaces()
    );

    // Each test reached its shard's service through a port-forward.
    let mut urls = Vec::new();
    for file in [
        "tests__env_unit.env",
        "env_integration.env",
        "tests__env_other.env",
    ] {
        let env = read_env_file(&out_dir.path().join(file));
        // fixture-lib's tests GET $WEB_URL while they run; fixture-other's only record it.
        if file != "tests__env_other.env" {
            assert_eq!(env["WEB_BODY"], "ok", "{file}: {env:?}");
        }
        assert!(env["WEB_URL"].starts_with("http://127.0.0.1:"), "{env:?}");
        assert_eq!(
            env["SHARD_TAG"],
            format!("shard-{}-of-run-{run_id}", env["EPHEM_SHARD"])
        );
        urls.push(env["WEB_URL"].clone());
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 2, "each shard has its own forward: {urls:?}");
    let report = read_junit(&junit);
    assert_eq!(cases(&report).len(), 3);
    assert!(cases(&report).iter().all(|(_, c)| is_success(c)));
    validate_xsd(&junit);
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/pods/web/portforward")),
        "the tests' requests went through port-forwards"
    );
}

#[test]
fn an_image_that_cannot_be_pulled_exits_102_naming_the_reason_and_cleans_up() {
    let cluster = Cluster::start(lifecycle().rule(
        "busybox",
        Fate::PullFails {
            message: "rpc error: code = NotFound desc = not found".into(),
        },
    ));
    let out = run(&mut cluster.test(&["--shards", "2", "env_"]));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:") && l.contains("service web not ready"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.contains("ErrImagePull") || error.contains("ImagePullBackOff"),
        "{error}"
    );
    assert!(
        // As ephem.toml names it: EPHEM_REGISTRY_MIRROR is the Docker daemon's.
        stderr.contains("Failed to pull image \"busybox:1.36\""),
        "the reason or the events name the image: {stderr}"
    );
    assert!(
        wait_for(10, || cluster.managed_namespaces().is_empty()),
        "namespaces left: {:?}",
        cluster.managed_namespaces()
    );
}

#[test]
fn kill_9_of_the_runner_lets_the_reaper_delete_the_namespaces() {
    let cluster = Cluster::start(lifecycle());
    let mut runner = Background::spawn(&mut cluster.test(&["--shards", "2", "--ignored", "hang_"]));
    let run_id = runner.run_id(120);
    struct KillTests(String);
    impl Drop for KillTests {
        fn drop(&mut self) {
            for pid in test_processes_of(&self.0) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
    let _tests = KillTests(run_id.clone());
    assert!(
        wait_for(120, || test_processes_of(&run_id).len() >= 2),
        "the hanging tests never started; stderr:\n{}",
        runner.stderr
    );
    let namespaces = cluster.created_namespaces();
    assert_eq!(namespaces.len(), 2, "{namespaces:?}");

    let killed = Instant::now();
    runner.signal(libc::SIGKILL);
    let _ = runner.wait(10);
    assert!(
        wait_for(15, || namespaces.iter().all(|ns| cluster.deleted(ns))),
        "the reaper did not delete {namespaces:?} within 15 s"
    );
    eprintln!(
        "kubernetes: kill -9 of the runner: both namespaces deleted {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert!(wait_for(10, || test_processes_of(&run_id).is_empty()));
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// A namespace as a run of `pid` on `host` would have left it, expiring
/// at `expires` (`janitor/expires`).
pub(crate) fn planted_on(name: &str, run: &str, host: &str, pid: u32, expires: &str) -> Value {
    json!({"metadata": {
        "name": name,
        "labels": {MANAGED_BY: "cargo-ephem", RUN: run, "cargo-ephem.dev/shard": "1",
            "cargo-ephem.dev/host": host},
        "annotations": {"cargo-ephem.dev/pid": pid.to_string(), "cargo-ephem.dev/hostname": host,
            "janitor/expires": expires},
    }})
}

/// A namespace as a run of `pid` on this host would have left it, expired.
fn planted(name: &str, run: &str, pid: u32) -> Value {
    planted_on(name, run, &hostname(), pid, "2001-01-01T00:00:00Z")
}

#[test]
fn gc_dry_run_lists_an_abandoned_namespace_and_deletes_nothing() {
    let cluster = Cluster::start(lifecycle());
    cluster
        .api
        .insert_namespace(planted("ephem-deadbeef-1", "deadbeef-run", 999_999));
    cluster
        .api
        .insert_namespace(planted("ephem-11ve0000-1", "live-run", std::process::id()));
    let dry = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes", "--dry-run"]));
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    let listing = String::from_utf8_lossy(&dry.stdout);
    let line = listing
        .lines()
        .find(|l| l.contains("ephem-deadbeef-1"))
        .unwrap_or_else(|| panic!("{}", describe(&dry)));
    assert!(
        line.contains("deadbeef-run") && line.contains("  expired "),
        "{line}"
    );
    // Expired too, but its runner visibly runs here.
    assert!(!listing.contains("ephem-11ve0000-1"), "{listing}");
    assert!(
        cluster.api.requests().iter().all(|r| r.method != "DELETE"),
        "--dry-run deleted something"
    );

    let gc = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes"]));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert!(cluster.deleted("ephem-deadbeef-1"));
    assert!(
        !cluster.deleted("ephem-11ve0000-1"),
        "gc took a live run's namespace"
    );
}

#[test]
fn render_contacts_no_cluster() {
    let cluster = Cluster::start(lifecycle());
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/Cargo.toml");
    let out = run(&mut cluster.ephem(&[
        "render",
        "--backend",
        "kubernetes",
        "--manifest-path",
        manifest.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: ephem-render-1"));
    assert!(
        cluster.api.requests().is_empty(),
        "render reached the cluster"
    );
}

#[test]
fn an_unreachable_cluster_exits_102_within_5s_naming_context_and_server() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: ci-cluster\n  context:\n    cluster: c\n    user: u\ncurrent-context: ci-cluster\n"),
    )
    .unwrap();
    let started = Instant::now();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .args(["--backend", "kubernetes", "env_"])
        .env("KUBECONFIG", &kubeconfig));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.contains(&format!("http://{addr}")) && error.contains("context ci-cluster"),
        "{error}"
    );
}

#[test]
fn a_forbidden_namespace_create_exits_102_naming_verb_and_resource() {
    let cluster = Cluster::start(lifecycle());
    cluster.api.forbid("create", "namespaces");
    let out = run(&mut cluster.test(&["env_"]));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forbids create on namespaces at the cluster scope")
            && stderr.contains("examples/kubernetes/rbac.yaml"),
        "{stderr}"
    );
}

/// The example workspace, two shards, on the real cluster of
/// `EPHEM_TEST_KUBECONFIG` (kind, k3d, a CI cluster). Ignored unless asked
/// for with `--ignored`; asked for without the variable, it fails.
#[test]
#[ignore = "needs a real cluster: set EPHEM_TEST_KUBECONFIG and run with --ignored"]
fn the_example_runs_in_two_shards_on_a_real_cluster() {
    let kubeconfig = std::env::var_os("EPHEM_TEST_KUBECONFIG").expect(
        "EPHEM_TEST_KUBECONFIG must name the kubeconfig of a real cluster (e.g. `kind get kubeconfig > /tmp/kind.yaml`)",
    );
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/Cargo.toml");
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem()
        .args(["test", "--manifest-path"])
        .arg(&manifest)
        .args(["--backend", "kubernetes", "--shards", "2", "--junit"])
        .arg(&junit)
        .env("KUBECONFIG", &kubeconfig));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run_id = run_id_of(&stderr).expect("the run id is printed");
    let left = Command::new("kubectl")
        .args([
            "get",
            "namespaces",
            "-l",
            &format!("{RUN}={run_id}"),
            "-o",
            "name",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubectl runs");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        left.trim().is_empty()
            || wait_for(120, || {
                let out = Command::new("kubectl")
                    .args([
                        "get",
                        "namespaces",
                        "-l",
                        &format!("{RUN}={run_id}"),
                        "-o",
                        "name",
                    ])
                    .env("KUBECONFIG", &kubeconfig)
                    .output()
                    .unwrap();
                out.stdout.is_empty()
            }),
        "namespaces left: {left}"
    );
    validate_xsd(&junit);
}

/// `examples/kubernetes/*.yaml` (the RBAC manifest, the CI pod) pass strict
/// validation for Kubernetes 1.33; fails (never skips) without the tool.
#[test]
fn the_kubernetes_examples_are_valid_for_1_33() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(dir.join("rbac.yaml"))
        .arg(dir.join("ci-pod.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate does not run ({e}); install it with `bash scripts/provision-test-env.sh`")
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
