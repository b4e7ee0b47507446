//! Loader tests: the documented example loads, and every kind of mistake is
//! reported with its line and key.

use std::time::Duration;

use super::*;

const EXAMPLE: &str = r#"
[images]
mirror = "localhost:5000"

[services.postgres]
image = "postgres:15-bookworm"
env = { POSTGRES_PASSWORD = "${random}", POSTGRES_DB = "app" }
ports = [5432]
args = ["-c", "fsync=off"]
wait = { log = "database system is ready to accept connections", times = 2 }
startup-timeout = "60s"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/app" }

[services.redis]
image = "redis:7-bookworm"
ports = [6379]
wait = { tcp = 6379 }
export = { REDIS_URL = "redis://${host}:${port.6379}" }

[services.api]
image = "example/api:1"
depends-on = ["postgres"]
env = { DB_HOST = "postgres", DB_PASSWORD = "${services.postgres.env.POSTGRES_PASSWORD}", WORKERS = 4 }
"#;

fn load_err(text: &str) -> String {
    match EphemConfig::parse(text, "ephem.toml") {
        Ok(_) => panic!("configuration should have been rejected:\n{text}"),
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "errors are one line: {message:?}");
            message
        }
    }
}

/// Asserts the message starts with `ephem.toml:LINE:` and names `key`.
fn assert_points_at(message: &str, line: usize, key: &str) {
    assert!(
        message.starts_with(&format!("ephem.toml:{line}:")),
        "expected line {line} in {message:?}"
    );
    assert!(message.contains(key), "expected key {key:?} in {message:?}");
}

#[test]
fn the_documented_example_loads() {
    let config = EphemConfig::parse(EXAMPLE, "ephem.toml").unwrap();
    assert_eq!(config.images.mirror.as_deref(), Some("localhost:5000"));
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "postgres", "redis"]);

    let pg = config.service("postgres").unwrap();
    assert_eq!(pg.image.local_name(), "postgres:15-bookworm");
    assert_eq!(pg.ports, [5432]);
    assert_eq!(pg.args.len(), 2);
    assert_eq!(pg.startup_timeout, Duration::from_secs(60));
    assert!(matches!(pg.wait.kind, WaitKind::Log { times: 2, .. }));
    assert_eq!(pg.export[0].0, "DATABASE_URL");

    let redis = config.service("redis").unwrap();
    assert!(matches!(redis.wait.kind, WaitKind::Tcp { port: 6379 }));

    let api = config.service("api").unwrap();
    assert_eq!(api.depends_on, ["postgres"]);
    assert!(matches!(api.wait.kind, WaitKind::Running));
    assert!(api
        .env
        .iter()
        .any(|(k, v)| k == "WORKERS" && v.source() == "4"));
    assert_eq!(config.images().len(), 3);
}

#[test]
fn every_wait_kind_and_option_loads() {
    let config = EphemConfig::parse(
        r#"
[services.a]
image = "busybox:1.36"
ports = [8080, 9090]
cmd = ["httpd", "-f", "-p", "8080"]
wait = { http = "/ready", port = 8080, status = 204, interval = "100ms" }
[services.b]
image = "busybox:1.36"
wait = { exec = ["test", "-f", "/tmp/${env.FLAG}"] }
env = { FLAG = "up" }
[services.c]
image = "busybox:1.36"
wait = { log = "ready [0-9]+", regex = true }
[services.d]
image = "busybox:1.36"
wait = { healthcheck = true }
healthcheck = { test = ["true"], interval = "500ms", retries = 5, start-period = "0s" }
"#,
        "ephem.toml",
    )
    .unwrap();
    let a = config.service("a").unwrap();
    assert!(matches!(
        a.wait.kind,
        WaitKind::Http {
            port: 8080,
            status: Some(204),
            ..
        }
    ));
    assert_eq!(a.wait.interval, Duration::from_millis(100));
    assert!(matches!(
        config.service("b").unwrap().wait.kind,
        WaitKind::Exec { .. }
    ));
    match &config.service("c").unwrap().wait.kind {
        WaitKind::Log { pattern, .. } => {
            assert!(pattern.matches("ready 42") && !pattern.matches("ready now"))
        }
        other => panic!("expected a log wait, got {other}"),
    }
    let d = config.service("d").unwrap();
    assert_eq!(d.healthcheck.as_ref().unwrap().retries, 5);
    assert_eq!(d.healthcheck.as_ref().unwrap().start_period, Duration::ZERO);
}

#[test]
fn missing_file_names_the_path() {
    let message = EphemConfig::load("/nonexistent/ephem.toml")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("/nonexistent/ephem.toml") && message.contains("--config"),
        "{message}"
    );
}

#[test]
fn malformed_toml() {
    let message = load_err("[services.redis]\nimage = \"redis:7\"\nports = [6379\n");
    assert_points_at(&message, 3, "services.redis.ports");
}

#[test]
fn unknown_key() {
    let message = load_err("[services.redis]\nimage = \"redis:7\"\nprots = [6379]\n");
    assert_points_at(&message, 3, "services.redis.prots");
    assert!(message.contains("unknown key"), "{message}");
}

#[test]
fn unknown_top_level_table() {
    let message = load_err("[image]\nmirror = \"localhost:5000\"\n");
    assert_points_at(&message, 1, "image");
}

#[test]
fn unknown_wait_kind() {
    let message =
        load_err("[services.redis]\nimage = \"redis:7\"\nports = [6379]\nwait = { grpc = 6379 }\n");
    assert_points_at(&message, 4, "services.redis.wait.grpc");
    assert!(message.contains("unknown wait kind"), "{message}");
}

#[test]
fn port_variable_for_an_unpublished_port() {
    let text = "[services.redis]\nimage = \"redis:7\"\nports = [6379]\n\
                export = { REDIS_URL = \"redis://${host}:${port.6380}\" }\n";
    let message = load_err(text);
    assert_points_at(&message, 4, "services.redis.export.REDIS_URL");
    assert!(
        message.contains(
            "${port.6380} is not a published port of redis (ports = [6379]); add 6380 to ports"
        ),
        "{message}"
    );
}

#[test]
fn unknown_variable() {
    let message = load_err("[services.redis]\nimage = \"redis:7\"\nports = [6379]\nexport = { URL = \"redis://${hots}\" }\n");
    assert_points_at(&message, 4, "services.redis.export.URL");
    assert!(message.contains("unknown variable ${hots}"), "{message}");
}

#[test]
fn env_variable_not_in_the_service_env() {
    let text =
        "[services.pg]\nimage = \"postgres:15\"\nports = [5432]\nenv = { POSTGRES_DB = \"app\" }\n\
                export = { URL = \"postgres://u:${env.POSTGRES_PASSWORD}@${host}/app\" }\n";
    let message = load_err(text);
    assert_points_at(&message, 5, "services.pg.export.URL");
    assert!(
        message.contains("add POSTGRES_PASSWORD to env"),
        "{message}"
    );
}

#[test]
fn dependency_cycle() {
    let text = "[services.a]\nimage = \"x:1\"\ndepends-on = [\"b\"]\n\n[services.b]\nimage = \"x:1\"\ndepends-on = [\"a\"]\n";
    let message = load_err(text);
    assert_points_at(&message, 3, "services.a.depends-on");
    assert!(message.contains("a -> b -> a"), "{message}");
}

#[test]
fn dependency_on_an_unknown_service() {
    let message = load_err("[services.api]\nimage = \"x:1\"\ndepends-on = [\"postgress\"]\n");
    assert_points_at(&message, 3, "services.api.depends-on[0]");
    assert!(
        message.contains("`postgress` is not a service"),
        "{message}"
    );
}

#[test]
fn bad_duration() {
    let message =
        load_err("[services.redis]\nimage = \"redis:7\"\n\nstartup-timeout = \"60 parsecs\"\n");
    assert_points_at(&message, 4, "services.redis.startup-timeout");
    assert!(message.contains("is not a duration"), "{message}");
}

#[test]
fn bad_wait_interval() {
    let message = load_err(
        "[services.r]\nimage = \"redis:7\"\nports = [1]\nwait = { tcp = 1, interval = \"0s\" }\n",
    );
    assert_points_at(&message, 4, "services.r.wait.interval");
}

#[test]
fn bad_regex() {
    let message =
        load_err("[services.r]\nimage = \"redis:7\"\nwait = { log = \"ready (\", regex = true }\n");
    assert_points_at(&message, 3, "services.r.wait.log");
    assert!(message.contains("invalid regex"), "{message}");
}

#[test]
fn tcp_wait_on_an_unpublished_port() {
    let message =
        load_err("[services.redis]\nimage = \"redis:7\"\nports = [6379]\nwait = { tcp = 6380 }\n");
    assert_points_at(&message, 4, "services.redis.wait.tcp");
    assert!(message.contains("add 6380 to ports"), "{message}");
}

#[test]
fn two_wait_kinds() {
    let message = load_err(
        "[services.r]\nimage = \"redis:7\"\nports = [1]\nwait = { tcp = 1, log = \"x\" }\n",
    );
    assert_points_at(&message, 4, "services.r.wait");
    assert!(message.contains("both `log` and `tcp`"), "{message}");
}

#[test]
fn option_of_another_wait_kind() {
    let message =
        load_err("[services.r]\nimage = \"redis:7\"\nports = [1]\nwait = { tcp = 1, times = 2 }\n");
    assert_points_at(&message, 4, "services.r.wait.times");
}

#[test]
fn malformed_image_reference() {
    let message = load_err("[services.pg]\nimage = \"Postgres:15\"\n");
    assert_points_at(&message, 2, "services.pg.image");
}

#[test]
fn missing_image() {
    let message = load_err("[services.pg]\nports = [5432]\n");
    assert_points_at(&message, 1, "services.pg");
    assert!(message.contains("image"), "{message}");
}

#[test]
fn wrong_value_type() {
    let message = load_err("[services.pg]\nimage = \"postgres:15\"\nports = [\"5432\"]\n");
    assert_points_at(&message, 3, "services.pg.ports");
}

#[test]
fn host_variable_inside_env() {
    let message =
        load_err("[services.pg]\nimage = \"postgres:15\"\nenv = { SELF = \"${host}\" }\n");
    assert_points_at(&message, 3, "services.pg.env.SELF");
    assert!(
        message.contains("only known once the container runs"),
        "{message}"
    );
}

#[test]
fn other_service_env_without_depends_on() {
    let text = "[services.api]\nimage = \"x:1\"\nenv = { PW = \"${services.pg.env.PW}\" }\n\
                [services.pg]\nimage = \"postgres:15\"\nenv = { PW = \"${random}\" }\n";
    let message = load_err(text);
    assert_points_at(&message, 3, "services.api.env.PW");
    assert!(message.contains("add \"pg\" to depends-on"), "{message}");
}

#[test]
fn duplicate_export() {
    let text = "[services.a]\nimage = \"x:1\"\nexport = { URL = \"a\" }\n[services.b]\nimage = \"x:1\"\nexport = { URL = \"b\" }\n";
    let message = load_err(text);
    assert_points_at(&message, 6, "services.b.export.URL");
}

#[test]
fn invalid_service_name() {
    let message = load_err("[services.My_DB]\nimage = \"x:1\"\n");
    assert_points_at(&message, 1, "services.My_DB");
}

#[test]
fn mirror_with_a_scheme() {
    let message = load_err("[images]\nmirror = \"http://localhost:5000\"\n");
    assert_points_at(&message, 2, "images.mirror");
}

#[test]
fn backend_defaults_to_docker_and_names_the_choices_when_unknown() {
    let config = EphemConfig::parse(EXAMPLE, "ephem.toml").unwrap();
    assert_eq!(config.backend, BackendKind::Docker);
    let config = EphemConfig::parse("backend = \"docker\"\n", "ephem.toml").unwrap();
    assert_eq!(config.backend, BackendKind::Docker);

    let message = load_err("\nbackend = \"podman\"\n");
    assert_points_at(&message, 2, "backend");
    assert!(message.contains("\"podman\""), "{message}");
    assert!(
        message.contains(&format!("the backends are: {}", BackendKind::names())),
        "{message}"
    );
}

#[test]
fn shard_test_threads_is_a_bounded_positive_count() {
    let config = EphemConfig::parse("[shards]\ntest-threads = 1\n", "ephem.toml").unwrap();
    assert_eq!(config.shards.test_threads, Some(1));
    let config = EphemConfig::parse(EXAMPLE, "ephem.toml").unwrap();
    assert_eq!(config.shards.test_threads, None);
    for bad in ["0", "-3", "4294967296", "100000"] {
        let message = load_err(&format!("[shards]\ntest-threads = {bad}\n"));
        assert_points_at(&message, 2, "shards.test-threads");
        assert!(message.contains("1 to 1024"), "{message}");
    }
    let message = load_err("[shards]\nthreads = 1\n");
    assert!(message.contains("threads"), "{message}");
}

#[test]
fn absurd_durations_are_rejected_with_the_allowed_range() {
    let ten_to_the_19 = "10000000000000000000s";
    for key in [
        "startup-timeout = \"X\"",
        "wait = { tcp = 80, interval = \"X\" }",
    ] {
        let text = format!(
            "[services.web]\nimage = \"nginx:1\"\nports = [80]\n{}\n",
            key.replace('X', ten_to_the_19)
        );
        let message = load_err(&text);
        assert_points_at(&message, 4, "services.web");
        assert!(message.contains("allowed: 1ms to 365days"), "{message}");
    }
    assert_eq!(parse_duration("365days", false), Ok(MAX_DURATION));
    assert!(parse_duration("366days", false).is_err());
    assert!(parse_duration("0s", false).is_err());
    assert_eq!(parse_duration("0s", true), Ok(Duration::ZERO));
}

const KUBERNETES: &str = r#"
[kubernetes]
context = "kind-ephem"
namespace-prefix = "CI Team/PR #12"
image-pull-secrets = ["regcred", "mirror.pull"]
prepull = true
reach = "port-forward"

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
"#;

#[test]
fn every_kubernetes_key_loads() {
    let config = EphemConfig::parse(KUBERNETES, "ephem.toml").unwrap();
    let k = &config.kubernetes;
    assert_eq!(k.context.as_deref(), Some("kind-ephem"));
    assert_eq!(k.namespace_prefix, "ci-team-pr-12");
    assert_eq!(k.image_pull_secrets, ["regcred", "mirror.pull"]);
    assert!(k.prepull);
    assert_eq!(k.reach, Reach::PortForward);
    assert_eq!(k.quota.requests_cpu.as_str(), "2");
    assert_eq!(k.quota.limits_memory.as_str(), "8Gi");
    assert_eq!(k.quota.pods, 12);
    assert_eq!(k.limits.default_cpu.as_str(), "0.5");
    assert_eq!(k.limits.default_request_memory.as_str(), "256Mi");
    let helm = k.helm.as_ref().unwrap();
    assert_eq!(helm.chart, "oci://registry.example/charts/api");
    assert_eq!(helm.release, "api");
    assert_eq!(helm.version.as_deref(), Some("1.2.3"));
    assert_eq!(helm.timeout, Duration::from_secs(120));
    assert_eq!(helm.values["replicas"].as_integer(), Some(1));
    assert_eq!(helm.values["image"]["tag"].as_str(), Some("v1"));
}

#[test]
fn kubernetes_defaults_without_the_table() {
    let k = EphemConfig::parse(EXAMPLE, "ephem.toml")
        .unwrap()
        .kubernetes;
    assert_eq!(k.namespace_prefix, DEFAULT_NAMESPACE_PREFIX);
    assert_eq!(
        (
            k.quota.requests_cpu.as_str(),
            k.quota.requests_memory.as_str()
        ),
        ("4", "8Gi")
    );
    assert_eq!(
        (k.quota.limits_cpu.as_str(), k.quota.limits_memory.as_str()),
        ("8", "16Gi")
    );
    assert_eq!(k.quota.pods, 20);
    assert_eq!(k.limits.default_cpu.as_str(), "1");
    assert_eq!(k.limits.default_memory.as_str(), "1Gi");
    assert!(k.helm.is_none() && !k.prepull && k.context.is_none());

    let helm = EphemConfig::parse("[kubernetes.helm]\nchart = \"./chart\"\n", "ephem.toml")
        .unwrap()
        .kubernetes
        .helm
        .unwrap();
    assert_eq!(helm.release, DEFAULT_HELM_RELEASE);
    assert_eq!(helm.timeout, DEFAULT_HELM_TIMEOUT);
    assert!(helm.values.is_empty() && helm.version.is_none());
}

#[test]
fn unknown_kubernetes_keys_name_their_line_and_key() {
    let message = load_err("[kubernetes]\nnamespace-prefix = \"ci\"\nnamespace = \"ci\"\n");
    assert_points_at(&message, 3, "kubernetes.namespace");
    assert!(message.contains("unknown key `namespace`"), "{message}");
    assert!(message.contains("namespace-prefix"), "{message}");

    let message = load_err("[kubernetes.quota]\ncpu = \"4\"\n");
    assert_points_at(&message, 2, "kubernetes.quota.cpu");
    let message = load_err("[kubernetes.limits]\n\nmax-cpu = \"4\"\n");
    assert_points_at(&message, 3, "kubernetes.limits.max-cpu");
    let message = load_err("[kubernetes.helm]\nchart = \"c\"\nvalue = {}\n");
    assert_points_at(&message, 3, "kubernetes.helm.value");
}

#[test]
fn a_prefix_that_slugs_to_nothing() {
    let message = load_err("[kubernetes]\nnamespace-prefix = \"--- ___\"\n");
    assert_points_at(&message, 2, "kubernetes.namespace-prefix");
    assert!(message.contains("DNS-1123"), "{message}");
    let message = load_err("[kubernetes]\nnamespace-prefix = \"\"\n");
    assert_points_at(&message, 2, "kubernetes.namespace-prefix");
}

#[test]
fn quota_and_limit_values_must_be_positive_quantities() {
    for (text, line, key, says) in [
        (
            "[kubernetes.quota]\nrequests-memory = \"8GB\"\n",
            2,
            "kubernetes.quota.requests-memory",
            "did you mean `G`",
        ),
        (
            "[kubernetes.quota]\n\nlimits-cpu = \"eight\"\n",
            3,
            "kubernetes.quota.limits-cpu",
            "not a quantity",
        ),
        (
            "[kubernetes.quota]\nrequests-cpu = true\n",
            2,
            "kubernetes.quota.requests-cpu",
            "not a quantity",
        ),
        (
            "[kubernetes.limits]\ndefault-cpu = \"0\"\n",
            2,
            "kubernetes.limits.default-cpu",
            "greater than zero",
        ),
        (
            "[kubernetes.limits]\ndefault-memory = \"-1Gi\"\n",
            2,
            "kubernetes.limits.default-memory",
            "greater than zero",
        ),
        (
            "[kubernetes.quota]\npods = 0\n",
            2,
            "kubernetes.quota.pods",
            "1 to 10000",
        ),
        (
            "[kubernetes.quota]\npods = 99999999999\n",
            2,
            "kubernetes.quota.pods",
            "1 to 10000",
        ),
    ] {
        let message = load_err(text);
        assert_points_at(&message, line, key);
        assert!(message.contains(says), "{message}");
    }
}

#[test]
fn limits_that_the_api_server_or_the_quota_would_refuse() {
    let message = load_err("[kubernetes.limits]\ndefault-request-cpu = \"2\"\n");
    assert_points_at(&message, 2, "kubernetes.limits.default-request-cpu");
    assert!(
        message.contains("limits.default-request-cpu = 2 is more than limits.default-cpu = 1"),
        "{message}"
    );
    let message = load_err("[kubernetes.quota]\nlimits-memory = \"512Mi\"\n");
    assert_points_at(&message, 2, "kubernetes.quota.limits-memory");
    assert!(message.contains("would not fit"), "{message}");
    // Equal is fine, across suffixes.
    EphemConfig::parse(
        "[kubernetes.limits]\ndefault-request-cpu = \"1000m\"\ndefault-cpu = 1\n",
        "ephem.toml",
    )
    .unwrap();
}

#[test]
fn bad_helm_tables() {
    let message = load_err("[kubernetes.helm]\nchart = \"c\"\nrelease = \"My_App\"\n");
    assert_points_at(&message, 3, "kubernetes.helm.release");
    assert!(message.contains("not a Helm release name"), "{message}");
    let long = "a".repeat(54);
    let message = load_err(&format!(
        "[kubernetes.helm]\nchart = \"c\"\nrelease = \"{long}\"\n"
    ));
    assert_points_at(&message, 3, "kubernetes.helm.release");
    let message = load_err("[kubernetes.helm]\nrelease = \"app\"\n");
    assert_points_at(&message, 1, "kubernetes.helm");
    assert!(message.contains("missing key `chart`"), "{message}");
    let message = load_err("[kubernetes.helm]\nchart = \" \"\n");
    assert_points_at(&message, 2, "kubernetes.helm.chart");
    let message = load_err("[kubernetes.helm]\nchart = \"c\"\ntimeout = \"forever\"\n");
    assert_points_at(&message, 3, "kubernetes.helm.timeout");
    let message = load_err("[kubernetes.helm]\nchart = \"c\"\nvalues = 3\n");
    assert_points_at(&message, 3, "kubernetes.helm.values");
}

#[test]
fn bad_reach_pull_secrets_and_context() {
    let message = load_err("[kubernetes]\nreach = \"dns\"\n");
    assert_points_at(&message, 2, "kubernetes.reach");
    assert!(message.contains("\"cluster-dns\""), "{message}");
    let message = load_err("[kubernetes]\nimage-pull-secrets = [\"ok\", \"Not_OK\"]\n");
    assert_points_at(&message, 2, "kubernetes.image-pull-secrets[1]");
    let message = load_err("[kubernetes]\nimage-pull-secrets = [\"a\", \"a\"]\n");
    assert!(message.contains("listed twice"), "{message}");
    let message = load_err("[kubernetes]\ncontext = \"\"\n");
    assert_points_at(&message, 2, "kubernetes.context");
}

#[test]
fn images_idle_timeout_defaults_to_30s_and_is_range_checked() {
    let config = EphemConfig::parse(EXAMPLE, "ephem.toml").unwrap();
    assert_eq!(config.images.idle_timeout, Duration::from_secs(30));
    let config = EphemConfig::parse("[images]\nidle-timeout = \"1500ms\"\n", "ephem.toml").unwrap();
    assert_eq!(config.images.idle_timeout, Duration::from_millis(1500));
    for bad in ["0s", "10000000000000000000s", "soon"] {
        let message = load_err(&format!(
            "[images]\nmirror = \"localhost:5000\"\nidle-timeout = \"{bad}\"\n"
        ));
        assert_points_at(&message, 3, "images.idle-timeout");
        assert!(message.contains("1ms to 365days"), "{message}");
    }
}

const RESET_BASE: &str =
    "[services.db]\nimage = \"postgres:15\"\nenv = { PW = \"${random}\" }\nports = [5432, 6379]\n";

#[test]
fn every_reset_form_loads() {
    let load = |reset: &str| {
        let text = format!("{RESET_BASE}{reset}\n");
        EphemConfig::parse(&text, "ephem.toml")
            .unwrap_or_else(|e| panic!("{reset}: {e}"))
            .services
            .remove(0)
            .reset
            .unwrap()
    };
    assert!(matches!(load("reset = \"postgres\""), Reset::Postgres));
    assert!(matches!(load("reset = \"redis\""), Reset::Redis));
    let Reset::Exec(cmd) = load("reset = { exec = [\"sh\", \"-c\", \"echo ${env.PW}\"] }") else {
        panic!("not an exec reset");
    };
    assert_eq!(cmd.len(), 3);
    assert_eq!(cmd[2].source(), "echo ${env.PW}");
    // The same as a table of its own.
    let text = format!("{RESET_BASE}[services.db.reset]\nexec = [\"true\"]\n");
    let config = EphemConfig::parse(&text, "ephem.toml").unwrap();
    assert!(matches!(config.services[0].reset, Some(Reset::Exec(_))));
    assert!(config.services[0].needs_serial_tests());
}

#[test]
fn a_malformed_reset_names_the_forms_there_are() {
    let forms = r#"reset = "postgres", reset = "redis" or reset = { exec = ["cmd", "arg"] }"#;
    for (reset, key, what) in [
        ("reset = 5", "services.db.reset", "integer"),
        ("reset = [\"true\"]", "services.db.reset", "sequence"),
        (
            "reset = \"truncate\"",
            "services.db.reset",
            "unknown reset \"truncate\"",
        ),
        (
            "reset = { cmd = [\"true\"] }",
            "services.db.reset.cmd",
            "unknown key `cmd`",
        ),
        ("reset = { exec = \"true\" }", "services.db.reset", "exec"),
        ("reset = {}", "services.db.reset", "missing key `exec`"),
        (
            "reset = { exec = [\"true\"], x = 1 }",
            "services.db.reset.x",
            "unknown key `x`",
        ),
    ] {
        let message = load_err(&format!("{RESET_BASE}{reset}\n"));
        assert_points_at(&message, 5, key);
        assert!(message.contains(what), "{reset}: {message}");
        assert!(message.contains(forms), "{reset}: {message}");
    }
    let message = load_err(&format!("{RESET_BASE}reset = {{ exec = [] }}\n"));
    assert_points_at(&message, 5, "services.db.reset.exec");
    assert!(message.contains("the command is empty"), "{message}");
}

#[test]
fn a_service_scope_is_kept_as_written_and_may_not_be_empty() {
    let text = format!("{RESET_BASE}tests = \"test(/^db::/)\"\n");
    let config = EphemConfig::parse(&text, "ephem.toml").unwrap();
    assert_eq!(config.services[0].tests.as_deref(), Some("test(/^db::/)"));
    let config = EphemConfig::parse(RESET_BASE, "ephem.toml").unwrap();
    assert_eq!(config.services[0].tests, None, "no scope: every test");
    let message = load_err(&format!("{RESET_BASE}tests = \"  \"\n"));
    assert_points_at(&message, 5, "services.db.tests");
    assert!(message.contains("the filterset is empty"), "{message}");
}
