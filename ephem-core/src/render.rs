//! `cargo ephem render`: the Kubernetes objects each shard would get,
//! printed as one YAML stream without contacting any cluster, generated
//! secrets masked. What `helm template` is to a chart: something to review
//! and diff before anything is applied.
//!
//! The objects are exactly what provisioning applies, rendered with fixed
//! placeholders where a real run has live facts ([`RENDER_RUN_ID`], host
//! `render`, pid 0, created at [`render_clock`]), so that two renders of
//! one configuration differ only where the configuration does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use camino::Utf8PathBuf;
use ephem_fixtures::kubernetes::render::{render_prepull, render_shard, RenderContext};
use ephem_fixtures::{BackendKind, EphemConfig, RunContext, ShardContext};
use serde_json::Value;

use crate::discover::{CargoOptions, Workspace};
use crate::environments::EnvSetup;
use crate::error::{exit_codes, EphemError, Result};
use crate::limits::MAX_SHARDS;
use crate::mask::Masker;
use crate::options::{ConfigSource, EnvOptions};

/// The run id of every render: namespaces are `<prefix>-render-<shard>`.
pub const RENDER_RUN_ID: &str = "render";
/// The hostname every render writes, in the `host` label and `hostname` annotation.
pub const RENDER_HOST: &str = "render";

/// The clock every render reads: 2000-01-01T00:00:00Z. The janitor
/// annotations count from it, so a render applied by hand is already
/// expired and kube-janitor or a sweep removes it.
pub fn render_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

/// Everything `cargo ephem render` needs to know.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The workspace whose `ephem.toml` is rendered (unused with `--config PATH`).
    pub manifest_path: Option<Utf8PathBuf>,
    /// The configuration file.
    pub config: ConfigSource,
    /// `--backend NAME`, overriding the configuration's `backend`.
    pub backend: Option<BackendKind>,
    /// Which shards to print.
    pub shards: RenderShards,
    /// The expiry the janitor annotations show, counted from [`render_clock`].
    pub env_ttl: Duration,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            manifest_path: None,
            config: ConfigSource::WorkspaceDefault,
            backend: None,
            shards: RenderShards::default(),
            env_ttl: EnvOptions::default().env_ttl,
        }
    }
}

/// Which shards `render` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderShards {
    /// `--shards N`: shards 1 to N.
    Count(u32),
    /// `--shard M`: only shard M (of M).
    Only(u32),
}

impl Default for RenderShards {
    fn default() -> Self {
        RenderShards::Count(1)
    }
}

impl RenderShards {
    /// The shards to print, 1-based.
    pub fn shards(self) -> Vec<u32> {
        match self {
            RenderShards::Count(n) => (1..=n).collect(),
            RenderShards::Only(m) => vec![m],
        }
    }

    /// Shards in the plan: what `${shard}`'s siblings and `EPHEM_SHARD_COUNT` would say.
    pub fn count(self) -> u32 {
        match self {
            RenderShards::Count(n) | RenderShards::Only(n) => n,
        }
    }

    /// In range, as `test` checks shard numbers (1 to [`MAX_SHARDS`]).
    pub fn check(self) -> Result<()> {
        let (flag, n) = match self {
            RenderShards::Count(n) => ("--shards", n),
            RenderShards::Only(m) => ("--shard", m),
        };
        if (1..=MAX_SHARDS).contains(&n) {
            return Ok(());
        }
        Err(EphemError::Usage(format!(
            "{flag} {n} is out of range (allowed: 1 to {MAX_SHARDS})"
        )))
    }
}

/// The backend `render` is asked for: [`BackendKind`] itself, under the
/// name callers of the first `render` used. Only Kubernetes has objects to
/// print.
pub type RenderBackend = BackendKind;

/// `cargo ephem render`: prints the YAML stream on stdout; returns the exit code.
pub fn render(options: &RenderOptions) -> Result<i32> {
    options.shards.check()?;
    let (path, config) = load_config(options)?;
    let backend = options.backend.unwrap_or(config.backend);
    if backend != BackendKind::Kubernetes {
        return Err(EphemError::Usage(format!(
            "render prints the Kubernetes objects of each shard, and the {backend} backend has none; pass --backend kubernetes"
        )));
    }
    // Rendered values need the runner's `${secret.NAME}`s (shown as ***).
    config.check_secrets()?;
    let stream = yaml_stream(&config, &path, options)?;
    print!("{stream}");
    Ok(exit_codes::OK)
}

/// `--config PATH` as it is; otherwise the workspace's `ephem.toml`, which must exist.
fn load_config(options: &RenderOptions) -> Result<(Utf8PathBuf, EphemConfig)> {
    let env = EnvOptions {
        config: options.config.clone(),
        ..Default::default()
    };
    match &options.config {
        ConfigSource::Disabled => Err(EphemError::Usage(
            "render needs a configuration to render; drop --no-env or pass --config PATH".into(),
        )),
        ConfigSource::File(path) => Ok((path.clone(), EphemConfig::load(path)?)),
        ConfigSource::WorkspaceDefault => {
            let ws = Workspace::load(&CargoOptions {
                manifest_path: options.manifest_path.clone(),
                ..Default::default()
            })?;
            let setup = EnvSetup::require(&ws.root, &env)?;
            Ok((setup.path, setup.config))
        }
    }
}

/// One document of the stream, with the comment that introduces it.
struct Document {
    comment: Option<String>,
    object: Value,
}

/// The whole output: a header, the prepull objects (once per run), then
/// every shard's objects in apply order, secrets masked.
fn yaml_stream(
    config: &EphemConfig,
    path: &Utf8PathBuf,
    options: &RenderOptions,
) -> Result<String> {
    let shards = options.shards.shards();
    let clock = render_clock();
    let run = RunContext {
        run_id: RENDER_RUN_ID.to_owned(),
        shard_count: options.shards.count(),
        expires_at: clock + options.env_ttl,
    };
    let ctx = RenderContext {
        hostname: RENDER_HOST.to_owned(),
        pid: 0,
        pid_start: None,
        now: clock,
        registry: config.kubernetes.effective_registry(),
    };
    let mut docs = Vec::new();
    if let Some(prepull) = render_prepull(config, &run, &ctx) {
        docs.extend(introduced(
            "prepull: once per run, before any shard".to_owned(),
            prepull.objects(),
        ));
    }
    let mut secrets = Vec::new();
    for shard in shards.iter().copied() {
        let ctx_shard = ShardContext {
            run: run.clone(),
            shard,
        };
        let objects = render_shard(config, &ctx_shard, &ctx, &mut secrets)
            .map_err(|e| EphemError::Usage(format!("{path}: {e}")))?;
        let mut shard_docs = introduced(
            shard_comment(config, shard, objects.namespace_name()),
            objects.objects(),
        );
        // A pod's readiness is not always in its spec (log waits, none):
        // say it beside the pod.
        for doc in &mut shard_docs {
            let name = doc.object["metadata"]["name"].as_str().unwrap_or_default();
            let service = objects.services.iter().find(|s| s.name == name);
            if let (Some(service), "Pod") =
                (service, doc.object["kind"].as_str().unwrap_or_default())
            {
                doc.comment = Some(format!("{name} waits for {}", service.wait.description));
            }
        }
        docs.extend(shard_docs);
    }
    let masker = Masker::new(secrets);
    let mut out = header(&shards, options.env_ttl);
    for mut doc in docs {
        mask_strings(&mut doc.object, &masker);
        out.push_str("---\n");
        if let Some(comment) = doc.comment {
            out.push_str(&format!("# {comment}\n"));
        }
        let yaml = serde_saphyr::to_string(&doc.object)
            .map_err(|e| EphemError::Internal(format!("writing YAML: {e}")))?;
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The objects, the first one introduced by `comment`.
fn introduced(comment: String, objects: Vec<Value>) -> Vec<Document> {
    let mut comment = Some(comment);
    objects
        .into_iter()
        .map(|object| Document {
            comment: comment.take(),
            object,
        })
        .collect()
}

fn shard_comment(config: &EphemConfig, shard: u32, namespace: &str) -> String {
    let mut comment = format!("shard {shard}: namespace {namespace}");
    if let Some(helm) = &config.kubernetes.helm {
        let version = helm
            .version
            .as_deref()
            .map_or(String::new(), |v| format!(" {v}"));
        comment.push_str(&format!(
            "; once its services are ready, helm installs {}{version} as release {} (not rendered here)",
            helm.chart, helm.release
        ));
    }
    comment
}

/// What the stream is; no path or live fact, so that renders diff clean anywhere.
fn header(shards: &[u32], env_ttl: Duration) -> String {
    let which = match shards {
        [one] => format!("shard {one}"),
        [first, .., last] => format!("shards {first} to {last}"),
        [] => "no shard".to_owned(),
    };
    format!(
        "# cargo ephem render: the Kubernetes objects of {which}, in the order they are applied.\n\
         # Placeholders keep renders comparable: run id {RENDER_RUN_ID:?}, host {RENDER_HOST:?}, pid 0, created \
         2000-01-01T00:00:00Z, expiring {} later. Generated secrets are ***.\n",
        humantime::format_duration(env_ttl)
    )
}

/// Masks every string of the object; keys never hold generated values.
fn mask_strings(value: &mut Value, masker: &Masker) {
    match value {
        Value::String(text) => masker.mask_in_place(text),
        Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, masker)),
        Value::Object(map) => map.values_mut().for_each(|v| mask_strings(v, masker)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[services.db]
image = "postgres:15"
env = { PW = "${random}", PRICE = "$5" }
ports = [5432]
wait = { tcp = 5432 }

[services.app]
image = "app:1"
depends-on = ["db"]
env = { URL = "postgres://u:${services.db.env.PW}@db/app", MODE = "yes" }
"#;

    fn stream(text: &str, shards: RenderShards) -> String {
        let config = EphemConfig::parse(text, "ephem.toml").unwrap();
        let options = RenderOptions {
            shards,
            ..Default::default()
        };
        yaml_stream(&config, &Utf8PathBuf::from("ephem.toml"), &options).unwrap()
    }

    #[test]
    fn backends_parse_by_name() {
        assert_eq!("kubernetes".parse(), Ok(RenderBackend::Kubernetes));
        assert_eq!("docker".parse(), Ok(RenderBackend::Docker));
        let err = "podman".parse::<RenderBackend>().unwrap_err();
        assert!(
            err.contains("docker") && err.contains("kubernetes"),
            "{err}"
        );
        assert_eq!(err.matches("kubernetes").count(), 1, "{err}");
    }

    #[test]
    fn shard_ranges_are_checked_like_test_checks_them() {
        assert_eq!(RenderShards::Count(3).shards(), [1, 2, 3]);
        assert_eq!(RenderShards::Only(7).shards(), [7]);
        assert!(RenderShards::Count(1024).check().is_ok());
        for bad in [RenderShards::Count(0), RenderShards::Only(1025)] {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains("allowed: 1 to 1024"), "{err}");
        }
    }

    #[test]
    fn the_stream_masks_secrets_and_reads_back_as_the_objects() {
        let text = stream(CONFIG, RenderShards::Count(2));
        assert!(text.starts_with("# cargo ephem render: the Kubernetes objects of shards 1 to 2"));
        assert!(
            text.contains("# shard 2: namespace ephem-render-2\n"),
            "{text}"
        );
        // One `***` per Secret value that holds the generated password, per shard.
        assert_eq!(text.matches("***").count(), 2 * 2 + 1, "{text}");
        let docs: Vec<&str> = text.split("\n---\n").skip(1).collect();
        assert_eq!(docs.len(), 2 * 7, "{text}");
        for doc in &docs {
            assert!(
                doc.contains("apiVersion: ") && doc.contains("kind: "),
                "{doc}"
            );
        }
        // Strings that YAML 1.1 would read as other types stay strings.
        assert!(
            text.contains("MODE\n") || text.contains("name: MODE"),
            "{text}"
        );
        assert!(
            text.contains("value: 'yes'") || text.contains("value: \"yes\""),
            "{text}"
        );
        assert!(
            text.contains("shard: '1'") || text.contains("shard: \"1\""),
            "{text}"
        );
        assert!(text.contains("value: $$5"), "{text}");
    }

    #[test]
    fn two_renders_of_one_configuration_are_identical() {
        // Generated values differ, but they are masked.
        let a = stream(CONFIG, RenderShards::Only(3));
        let b = stream(CONFIG, RenderShards::Only(3));
        assert_eq!(a, b);
        assert!(a.contains("namespace: ephem-render-3"), "{a}");
        assert!(
            a.contains("janitor/expires: '2000-01-01T00:30:00Z'")
                || a.contains("janitor/expires: \"2000-01-01T00:30:00Z\""),
            "{a}"
        );
    }
}
