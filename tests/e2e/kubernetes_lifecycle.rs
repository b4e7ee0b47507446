//! `--backend kubernetes` as real clusters live: CI runners that no longer
//! exist (their namespaces go once expired, whichever host made them),
//! namespaces already Terminating (reported, never deleted again), a live
//! run's expiry pushed forward, and kubeconfigs read by kube's own loader.
//! The built binary against the stand-in, `examples/kubernetes/rbac.yaml`
//! applied.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::kubernetes::{hostname, lifecycle, planted_on, Cluster};
use crate::support::*;

/// The host of a CI job that ended long ago: its pod, and its reaper, are gone.
const GONE_CI_RUNNER: &str = "ci-runner-7f9c2-xk2lp";
const EXPIRED: &str = "2001-01-01T00:00:00Z";
const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

fn uid_of(cluster: &Cluster, name: &str) -> String {
    cluster.api.namespace(name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The DELETEs of namespace `name`, with their DeleteOptions.
fn deletes_of(cluster: &Cluster, name: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/namespaces/{name}");
    cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == path)
        .map(|r| r.json().unwrap_or_default())
        .collect()
}

#[test]
fn the_start_of_run_sweep_removes_expired_namespaces_of_runners_that_no_longer_exist() {
    let cluster = Cluster::start(lifecycle());
    // A killed CI job's run: another host, and a pid that happens to be
    // alive here (it means nothing here).
    let me = std::process::id();
    cluster.api.insert_namespace(planted_on(
        "ephem-c1900001-1",
        "c1900001-gone",
        GONE_CI_RUNNER,
        me,
        EXPIRED,
    ));
    let gone_uid = uid_of(&cluster, "ephem-c1900001-1");
    // Another CI job, live: it keeps pushing its expiry forward.
    cluster.api.insert_namespace(planted_on(
        "ephem-c1900002-1",
        "c1900002-live",
        "ci-runner-live-2bq8d",
        7,
        FAR_FUTURE,
    ));
    // Not expired: never taken without --all, whatever its pid says.
    cluster.api.insert_namespace(planted_on(
        "ephem-c1900003-1",
        "c1900003-here",
        &hostname(),
        999_999,
        FAR_FUTURE,
    ));

    let out = run(&mut cluster.test(&["env_"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sweep = stderr
        .lines()
        .find(|l| l.contains("SWEEP"))
        .unwrap_or_else(|| panic!("no SWEEP line: {stderr}"));
    assert!(
        sweep.contains("removed 1 namespace of 1 abandoned run(s) (expired "),
        "{sweep}"
    );
    let deletes = deletes_of(&cluster, "ephem-c1900001-1");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["preconditions"]["uid"], gone_uid.as_str());
    for spared in ["ephem-c1900002-1", "ephem-c1900003-1"] {
        assert!(
            deletes_of(&cluster, spared).is_empty(),
            "the sweep deleted {spared}"
        );
    }
}

/// Plants namespace `name` of an expired run of a gone CI runner, with a
/// ConfigMap a finalizer holds, deletes it through the stand-in (the
/// namespace controller keeps it Terminating) and dates the deletion
/// `minutes` back.
fn plant_terminating(cluster: &Cluster, name: &str, run: &str, minutes: u64) {
    cluster
        .api
        .insert_namespace(planted_on(name, run, GONE_CI_RUNNER, 7, EXPIRED));
    cluster.api.insert_object(
        name,
        "configmaps",
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    );
    assert!(cluster.api.delete_namespace(name));
    let since = SystemTime::now() - Duration::from_secs(minutes * 60);
    let since = api_time(since);
    cluster
        .api
        .update_object(None, "namespaces", name, |ns| {
            ns["metadata"]["deletionTimestamp"] = json!(since);
        })
        .unwrap();
}

/// `%Y-%m-%dT%H:%M:%SZ`, UTC, as the API writes timestamps.
fn api_time(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[test]
fn gc_goes_by_expiry_and_lists_namespaces_already_terminating_without_deleting_them_again() {
    let cluster = Cluster::start(lifecycle());
    let plant = |name: &str, run: &str, host: &str, pid: u32, expires: &str| {
        cluster
            .api
            .insert_namespace(planted_on(name, run, host, pid, expires));
    };
    plant(
        "ephem-0ld00001-1",
        "0ld00001-gone",
        GONE_CI_RUNNER,
        7,
        EXPIRED,
    );
    plant(
        "ephem-f7e50001-1",
        "f7e50001-here",
        &hostname(),
        999_999,
        FAR_FUTURE,
    );
    plant(
        "ephem-f7e50002-1",
        "f7e50002-far",
        "ci-runner-live-2bq8d",
        7,
        FAR_FUTURE,
    );
    plant_terminating(&cluster, "ephem-7e770001-1", "7e770001-held", 12);
    cluster.api.clear_requests();

    let dry = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes", "--dry-run"]));
    // A namespace Terminating for over 5 minutes needs someone: exit 102.
    assert_eq!(dry.status.code(), Some(102), "{}", describe(&dry));
    let table = String::from_utf8_lossy(&dry.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}: {}", describe(&dry)))
            .to_owned()
    };
    assert!(row("ephem-0ld00001-1").contains("  expired "), "{table}");
    let held = row("ephem-7e770001-1");
    assert!(
        held.contains("Terminating for 12m: NamespaceContentRemaining: Some resources are remaining: configmaps. has 1 resource instances; NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances; not deleted again"),
        "{held}"
    );
    for unexpired in ["ephem-f7e50001-1", "ephem-f7e50002-1"] {
        assert!(!table.contains(unexpired), "{table}");
    }
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(
        stderr.contains("warning: namespace ephem-7e770001-1 of run 7e770001-held is already being deleted (Terminating for 12m: ")
            && stderr.contains("never force-finalized"),
        "{stderr}"
    );
    assert!(
        stderr.contains("would remove 1 namespace of 1 abandoned run(s) (expired ")
            && stderr.contains(
                "1 namespace already being deleted, not deleted again, 1 of them for over 5m"
            ),
        "{stderr}"
    );
    assert!(
        cluster.api.requests().iter().all(|r| r.method != "DELETE"),
        "--dry-run deleted something"
    );

    let gc = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes"]));
    assert_eq!(gc.status.code(), Some(102), "{}", describe(&gc));
    assert_eq!(deletes_of(&cluster, "ephem-0ld00001-1").len(), 1);
    for untouched in ["ephem-7e770001-1", "ephem-f7e50001-1", "ephem-f7e50002-1"] {
        assert!(
            deletes_of(&cluster, untouched).is_empty(),
            "gc deleted {untouched}"
        );
    }

    // --all: also runs that have not expired, of any host; still never
    // what is already Terminating.
    let all = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes", "--all"]));
    assert_eq!(all.status.code(), Some(102), "{}", describe(&all));
    for taken in ["ephem-f7e50001-1", "ephem-f7e50002-1"] {
        assert_eq!(deletes_of(&cluster, taken).len(), 1, "{}", describe(&all));
    }
    assert!(String::from_utf8_lossy(&all.stdout).contains("taken by --all"));
    assert!(deletes_of(&cluster, "ephem-7e770001-1").is_empty());
    assert!(cluster
        .api
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("/finalize")));

    // Once what held it lets go, the cluster finishes, and gc is clean.
    cluster
        .api
        .update_object(Some("ephem-7e770001-1"), "configmaps", "held", |cm| {
            cm["metadata"]["finalizers"] = json!([]);
        })
        .unwrap();
    let clean = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes"]));
    assert_eq!(clean.status.code(), Some(0), "{}", describe(&clean));
}

#[test]
fn a_live_run_keeps_its_namespaces_expiry_in_the_future_so_no_gc_takes_it() {
    let cluster = Cluster::start(lifecycle());
    let mut runner =
        Background::spawn(&mut cluster.test(&["--env-ttl", "3s", "--ignored", "hang_"]));
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
        wait_for(120, || !test_processes_of(&run_id).is_empty()),
        "the hanging test never started; stderr:\n{}",
        runner.stderr
    );
    let namespace = cluster.created_namespaces()[0].clone();
    // Past the first expiry: renewals (every third of the TTL) moved it.
    std::thread::sleep(Duration::from_secs(5));
    let expires = cluster.api.namespace(&namespace).unwrap()["metadata"]["annotations"]
        ["janitor/expires"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = api_time(SystemTime::now());
    assert!(
        expires > now,
        "janitor/expires {expires} is not after {now}"
    );
    let gc = run(&mut cluster.ephem(&["gc", "--backend", "kubernetes"]));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert!(
        deletes_of(&cluster, &namespace).is_empty(),
        "gc took a live run's namespace"
    );
    runner.signal(libc::SIGINT);
    assert!(runner.wait(60).is_some(), "the run did not end on SIGINT");
    assert!(wait_for(10, || !deletes_of(&cluster, &namespace).is_empty()));
}

#[test]
fn kubeconfig_files_are_merged_by_kubes_loader_and_a_missing_one_is_named() {
    let cluster = Cluster::start(lifecycle());
    let dir = tempfile::tempdir().unwrap();
    // The first file to set current-context wins; the second has the rest.
    let first = dir.path().join("first");
    std::fs::write(
        &first,
        "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n",
    )
    .unwrap();
    let second = dir.path().join("second");
    let text = std::fs::read_to_string(cluster.kubeconfig())
        .unwrap()
        .replace(
            "current-context: \"stand-in\"",
            "current-context: \"elsewhere\"",
        );
    std::fs::write(&second, text).unwrap();
    let gc = |kubeconfig: &str| {
        run(cluster
            .ephem(&["gc", "--backend", "kubernetes", "--dry-run"])
            .env("KUBECONFIG", kubeconfig))
    };
    let merged = gc(&join(&[&first, &second]));
    assert_eq!(merged.status.code(), Some(0), "{}", describe(&merged));

    // A listed file that does not exist is named, not skipped: skipping it
    // would quietly use the next file's cluster.
    let missing = dir.path().join("typo");
    let out = gc(&join(&[&missing, &cluster.kubeconfig()]));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.contains(&format!("cannot read {}", missing.display()))
            && error.contains("KUBECONFIG"),
        "{error}"
    );
}

fn join(paths: &[&Path]) -> String {
    std::env::join_paths(paths).unwrap().into_string().unwrap()
}
