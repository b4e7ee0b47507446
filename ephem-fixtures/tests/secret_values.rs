//! `${secret.NAME}`: a value from the runner's environment that the
//! configuration marks secret. It loads anywhere `${random}` does, must be
//! set before anything starts, and is treated as a generated secret by the
//! backends (the Kubernetes render keeps it in the shard's Secret, never in
//! a pod spec).

use std::time::{Duration, UNIX_EPOCH};

use ephem_fixtures::kubernetes::render::{render_shard, RenderContext};
use ephem_fixtures::template::{Bindings, Template};
use ephem_fixtures::{EphemConfig, RunContext, ShardContext};

const CONFIG: &str = r#"
[services.api]
image = "example/api:1"
env = { API_TOKEN = "${secret.EPHEM_SECRET_VALUES_TOKEN}", PLAIN = "x" }
ports = [8080]
export = { API_URL = "http://t:${env.API_TOKEN}@${host}:${port.8080}" }
"#;

fn render(config: &EphemConfig) -> Result<(serde_json::Value, Vec<String>), String> {
    let shard = ShardContext {
        run: RunContext {
            run_id: "3f2a9c1e-0000-4000-8000-000000000000".to_owned(),
            shard_count: 1,
            expires_at: UNIX_EPOCH + Duration::from_secs(3600),
        },
        shard: 1,
    };
    let ctx = RenderContext {
        hostname: "ci".to_owned(),
        pid: 1,
        pid_start: None,
        now: UNIX_EPOCH,
        registry: None,
    };
    let mut secrets = Vec::new();
    let objects = render_shard(config, &shard, &ctx, &mut secrets).map_err(|e| e.to_string())?;
    Ok((serde_json::Value::Array(objects.objects()), secrets))
}

#[test]
fn a_runner_secret_is_checked_at_its_line_then_kept_out_of_pod_specs() {
    let config = EphemConfig::parse(CONFIG, "ephem.toml").unwrap();
    assert_eq!(config.secrets.len(), 1);
    assert_eq!(config.secrets[0].name, "EPHEM_SECRET_VALUES_TOKEN");

    std::env::remove_var("EPHEM_SECRET_VALUES_TOKEN");
    let missing = config.check_secrets().unwrap_err().to_string();
    assert_eq!(
        missing,
        "ephem.toml:4:21: services.api.env.API_TOKEN: ${secret.EPHEM_SECRET_VALUES_TOKEN}: the runner's environment has no EPHEM_SECRET_VALUES_TOKEN; set it to the secret (in CI, from the secret store)"
    );
    std::env::set_var("EPHEM_SECRET_VALUES_TOKEN", "");
    assert!(config
        .check_secrets()
        .unwrap_err()
        .to_string()
        .contains("is empty"));
    std::env::set_var("EPHEM_SECRET_VALUES_TOKEN", "short");
    assert!(config
        .check_secrets()
        .unwrap_err()
        .to_string()
        .starts_with("ephem.toml:4:21: services.api.env.API_TOKEN: ${secret.EPHEM_SECRET_VALUES_TOKEN}: the runner's environment variable EPHEM_SECRET_VALUES_TOKEN has 5 characters, and a secret needs at least 8"));

    let value = "tok-from-the-ci-store-7f3a";
    std::env::set_var("EPHEM_SECRET_VALUES_TOKEN", value);
    config.check_secrets().unwrap();
    assert!(ephem_fixtures::secret::known().contains(&value.to_owned()));

    let (objects, secrets) = render(&config).unwrap();
    assert_eq!(secrets, [value]);
    let text = objects.to_string();
    let pods: Vec<&serde_json::Value> = objects
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .collect();
    assert_eq!(pods.len(), 1);
    assert!(
        !pods[0].to_string().contains(value),
        "in the pod spec: {}",
        pods[0]
    );
    assert!(pods[0].to_string().contains("secretKeyRef"), "{}", pods[0]);
    let secret = objects
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Secret")
        .expect("a Secret object");
    assert!(secret.to_string().contains(value), "{secret}");
    assert_eq!(text.matches(value).count(), 1, "only in the Secret: {text}");
}

#[test]
fn a_runner_secret_in_a_command_is_refused_on_kubernetes() {
    std::env::set_var("EPHEM_SECRET_VALUES_CMD", "abcdefgh");
    let config = EphemConfig::parse(
        "[services.w]\nimage = \"busybox\"\ncmd = [\"run\", \"--token=${secret.EPHEM_SECRET_VALUES_CMD}\"]\n",
        "ephem.toml",
    )
    .unwrap();
    let message = render(&config).unwrap_err();
    assert!(
        message.contains(
            "${secret.EPHEM_SECRET_VALUES_CMD} in a command would be written into the pod spec"
        ),
        "{message}"
    );
}

#[test]
fn malformed_secret_names_are_refused_at_their_line() {
    let message = EphemConfig::parse(
        "[services.w]\nimage = \"busybox\"\nenv = { T = \"${secret.API-TOKEN}\" }\n",
        "ephem.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.starts_with("ephem.toml:3:13: services.w.env.T: ${secret.API-TOKEN}: `API-TOKEN` is not an environment variable name"),
        "{message}"
    );
}

#[test]
fn a_template_renders_the_value_and_records_it_as_a_secret() {
    std::env::set_var("EPHEM_SECRET_VALUES_BEARER", "t0k&n-of-the-ci");
    let t = Template::parse("Bearer ${secret.EPHEM_SECRET_VALUES_BEARER}").unwrap();
    let mut secrets = Vec::new();
    let out = t.render(&Bindings::default(), &mut secrets).unwrap();
    assert_eq!(out, "Bearer t0k&n-of-the-ci");
    assert_eq!(secrets, ["t0k&n-of-the-ci"]);
    assert!(ephem_fixtures::secret::known().contains(&"t0k&n-of-the-ci".to_owned()));

    std::env::set_var("EPHEM_SECRET_VALUES_SHORT", "1234567");
    let t = Template::parse("${secret.EPHEM_SECRET_VALUES_SHORT}").unwrap();
    let short = t.render(&Bindings::default(), &mut secrets).unwrap_err();
    assert!(
        short.contains("has 7 characters, and a secret needs at least 8"),
        "{short}"
    );
    assert!(!ephem_fixtures::secret::known().contains(&"1234567".to_owned()));
}
