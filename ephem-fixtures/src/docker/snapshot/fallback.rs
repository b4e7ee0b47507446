//! A service started from a snapshot that does not become ready: the
//! snapshot is discarded (daemon and image cache) and the service
//! provisioned normally, so a bad snapshot costs time, never the shard.

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{RemoveContainerOptions, RemoveImageOptions};
use tokio::sync::OnceCell;

use super::key::Key;
use super::{Decision, Found, State};
use crate::config::ServiceSpec;
use crate::docker::Shared;

/// The shortest readiness budget of a snapshot start (a loaded machine
/// still starts a server with its data in place well within it).
const MIN_READY: Duration = Duration::from_secs(15);

/// How long a service started from a snapshot may take to become ready
/// before it is provisioned normally: a quarter of `startup-timeout`, at
/// least 15 s (never more than the whole). A snapshot start skips init
/// and `setup`, so it needs a fraction of a fresh start's time; the
/// fallback then gets the full `startup-timeout`, so a snapshot that hangs
/// costs at most 1.25x the timeout, not 2x.
pub(crate) fn ready_within(startup_timeout: Duration) -> Duration {
    (startup_timeout / 4).max(MIN_READY).min(startup_timeout)
}

impl State {
    /// Discards the snapshot of `key` the service could not start from:
    /// removes the container, the daemon's image and the cache's entry,
    /// warns once per key (naming the service, the key and why), and tells
    /// the shard what to do now: build the snapshot again (if no other
    /// shard or process does), or provision normally.
    pub(crate) async fn discard(
        &self,
        shared: &Shared,
        shard: u32,
        spec: &ServiceSpec,
        key: &Key,
        container: &str,
        reason: &str,
    ) -> Decision {
        let image = &super::tag(&spec.name, key);
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        // Gone already (never created) is fine: the name is free either way.
        let _ = shared
            .docker
            .remove_container(container, Some(options))
            .await;
        let first = {
            // Later lookups of this run see it missing (other shards that
            // already chose it fall back here too, as the image is gone).
            let mut lookups = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            lookups.insert(
                key.hex.clone(),
                Arc::new(OnceCell::new_with(Some(Found::Missing))),
            );
            self.building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(format!("discarded:{}", key.hex))
        };
        if first {
            // force: shards of this run may still have containers on it;
            // the tag goes now, the layers when the last one does.
            let options = RemoveImageOptions {
                force: true,
                ..Default::default()
            };
            let removed = match shared.docker.remove_image(image, Some(options), None).await {
                Ok(_) => Ok(()),
                Err(e) if crate::docker::is_not_found(&e) => Ok(()),
                Err(e) => Err(crate::docker::daemon_message(&e)),
            };
            if let Some(cache) = shared.images.cache() {
                let _ = cache.layout().update_index(
                    |_| {},
                    |index| {
                        index
                            .manifests
                            .retain(|d| d.reference() != Some(image.as_str()))
                    },
                );
            }
            let left = match removed {
                Ok(()) => String::new(),
                Err(e) => format!(" (the daemon kept its image: {e}; `docker rmi {image}`)"),
            };
            let _ = shared.events.send(crate::EnvEvent::Warning {
                shard: Some(shard),
                message: format!(
                    "services.{}: snapshot {image} (key {}) did not become ready: {reason}; discarded from the daemon and the image cache{left}, provisioning normally",
                    spec.name,
                    &key.hex[..16]
                ),
            });
        }
        match shared.images.cache() {
            Some(cache) => self.claim(cache, spec, key.clone()),
            None => Decision::Fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_start_gets_a_quarter_of_the_timeout_at_least_15s() {
        let s = Duration::from_secs;
        assert_eq!(ready_within(s(120)), s(30));
        assert_eq!(ready_within(s(60)), s(15));
        assert_eq!(ready_within(s(30)), s(15));
        assert_eq!(ready_within(s(10)), s(10));
    }
}
