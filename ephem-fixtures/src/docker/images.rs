//! Images: inspected, and pulled when missing, once per backend however many
//! shards ask, concurrently across images.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, RemoveImageOptions, TagImageOptions,
};
use bollard::Docker;
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::is_not_found;
use crate::image_cache::decompress;
use crate::image_cache::registry::credentials::{server_key, Credential, CredentialSource};
use crate::image_cache::serve::RegistryServer;
use crate::image_cache::{archive, CacheError, FillSource, Filled, ImageCache, Resolve};
use crate::{EnvError, EnvEvent, EventSink, ImageRef};

/// Where an image the run needed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The daemon had it.
    Daemon,
    /// The image cache had it; nothing was downloaded.
    Cache,
    /// It was downloaded (into the image cache, when there is one).
    Registry,
}

impl Origin {
    /// `daemon`, `cache` or `registry`.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Daemon => "daemon",
            Origin::Cache => "cache",
            Origin::Registry => "registry",
        }
    }
}

/// How images come back from the cache into the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePath {
    /// The daemon pulls from a registry we serve on 127.0.0.1.
    Serve,
    /// `docker load` of an archive streamed from the cache, for a daemon
    /// that cannot reach this machine's loopback.
    Load,
}

impl RestorePath {
    /// `EPHEM_IMAGE_RESTORE=serve|load` when set, else serve for a daemon
    /// on this machine (`${host}` on loopback) and load for any other.
    pub fn for_daemon(host: &str) -> RestorePath {
        match std::env::var("EPHEM_IMAGE_RESTORE").as_deref() {
            Ok("load") => return RestorePath::Load,
            Ok("serve") => return RestorePath::Serve,
            _ => {}
        }
        let local = host == "localhost" || host == "::1" || host.starts_with("127.");
        if local {
            RestorePath::Serve
        } else {
            RestorePath::Load
        }
    }
}

/// What provisioning needs to know about a local image.
#[derive(Debug)]
pub(crate) struct ImageFacts {
    /// Name to create containers from.
    pub run_name: String,
    /// The image's CMD, which `args` are appended to.
    pub cmd: Vec<String>,
    /// Whether the image defines a HEALTHCHECK.
    pub has_healthcheck: bool,
    /// Where it came from this run.
    pub origin: Origin,
}

/// One lazily fetched entry per distinct image of the configuration.
pub(crate) struct ImageStore {
    docker: Docker,
    mirror: Option<String>,
    events: EventSink,
    entries: HashMap<String, (ImageRef, OnceCell<Arc<ImageFacts>>)>,
    /// The warm image cache, when one is configured.
    cache: Option<Arc<ImageCache>>,
    restore: RestorePath,
    /// `EPHEM_IMAGE_SERVE=decompressed`: gzip layers served decompressed.
    decompressed: bool,
    /// The loopback registry over the cache, started by the first restore
    /// and stopped with the store (the run).
    server: OnceCell<RegistryServer>,
    /// A pull that reports nothing for this long is given up.
    idle_timeout: std::time::Duration,
}

impl ImageStore {
    pub(crate) fn new(
        docker: Docker,
        mirror: Option<String>,
        events: EventSink,
        images: &[&ImageRef],
    ) -> Self {
        let entries = images
            .iter()
            .map(|image| (image.local_name(), ((*image).clone(), OnceCell::new())))
            .collect();
        ImageStore {
            docker,
            mirror,
            events,
            entries,
            cache: None,
            restore: RestorePath::Serve,
            decompressed: decompress::wanted(),
            server: OnceCell::new(),
            idle_timeout: crate::image_cache::registry::DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// Gives up a pull that reports no progress for `idle` (`[images]
    /// idle-timeout`): a stalled registry must not hang the run.
    pub(crate) fn set_idle_timeout(&mut self, idle: std::time::Duration) {
        self.idle_timeout = idle;
    }

    /// Goes through `cache` for images missing from the daemon.
    pub(crate) fn with_cache(mut self, cache: Arc<ImageCache>, restore: RestorePath) -> Self {
        self.cache = Some(cache);
        self.restore = restore;
        self
    }

    /// The image cache, when one is configured (snapshots are kept there).
    pub(crate) fn cache(&self) -> Option<&Arc<ImageCache>> {
        self.cache.as_ref()
    }

    /// Puts a snapshot image stored in the cache into the daemon, tagged
    /// `name`, the way cached images come back; says how.
    pub(crate) async fn restore_snapshot(
        &self,
        cache: &ImageCache,
        entry: &crate::image_cache::layout::Descriptor,
        name: &str,
    ) -> Result<String, String> {
        let image = ImageRef::parse(name)?;
        let filled = Filled {
            descriptor: entry.clone(),
            source: FillSource::Cache,
            downloaded: 0,
        };
        self.restore(cache, &image, &filled).await
    }

    /// How images come back from the cache.
    pub(crate) fn set_restore(&mut self, restore: RestorePath) {
        self.restore = restore;
    }

    /// Whether the loopback registry serves gzip layers decompressed.
    pub(crate) fn set_decompressed(&mut self, decompressed: bool) {
        self.decompressed = decompressed;
    }

    /// Every image's facts, once [`ensure_all`](Self::ensure_all) made them present.
    pub(crate) async fn origins(&self) -> Result<Vec<(String, Origin)>, EnvError> {
        let mut out = Vec::new();
        for (image, _) in self.entries.values() {
            out.push((
                image.original().to_owned(),
                self.ensure(image).await?.origin,
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Makes every image present, pulling the missing ones concurrently.
    pub(crate) async fn ensure_all(&self) -> Result<(), EnvError> {
        try_join_all(self.entries.values().map(|(image, _)| self.ensure(image))).await?;
        Ok(())
    }

    /// Makes `image` present; concurrent callers share one inspect or pull.
    pub(crate) async fn ensure(&self, image: &ImageRef) -> Result<Arc<ImageFacts>, EnvError> {
        let Some((_, cell)) = self.entries.get(&image.local_name()) else {
            return Err(EnvError::Other(format!(
                "image {image} is not in the configuration"
            )));
        };
        cell.get_or_try_init(|| self.fetch(image)).await.cloned()
    }

    async fn fetch(&self, image: &ImageRef) -> Result<Arc<ImageFacts>, EnvError> {
        let local = image.local_name();
        match self.docker.inspect_image(&local).await {
            Ok(found) => {
                let _ = self.events.send(EnvEvent::ImageReady {
                    image: image.original().to_owned(),
                    pulled: false,
                });
                return Ok(Arc::new(facts(local, found, Origin::Daemon)));
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(EnvError::Other(format!(
                    "cannot inspect image {image}: {e}"
                )))
            }
        }
        let (run_name, origin) = match self.through_cache(image).await? {
            Some(origin) => (image.local_name(), origin),
            None => (self.pull(image).await?, Origin::Registry),
        };
        let found = self.docker.inspect_image(&run_name).await.map_err(|e| {
            EnvError::Other(format!(
                "image {image} was pulled but cannot be inspected as {run_name}: {e}"
            ))
        })?;
        let _ = self.events.send(EnvEvent::ImageReady {
            image: image.original().to_owned(),
            pulled: true,
        });
        Ok(Arc::new(facts(run_name, found, origin)))
    }

    /// Fills `image` into the cache (from the registry only what is
    /// missing) and restores it into the daemon under its local name.
    /// `None`: no cache, or it cannot help (disk full, a pinned digest, a
    /// failed fill, a failed restore): the caller pulls directly. Any
    /// failure but a full disk or a cold fill's unreachable registry is
    /// told in one warning naming the image and why.
    async fn through_cache(&self, image: &ImageRef) -> Result<Option<Origin>, EnvError> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        if image.digest().is_some() {
            // A digest-pinned name cannot be given by a tag; the daemon
            // pulls those itself (see the README).
            return Ok(None);
        }
        let directly = |reason: String| {
            // Most reasons from the cache name it already.
            let message = if reason.starts_with("image cache ") {
                format!("{reason}; pulling {image} directly")
            } else {
                format!(
                    "image cache {}: {reason}; pulling {image} directly",
                    cache.root().display()
                )
            };
            let _ = self.events.send(EnvEvent::Warning {
                shard: None,
                message,
            });
            Ok(None)
        };
        // Held until the daemon has the image: prune waits for it.
        let _in_use = match cache.in_use().await {
            Ok(held) => held,
            Err(e) => return directly(e.to_string()),
        };
        let filled = match cache
            .fill(image, self.mirror.as_deref(), Resolve::Recorded)
            .await
        {
            Ok(filled) => filled,
            Err(CacheError::NoSpace(reason)) => {
                cache.warn_full(&reason);
                return Ok(None);
            }
            Err(CacheError::Unreachable(reason)) => {
                let cached = cache
                    .entries()
                    .iter()
                    .any(|d| d.reference() == Some(image.local_name().as_str()));
                if !cached {
                    // A cold fill: the direct pull says what is wrong.
                    return Ok(None);
                }
                return directly(format!(
                    "{image} is incomplete there and its registry cannot be reached ({reason})"
                ));
            }
            Err(CacheError::Failed(reason)) => return directly(reason),
        };
        let how = match self.restore(cache, image, &filled).await {
            Ok(how) => how,
            Err(reason) => return directly(format!("cannot restore {image} ({reason})")),
        };
        let origin = match filled.source {
            FillSource::Cache => Origin::Cache,
            FillSource::Registry => Origin::Registry,
        };
        let from = match origin {
            Origin::Registry => format!(
                "fetched {} into the image cache {}",
                crate::image_cache::format_size(filled.downloaded),
                cache.root().display()
            ),
            _ => format!("restored from the image cache {}", cache.root().display()),
        };
        let _ = self.events.send(EnvEvent::Note {
            message: format!("{image}: {from}; {how}"),
        });
        Ok(Some(origin))
    }

    /// Puts the filled image into the daemon: served, then loaded when the
    /// served pull fails (one warning); `Err` says why every path tried
    /// failed.
    async fn restore(
        &self,
        cache: &ImageCache,
        image: &ImageRef,
        filled: &Filled,
    ) -> Result<String, String> {
        if self.restore == RestorePath::Load {
            return self
                .restore_loaded(cache, filled, image)
                .await
                .map_err(|e| format!("`docker load`: {e}"));
        }
        let served = match self.restore_served(cache, image, filled).await {
            Ok(how) => return Ok(how),
            Err(reason) => reason,
        };
        // A daemon in a VM behind a local socket cannot reach our loopback
        // either: loading still works.
        match self.restore_loaded(cache, filled, image).await {
            Ok(how) => {
                let _ = self.events.send(EnvEvent::Warning {
                    shard: None,
                    message: format!(
                        "{image}: the daemon could not pull it from the image cache's loopback registry ({served}); loaded it with `docker load` instead"
                    ),
                });
                Ok(how)
            }
            Err(loaded) => Err(format!(
                "served from loopback: {served}; `docker load`: {loaded}"
            )),
        }
    }

    /// The daemon pulls the image from our loopback registry, by digest;
    /// it is tagged with its local name and the temporary name removed.
    async fn restore_served(
        &self,
        cache: &ImageCache,
        image: &ImageRef,
        filled: &Filled,
    ) -> Result<String, String> {
        let server = self
            .server
            .get_or_try_init(|| RegistryServer::start(cache.layout().clone()))
            .await
            .map_err(|e| format!("cannot serve the image cache on 127.0.0.1: {e}"))?;
        let host = server.host();
        let repository = format!("{host}/{}", cache_repository(image));
        let mut digest = filled.descriptor.digest.clone();
        let mut layers = "";
        if self.decompressed {
            let layout = cache.layout().clone();
            let (stored, media_type) = (digest.clone(), filled.descriptor.media_type.clone());
            let prepared = tokio::task::spawn_blocking(move || {
                decompress::prepare(&layout, &stored, &media_type)
            })
            .await
            .unwrap_or_else(|e| Err(format!("stopped: {e}")));
            match prepared {
                Ok(Some(rewritten)) => {
                    server.add_decompressed(&rewritten);
                    digest = rewritten.digest;
                    layers = ", layers decompressed";
                }
                Ok(None) => layers = ", layers as stored: not all are gzip",
                Err(reason) => {
                    let _ = self.events.send(EnvEvent::Warning {
                        shard: None,
                        message: format!(
                            "{image}: cannot serve its layers decompressed ({reason}); serving them as stored"
                        ),
                    });
                }
            }
        }
        let digest = &digest;
        // The cache's own loopback registry asks for no credentials.
        self.pull_from(image, &repository, digest, None).await?;
        let temporary = format!("{repository}@{digest}");
        let tag = TagImageOptions {
            repo: Some(image.local_repository()),
            tag: Some(image.tag().to_owned()),
        };
        self.docker
            .tag_image(&temporary, Some(tag))
            .await
            .map_err(|e| {
                format!(
                    "pulled {temporary} but cannot tag it {}: {e}",
                    image.local_name()
                )
            })?;
        let untag = RemoveImageOptions {
            noprune: true,
            ..Default::default()
        };
        let _ = self
            .docker
            .remove_image(&temporary, Some(untag), None)
            .await;
        Ok(format!("the daemon pulled it from {host} (served{layers})"))
    }

    /// `docker load` of an archive streamed from the cache.
    async fn restore_loaded(
        &self,
        cache: &ImageCache,
        filled: &Filled,
        image: &ImageRef,
    ) -> Result<String, String> {
        let blobs = cache
            .manifest_blobs(&filled.descriptor.digest)
            .map_err(|e| e.to_string())?;
        let Some(((config, _), layers)) = blobs.split_first() else {
            return Err("the manifest names no config".into());
        };
        let layers = layers.iter().map(|(d, _)| d.clone()).collect();
        let archive = archive::docker_archive(
            cache.layout().clone(),
            config.clone(),
            layers,
            image.local_name(),
        );
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut stream = self.docker.import_image_stream(options, archive, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| pull_reason(&e))?;
        }
        Ok("streamed into `docker load` (loaded: EPHEM_IMAGE_RESTORE=load, or a daemon that cannot reach this machine's loopback)".to_owned())
    }

    /// The credentials Docker's own CLI would send when pulling from
    /// `registry` (`host[:port][/path]`): the daemon reads no credential
    /// store itself, so without them a private registry refuses its pull. A
    /// helper that cannot be run is warned about, then the pull goes on
    /// anonymously.
    async fn credentials_for(&self, registry: &str) -> Option<DockerCredentials> {
        let host = registry.split('/').next().unwrap_or(registry);
        let lookup = CredentialSource::from_env()
            .lookup(host, self.idle_timeout)
            .await;
        if let Some(message) = lookup.warning {
            let _ = self.events.send(EnvEvent::Warning {
                shard: None,
                message: format!("pulling from {host}: {message}; trying anonymously"),
            });
        }
        let serveraddress = Some(server_key(host));
        lookup.credential.map(|credential| match credential {
            Credential::Password { username, password } => DockerCredentials {
                username: Some(username),
                password: Some(password),
                serveraddress,
                ..Default::default()
            },
            Credential::IdentityToken(token) => DockerCredentials {
                identitytoken: Some(token),
                serveraddress,
                ..Default::default()
            },
        })
    }

    /// Pulls `image` (through the mirror for Docker Hub images) and returns the
    /// name to run it by.
    async fn pull(&self, image: &ImageRef) -> Result<String, EnvError> {
        let mirror = self.mirror.as_deref();
        let via_mirror = mirror.is_some() && image.is_docker_hub();
        let registry = match mirror {
            Some(m) if via_mirror => m.to_owned(),
            _ => image.registry().to_owned(),
        };
        let hint = if via_mirror {
            "check the image name and tag, and that the mirror ([images] mirror or EPHEM_REGISTRY_MIRROR) serves it"
        } else {
            "check the image name and tag, and that this machine can reach the registry (or set a mirror)"
        };
        let pull_error = |reason: String| EnvError::Pull {
            image: image.original().to_owned(),
            registry: registry.clone(),
            reason: format!("{reason}; {hint}"),
        };
        let credentials = self.credentials_for(&registry).await;
        self.pull_from(
            image,
            &image.pull_repository(mirror),
            image.digest().unwrap_or(image.tag()),
            credentials,
        )
        .await
        .map_err(&pull_error)?;
        self.tag_pulled(image, via_mirror, pull_error).await
    }

    /// Pulls `repository:tag` (or `@digest`), reporting byte progress as
    /// `image`'s; `Err` is what the daemon or registry said.
    async fn pull_from(
        &self,
        image: &ImageRef,
        repository: &str,
        tag: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<(), String> {
        // An explicit tag (or digest): an empty tag would pull every tag.
        let options = CreateImageOptions {
            from_image: Some(repository.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let mut layers: HashMap<String, (u64, Option<u64>)> = HashMap::new();
        loop {
            let Ok(next) = tokio::time::timeout(self.idle_timeout, stream.next()).await else {
                // Dropping the stream closes the request; the daemon
                // cancels a pull whose client went away.
                return Err(format!(
                    "the daemon's pull reported no progress for {} (the [images] idle-timeout) and was given up",
                    humantime::format_duration(self.idle_timeout)
                ));
            };
            let Some(item) = next else { break };
            // Registry errors (unknown manifest, refused connection) arrive in
            // the middle of the progress stream, not as an HTTP status.
            let info = item.map_err(|e| pull_reason(&e))?;
            let (Some(id), Some(status)) = (info.id, info.status) else {
                continue;
            };
            let entry = layers.entry(id).or_insert((0, None));
            match (status.as_str(), info.progress_detail) {
                ("Downloading", Some(detail)) => {
                    entry.0 = detail.current.map_or(entry.0, |c| c.max(0) as u64);
                    entry.1 = detail
                        .total
                        .filter(|t| *t > 0)
                        .map(|t| t as u64)
                        .or(entry.1);
                }
                ("Download complete" | "Pull complete" | "Already exists", _) => {
                    if let Some(total) = entry.1 {
                        entry.0 = total;
                    }
                }
                _ => continue,
            }
            let current = layers.values().map(|(c, _)| c).sum();
            let known: Vec<u64> = layers.values().filter_map(|(_, t)| *t).collect();
            let _ = self.events.send(EnvEvent::PullProgress {
                image: image.original().to_owned(),
                current,
                total: (!known.is_empty()).then(|| known.iter().sum()),
            });
        }
        Ok(())
    }

    /// The name to run a pulled image by: tagged under its original name
    /// when it came through the mirror.
    async fn tag_pulled(
        &self,
        image: &ImageRef,
        via_mirror: bool,
        pull_error: impl Fn(String) -> EnvError,
    ) -> Result<String, EnvError> {
        let mirror = self.mirror.as_deref();
        if via_mirror && image.digest().is_none() {
            // Tag under the original name so containers, and users, see `postgres:15`.
            let tag = TagImageOptions {
                repo: Some(image.local_repository()),
                tag: Some(image.tag().to_owned()),
            };
            let pulled = image.pull_name(mirror);
            self.docker
                .tag_image(&pulled, Some(tag))
                .await
                .map_err(|e| {
                    pull_error(format!(
                        "pulled as {pulled} but cannot tag it {}: {e}",
                        image.local_name()
                    ))
                })?;
            Ok(image.local_name())
        } else {
            Ok(image.pull_name(mirror))
        }
    }
}

/// The repository path the loopback registry is asked for (any name works:
/// it serves by digest); Docker Hub's as `library/postgres`.
fn cache_repository(image: &ImageRef) -> String {
    let local = image.local_repository();
    match local.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest.to_owned()
        }
        _ if !local.contains('/') => format!("library/{local}"),
        _ => local,
    }
}

fn facts(run_name: String, image: bollard::models::ImageInspect, origin: Origin) -> ImageFacts {
    let config = image.config.unwrap_or_default();
    let has_healthcheck = config
        .healthcheck
        .as_ref()
        .and_then(|h| h.test.as_ref())
        .is_some_and(|test| !test.is_empty() && test[0] != "NONE");
    ImageFacts {
        run_name,
        cmd: config.cmd.unwrap_or_default(),
        has_healthcheck,
        origin,
    }
}

fn pull_reason(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
