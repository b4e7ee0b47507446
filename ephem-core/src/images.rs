//! `cargo ephem images`: the configuration's images and the warm image cache
//! (`pull`, `ls`, `prune`, `update`). The work is ephem-fixtures'; this
//! module finds the configuration and the cache, and prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::image_cache::registry::{RegistrySettings, DEFAULT_IDLE_TIMEOUT};
use ephem_fixtures::image_cache::{self, layout, ImageCache, PruneRules, Resolve};
use ephem_fixtures::{DockerBackend, EnvEvent, EphemConfig};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::discover::{CargoOptions, Workspace};
use crate::environments::{image_cache_dir, EnvSetup};
use crate::error::{exit_codes, EphemError, Result};
use crate::options::{ImagesAction, ImagesOptions};

pub use ephem_fixtures::image_cache::parse_size;

/// `--grace DURATION` of `images prune`: zero allowed (no grace).
pub fn parse_grace(text: &str) -> std::result::Result<Duration, String> {
    ephem_fixtures::config::parse_duration(text, true)
}

/// Runs one `cargo ephem images` subcommand.
pub fn images(options: &ImagesOptions) -> Result<i32> {
    let ws = Workspace::load(&CargoOptions {
        manifest_path: options.manifest_path.clone(),
        ..Default::default()
    })?;
    let setup = EnvSetup::load(&ws.root, &options.env)?;
    let config = setup.map(|s| s.config);
    let runtime = crate::runtime()?;
    runtime.block_on(run(options, config, &ws.root))
}

async fn run(
    options: &ImagesOptions,
    config: Option<EphemConfig>,
    root: &camino::Utf8Path,
) -> Result<i32> {
    match &options.action {
        ImagesAction::Pull => pull(need_config(config, root)?).await,
        ImagesAction::Ls => {
            let (cache, printer) = open_cache(&options.env, config.as_ref())?;
            ls(&cache);
            drop(cache);
            printer.finish().await;
            Ok(exit_codes::OK)
        }
        ImagesAction::Prune {
            older_than,
            max_size,
            all,
            grace,
        } => {
            let rules = PruneRules {
                keep: config
                    .as_ref()
                    .map(|c| c.images().iter().map(|i| i.local_name()).collect())
                    .unwrap_or_default(),
                all: *all,
                older_than: *older_than,
                max_size: *max_size,
                grace: *grace,
            };
            let (cache, printer) = open_cache(&options.env, config.as_ref())?;
            let result = cache.prune(&rules).await;
            drop(cache);
            printer.finish().await;
            let (removed, freed) = result.map_err(|e| EphemError::Usage(e.to_string()))?;
            for reference in &removed {
                println!("removed {reference}");
            }
            println!(
                "pruned {} image(s), freed {}",
                removed.len(),
                image_cache::format_size(freed)
            );
            Ok(exit_codes::OK)
        }
        ImagesAction::Update => update(&options.env, need_config(config, root)?).await,
    }
}

fn need_config(config: Option<EphemConfig>, root: &camino::Utf8Path) -> Result<EphemConfig> {
    config.ok_or_else(|| {
        EphemError::Usage(format!(
            "no environment configuration: {} does not exist; create it or pass --config PATH",
            root.join(ephem_fixtures::config::DEFAULT_CONFIG_FILE)
        ))
    })
}

/// The cache in effect, which `ls`, `prune` and `update` require.
fn open_cache(
    env: &crate::options::EnvOptions,
    config: Option<&EphemConfig>,
) -> Result<(ImageCache, Printer)> {
    let dir: Option<PathBuf> = match config {
        // EnvSetup::load has already resolved and checked it.
        Some(config) => config.images.cache.clone(),
        None => image_cache_dir(env, None)?,
    };
    let dir = dir.ok_or_else(|| {
        EphemError::Usage(
            "no image cache: pass --image-cache DIR, set EPHEM_IMAGE_CACHE, or add `cache` to [images] in ephem.toml".into(),
        )
    })?;
    let (tx, rx) = unbounded_channel();
    let idle = config.map_or(DEFAULT_IDLE_TIMEOUT, |c| c.images.idle_timeout);
    let cache = ImageCache::open(&dir, tx)
        .map_err(EphemError::Usage)?
        .with_registry(RegistrySettings::from_env(idle));
    Ok((cache, Printer::spawn(rx)))
}

/// `images pull`: every image present in the daemon; one line per image
/// on stdout saying where it came from, progress on stderr.
async fn pull(config: EphemConfig) -> Result<i32> {
    let (tx, rx) = unbounded_channel();
    let printer = Printer::spawn(rx);
    let backend = DockerBackend::connect(config, tx).await?;
    let origins = backend.ensure_images().await;
    drop(backend);
    printer.finish().await;
    for (image, origin) in origins? {
        println!("{:<8} {image}", origin.name());
    }
    Ok(exit_codes::OK)
}

/// `images update`: asks the registry what each tag points at now.
async fn update(env: &crate::options::EnvOptions, config: EphemConfig) -> Result<i32> {
    let (cache, printer) = open_cache(env, Some(&config))?;
    let mirror = config.effective_mirror();
    let before: HashMap<String, String> = cache
        .entries()
        .into_iter()
        .filter_map(|d| Some((d.reference()?.to_owned(), d.digest)))
        .collect();
    let mut failed = None;
    for image in config.images() {
        let reference = image.local_name();
        match cache.fill(image, mirror.as_deref(), Resolve::Fresh).await {
            Ok(filled) => match before.get(&reference) {
                Some(old) if *old == filled.descriptor.digest => {
                    println!("unchanged {reference} {old}")
                }
                Some(old) => println!(
                    "updated   {reference} {old} -> {}",
                    filled.descriptor.digest
                ),
                None => println!("added     {reference} {}", filled.descriptor.digest),
            },
            Err(e) => {
                eprintln!("error: {reference}: {e}");
                failed = Some(e);
            }
        }
    }
    drop(cache);
    printer.finish().await;
    match failed {
        Some(e) => Err(EphemError::Environment(ephem_fixtures::EnvError::Other(
            format!("images update: {e}"),
        ))),
        None => Ok(exit_codes::OK),
    }
}

/// Snapshot entries: their service, key, base image, key inputs and size.
fn ls_snapshots(entries: &[layout::Descriptor]) {
    use ephem_fixtures::docker::snapshot::{
        BASE_ANNOTATION, INPUTS_ANNOTATION, SERVICE_ANNOTATION,
    };
    let snapshots: Vec<&layout::Descriptor> = entries
        .iter()
        .filter(|d| d.annotations.contains_key(SERVICE_ANNOTATION))
        .collect();
    if snapshots.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:<14} {:<24} {:>10}  KEY INPUTS",
        "SNAPSHOT OF", "KEY", "BASE IMAGE", "SIZE"
    );
    for d in snapshots {
        let get = |k: &str| d.annotations.get(k).map_or("", String::as_str);
        let key = d
            .reference()
            .and_then(|r| r.rsplit(':').next())
            .unwrap_or("");
        let inputs: std::collections::BTreeMap<String, String> =
            serde_json::from_str(get(INPUTS_ANNOTATION)).unwrap_or_default();
        let files = inputs.keys().filter(|k| k.starts_with("input:")).count();
        let env = inputs.keys().filter(|k| k.starts_with("env.")).count();
        let size = get(layout::TOTAL_SIZE).parse().unwrap_or(d.size);
        println!(
            "{:<16} {:<14} {:<24} {:>10}  image, {env} env, cmd, setup, {files} input files, format",
            get(SERVICE_ANNOTATION),
            key.get(..12).unwrap_or(key),
            get(BASE_ANNOTATION),
            image_cache::format_size(size)
        );
    }
}

fn ls(cache: &ImageCache) {
    let mut entries = cache.entries();
    let all = entries.clone();
    entries.sort_by(|a, b| a.reference().cmp(&b.reference()));
    println!(
        "{:<40} {:<20} {:>10}  LAST USED",
        "REFERENCE", "DIGEST", "SIZE"
    );
    for d in entries {
        let size = d
            .annotations
            .get(layout::TOTAL_SIZE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d.size);
        let used = match image_cache::last_used(&d) {
            Some(t) => {
                let ago = SystemTime::now().duration_since(t).unwrap_or_default();
                let ago = Duration::from_secs(ago.as_secs());
                format!(
                    "{} ({} ago)",
                    d.annotations
                        .get(layout::LAST_USED)
                        .map_or("", String::as_str),
                    humantime::format_duration(ago)
                )
            }
            None => "never".to_owned(),
        };
        let digest = d.digest.get(..19).unwrap_or(&d.digest);
        println!(
            "{:<40} {:<20} {:>10}  {used}",
            d.reference().unwrap_or("(unnamed)"),
            digest,
            image_cache::format_size(size)
        );
    }
    ls_snapshots(&all);
}

/// Prints pull progress (at most once a second per image), notes and
/// warnings on stderr while a command works.
struct Printer {
    task: tokio::task::JoinHandle<()>,
}

impl Printer {
    fn spawn(mut events: UnboundedReceiver<EnvEvent>) -> Printer {
        let task = tokio::spawn(async move {
            let mut last: HashMap<String, Instant> = HashMap::new();
            while let Some(event) = events.recv().await {
                match event {
                    EnvEvent::PullProgress {
                        image,
                        current,
                        total,
                    } => {
                        let due = last
                            .get(&image)
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                        if due {
                            last.insert(image.clone(), Instant::now());
                            let total = total
                                .map(|t| format!(" / {}", image_cache::format_size(t)))
                                .unwrap_or_default();
                            eprintln!(
                                "   pulling {image}: {}{total}",
                                image_cache::format_size(current)
                            );
                        }
                    }
                    EnvEvent::Note { message } => eprintln!("note: {message}"),
                    EnvEvent::Warning { message, .. } => eprintln!("warning: {message}"),
                    _ => {}
                }
            }
        });
        Printer { task }
    }

    /// Waits for every event to be printed (all senders must be dropped).
    async fn finish(self) {
        let _ = self.task.await;
    }
}
