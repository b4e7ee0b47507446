//! Environments from the runner's side: which configuration and backend a
//! command uses, and connecting to that backend before anything is built.

use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};
use ephem_fixtures::{Backend, BackendKind, Cleanup, EnvEvent, EphemConfig};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{EphemError, Result};
use crate::options::{ConfigSource, EnvOptions};

/// A checked configuration and the backend it names (or `--backend`).
pub struct EnvSetup {
    /// Where the configuration came from.
    pub path: Utf8PathBuf,
    /// The configuration, validated.
    pub config: EphemConfig,
    /// The backend that provisions it.
    pub backend: BackendKind,
}

impl EnvSetup {
    /// `--config`, else `ephem.toml` at the workspace root when present; none
    /// with `--no-env` or when there is no file. Errors name file, line and
    /// key (exit 2).
    pub fn load(root: &Utf8Path, options: &EnvOptions) -> Result<Option<EnvSetup>> {
        let path = match &options.config {
            ConfigSource::Disabled => return Ok(None),
            ConfigSource::File(path) => path.clone(),
            ConfigSource::WorkspaceDefault => {
                let default = root.join(ephem_fixtures::config::DEFAULT_CONFIG_FILE);
                if !default.exists() {
                    return Ok(None);
                }
                default
            }
        };
        let mut config = EphemConfig::load(&path)?;
        let backend = options.backend.unwrap_or(config.backend);
        if options.no_snapshot || ephem_fixtures::docker::snapshot::disabled_by_env() {
            for service in &mut config.services {
                service.snapshot = None;
            }
        }
        check_support(&path, &config, backend)?;
        config.images.cache = image_cache_dir(options, config.images.cache.as_deref())?;
        Ok(Some(EnvSetup {
            path,
            config,
            backend,
        }))
    }

    /// Like [`load`](Self::load), but a configuration is required.
    pub fn require(root: &Utf8Path, options: &EnvOptions) -> Result<EnvSetup> {
        Self::load(root, options)?.ok_or_else(|| {
            EphemError::Usage(format!(
                "no environment configuration: {} does not exist; create it or pass --config PATH",
                root.join(ephem_fixtures::config::DEFAULT_CONFIG_FILE)
            ))
        })
    }

    /// `--reuse`: this run takes over kept environments of `root`'s
    /// workspace and keeps its own; returns their idle TTL. The Docker
    /// backend's only, for now.
    pub fn enable_reuse(&mut self, root: &Utf8Path) -> Result<std::time::Duration> {
        if self.backend != BackendKind::Docker {
            return Err(EphemError::Usage(format!(
                "--reuse keeps Docker environments only for now; drop it for --backend {}",
                self.backend
            )));
        }
        self.config.reuse.enabled = true;
        self.config.reuse.workspace = ephem_fixtures::docker::reuse::workspace_id(root.as_str());
        Ok(self.config.reuse.ttl)
    }

    /// Whether the configuration has services (else no backend is needed).
    pub fn has_services(&self) -> bool {
        !self.config.services.is_empty()
    }

    /// Checks that the runner's environment holds every `${secret.NAME}`
    /// (exit 2), then connects the backend (each backend answers within 5 s
    /// or fails with exit 102).
    pub async fn connect(self) -> Result<Connected> {
        // `${secret.NAME}` values are read, and registered for masking,
        // before anything starts; a missing one is an error at its line.
        self.config.check_secrets()?;
        let (tx, events) = unbounded_channel();
        let backend = self.backend.connect(self.config, tx).await?;
        Ok(Connected {
            cleanup: backend.cleanup(),
            backend,
            kind: self.backend,
            events,
            config_path: self.path,
        })
    }
}

/// The image cache in effect (`--image-cache` > `EPHEM_IMAGE_CACHE` >
/// `[images] cache`), checked writable now: an unusable folder is a usage
/// error (exit 2) naming it, not a failure half-way through a pull.
pub fn image_cache_dir(
    options: &EnvOptions,
    configured: Option<&std::path::Path>,
) -> Result<Option<std::path::PathBuf>> {
    let dir = ephem_fixtures::image_cache::effective_dir(
        options.image_cache.as_deref().map(|d| d.as_std_path()),
        configured,
    );
    if let Some(dir) = &dir {
        ephem_fixtures::image_cache::layout::Layout::create(dir).map_err(|e| {
            EphemError::Usage(format!(
                "image cache {}: cannot write there ({e}); make the folder writable or point --image-cache / EPHEM_IMAGE_CACHE / [images] cache elsewhere",
                dir.display()
            ))
        })?;
    }
    Ok(dir)
}

/// What a backend cannot do yet is refused before anything starts.
fn check_support(path: &Utf8Path, config: &EphemConfig, backend: BackendKind) -> Result<()> {
    if backend != BackendKind::Kubernetes {
        return Ok(());
    }
    if let Some(s) = config.services.iter().find(|s| s.snapshot.is_some()) {
        return Err(EphemError::Usage(format!(
            "{path}: services.{}.snapshot: snapshots work with the docker backend only for now \
             (Kubernetes needs the snapshot image pushed to [kubernetes] registry); drop it for \
             --backend kubernetes, or run with --no-snapshot",
            s.name
        )));
    }
    let baseline = config
        .services
        .iter()
        .find(|s| s.setup.is_some() || s.reset.is_some() || s.per_test_databases);
    match baseline {
        Some(s) => Err(EphemError::Usage(format!(
            "{path}: services.{}: setup, reset and databases = \"per-test\" work with the docker \
             backend only for now; drop them for --backend kubernetes, or use backend = \"docker\"",
            s.name
        ))),
        None => Ok(()),
    }
}

/// A connected backend and the events it reports.
pub struct Connected {
    /// Provisions and tears down shards.
    pub backend: Arc<dyn Backend>,
    /// The same backend's safety-net side.
    pub cleanup: Arc<dyn Cleanup>,
    /// Which backend it is (the reaper reconnects to it by name).
    pub kind: BackendKind,
    /// Pull progress, service deaths, warnings.
    pub events: UnboundedReceiver<EnvEvent>,
    /// The configuration file, for messages and the reaper.
    pub config_path: Utf8PathBuf,
}

/// The backend `gc`, `down` and the reaper clean: `--backend`, else the
/// configuration's, else the default. A configuration that exists must be
/// valid.
pub fn cleanup_backend(
    root: Option<&Utf8Path>,
    options: &EnvOptions,
) -> Result<(BackendKind, Option<EphemConfig>)> {
    let setup = match root {
        Some(root) => EnvSetup::load(root, options)?,
        None => match &options.config {
            ConfigSource::File(path) => Some(EnvSetup {
                config: EphemConfig::load(path)?,
                path: path.clone(),
                backend: BackendKind::default(),
            }),
            _ => None,
        },
    };
    Ok(match setup {
        Some(s) => (options.backend.unwrap_or(s.config.backend), Some(s.config)),
        None => (options.backend.unwrap_or_default(), None),
    })
}
