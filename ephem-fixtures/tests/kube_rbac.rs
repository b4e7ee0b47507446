//! `examples/kubernetes/rbac.yaml` grants exactly what the Kubernetes
//! backend asks: the stand-in applies it as a cluster's RBAC would (so a
//! request it does not grant is refused), the backend goes through every
//! path that calls the API (prepull, provisioning with pull secrets, the
//! chart's Services, port-forwards, a readiness failure, teardown, a
//! teardown whose create answer was lost, renewal, the sweep, a delete
//! that races a deletion, the reaper), and every verb on every resource the
//! manifest grants must have been used, where it grants it: cluster-wide
//! only what shard namespaces (created at run time) need, Secrets read only
//! in the namespace the pull secrets are copied from.
//!
//! What `helm` itself needs (`[kubernetes.helm]`) is the chart's business;
//! the manifest documents it, this test's fake helm asks nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::kubernetes::KubernetesBackend;
use ephem_fixtures::sweep::{self, SweepPolicy};
use ephem_fixtures::{Backend, EphemConfig, RunContext, ShardContext};
use ephem_kube_stand_in::rbac::{grants_for, Access};
use ephem_kube_stand_in::{Fate, Lifecycle, StandIn, USER};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RBAC: &str = include_str!("../../examples/kubernetes/rbac.yaml");

/// Where the kubeconfig's context points, so where pull secrets are read.
const SOURCE_NAMESPACE: &str = "ephem-ci";

const CONFIG: &str = r#"
backend = "kubernetes"
[kubernetes]
prepull = true
image-pull-secrets = ["regcred"]
[kubernetes.helm]
chart = "./charts/api"
[services.db]
image = "postgres:15"
env = { POSTGRES_PASSWORD = "${random}" }
ports = [5432]
wait = { tcp = 5432 }
startup-timeout = "10s"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/app", API_URL = "http://${service.api}/v1" }
[services.cache]
image = "redis:7"
depends-on = ["db"]
wait = { log = "Ready to accept connections" }
startup-timeout = "10s"
"#;

/// A service whose image cannot be pulled: readiness reads its log and events.
const FAILING: &str = r#"
backend = "kubernetes"
[services.broken]
image = "no-such-image:1"
startup-timeout = "10s"
"#;

fn context(run_id: &str, shard: u32) -> ShardContext {
    ShardContext {
        run: RunContext {
            run_id: run_id.to_owned(),
            shard_count: 3,
            expires_at: SystemTime::now() + Duration::from_secs(1800),
        },
        shard,
    }
}

async fn backend(kubeconfig: &Path, config: &str, helm: &Path) -> KubernetesBackend {
    let config = EphemConfig::parse(config, "ephem.toml").unwrap_or_else(|e| panic!("{e}"));
    let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
    KubernetesBackend::connect_with(&[kubeconfig.to_owned()], config, tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .with_teardown_wait(Duration::from_secs(2))
        .with_helm_path(helm.as_os_str())
}

/// A `helm` that installs nothing through the API: the chart's Service and
/// pod are planted by the test, so every request seen is the backend's.
fn quiet_helm(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helm = bin.join("helm");
    std::fs::write(
        &helm,
        "#!/bin/sh\necho 'Release \"app\" has been upgraded.'\n",
    )
    .unwrap();
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// What a chart would have made in `ns`: Service `api` and its ready pod.
fn plant_chart(api: &StandIn, ns: &str) {
    api.insert_object(
        ns,
        "services",
        json!({"metadata": {"name": "api"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8000}]}}),
    );
    api.insert_object(
        ns,
        "pods",
        json!({"metadata": {"name": "api-0", "labels": {"app": "api"}},
            "spec": {"containers": [{"name": "api", "image": "api:1",
                "ports": [{"containerPort": 8000}]}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "api", "ready": true, "restartCount": 0,
                    "image": "api:1", "imageID": "", "state": {"running": {}}}]}}),
    );
}

/// A local server answering `ok <line>`: what a forwarded port reaches.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                if let Ok(n) = stream.read(&mut buf).await {
                    let mut answer = b"ok ".to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = stream.write_all(&answer).await;
                }
            });
        }
    });
    addr
}

async fn through(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("an answer through the port-forward")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn var(env: &ephem_fixtures::Environment, name: &str) -> String {
    env.vars
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// `host:port` of a URL's authority.
fn authority(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap();
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap()
}

/// Drives every backend path that calls the API; returns the run's id.
async fn every_call(api: &StandIn, dir: &Path) -> String {
    let kubeconfig = dir.join("config");
    api.write_kubeconfig_in(&kubeconfig, "ci", SOURCE_NAMESPACE)
        .unwrap();
    let helm = quiet_helm(dir);
    api.set_lifecycle(
        Lifecycle::new(Duration::from_millis(20), Duration::from_millis(50))
            .rule(
                "redis",
                Fate::run(&["1:M * Ready to accept connections tcp"]),
            )
            .rule(
                "no-such-image",
                Fate::PullFails {
                    message: "not found".into(),
                },
            ),
    );
    api.insert_object(
        SOURCE_NAMESPACE,
        "secrets",
        json!({"metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="}}),
    );
    api.forward(None, "db", 5432, echo_server().await);
    api.forward(None, "api-0", 8000, echo_server().await);

    let run_id = format!("5ca1ab1e-rbac-{}", std::process::id());
    let b = Arc::new(backend(&kubeconfig, CONFIG, &helm).await);
    b.prepare(&context(&run_id, 1).run)
        .await
        .unwrap_or_else(|e| panic!("prepull: {e}"));

    let one = context(&run_id, 1);
    plant_chart(api, &labels::namespace_name("ephem", &run_id, 1));
    let env = b
        .provision(&one)
        .await
        .unwrap_or_else(|e| panic!("provision: {e}"));
    assert_eq!(
        through(authority(&var(&env, "DATABASE_URL"))).await,
        "ok ping"
    );
    assert_eq!(through(authority(&var(&env, "API_URL"))).await, "ok ping");

    // A service that never starts: its log and events are read for the error.
    let failing = backend(&kubeconfig, FAILING, &helm).await;
    let two = context(&run_id, 2);
    let error = failing.provision(&two).await.unwrap_err().to_string();
    assert!(error.contains("no-such-image"), "{error}");
    failing.teardown(&two).await.unwrap();

    // A shard whose namespace's create answer was lost: found by name.
    let three = context(&run_id, 3);
    api.insert_namespace(json!({"metadata": {
        "name": labels::namespace_name("ephem", &run_id, 3),
        "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::RUN: labels::label_value(&run_id), labels::SHARD: "3"},
    }}));
    b.teardown(&three).await.unwrap();

    // The safety nets: renewal (--keep-env marks), the sweep, and a delete
    // that races the namespace's own deletion.
    let cleanup = b.cleanup();
    cleanup
        .renew(&run_id, SystemTime::now() + Duration::from_secs(1800), true)
        .await
        .unwrap();
    let listed = cleanup.list().await.unwrap();
    assert!(!listed.is_empty());
    let policy = SweepPolicy::here(true, vec![run_id.clone()]);
    sweep::sweep(cleanup.as_ref(), &policy, false)
        .await
        .unwrap();
    b.teardown(&one).await.unwrap();
    let raced: Vec<_> = listed.into_iter().filter(|r| r.shard == Some(1)).collect();
    for (_, result) in cleanup.remove(&raced).await {
        result.unwrap();
    }
    // The reaper, after a runner died with a namespace half made.
    api.insert_namespace(json!({"metadata": {
        "name": labels::namespace_name("ephem", &run_id, 4),
        "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::RUN: labels::label_value(&run_id), labels::SHARD: "4"},
    }}));
    assert_eq!(cleanup.remove_run(&run_id).await.unwrap(), 1);
    run_id
}

/// `verb group/resource` of an access, e.g. `list /namespaces`, `create apps/daemonsets`.
fn permission(group: &str, resource: &str, verb: &str) -> String {
    format!("{verb} {group}/{resource}")
}

#[tokio::test]
async fn the_manifest_grants_every_call_the_backend_makes_and_nothing_else() {
    let api = StandIn::start().await.unwrap();
    api.apply_rbac(RBAC)
        .unwrap_or_else(|e| panic!("rbac.yaml: {e}"));
    let dir = tempfile::tempdir().unwrap();
    every_call(&api, dir.path()).await;

    let accesses = api.accesses();
    let refused: BTreeSet<String> = accesses
        .iter()
        .filter(|(_, granted)| !granted)
        .map(|(a, _)| describe(a))
        .collect();
    assert!(
        refused.is_empty(),
        "rbac.yaml does not grant what the backend asks: {refused:#?}"
    );

    let grants = grants_for(RBAC, USER).unwrap();
    let mut unused = BTreeSet::new();
    let mut too_wide = BTreeSet::new();
    for grant in &grants {
        for group in &grant.api_groups {
            for resource in &grant.resources {
                for verb in &grant.verbs {
                    let uses: Vec<&Access> = accesses
                        .iter()
                        .map(|(a, _)| a)
                        .filter(|a| a.group == *group && a.resource == *resource && a.verb == *verb)
                        .filter(|a| grant.allows(a))
                        .collect();
                    let name = format!("{} ({})", permission(group, resource, verb), grant.role);
                    if uses.is_empty() {
                        unused.insert(name);
                    } else if grant.namespace.is_none()
                        && uses
                            .iter()
                            .all(|a| a.namespace.as_deref() == Some(SOURCE_NAMESPACE))
                    {
                        // Only ever needed where a Role would do.
                        too_wide.insert(name);
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "rbac.yaml grants what no call uses: {unused:#?}"
    );
    assert!(
        too_wide.is_empty(),
        "rbac.yaml grants cluster-wide what is only used in {SOURCE_NAMESPACE}: {too_wide:#?}"
    );
    for grant in grants.iter().filter(|g| g.namespace.is_some()) {
        assert_eq!(
            grant.namespace.as_deref(),
            Some(SOURCE_NAMESPACE),
            "{}",
            grant.role
        );
    }
    let wildcards = grants.iter().any(|g| {
        [&g.api_groups, &g.resources, &g.verbs]
            .iter()
            .any(|list| list.iter().any(|v| v == "*"))
    });
    assert!(!wildcards, "no wildcards: {grants:#?}");
}

fn describe(a: &Access) -> String {
    let scope = match &a.namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "at the cluster scope".to_owned(),
    };
    format!("{} {scope}", permission(&a.group, &a.resource, &a.verb))
}
