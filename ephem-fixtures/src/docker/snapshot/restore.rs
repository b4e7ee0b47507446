//! Finding a snapshot: the daemon's tag, else the image cache's entry
//! (checked blob by blob, then put into the daemon); a corrupt or partial
//! one is discarded with a warning. And, once a service started from one,
//! its credentials re-keyed to this run's.

use std::collections::BTreeMap;

use super::key::Key;
use super::{tag, Found, INPUTS_ANNOTATION, SERVICE_ANNOTATION};
use crate::config::{ServiceSpec, SnapshotKind};
use crate::docker::{is_not_found, Shared};
use crate::image_cache::layout::BlobState;
use crate::image_cache::ImageCache;
use crate::{EnvError, EnvEvent};

pub(super) async fn lookup(
    shared: &Shared,
    cache: &ImageCache,
    spec: &ServiceSpec,
    key: &Key,
) -> Found {
    let name = tag(&spec.name, key);
    match shared.docker.inspect_image(&name).await {
        Ok(_) => {
            note(
                shared,
                format!(
                    "services.{}: starting from snapshot {name} (in the daemon)",
                    spec.name
                ),
            );
            touch(cache, &name);
            return Found::Image(name);
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            warn(
                shared,
                format!(
                    "services.{}: cannot inspect snapshot {name} ({}); provisioning normally",
                    spec.name,
                    crate::docker::daemon_message(&e)
                ),
            );
            return Found::Missing;
        }
    }
    let Ok(_in_use) = cache.in_use().await else {
        return Found::Missing;
    };
    let entries = cache.entries();
    let Some(entry) = entries
        .iter()
        .find(|d| d.reference() == Some(name.as_str()))
    else {
        let why = previous(&entries, &spec.name)
            .map(|old| format!("the last one no longer applies: {}", key.changes_from(&old)))
            .unwrap_or_else(|| "none in the image cache yet".to_owned());
        note(
            shared,
            format!("services.{}: building a snapshot ({why})", spec.name),
        );
        return Found::Missing;
    };
    if let Err(reason) = check(cache, &entry.digest) {
        warn(shared, format!(
            "services.{}: snapshot {name} in the image cache {} is corrupt or incomplete ({reason}); discarded, provisioning normally",
            spec.name,
            cache.root().display()
        ));
        let _ = cache.layout().update_index(
            |_| {},
            |index| {
                index
                    .manifests
                    .retain(|d| d.reference() != Some(name.as_str()))
            },
        );
        return Found::Missing;
    }
    match shared.images.restore_snapshot(cache, entry, &name).await {
        Ok(how) => {
            note(shared, format!("services.{}: starting from snapshot {name}, restored from the image cache ({how})", spec.name));
            touch(cache, &name);
            Found::Image(name)
        }
        Err(reason) => {
            warn(shared, format!("services.{}: cannot restore snapshot {name} from the image cache ({reason}); provisioning normally", spec.name));
            Found::Missing
        }
    }
}

/// Marks the cache's entry used now, for `images prune --older-than`.
fn touch(cache: &ImageCache, name: &str) {
    let now = super::now();
    let _ = cache.layout().update_index(
        |_| {},
        |index| {
            for d in index
                .manifests
                .iter_mut()
                .filter(|d| d.reference() == Some(name))
            {
                d.annotations.insert(
                    crate::image_cache::layout::LAST_USED.to_owned(),
                    now.clone(),
                );
            }
        },
    );
}

/// The snapshot's own blobs (manifest, config, its layer) are whole and
/// hash to their digests; the base image's layers the daemon checks as it
/// pulls them.
fn check(cache: &ImageCache, manifest: &str) -> Result<(), String> {
    let layout = cache.layout();
    if layout.verify_blob(manifest) != BlobState::Good {
        return Err(format!("manifest {manifest} is missing or altered"));
    }
    let blobs = cache.manifest_blobs(manifest).map_err(|e| e.to_string())?;
    let own = [blobs.first(), blobs.last()];
    for (digest, _) in own.into_iter().flatten() {
        if layout.verify_blob(digest) != BlobState::Good {
            return Err(format!("blob {digest} is missing or altered"));
        }
    }
    Ok(())
}

/// The key inputs of the newest other snapshot of `service`.
fn previous(
    entries: &[crate::image_cache::layout::Descriptor],
    service: &str,
) -> Option<BTreeMap<String, String>> {
    entries
        .iter()
        .filter(|d| d.annotations.get(SERVICE_ANNOTATION).map(String::as_str) == Some(service))
        .max_by_key(|d| {
            d.annotations
                .get(crate::image_cache::layout::LAST_USED)
                .cloned()
        })
        .and_then(|d| serde_json::from_str(d.annotations.get(INPUTS_ANNOTATION)?).ok())
}

/// Gives a Postgres started from a snapshot this run's password: the
/// snapshot holds the hash of the password of the run that built it. Run
/// through the local socket (trusted in the official image), the password
/// read from the container's own environment.
pub(crate) async fn rekey(
    shared: &Shared,
    shard: u32,
    spec: &ServiceSpec,
    container: &str,
    env: &std::collections::HashMap<String, String>,
) -> Result<(), EnvError> {
    let postgres = matches!(
        spec.snapshot.as_ref().map(|s| &s.kind),
        Some(SnapshotKind::Postgres)
    );
    if !postgres || !env.contains_key("POSTGRES_PASSWORD") {
        return Ok(());
    }
    let script = r#"u="${POSTGRES_USER:-postgres}"; printf '%s\n' "ALTER ROLE :\"u\" PASSWORD :'pw';" | psql -v ON_ERROR_STOP=1 -q -U "$u" -d postgres -v u="$u" -v pw="$POSTGRES_PASSWORD""#;
    let cmd = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let done =
        crate::docker::readiness::exec_in(&shared.docker, container, &cmd, spec.startup_timeout)
            .await
            .map_err(EnvError::Other)?;
    if done.exit_code == Some(0) {
        return Ok(());
    }
    Err(EnvError::NotReady {
        shard,
        service: spec.name.clone(),
        wait: "the password re-key after starting from a snapshot".into(),
        reason: format!("psql exited with {:?}", done.exit_code),
        logs: done.output.lines().map(str::to_owned).collect(),
    })
}

fn note(shared: &Shared, message: String) {
    let _ = shared.events.send(EnvEvent::Note { message });
}

fn warn(shared: &Shared, message: String) {
    let _ = shared.events.send(EnvEvent::Warning {
        shard: None,
        message,
    });
}
