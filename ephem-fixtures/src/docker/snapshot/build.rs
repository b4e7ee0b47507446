//! Building a snapshot from a service that just ran its `setup`: bring the
//! state to a consistent point, copy it out, and store base image + layer
//! as an image of its own in the image cache.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::DownloadFromContainerOptions;
use futures_util::StreamExt;

use super::key::Key;
use super::layer::{self, Blob, Copy};
use super::{tag, BASE_ANNOTATION, INPUTS_ANNOTATION, SERVICE_ANNOTATION};
use crate::config::{ServiceSpec, SnapshotKind};
use crate::docker::Shared;
use crate::image_cache::layout::{digest_of, Descriptor, LAST_USED, REF_NAME, TOTAL_SIZE};
use crate::image_cache::{ImageCache, InUse, Resolve};

/// What the build needs of the service that ran `setup`.
pub(crate) struct Built<'a> {
    pub spec: &'a ServiceSpec,
    pub container: &'a str,
    /// The daemon's id of the base image, as in the key.
    pub image_id: &'a str,
    /// The rendered `quiesce` command.
    pub quiesce: Option<&'a [String]>,
    pub key: &'a Key,
    /// The build's lock, held until the snapshot is stored.
    pub lock: Arc<super::BuildLock>,
}

/// The state copied out of the service, ready to be stored: what
/// [`Copied::store`] needs, owned, so it can run while the shard's tests do.
pub(crate) struct Copied {
    cache: Arc<ImageCache>,
    /// Held until stored: prune waits.
    _in_use: InUse,
    /// Held until stored: no other process builds the same snapshot.
    _lock: Arc<super::BuildLock>,
    copies: Vec<Copy>,
    base: Descriptor,
    config_digest: String,
    /// The base image's layers' size, for the entry's total.
    base_layers: u64,
    service: String,
    base_image: String,
    key: Key,
}

/// Makes sure the base image is in the cache (the one the daemon runs),
/// quiesces the service and copies its state out. Errors are one line (the
/// caller warns and goes on: the shard itself is provisioned).
pub(crate) async fn copy(shared: &Shared, built: Built<'_>) -> Result<Copied, String> {
    let spec = built.spec;
    let Some(cache) = shared.images.cache() else {
        return Err("snapshots are kept in the image cache, and none is configured".into());
    };
    let in_use = cache.in_use().await.map_err(|e| e.to_string())?;
    let mirror = shared.config.effective_mirror();
    let base = cache
        .fill(&spec.image, mirror.as_deref(), Resolve::Recorded)
        .await
        .map_err(|e| {
            format!(
                "cannot put the base image {} into the image cache: {e}",
                spec.image
            )
        })?;
    let blobs = cache
        .manifest_blobs(&base.descriptor.digest)
        .map_err(|e| e.to_string())?;
    let Some((config_digest, _)) = blobs.first() else {
        return Err("the base image's manifest names no config".into());
    };
    if config_digest != built.image_id {
        return Err(format!(
            "the image cache holds another {} ({config_digest}) than the daemon runs ({}); `cargo ephem images update` aligns them",
            spec.image, built.image_id
        ));
    }
    let copies = copy_out(shared, &built).await?;
    Ok(Copied {
        cache: cache.clone(),
        _in_use: in_use,
        _lock: built.lock.clone(),
        copies,
        base: base.descriptor.clone(),
        config_digest: config_digest.clone(),
        base_layers: blobs[1..].iter().map(|(_, s)| s).sum(),
        service: spec.name.clone(),
        base_image: spec.image.original().to_owned(),
        key: built.key.clone(),
    })
}

impl Copied {
    /// Writes the layer, the config and the manifest, then the index entry
    /// (last: until then no run sees the snapshot). Blocking; `Ok` is the
    /// snapshot's tag.
    pub(crate) fn store(self) -> Result<String, String> {
        let cache = &self.cache;
        let layer = layer::write_layer(cache.layout(), &self.copies)
            .map_err(|e| format!("cannot write the layer into the image cache: {e}"))?;
        let store = |bytes: Vec<u8>| -> Result<Blob, String> {
            let digest = digest_of(&bytes);
            cache
                .layout()
                .put_blob(&digest, &bytes)
                .map_err(|e| format!("cannot store into the image cache: {e}"))?;
            Ok(Blob {
                digest,
                size: bytes.len() as u64,
            })
        };
        let io = |e: std::io::Error| e.to_string();
        let base_config = cache
            .read_blob(&self.config_digest)
            .map_err(|e| e.to_string())?;
        let config = store(
            layer::config(&base_config, &layer.diff_id, &self.service, &self.key.hex)
                .map_err(io)?,
        )?;
        let base_manifest = cache
            .read_blob(&self.base.digest)
            .map_err(|e| e.to_string())?;
        let manifest = store(layer::manifest(&base_manifest, &config, &layer.blob).map_err(io)?)?;

        let name = tag(&self.service, &self.key);
        let total = self.base_layers + manifest.size + config.size + layer.blob.size;
        let entry = Descriptor {
            media_type: self.base.media_type.clone(),
            digest: manifest.digest,
            size: manifest.size,
            annotations: [
                (REF_NAME.to_owned(), name.clone()),
                (TOTAL_SIZE.to_owned(), total.to_string()),
                (LAST_USED.to_owned(), super::now()),
                (SERVICE_ANNOTATION.to_owned(), self.service.clone()),
                (BASE_ANNOTATION.to_owned(), self.base_image.clone()),
                (
                    INPUTS_ANNOTATION.to_owned(),
                    serde_json::to_string(&self.key.parts).unwrap_or_default(),
                ),
            ]
            .into(),
        };
        cache
            .layout()
            .update_index(|_| {}, move |index| index.put(entry))
            .map_err(|e| format!("cannot write index.json: {e}"))?;
        Ok(name)
    }
}

/// Quiesces the service and copies its state out of the container.
async fn copy_out(shared: &Shared, built: &Built<'_>) -> Result<Vec<Copy>, String> {
    let container = built.container;
    let limit = built.spec.startup_timeout;
    if let Some(cmd) = built.quiesce {
        exec(shared, container, cmd, None, limit).await?;
    }
    let kind = &built.spec.snapshot.as_ref().ok_or("no snapshot")?.kind;
    match kind {
        SnapshotKind::Postgres => {
            let pgdata = container_env(shared, container)
                .await?
                .remove("PGDATA")
                .unwrap_or_else(|| "/var/lib/postgresql/data".to_owned());
            // A consistent copy of the running server (its WAL included, so
            // it starts without an archive): the shard keeps its database.
            // Streamed out as a tar on stdout: nothing written into the
            // container, copied out and removed again (a third of the time).
            // No backup manifest: nothing verifies it, and it checksums
            // every file.
            let script = "exec pg_basebackup -D - -Ft -U \"${POSTGRES_USER:-postgres}\" \
                          -X fetch -c fast --no-manifest";
            let sh = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
            let archive = exec_stdout(shared, container, &sh, Some("postgres"), limit).await?;
            Ok(vec![Copy {
                archive,
                rooted: true,
                to: pgdata,
            }])
        }
        SnapshotKind::Redis => {
            let save = ["redis-cli".to_owned(), "SAVE".to_owned()];
            exec(shared, container, &save, None, limit).await?;
            Ok(vec![Copy {
                archive: download(shared, container, "/data").await?,
                rooted: false,
                to: "/data".into(),
            }])
        }
        SnapshotKind::Paths(paths) => {
            let mut copies = Vec::new();
            for path in paths {
                copies.push(Copy {
                    archive: download(shared, container, path).await?,
                    rooted: false,
                    to: path.clone(),
                });
            }
            Ok(copies)
        }
    }
}

/// The container's whole environment (the image's `ENV` included).
async fn container_env(
    shared: &Shared,
    container: &str,
) -> Result<HashMap<String, String>, String> {
    let inspect = shared
        .docker
        .inspect_container(container, None)
        .await
        .map_err(|e| format!("cannot inspect {container}: {e}"))?;
    Ok(inspect
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The daemon's archive of `path` in the container.
async fn download(shared: &Shared, container: &str, path: &str) -> Result<Vec<u8>, String> {
    let options = DownloadFromContainerOptions {
        path: path.to_owned(),
    };
    let mut stream = shared
        .docker
        .download_from_container(container, Some(options));
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("cannot copy {path} out of {container}: {e}"))?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Runs `cmd` in the container (as `user`), within `limit`; a non-zero
/// exit is an error with the command's last output.
async fn exec(
    shared: &Shared,
    container: &str,
    cmd: &[String],
    user: Option<&str>,
    limit: std::time::Duration,
) -> Result<(), String> {
    run_exec(shared, container, cmd, user, limit, false)
        .await
        .map(|_| ())
}

/// [`exec`], keeping what the command writes to stdout (an archive).
async fn exec_stdout(
    shared: &Shared,
    container: &str,
    cmd: &[String],
    user: Option<&str>,
    limit: std::time::Duration,
) -> Result<Vec<u8>, String> {
    run_exec(shared, container, cmd, user, limit, true).await
}

async fn run_exec(
    shared: &Shared,
    container: &str,
    cmd: &[String],
    user: Option<&str>,
    limit: std::time::Duration,
    keep_stdout: bool,
) -> Result<Vec<u8>, String> {
    let shown = cmd.join(" ");
    let config = ExecConfig {
        cmd: Some(cmd.to_vec()),
        user: user.map(str::to_owned),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = shared
        .docker
        .create_exec(container, config)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?;
    let started = shared
        .docker
        .start_exec(&created.id, None::<StartExecOptions>)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?;
    let mut output = String::new();
    let mut stdout = Vec::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = started
    {
        let drain = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("exec {shown:?}: {e}"))?;
                match chunk {
                    LogOutput::StdOut { message } if keep_stdout => {
                        stdout.extend_from_slice(&message);
                        continue;
                    }
                    other => output.push_str(&String::from_utf8_lossy(other.as_ref())),
                }
                if output.len() > 8192 {
                    output.drain(..output.len() - 4096);
                }
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(limit, drain).await {
            Err(_) => {
                return Err(format!(
                    "exec {shown:?}: still running after {}",
                    humantime::format_duration(limit)
                ))
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
    }
    let code = shared
        .docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?
        .exit_code;
    if code == Some(0) {
        Ok(stdout)
    } else {
        let last = output.lines().last().unwrap_or("").trim().to_owned();
        Err(format!("{shown:?} exited with {code:?}: {last}"))
    }
}
