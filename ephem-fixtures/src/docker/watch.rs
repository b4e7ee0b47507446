//! Noticing services that stop while a shard's tests run.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::labels;
use crate::{EnvEvent, EventSink, ShardContext};

/// Follows the daemon's `die` events for the shard's containers and reports
/// each as [`EnvEvent::ServiceExited`] until aborted by teardown.
pub(crate) fn spawn(docker: Docker, shard: &ShardContext, events: EventSink) -> JoinHandle<()> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut filters = labels::shard_filter(shard);
    filters.insert("type".to_owned(), vec!["container".to_owned()]);
    filters.insert("event".to_owned(), vec!["die".to_owned()]);
    let shard_number = shard.shard;
    tokio::spawn(async move {
        let options = EventsOptions {
            since: Some(since.to_string()),
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = docker.events(Some(options));
        while let Some(Ok(event)) = stream.next().await {
            let attributes: HashMap<String, String> =
                event.actor.and_then(|a| a.attributes).unwrap_or_default();
            let Some(service) = attributes.get(labels::SERVICE) else {
                continue;
            };
            let sent = events.send(EnvEvent::ServiceExited {
                shard: shard_number,
                service: service.clone(),
                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                at: SystemTime::now(),
            });
            if sent.is_err() {
                break;
            }
        }
    })
}
