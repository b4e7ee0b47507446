//! `cargo ephem render`: the Kubernetes objects of each shard as one YAML
//! stream, without a cluster; generated secrets masked; strict schema
//! validation for Kubernetes 1.33; exit 2 for the Docker backend and for
//! configurations Kubernetes cannot take.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

fn example_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/Cargo.toml")
}

fn render(args: &[&str]) -> Output {
    run(ephem().arg("render").args(args))
}

fn render_example(args: &[&str]) -> Output {
    let manifest = example_manifest().display().to_string();
    let mut all = vec!["--manifest-path", manifest.as_str()];
    all.extend_from_slice(args);
    render(&all)
}

/// Exit 2 with one `error:` line that contains every needle.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{:?} lacks {needle:?}",
            errors[0]
        );
    }
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        describe(out)
    );
}

/// `kubernetes-validate --strict -k 1.33.0 FILE`; fails (never skips)
/// when the tool is missing.
fn validate_strict(yaml: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("render.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate does not run ({e}); install it with `bash scripts/provision-test-env.sh`")
        });
    assert!(
        out.status.success(),
        "the rendered stream does not pass strict validation for Kubernetes 1.33:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(yaml)
    );
}

#[test]
fn render_prints_two_shards_of_the_example_masked_and_valid() {
    let out = render_example(&["--backend", "kubernetes", "--shards", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    let yaml = String::from_utf8(out.stdout.clone()).unwrap();

    let docs: Vec<&str> = yaml.split("\n---\n").skip(1).collect();
    let namespaces: Vec<&&str> = docs
        .iter()
        .filter(|d| d.contains("kind: Namespace"))
        .collect();
    assert_eq!(namespaces.len(), 2, "{yaml}");
    assert!(
        namespaces[0].contains("name: ephem-render-1"),
        "{}",
        namespaces[0]
    );
    assert!(
        namespaces[1].contains("name: ephem-render-2"),
        "{}",
        namespaces[1]
    );
    for doc in &docs {
        assert!(
            doc.contains("apiVersion: ") && doc.contains("\nkind: "),
            "{doc}"
        );
    }

    // The generated password is masked, in the Secret, and only there.
    assert_eq!(
        yaml.matches("postgres.POSTGRES_PASSWORD: \"***\"").count(),
        2,
        "{yaml}"
    );
    assert_eq!(yaml.matches("kind: Secret").count(), 2);
    assert_eq!(yaml.matches("secretKeyRef:").count(), 2);
    validate_strict(&out.stdout);

    // Placeholders, not live facts: a second render is the same text.
    let again = render_example(&["--backend", "kubernetes", "--shards", "2"]);
    assert_eq!(again.stdout, out.stdout, "two renders differ");
}

#[test]
fn render_one_shard() {
    let out = render_example(&["--backend", "kubernetes", "--shard", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert_eq!(yaml.matches("kind: Namespace").count(), 1);
    assert!(yaml.contains("name: ephem-render-3"), "{yaml}");
}

#[test]
fn render_with_the_docker_backend_exits_2() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    // The example's configuration names no backend: docker.
    assert_usage_error(
        &render_example(&["--shards", "2"]),
        &["--backend kubernetes"],
    );
    assert_usage_error(
        &render_example(&["--backend", "docker"]),
        &["docker backend", "--backend kubernetes"],
    );
    assert_usage_error(
        &render_example(&["--backend", "kubernetes", "--shards", "2", "--shard", "1"]),
        &["cannot be used with"],
    );
    assert_usage_error(
        &render_example(&["--backend", "kubernetes", "--shards", "1025"]),
        &["1 to 1024"],
    );
}

#[test]
fn render_refuses_configurations_with_their_line_key_or_service() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ephem.toml");
    let path = config.display().to_string();
    for (text, needles) in [
        (
            "[kubernetes]\nnamespace-prefx = \"ci\"\n",
            &["ephem.toml:2:", "kubernetes.namespace-prefx", "unknown key"][..],
        ),
        (
            "[kubernetes]\nnamespace-prefix = \"***\"\n",
            &["ephem.toml:2:", "kubernetes.namespace-prefix"][..],
        ),
        (
            "[kubernetes.quota]\nrequests-memory = \"8 gigs\"\n",
            &["ephem.toml:2:", "kubernetes.quota.requests-memory"][..],
        ),
        (
            "[kubernetes.helm]\nchart = \"./chart\"\nrelease = \"My App\"\n",
            &["ephem.toml:3:", "kubernetes.helm.release"][..],
        ),
        (
            "[services.my_db]\nimage = \"postgres:15\"\n",
            &[
                "ephem.toml: services.my_db:",
                "DNS-1035",
                "[services.my-db]",
            ][..],
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = render(&["--backend", "kubernetes", "--config", &path]);
        assert_usage_error(&out, needles);
    }
}
