//! What `[kubernetes] pod-security`, the service's `[services.NAME.kubernetes]`
//! table and `[kubernetes] registry` put into the rendered objects: every
//! rule of the restricted Pod Security Standard checked on every pod (init
//! and prepull containers included), the namespace's enforce label, the
//! service's user and groups, restarts, and the images pods pull (the
//! cluster's registry, never the Docker daemon's mirror).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use ephem_fixtures::kubernetes::render::security::{ENFORCE_LABEL, PREPULL_USER};
use ephem_fixtures::kubernetes::render::{
    render_prepull, render_shard, RenderContext, ShardObjects,
};
use ephem_fixtures::{EphemConfig, RunContext, ShardContext};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::Value;

const RUN_ID: &str = "3f2a9c1e-77b0-4d0e-9f1a-0123456789ab";

fn parse(text: &str) -> EphemConfig {
    EphemConfig::parse(text, "ephem.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn example() -> EphemConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/ephem.toml");
    EphemConfig::load(path).expect("the example's ephem.toml loads")
}

fn context(registry: Option<&str>) -> RenderContext {
    RenderContext {
        hostname: "build-7.ci.example".to_owned(),
        pid: 4242,
        pid_start: None,
        now: UNIX_EPOCH + Duration::from_secs(1_714_557_600),
        registry: registry.map(str::to_owned),
    }
}

fn run() -> RunContext {
    RunContext {
        run_id: RUN_ID.to_owned(),
        shard_count: 2,
        expires_at: UNIX_EPOCH + Duration::from_secs(1_714_559_400),
    }
}

fn render(config: &EphemConfig) -> ShardObjects {
    render_with(config, &context(None))
}

fn render_with(config: &EphemConfig, ctx: &RenderContext) -> ShardObjects {
    let shard = ShardContext {
        run: run(),
        shard: 1,
    };
    render_shard(config, &shard, ctx, &mut Vec::new()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every service and wait kind, an init-container-carrying prepull, pull
/// secrets, under `restricted`.
const RESTRICTED: &str = r#"
[kubernetes]
pod-security = "restricted"
prepull = true
image-pull-secrets = ["regcred"]

[services.postgres]
image = "postgres:15-bookworm"
env = { POSTGRES_PASSWORD = "${random}" }
ports = [5432]
wait = { log = "ready to accept connections", times = 2 }
kubernetes = { run-as-user = 999, run-as-group = 999, fs-group = 999 }

[services.redis]
image = "redis:7-bookworm"
ports = [6379]
wait = { tcp = 6379 }
kubernetes = { run-as-user = 999 }

[services.api]
image = "ghcr.io/example/api:1"
depends-on = ["postgres", "redis"]
ports = [8080]
wait = { http = "/health", port = 8080 }
kubernetes = { restarts = 2 }

[services.worker]
image = "busybox:1.36"
cmd = ["sleep", "infinity"]
wait = { exec = ["true"] }
"#;

/// Every pod spec of a render: the services' pods and the prepull template.
fn pod_specs(config: &EphemConfig) -> Vec<(String, PodSpec)> {
    let mut specs: Vec<(String, PodSpec)> = render(config)
        .services
        .iter()
        .map(|s| (s.name.clone(), s.pod.spec.clone().unwrap()))
        .collect();
    if let Some(prepull) = render_prepull(config, &run(), &context(None)) {
        let spec = prepull.daemon_set.spec.unwrap().template.spec.unwrap();
        specs.push(("prepull".to_owned(), spec));
    }
    specs
}

/// Init containers, then containers, as Pod Security admission visits them.
fn containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

/// Each rule of the restricted standard (Kubernetes 1.33, policy `latest`),
/// one assertion per rule, over every container of every rendered pod.
#[test]
fn restricted_pods_satisfy_every_rule_of_the_restricted_standard() {
    let config = parse(RESTRICTED);
    let specs = pod_specs(&config);
    assert_eq!(specs.len(), 5, "four services and the prepull");
    let prepull = &specs.last().unwrap().1;
    assert!(
        prepull
            .init_containers
            .as_ref()
            .is_some_and(|i| i.len() == 4),
        "the prepull has an init container per image"
    );
    for (pod, spec) in &specs {
        let pod_ctx = spec.security_context.clone().unwrap_or_default();
        let cs = containers(spec);
        // Baseline: host namespaces.
        assert!(
            spec.host_network != Some(true)
                && spec.host_pid != Some(true)
                && spec.host_ipc != Some(true),
            "{pod}: host namespaces"
        );
        // Baseline: hostPath volumes; restricted: only the allowed volume types.
        for v in spec.volumes.iter().flatten() {
            let allowed = v.config_map.is_some()
                || v.csi.is_some()
                || v.downward_api.is_some()
                || v.empty_dir.is_some()
                || v.ephemeral.is_some()
                || v.persistent_volume_claim.is_some()
                || v.projected.is_some()
                || v.secret.is_some();
            assert!(allowed, "{pod}: volume {} has a restricted type", v.name);
        }
        // Restricted: runAsNonRoot at the pod's level or every container's.
        let pod_non_root = pod_ctx.run_as_non_root == Some(true);
        // Restricted: a RuntimeDefault or Localhost seccomp profile at the
        // pod's level or every container's; never Unconfined.
        let valid_seccomp = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
        let pod_seccomp = pod_ctx.seccomp_profile.as_ref().map(|p| p.type_.as_str());
        assert!(
            pod_seccomp.is_none_or(valid_seccomp),
            "{pod}: pod seccomp {pod_seccomp:?}"
        );
        // Restricted: runAsUser is never 0.
        assert_ne!(pod_ctx.run_as_user, Some(0), "{pod}: pod runAsUser=0");
        for c in cs {
            let ctx = c.security_context.clone().unwrap_or_default();
            let name = format!("{pod}/{}", c.name);
            // Baseline: privileged.
            assert_ne!(ctx.privileged, Some(true), "{name}: privileged");
            // Baseline: host ports.
            for p in c.ports.iter().flatten() {
                assert!(p.host_port.is_none_or(|h| h == 0), "{name}: hostPort");
            }
            // Restricted: allowPrivilegeEscalation=false.
            assert_eq!(
                ctx.allow_privilege_escalation,
                Some(false),
                "{name}: allowPrivilegeEscalation"
            );
            // Restricted: capabilities drop ALL, add nothing but NET_BIND_SERVICE.
            let caps = ctx.capabilities.clone().unwrap_or_default();
            assert!(
                caps.drop.iter().flatten().any(|d| d == "ALL"),
                "{name}: capabilities.drop lacks ALL"
            );
            assert!(
                caps.add.iter().flatten().all(|a| a == "NET_BIND_SERVICE"),
                "{name}: capabilities.add {:?}",
                caps.add
            );
            assert!(
                pod_non_root || ctx.run_as_non_root == Some(true),
                "{name}: runAsNonRoot"
            );
            assert_ne!(
                ctx.run_as_non_root,
                Some(false),
                "{name}: runAsNonRoot=false"
            );
            assert_ne!(ctx.run_as_user, Some(0), "{name}: runAsUser=0");
            let own = ctx.seccomp_profile.as_ref().map(|p| p.type_.as_str());
            assert!(own.is_none_or(valid_seccomp), "{name}: seccomp {own:?}");
            assert!(
                pod_seccomp.is_some() || own.is_some(),
                "{name}: no seccomp profile"
            );
        }
    }
    // The prepull pods run as nobody: the images' own users may be root.
    assert_eq!(
        prepull.security_context.as_ref().unwrap().run_as_user,
        Some(PREPULL_USER)
    );
}

#[test]
fn baseline_and_none_add_no_security_context_but_the_services_own() {
    for level in ["baseline", "none"] {
        let config = parse(&RESTRICTED.replace("\"restricted\"", &format!("\"{level}\"")));
        for (pod, spec) in pod_specs(&config) {
            for c in containers(&spec) {
                assert!(c.security_context.is_none(), "{level}: {pod}/{}", c.name);
            }
            let ctx = spec.security_context.clone();
            match pod.as_str() {
                "postgres" => {
                    let ctx = ctx.unwrap();
                    assert_eq!(
                        (
                            ctx.run_as_user,
                            ctx.run_as_group,
                            ctx.fs_group,
                            ctx.run_as_non_root
                        ),
                        (Some(999), Some(999), Some(999), None),
                        "{level}"
                    );
                }
                "redis" => assert_eq!(ctx.unwrap().run_as_user, Some(999)),
                _ => assert!(ctx.is_none(), "{level}: {pod}: {ctx:?}"),
            }
        }
    }
}

#[test]
fn each_namespace_is_labelled_to_enforce_the_chosen_level() {
    for (level, label) in [
        ("restricted", Some("restricted")),
        ("baseline", Some("baseline")),
        ("none", None),
    ] {
        let config = parse(&RESTRICTED.replace("\"restricted\"", &format!("\"{level}\"")));
        let shard = render(&config);
        let prepull = render_prepull(&config, &run(), &context(None)).unwrap();
        for ns in [&shard.namespace, &prepull.namespace] {
            let labels = ns.metadata.labels.as_ref().unwrap();
            assert_eq!(
                labels.get(ENFORCE_LABEL).map(String::as_str),
                label,
                "{level}"
            );
        }
    }
    // The default is baseline, which cargo-ephem's pods meet by construction.
    let labels = render(&parse("[services.db]\nimage = \"db:1\"\n"))
        .namespace
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels[ENFORCE_LABEL], "baseline");
}

#[test]
fn restarts_let_a_service_crash_while_it_starts() {
    let objects = render(&parse(RESTRICTED));
    let policy = |name: &str| {
        let s = objects.services.iter().find(|s| s.name == name).unwrap();
        (
            s.pod.spec.as_ref().unwrap().restart_policy.clone().unwrap(),
            s.wait.restarts,
        )
    };
    assert_eq!(policy("api"), ("Always".to_owned(), 2));
    assert_eq!(policy("postgres"), ("Never".to_owned(), 0));
}

#[test]
fn the_example_runs_as_its_images_users_under_restricted() {
    let config = example();
    let objects = render(&config);
    assert_eq!(
        objects.namespace.metadata.labels.as_ref().unwrap()[ENFORCE_LABEL],
        "restricted"
    );
    for service in &objects.services {
        let ctx = service
            .pod
            .spec
            .as_ref()
            .unwrap()
            .security_context
            .clone()
            .unwrap();
        assert_eq!(
            (
                ctx.run_as_user,
                ctx.run_as_group,
                ctx.fs_group,
                ctx.run_as_non_root
            ),
            (Some(999), Some(999), Some(999), Some(true)),
            "{}",
            service.name
        );
    }
}

/// The images of every pod a render holds.
fn images(objects: &ShardObjects) -> Vec<String> {
    objects
        .services
        .iter()
        .map(|s| {
            s.pod.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect()
}

#[test]
fn pods_pull_through_the_clusters_registry_never_the_docker_daemons_mirror() {
    // One test changes these variables: no other test of this binary reads them.
    std::env::set_var("EPHEM_REGISTRY_MIRROR", "localhost:5000");
    std::env::remove_var("EPHEM_KUBERNETES_REGISTRY");
    let config = parse(
        "[images]\nmirror = \"127.0.0.1:5000\"\n[services.db]\nimage = \"postgres:15\"\n[services.api]\nimage = \"ghcr.io/example/api:1\"\n",
    );
    let plain = images(&render_with(&config, &RenderContext::current(&config)));
    assert_eq!(plain, ["ghcr.io/example/api:1", "postgres:15"]);

    let config = parse(
        "[kubernetes]\nregistry = \"mirror.corp.example/hub\"\n[services.db]\nimage = \"postgres:15\"\n[services.api]\nimage = \"ghcr.io/example/api:1\"\n",
    );
    let through = images(&render_with(&config, &RenderContext::current(&config)));
    assert_eq!(
        through,
        [
            "ghcr.io/example/api:1",
            "mirror.corp.example/hub/library/postgres:15"
        ]
    );
    std::env::set_var("EPHEM_KUBERNETES_REGISTRY", "pull-through.ci:5000/");
    let overridden = images(&render_with(&config, &RenderContext::current(&config)));
    assert_eq!(
        overridden,
        [
            "ghcr.io/example/api:1",
            "pull-through.ci:5000/library/postgres:15"
        ]
    );
    std::env::remove_var("EPHEM_KUBERNETES_REGISTRY");
}

/// `kubernetes-validate --strict -k 1.33.0` over the objects; fails (never
/// skips) when the tool is missing.
fn validate_strict(name: &str, objects: &[Value]) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("kube-render-security-{name}.yaml"));
    let stream: Vec<String> = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    std::fs::write(&file, stream.concat()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate does not run ({e}); install it with `bash scripts/provision-test-env.sh`")
        });
    assert!(
        out.status.success(),
        "{} does not pass strict validation for Kubernetes 1.33:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restricted_objects_pass_strict_schema_validation_for_kubernetes_1_33() {
    let config = parse(RESTRICTED);
    let mut objects = render_prepull(&config, &run(), &context(None))
        .unwrap()
        .objects();
    objects.extend(render(&config).objects());
    objects.extend(render(&example()).objects());
    validate_strict("restricted", &objects);
}
