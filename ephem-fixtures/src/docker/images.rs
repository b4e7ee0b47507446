//! Images: inspected, and pulled when missing, once per backend however many
//! shards ask, concurrently across images.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::query_parameters::{CreateImageOptions, TagImageOptions};
use bollard::Docker;
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::is_not_found;
use crate::{EnvError, EnvEvent, EventSink, ImageRef};

/// What provisioning needs to know about a local image.
#[derive(Debug)]
pub(crate) struct ImageFacts {
    /// Name to create containers from.
    pub run_name: String,
    /// The image's CMD, which `args` are appended to.
    pub cmd: Vec<String>,
    /// Whether the image defines a HEALTHCHECK.
    pub has_healthcheck: bool,
}

/// One lazily fetched entry per distinct image of the configuration.
pub(crate) struct ImageStore {
    docker: Docker,
    mirror: Option<String>,
    events: EventSink,
    entries: HashMap<String, (ImageRef, OnceCell<Arc<ImageFacts>>)>,
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
        }
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
                return Ok(Arc::new(facts(local, found)));
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(EnvError::Other(format!(
                    "cannot inspect image {image}: {e}"
                )))
            }
        }
        let run_name = self.pull(image).await?;
        let found = self.docker.inspect_image(&run_name).await.map_err(|e| {
            EnvError::Other(format!(
                "image {image} was pulled but cannot be inspected as {run_name}: {e}"
            ))
        })?;
        let _ = self.events.send(EnvEvent::ImageReady {
            image: image.original().to_owned(),
            pulled: true,
        });
        Ok(Arc::new(facts(run_name, found)))
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
        // An explicit tag (or digest): an empty tag would pull every tag.
        let options = CreateImageOptions {
            from_image: Some(image.pull_repository(mirror)),
            tag: Some(image.digest().unwrap_or(image.tag()).to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        let mut layers: HashMap<String, (u64, Option<u64>)> = HashMap::new();
        while let Some(item) = stream.next().await {
            // Registry errors (unknown manifest, refused connection) arrive in
            // the middle of the progress stream, not as an HTTP status.
            let info = item.map_err(|e| pull_error(pull_reason(&e)))?;
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

fn facts(run_name: String, image: bollard::models::ImageInspect) -> ImageFacts {
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
    }
}

fn pull_reason(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
