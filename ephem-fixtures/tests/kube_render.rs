//! The Kubernetes objects of a shard, rendered from `ephem.toml` without a
//! cluster: names, labels and annotations; generated values only through the
//! Secret; probes per wait kind; images, pull policies and pull secrets; the
//! errors only Kubernetes has; and strict schema validation of everything
//! for the pinned Kubernetes version (kubernetes-validate).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::kubernetes::render::{
    render_prepull, render_shard, ReadyWhen, RenderContext, ShardObjects, LIMITS_NAME, PAUSE_IMAGE,
    QUOTA_NAME, SECRET_NAME,
};
use ephem_fixtures::{EphemConfig, RunContext, ShardContext};
use k8s_openapi::api::core::v1::{Container, Probe};
use serde_json::Value;

const RUN_ID: &str = "3f2a9c1e-77b0-4d0e-9f1a-0123456789ab";
const CREATED: u64 = 1_714_557_600; // 2024-05-01T10:00:00Z

/// Every `[kubernetes]` key, every wait kind, cmd and args in each
/// combination, generated values directly and through another service.
const EVERY_KEY: &str = r#"
[images]
mirror = "mirror.example:5000"

[kubernetes]
context = "kind-ephem"
namespace-prefix = "CI Team"
image-pull-secrets = ["regcred", "mirror.pull"]
prepull = true
reach = "cluster-dns"

[kubernetes.quota]
requests-cpu = 2
requests-memory = "4Gi"
limits-cpu = "4"
limits-memory = "8Gi"
pods = 12

[kubernetes.limits]
default-request-cpu = "250m"
default-request-memory = "256Mi"
default-cpu = 0.5
default-memory = "512Mi"

[kubernetes.helm]
chart = "oci://registry.example/charts/api"
release = "api"
version = "1.2.3"
timeout = "2m"
values = { replicas = 1, image = { tag = "v1" } }

[services.postgres]
image = "postgres:15-bookworm"
env = { POSTGRES_PASSWORD = "${random}", POSTGRES_DB = "app_${shard}", PRICE = "$5 $(date)" }
ports = [5432]
args = ["-c", "fsync=off"]
wait = { log = "database system is ready to accept connections", times = 2 }
startup-timeout = "90s"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/app" }

[services.redis]
image = "redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ports = [6379]
wait = { tcp = 6379, interval = "2s" }

[services.api]
image = "ghcr.io/example/api:1"
depends-on = ["postgres", "redis"]
env = { DB_URL = "postgres://postgres:${services.postgres.env.POSTGRES_PASSWORD}@postgres:5432/app", WORKERS = 4 }
ports = [8080, 9090]
cmd = ["api", "--db-url", "${env.DB_URL}", "--workers", "${env.WORKERS}"]
args = ["--verbose"]
wait = { http = "/health", port = 8080, status = 204 }

[services.worker]
image = "example/worker"
depends-on = ["redis"]
cmd = ["worker", "--queue", "run-${run}"]
wait = { exec = ["test", "-f", "/tmp/ready-${shard}"], interval = "500ms" }

[services.cache]
image = "busybox:1.36"
args = ["sleep", "3600"]
healthcheck = { test = ["pidof", "sleep"], interval = "3s", timeout = "2s" }
wait = { healthcheck = true }

[services.sidecar]
image = "busybox:1.36"
cmd = ["sleep", "infinity"]
"#;

fn example_config() -> EphemConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/ephem.toml");
    EphemConfig::load(path).expect("the example's ephem.toml loads")
}

fn parse(text: &str) -> EphemConfig {
    EphemConfig::parse(text, "ephem.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn context(registry: Option<&str>) -> RenderContext {
    RenderContext {
        hostname: "build-7.ci.example".to_owned(),
        pid: 4242,
        pid_start: Some(987_654),
        now: UNIX_EPOCH + Duration::from_secs(CREATED),
        registry: registry.map(str::to_owned),
    }
}

fn run(shards: u32) -> RunContext {
    RunContext {
        run_id: RUN_ID.to_owned(),
        shard_count: shards,
        expires_at: UNIX_EPOCH + Duration::from_secs(CREATED + 1800),
    }
}

fn shard(n: u32) -> ShardContext {
    ShardContext {
        run: run(n.max(2)),
        shard: n,
    }
}

fn render(config: &EphemConfig, n: u32, registry: Option<&str>) -> (ShardObjects, Vec<String>) {
    let mut secrets = Vec::new();
    let objects = render_shard(config, &shard(n), &context(registry), &mut secrets)
        .unwrap_or_else(|e| panic!("{e}"));
    (objects, secrets)
}

fn render_err(text: &str) -> String {
    let message = render_shard(&parse(text), &shard(1), &context(None), &mut Vec::new())
        .expect_err("the render should have been refused")
        .to_string();
    assert!(!message.contains('\n'), "errors are one line: {message}");
    message
}

fn container<'a>(objects: &'a ShardObjects, service: &str) -> &'a Container {
    let s = objects.services.iter().find(|s| s.name == service).unwrap();
    &s.pod.spec.as_ref().unwrap().containers[0]
}

fn probe<'a>(objects: &'a ShardObjects, service: &str) -> Option<&'a Probe> {
    container(objects, service).readiness_probe.as_ref()
}

fn get<'a>(
    map: &'a Option<std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    map.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn namespace_quota_and_limits_carry_the_names_labels_and_annotations() {
    let (objects, _) = render(&example_config(), 2, None);
    assert_eq!(objects.namespace_name(), "ephem-3f2a9c1e-2");
    let meta = &objects.namespace.metadata;
    assert_eq!(get(&meta.labels, labels::MANAGED_BY), Some("cargo-ephem"));
    assert_eq!(get(&meta.labels, labels::RUN), Some(RUN_ID));
    assert_eq!(get(&meta.labels, labels::SHARD), Some("2"));
    assert_eq!(get(&meta.labels, labels::HOST), Some("build-7.ci.example"));
    assert_eq!(
        get(&meta.annotations, labels::HOSTNAME),
        Some("build-7.ci.example")
    );
    assert_eq!(get(&meta.annotations, labels::PID), Some("4242"));
    assert_eq!(get(&meta.annotations, labels::PID_START), Some("987654"));
    assert_eq!(
        get(&meta.annotations, labels::JANITOR_EXPIRES),
        Some("2024-05-01T10:30:00Z")
    );
    assert_eq!(get(&meta.annotations, labels::JANITOR_TTL), Some("1801s"));

    let quota = &objects.quota;
    assert_eq!(quota.metadata.name.as_deref(), Some(QUOTA_NAME));
    assert_eq!(
        quota.metadata.namespace.as_deref(),
        Some("ephem-3f2a9c1e-2")
    );
    let hard = quota.spec.as_ref().unwrap().hard.as_ref().unwrap();
    let hard: Vec<(&str, &str)> = hard
        .iter()
        .map(|(k, v)| (k.as_str(), v.0.as_str()))
        .collect();
    assert_eq!(
        hard,
        [
            ("limits.cpu", "8"),
            ("limits.memory", "16Gi"),
            ("pods", "20"),
            ("requests.cpu", "4"),
            ("requests.memory", "8Gi"),
        ]
    );
    let item = &objects.limits.spec.as_ref().unwrap().limits[0];
    assert_eq!(objects.limits.metadata.name.as_deref(), Some(LIMITS_NAME));
    assert_eq!(item.type_, "Container");
    assert_eq!(item.default.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(item.default.as_ref().unwrap()["memory"].0, "1Gi");
    assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(item.default_request.as_ref().unwrap()["memory"].0, "128Mi");

    // A pod and a Service per service, labelled, the Service selecting the pod.
    for service in &objects.services {
        let pod_meta = &service.pod.metadata;
        assert_eq!(pod_meta.name.as_deref(), Some(service.name.as_str()));
        assert_eq!(pod_meta.namespace.as_deref(), Some("ephem-3f2a9c1e-2"));
        assert_eq!(
            get(&pod_meta.labels, labels::SERVICE),
            Some(service.name.as_str())
        );
        assert_eq!(
            get(&pod_meta.labels, labels::MANAGED_BY),
            Some("cargo-ephem")
        );
        let spec = service.pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.containers[0].name, service.name);
        let svc = service.service.as_ref().expect("both services have ports");
        assert_eq!(svc.metadata.name.as_deref(), Some(service.name.as_str()));
        let svc_spec = svc.spec.as_ref().unwrap();
        assert_eq!(svc_spec.type_.as_deref(), Some("ClusterIP"));
        let selector = svc_spec.selector.as_ref().unwrap();
        assert_eq!(selector.len(), 3, "{selector:?}");
        for (k, v) in selector {
            assert_eq!(get(&pod_meta.labels, k), Some(v.as_str()));
        }
    }
}

#[test]
fn the_prefix_is_slugged_and_services_without_ports_get_no_service() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    assert_eq!(objects.namespace_name(), "ci-team-3f2a9c1e-1");
    let sidecar = objects
        .services
        .iter()
        .find(|s| s.name == "sidecar")
        .unwrap();
    assert!(sidecar.service.is_none());
    let api = objects.services.iter().find(|s| s.name == "api").unwrap();
    let ports = api
        .service
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap();
    let names: Vec<_> = ports.iter().map(|p| p.name.as_deref().unwrap()).collect();
    assert_eq!(names, ["tcp-8080", "tcp-9090"]);
    assert_eq!(api.depends_on, ["postgres", "redis"]);
}

#[test]
fn generated_values_reach_pods_only_through_the_secret() {
    let (objects, secrets) = render(&parse(EVERY_KEY), 1, None);
    assert_eq!(secrets.len(), 1, "one ${{random}} in the file: {secrets:?}");
    let password = &secrets[0];

    let secret = objects
        .secret
        .as_ref()
        .expect("a Secret for the generated value");
    assert_eq!(secret.metadata.name.as_deref(), Some(SECRET_NAME));
    let data = secret.string_data.as_ref().unwrap();
    assert_eq!(&data["postgres.POSTGRES_PASSWORD"], password);
    assert_eq!(
        data["api.DB_URL"],
        format!("postgres://postgres:{password}@postgres:5432/app")
    );
    assert_eq!(
        data.len(),
        2,
        "literal values stay out of the Secret: {data:?}"
    );

    for service in &objects.services {
        let pod = serde_json::to_string(&service.pod).unwrap();
        assert!(
            !pod.contains(password.as_str()),
            "{} carries the secret: {pod}",
            service.name
        );
    }
    let env = container(&objects, "postgres").env.as_ref().unwrap();
    let pw = env.iter().find(|e| e.name == "POSTGRES_PASSWORD").unwrap();
    assert!(pw.value.is_none());
    let selector = pw
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        (SECRET_NAME, "postgres.POSTGRES_PASSWORD")
    );
    let db = env.iter().find(|e| e.name == "POSTGRES_DB").unwrap();
    assert_eq!(db.value.as_deref(), Some("app_1"));

    // A command that names a secret env var refers to it; Kubernetes expands it.
    let args = container(&objects, "api").args.as_ref().unwrap();
    assert_eq!(
        args,
        &[
            "api",
            "--db-url",
            "$(DB_URL)",
            "--workers",
            "4",
            "--verbose"
        ]
    );
    // Provisioning renders exports from the real values.
    assert_eq!(
        &objects.services_env()["postgres"]["POSTGRES_PASSWORD"],
        password
    );
}

#[test]
fn generated_values_that_would_land_in_a_pod_spec_are_refused() {
    let message =
        render_err("[services.app]\nimage = \"app:1\"\ncmd = [\"app\", \"--token=${random}\"]\n");
    assert!(message.starts_with("services.app.cmd[1]: "), "{message}");
    assert!(message.contains("put it in env"), "{message}");

    let message = render_err(
        "[services.db]\nimage = \"db:1\"\nenv = { PW = \"${random}\" }\n\
         [services.app]\nimage = \"app:1\"\ndepends-on = [\"db\"]\nargs = [\"--pw\", \"${services.db.env.PW}\"]\n",
    );
    assert!(message.starts_with("services.app.args[1]: "), "{message}");
    assert!(
        message
            .contains("copy it into env (e.g. PW = \"${services.db.env.PW}\") and use ${env.PW}"),
        "{message}"
    );

    let message = render_err(
        "[services.db]\nimage = \"db:1\"\nenv = { PW = \"${random}\" }\n\
         wait = { exec = [\"check\", \"--password\", \"${env.PW}\"] }\n",
    );
    assert!(
        message.starts_with("services.db.wait.exec[2]: "),
        "{message}"
    );
    assert!(
        message.contains("does not expand Secrets in probe commands"),
        "{message}"
    );

    let message = render_err(
        "[services.db]\nimage = \"db:1\"\nenv = { PW = \"${random}\" }\n\
         healthcheck = { test = [\"check\", \"${env.PW}\"] }\nwait = { healthcheck = true }\n",
    );
    assert!(
        message.starts_with("services.db.healthcheck.test[1]: "),
        "{message}"
    );
}

#[test]
fn literal_dollars_survive_kubernetes_expansion() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    let env = container(&objects, "postgres").env.as_ref().unwrap();
    let price = env.iter().find(|e| e.name == "PRICE").unwrap();
    assert_eq!(price.value.as_deref(), Some("$$5 $$(date)"));
    let worker = container(&objects, "worker").args.as_ref().unwrap();
    assert_eq!(worker, &["worker", "--queue", &format!("run-{RUN_ID}")]);
}

#[test]
fn cmd_and_args_become_the_container_args_and_the_entrypoint_stays() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    for (service, expected) in [
        ("postgres", Some(vec!["-c", "fsync=off"])),
        ("cache", Some(vec!["sleep", "3600"])),
        ("sidecar", Some(vec!["sleep", "infinity"])),
        ("redis", None),
    ] {
        let c = container(&objects, service);
        assert!(
            c.command.is_none(),
            "{service}: the image's ENTRYPOINT stays"
        );
        let args: Option<Vec<&str>> = c
            .args
            .as_ref()
            .map(|a| a.iter().map(String::as_str).collect());
        assert_eq!(args, expected, "{service}");
    }
}

#[test]
fn each_wait_kind_becomes_its_probe() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    let by_name = |name: &str| objects.services.iter().find(|s| s.name == name).unwrap();

    let tcp = probe(&objects, "redis").expect("tcp probe");
    assert_eq!(
        tcp.tcp_socket.as_ref().unwrap().port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6379)
    );
    assert_eq!(tcp.period_seconds, Some(2));
    // 60 s of startup at one probe per 2 s: the timeout decides, not the probe.
    assert_eq!(tcp.failure_threshold, Some(31));
    assert!(matches!(
        by_name("redis").wait.ready,
        ReadyWhen::ProbePassed
    ));

    let http = probe(&objects, "api").expect("http probe");
    let get = http.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_deref(), get.scheme.as_deref()),
        (Some("/health"), Some("HTTP"))
    );
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)
    );
    assert_eq!(
        http.period_seconds,
        Some(1),
        "250 ms rounds up to the 1 s Kubernetes allows"
    );

    let exec = probe(&objects, "worker").expect("exec probe");
    assert_eq!(
        exec.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &["test", "-f", "/tmp/ready-1"]
    );

    let health = probe(&objects, "cache").expect("healthcheck probe");
    assert_eq!(
        health.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &["pidof", "sleep"]
    );
    assert_eq!(
        (health.period_seconds, health.timeout_seconds),
        (Some(3), Some(2))
    );

    assert!(
        probe(&objects, "postgres").is_none(),
        "log waits follow the log"
    );
    match &by_name("postgres").wait.ready {
        ReadyWhen::Log(log) => {
            assert_eq!(log.times, 2);
            assert!(log
                .pattern
                .matches("LOG:  database system is ready to accept connections"));
        }
        other => panic!("expected a log wait, got {other:?}"),
    }
    assert_eq!(
        by_name("postgres").wait.startup_timeout,
        Duration::from_secs(90)
    );
    assert!(by_name("postgres")
        .wait
        .description
        .contains("within 1m 30s"));

    assert!(probe(&objects, "sidecar").is_none());
    assert!(matches!(by_name("sidecar").wait.ready, ReadyWhen::Running));
}

#[test]
fn waits_kubernetes_cannot_express_are_refused_with_their_key() {
    let message = render_err("[services.app]\nimage = \"app:1\"\nwait = { healthcheck = true }\n");
    assert!(
        message.starts_with("services.app.wait.healthcheck: "),
        "{message}"
    );
    assert!(message.contains("add a healthcheck table"), "{message}");

    let message = render_err(
        "[services.app]\nimage = \"app:1\"\nports = [80]\nwait = { http = \"/\", status = 401 }\n",
    );
    assert!(
        message.starts_with("services.app.wait.status: "),
        "{message}"
    );
    assert!(message.contains("200 to 399"), "{message}");
}

#[test]
fn pinned_images_are_pulled_if_not_present_others_always() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    for (service, image, policy) in [
        ("postgres", "postgres:15-bookworm", "IfNotPresent"),
        (
            "redis",
            "redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "IfNotPresent",
        ),
        ("api", "ghcr.io/example/api:1", "IfNotPresent"),
        ("worker", "example/worker:latest", "Always"),
    ] {
        let c = container(&objects, service);
        assert_eq!(c.image.as_deref(), Some(image), "{service}");
        assert_eq!(c.image_pull_policy.as_deref(), Some(policy), "{service}");
    }
}

#[test]
fn docker_hub_images_go_through_the_clusters_registry() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, Some("localhost:5000"));
    for (service, image) in [
        ("postgres", "localhost:5000/library/postgres:15-bookworm"),
        ("worker", "localhost:5000/example/worker:latest"),
        ("api", "ghcr.io/example/api:1"),
    ] {
        assert_eq!(
            container(&objects, service).image.as_deref(),
            Some(image),
            "{service}"
        );
    }
}

#[test]
fn image_pull_secrets_reach_every_pod() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    for service in &objects.services {
        let secrets = service
            .pod
            .spec
            .as_ref()
            .unwrap()
            .image_pull_secrets
            .as_ref()
            .unwrap();
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["regcred", "mirror.pull"], "{}", service.name);
    }
    let (objects, _) = render(&example_config(), 1, None);
    assert!(objects.services.iter().all(|s| s
        .pod
        .spec
        .as_ref()
        .unwrap()
        .image_pull_secrets
        .is_none()));
}

#[test]
fn a_service_name_that_cannot_be_a_service_names_the_table_and_a_rename() {
    let message = render_err("[services.my_db]\nimage = \"postgres:15\"\n");
    assert!(message.starts_with("services.my_db: "), "{message}");
    assert!(message.contains("DNS-1035"), "{message}");
    assert!(message.contains("[services.my-db]"), "{message}");
    let message = render_err("[services.2db]\nimage = \"postgres:15\"\n");
    assert!(message.contains("[services.svc-2db]"), "{message}");
}

#[test]
fn prepull_runs_every_image_once_per_node() {
    let config = parse(EVERY_KEY);
    let prepull =
        render_prepull(&config, &run(2), &context(Some("localhost:5000"))).expect("prepull = true");
    let ns = prepull.namespace.metadata.name.as_deref().unwrap();
    assert_eq!(ns, "ci-team-3f2a9c1e-prepull");
    assert_eq!(
        get(&prepull.namespace.metadata.labels, labels::RUN),
        Some(RUN_ID)
    );
    assert_eq!(
        get(&prepull.namespace.metadata.annotations, labels::JANITOR_TTL),
        Some("1801s")
    );
    let spec = prepull.daemon_set.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let init = pod.init_containers.as_ref().unwrap();
    let images: Vec<&str> = init.iter().map(|c| c.image.as_deref().unwrap()).collect();
    assert_eq!(images.len(), config.images().len());
    assert!(
        images.contains(&"localhost:5000/library/busybox:1.36"),
        "{images:?}"
    );
    assert!(images.contains(&"ghcr.io/example/api:1"), "{images:?}");
    assert!(init.iter().all(|c| c.command.as_deref()
        == Some(&["/bin/sh".to_owned(), "-c".to_owned(), "true".to_owned()][..])));
    assert_eq!(pod.containers[0].image.as_deref(), Some(PAUSE_IMAGE));
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap().len(), 2);
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(selector
        .iter()
        .all(|(k, v)| template_labels.get(k) == Some(v)));

    assert!(render_prepull(&example_config(), &run(2), &context(None)).is_none());
}

#[test]
fn objects_come_in_apply_order_with_api_version_and_kind() {
    let (objects, _) = render(&parse(EVERY_KEY), 1, None);
    let kinds: Vec<String> = objects
        .objects()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["apiVersion"].as_str().unwrap(),
                o["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        &kinds[..4],
        [
            "v1/Namespace",
            "v1/ResourceQuota",
            "v1/LimitRange",
            "v1/Secret"
        ]
    );
    // Then each service in start order: its Service (when it has ports), then its pod.
    let names: Vec<String> = objects.objects()[4..]
        .iter()
        .map(|o| {
            format!(
                "{}:{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(pos("Service:postgres") < pos("Pod:postgres"));
    assert!(pos("Pod:postgres") < pos("Pod:api") && pos("Pod:redis") < pos("Pod:api"));
    assert!(pos("Pod:redis") < pos("Pod:worker"));
    assert!(!names.contains(&"Service:sidecar".to_owned()));
}

#[test]
fn every_shard_gets_its_own_generated_values() {
    let config = example_config();
    let (one, s1) = render(&config, 1, None);
    let (two, s2) = render(&config, 2, None);
    assert_ne!(s1, s2);
    assert_ne!(one.namespace_name(), two.namespace_name());
}

/// `kubernetes-validate --strict -k 1.33.0` over the objects, as JSON
/// documents of one YAML stream; fails (never skips) when the tool is missing.
fn validate_strict(name: &str, objects: &[Value]) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("kube-render-{name}.yaml"));
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
fn the_example_passes_strict_schema_validation_for_kubernetes_1_33() {
    let config = example_config();
    let mut objects = Vec::new();
    for n in 1..=2 {
        objects.extend(render(&config, n, Some("localhost:5000")).0.objects());
    }
    assert_eq!(
        objects.iter().filter(|o| o["kind"] == "Namespace").count(),
        2
    );
    validate_strict("example", &objects);
}

#[test]
fn every_key_and_wait_kind_passes_strict_schema_validation_for_kubernetes_1_33() {
    let config = parse(EVERY_KEY);
    let ctx = context(None);
    let mut objects = render_prepull(&config, &run(2), &ctx).unwrap().objects();
    objects.extend(render(&config, 1, None).0.objects());
    validate_strict("every-key", &objects);
}

#[test]
fn the_validator_does_reject_what_it_should() {
    // Guards the two tests above: an unknown field must fail strict validation.
    let (objects, _) = render(&example_config(), 1, None);
    let mut pod = objects.objects().pop().unwrap();
    pod["spec"]["restartPolicyy"] = Value::from("Never");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("kube-render-broken.yaml");
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs (bash scripts/provision-test-env.sh installs it)");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("'restartPolicyy' was unexpected"),
        "{out:?}"
    );
}
