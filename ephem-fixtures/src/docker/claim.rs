//! Who holds a kept environment (`--reuse`, `cargo ephem down`): one claim
//! per kept run and shard, held by exactly one process at a time.
//!
//! A claim is a container that is created and never started, named after
//! the kept run and shard and labelled with its holder (pid, start time,
//! host). Why exactly one process holds it:
//!
//! - Docker reserves a container name atomically: of concurrent creates
//!   with one name, one gets 201 and every other 409 Conflict (checked on
//!   Docker 20.10: 8 concurrent creates, 50 rounds, one winner each). A
//!   volume would not do by itself: creating one whose name exists returns
//!   the existing volume, with 201, whatever labels were asked for.
//! - A claim is removed only by its container id: by its holder when it
//!   releases, or by a claimer that saw that very container's holder dead.
//!   Ids are never reused, so a removal can never hit a claim created after
//!   the remover looked. (Removing by name could: two claimers both saw a
//!   dead holder, one removed the other's fresh claim, and both held the
//!   environment. That was the race this module replaces.)
//! - A holder is dead when its pid is gone or belongs to a process with
//!   another start time; a dead process never comes back, so a claim judged
//!   dead stays dead.
//!
//! So at most one claim exists per kept run and shard, and only its creator
//! was told it won; a loser always gets 409 and then sees a live holder (or
//! tries again). The claim carries the kept run's `run` label, so sweeps
//! and `gc` count its holder among the run's runners: a kept environment
//! with a live holder is never swept, whatever its lease says.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

use super::labels::{self, Owner};
use super::{daemon_message, is_gone, is_not_found};
use crate::sweep::{local_process_state, ProcessState};
use crate::EnvError;

/// How often a claimer tries again when a dead holder's claim is being
/// removed under it; after that it counts the claim as held.
const ATTEMPTS: u32 = 20;

/// A kept shard to claim: its run and shard, and an image its containers
/// run (a container needs one; the claim is never started).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub run: String,
    pub shard: u32,
    pub image: String,
}

/// A claim this process holds; [`release`] gives it back.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub run: String,
    pub shard: u32,
    /// The claim container's id: the only handle it is removed by.
    id: String,
}

/// Who holds a claim, as its labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its pid, when labelled.
    pub pid: Option<u32>,
    /// Its machine, when it is not this one.
    pub host: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pid, &self.host) {
            (Some(pid), None) => write!(f, "pid {pid}"),
            (Some(pid), Some(host)) => write!(f, "pid {pid} on {host}"),
            (None, _) => f.write_str("another process"),
        }
    }
}

impl Holder {
    /// The holder a resource's labels name, and whether it is alive: on
    /// this host, its pid with the same start time; on another, until the
    /// labelled expiry (its pid means nothing here).
    pub(crate) fn judge(labels: &HashMap<String, String>) -> (Holder, bool) {
        let number = |key: &str| labels.get(key).and_then(|v| v.parse::<u64>().ok());
        let pid = number(labels::PID).and_then(|p| u32::try_from(p).ok());
        let this_host = labels::hostname();
        let host = labels
            .get(labels::HOST)
            .filter(|h| **h != this_host)
            .cloned();
        let alive = match (pid, &host) {
            (Some(pid), None) => {
                local_process_state(pid, number(labels::PID_START)) == ProcessState::Alive
            }
            _ => number(labels::EXPIRES).is_some_and(|e| e > labels::unix_secs(SystemTime::now())),
        };
        (Holder { pid, host }, alive)
    }
}

/// What a claim attempt got.
pub(crate) enum Claim {
    /// This process holds it now.
    Won(Held),
    /// A live process holds it.
    Busy(Holder),
}

/// The claim container's name: one per kept run and shard. The run id is
/// hashed in whole (it may hold any character); its first characters keep
/// the name readable.
fn name(run: &str, shard: u32) -> String {
    let digest = Sha256::digest(run.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ephem-claim-{}-{hash}-s{shard}", labels::short_run(run))
}

/// Claims `target` for `owner` until it releases, dies, or (seen from
/// another host) `expires_at` passes.
pub(crate) async fn claim(
    docker: &Docker,
    owner: &Owner,
    target: &Target,
    expires_at: SystemTime,
) -> Result<Claim, EnvError> {
    let name = name(&target.run, target.shard);
    let mut claim_labels = owner.labels(&target.run, expires_at);
    // Not `shard`: a shard's teardown must leave the claim until the
    // environment is gone, lest another run take over a half-removed one.
    claim_labels.insert(labels::CLAIM.to_owned(), target.shard.to_string());
    let failed = |what: &str, e: bollard::errors::Error| {
        EnvError::Other(format!(
            "cannot {what} claim {name} of the environment kept by run {} (shard {}): {}",
            target.run,
            target.shard,
            daemon_message(&e)
        ))
    };
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt.min(5)))).await;
        }
        match create(docker, &name, &claim_labels, &target.image).await {
            Ok(id) => {
                return Ok(Claim::Won(Held {
                    run: target.run.clone(),
                    shard: target.shard,
                    id,
                }))
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(failed("create", e)),
        }
        // The name is taken: by a live holder, or by a dead one's claim.
        let existing = match docker.inspect_container(&name, None).await {
            Ok(existing) => existing,
            // Released meanwhile: try again.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(failed("inspect", e)),
        };
        let found = existing.config.and_then(|c| c.labels).unwrap_or_default();
        let (holder, alive) = Holder::judge(&found);
        if alive {
            return Ok(Claim::Busy(holder));
        }
        if let Some(id) = existing.id {
            // That very container, by id: never a claim made since.
            remove(docker, &id).await.map_err(|e| failed("remove", e))?;
        }
    }
    Ok(Claim::Busy(Holder::default()))
}

/// Gives a claim back: removes its container (by id), if still there.
pub(crate) async fn release(docker: &Docker, held: &Held) -> Result<(), EnvError> {
    remove(docker, &held.id).await.map_err(|e| {
        EnvError::Other(format!(
            "cannot release the claim of the environment kept by run {} (shard {}): {}; remove it with: docker rm -f {}",
            held.run,
            held.shard,
            daemon_message(&e),
            held.id
        ))
    })
}

/// Whether a container's labels mark it as a claim.
pub(crate) fn is_claim(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(labels::CLAIM)
}

/// Creates the claim container; its id.
async fn create(
    docker: &Docker,
    name: &str,
    claim_labels: &HashMap<String, String>,
    image: &str,
) -> Result<String, bollard::errors::Error> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        // Never started; an entrypoint spares images without a CMD the
        // daemon's "no command specified".
        entrypoint: Some(vec!["/cargo-ephem-claim-never-runs".to_owned()]),
        labels: Some(claim_labels.clone()),
        network_disabled: Some(true),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    Ok(docker.create_container(Some(options), body).await?.id)
}

async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Err(e) if !is_gone(&e) => Err(e),
        _ => Ok(()),
    }
}

fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn names_differ_per_run_and_shard_and_are_valid_container_names() {
        let a = name("0123abcd-aaaa", 1);
        assert_ne!(a, name("0123abcd-bbbb", 1), "runs sharing 8 characters");
        assert_ne!(a, name("0123abcd-aaaa", 2));
        let odd = name("??", 3);
        for n in [&a, &odd] {
            assert!(n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_holder_is_alive_only_while_its_process_is_the_same() {
        let me = std::process::id();
        let start = labels::process_start(me).unwrap();
        let here = labels::hostname();
        let alive = labelled(&[
            (labels::PID, me.to_string()),
            (labels::PID_START, start.to_string()),
            (labels::HOST, here.clone()),
        ]);
        assert_eq!(
            Holder::judge(&alive),
            (
                Holder {
                    pid: Some(me),
                    host: None
                },
                true
            )
        );
        let reused = labelled(&[
            (labels::PID, me.to_string()),
            (labels::PID_START, (start + 1).to_string()),
            (labels::HOST, here),
        ]);
        assert!(
            !Holder::judge(&reused).1,
            "a recycled pid is not the holder"
        );
    }

    #[test]
    fn another_hosts_holder_counts_until_its_expiry() {
        let now = labels::unix_secs(SystemTime::now());
        let claim = |expires: u64| {
            labelled(&[
                (labels::PID, "1".to_owned()),
                (labels::HOST, "elsewhere.invalid".to_owned()),
                (labels::EXPIRES, expires.to_string()),
            ])
        };
        let (holder, alive) = Holder::judge(&claim(now + 600));
        assert!(alive);
        assert_eq!(holder.to_string(), "pid 1 on elsewhere.invalid");
        assert!(!Holder::judge(&claim(now - 1)).1);
    }
}
