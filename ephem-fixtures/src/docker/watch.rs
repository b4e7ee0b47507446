//! Noticing services that stop while a shard's tests run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::labels;
use crate::{EnvEvent, EventSink, ShardContext};

/// Delays before each reconnect of a broken event stream: 5 tries over 30 s.
pub(crate) const DEFAULT_RETRY: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// A stream that stayed up this long was a working connection: when it
/// ends, the tries start again from the first delay.
const STABLE: Duration = Duration::from_secs(10);

/// Follows the daemon's `die` events for the shard's containers and reports
/// each as [`EnvEvent::ServiceExited`] until aborted by teardown. A broken
/// stream is resumed after each of `retry`'s delays; when none is left, an
/// [`EnvEvent::Warning`] says that deaths are no longer reported.
pub(crate) fn spawn(
    docker: Docker,
    shard: &ShardContext,
    events: EventSink,
    retry: Vec<Duration>,
) -> JoinHandle<()> {
    let mut filters = labels::shard_filter(shard);
    filters.insert("type".to_owned(), vec!["container".to_owned()]);
    // Podman 4.3 filters by its own name for the event, `died`, and reports
    // it as `die`; Docker knows no `died` and matches `die`.
    filters.insert(
        "event".to_owned(),
        vec!["die".to_owned(), "died".to_owned()],
    );
    let follower = Follower {
        docker,
        filters,
        run_id: shard.run.run_id.clone(),
        shard: shard.shard,
        events,
        since: unix_nanos(SystemTime::now()),
        seen: HashSet::new(),
    };
    tokio::spawn(follower.run(retry))
}

/// Nobody receives events any more: the follower can stop.
struct Unheard;

struct Follower {
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
    run_id: String,
    shard: u32,
    events: EventSink,
    /// Where a new stream starts: the start, then the last event's time.
    since: i64,
    /// Events already reported, by container id and time: a resumed stream
    /// repeats the events of its `since` instant.
    seen: HashSet<(String, i64)>,
}

impl Follower {
    async fn run(mut self, retry: Vec<Duration>) {
        let mut tries = 0;
        loop {
            let opened = Instant::now();
            let why = match self.follow().await {
                Ok(why) => why,
                Err(Unheard) => return,
            };
            if opened.elapsed() >= STABLE {
                tries = 0;
            }
            let Some(delay) = retry.get(tries) else {
                self.give_up(&retry, &why);
                return;
            };
            tries += 1;
            sleep(*delay).await;
        }
    }

    /// Follows one stream from `since` until it ends; returns why it ended.
    async fn follow(&mut self) -> Result<String, Unheard> {
        let options = EventsOptions {
            since: Some(since_param(self.since)),
            filters: Some(self.filters.clone()),
            ..Default::default()
        };
        let mut stream = self.docker.events(Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => self.report(event)?,
                Err(e) => return Ok(innermost(&e)),
            }
        }
        Ok("the daemon ended the event stream".to_owned())
    }

    fn report(&mut self, event: EventMessage) -> Result<(), Unheard> {
        let time = event
            .time_nano
            .or_else(|| event.time.map(|s| s.saturating_mul(1_000_000_000)));
        let actor = event.actor.unwrap_or_default();
        if let Some(time) = time {
            self.since = self.since.max(time);
            if !self.seen.insert((actor.id.unwrap_or_default(), time)) {
                return Ok(());
            }
        }
        let attributes = actor.attributes.unwrap_or_default();
        // Podman ORs the run and shard filters: other runs' deaths come too.
        if !labels::of_shard(&attributes, &self.run_id, self.shard) {
            return Ok(());
        }
        let Some(service) = attributes.get(labels::SERVICE) else {
            return Ok(());
        };
        self.events
            .send(EnvEvent::ServiceExited {
                shard: self.shard,
                service: service.clone(),
                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                at: SystemTime::now(),
            })
            .map_err(|_| Unheard)
    }

    fn give_up(&self, retry: &[Duration], why: &str) {
        let waited: Duration = retry.iter().sum();
        let message = format!(
            "service deaths are no longer reported: the Docker event stream broke and {} reconnects over {} failed (last: {why})",
            retry.len(),
            humantime::format_duration(waited)
        );
        let _ = self.events.send(EnvEvent::Warning {
            shard: Some(self.shard),
            message,
        });
    }
}

fn unix_nanos(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Docker's `since`: seconds, a dot and nine digits of nanoseconds.
fn since_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// The innermost cause, e.g. `Connection refused (os error 111)`.
fn innermost(err: &bollard::errors::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_has_nine_digits_of_nanoseconds() {
        assert_eq!(
            since_param(1_700_000_000_000_000_042),
            "1700000000.000000042"
        );
        assert_eq!(since_param(5), "0.000000005");
    }
}
