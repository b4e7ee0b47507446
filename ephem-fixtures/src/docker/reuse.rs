//! `--reuse`: environments kept between local runs, each found by a key (the
//! workspace, the services as configured, the images' ids, the shard) and
//! held by one run at a time.
//!
//! A kept environment is the containers and network of the run that made
//! it, plus a lease volume marked `keep` that spares it from sweeps until
//! its idle TTL passes. Whoever uses or removes it (a run taking it over, a
//! run removing an outdated one, `cargo ephem down`) first claims it (see
//! `claim.rs`: exactly one process holds a claim) and removes it only while
//! holding the claim.
//! While the run that made it lives, it is that run's and nobody claims it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

pub use super::claim::Holder;
use super::claim::{self, Claim, Held, Target};
use super::labels::{self, Owner};
use super::{daemon_message, inventory, shard, teardown, DockerBackend};
use crate::config::EphemConfig;
use crate::{EnvError, Environment, RunContext, ShardContext};

/// Test-only: the file whose existence releases runs waiting to take kept
/// environments over, so that a race test's runs claim at the same moment
/// (process start-up alone spreads them over ~100 ms).
pub const CLAIM_BARRIER_VAR: &str = "CARGO_EPHEM_TEST_CLAIM_BARRIER";

/// With [`CLAIM_BARRIER_VAR`] set: says it arrived (`FILE.PID`), then waits
/// at most 60 s for FILE. Without it, returns at once.
async fn claim_barrier() {
    let Some(path) = std::env::var_os(CLAIM_BARRIER_VAR) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut arrived = path.clone().into_os_string();
    arrived.push(format!(".{}", std::process::id()));
    let _ = std::fs::write(&arrived, "");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The most a kept environment's lease must still run for a run to take it
/// over (a quarter of the TTL when that is less): a sweep may already have
/// judged one closer to its expiry abandoned, and be removing it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Whether a kept run whose `keep` leases expire at `expiry` (unix seconds;
/// none: no lease, so sweeps take it for abandoned) may be taken over now.
fn lasts(expiry: Option<u64>, now: SystemTime, ttl: Duration) -> bool {
    let margin = EXPIRY_MARGIN.min(ttl / 4);
    expiry.is_some_and(|e| e > labels::unix_secs(now + margin))
}

/// Every kept run's expiry: the latest `expires` of its `keep` leases, which
/// is what sweeps judge it by.
async fn keep_expiries(docker: &Docker) -> Result<HashMap<String, u64>, EnvError> {
    let mut expiries = HashMap::new();
    for lease in inventory::list_matching(docker, vec![labels::KEEP.to_owned()]).await? {
        if let (true, Some(expires)) = (lease.kept, lease.expires) {
            let latest = expiries.entry(lease.run).or_insert(expires);
            *latest = expires.max(*latest);
        }
    }
    Ok(expiries)
}

/// How long `down`'s claims count as held when seen from another host.
const DOWN_CLAIM_TTL: Duration = Duration::from_secs(600);

/// The key of a shard's environment: what it is made of, so that another
/// workspace, a changed `ephem.toml` or image gives a new key. `image_ids`
/// are the daemon's ids of the images the services run, in service order.
pub(crate) fn key(config: &EphemConfig, image_ids: &[String], shard: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION"));
    // The workspace's id, length-prefixed so that no service text can
    // imitate it.
    let workspace = &config.reuse.workspace;
    hasher.update((workspace.len() as u64).to_le_bytes());
    hasher.update(workspace);
    for service in &config.services {
        // Everything that shapes the container; not `export`, which is
        // rendered anew by every run.
        let shape = (
            &service.name,
            &service.image,
            &service.env,
            &service.ports,
            &service.cmd,
            &service.args,
            &service.wait,
            &service.healthcheck,
            &service.depends_on,
            &service.setup,
            &service.reset,
            service.per_test_databases,
        );
        hasher.update(format!("{shape:?}"));
    }
    for id in image_ids {
        hasher.update(id);
    }
    hasher.update(shard.to_le_bytes());
    hex(&hasher.finalize()[..12])
}

/// A workspace's id for the `workspace` label and the key: its root's hash.
pub fn workspace_id(root: &str) -> String {
    hex(&Sha256::digest(root.as_bytes())[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One shard of a kept environment, from its containers and network.
struct KeptShard {
    run: String,
    shard: u32,
    /// The `reuse` key, from its containers.
    key: Option<String>,
    /// An image its containers run (none when only its network is left).
    image: Option<String>,
    /// Services and whether each runs.
    services: BTreeMap<String, bool>,
    /// The run that made it, while it lives: then the shard is not kept
    /// yet but in use by its maker.
    maker: Option<Holder>,
    /// When its first container was created, to take the oldest first.
    created: i64,
}

impl KeptShard {
    fn target(&self) -> Option<Target> {
        Some(Target {
            run: self.run.clone(),
            shard: self.shard,
            image: self.image.clone()?,
        })
    }
}

/// Every kept shard with the `label` (`key=value`), oldest first.
async fn kept_shards(docker: &Docker, label: &str) -> Result<Vec<KeptShard>, EnvError> {
    let listing_error = |what: &str, e: bollard::errors::Error| {
        EnvError::Other(format!(
            "listing {what} with {label}: {}",
            daemon_message(&e)
        ))
    };
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    let containers: Vec<ContainerSummary> = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| listing_error("containers", e))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| listing_error("networks", e))?;
    let mut shards: BTreeMap<(String, u32), KeptShard> = BTreeMap::new();
    let members = containers
        .into_iter()
        .map(|c| (c.labels.clone().unwrap_or_default(), Some(c)))
        .chain(
            networks
                .into_iter()
                .map(|n| (n.labels.unwrap_or_default(), None)),
        );
    for (labels, container) in members {
        let (Some(run), Some(number)) = (
            labels.get(labels::RUN),
            labels.get(labels::SHARD).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let entry = shards
            .entry((run.clone(), number))
            .or_insert_with(|| KeptShard {
                run: run.clone(),
                shard: number,
                key: None,
                image: None,
                services: BTreeMap::new(),
                maker: None,
                created: i64::MAX,
            });
        let (maker, alive) = Holder::judge(&labels);
        if alive {
            entry.maker = Some(maker);
        }
        let Some(c) = container else { continue };
        entry.key = entry
            .key
            .take()
            .or_else(|| labels.get(labels::REUSE).cloned());
        entry.image = entry.image.take().or(c.image_id);
        entry.created = entry.created.min(c.created.unwrap_or(0));
        if let Some(service) = labels.get(labels::SERVICE) {
            let running = c.state.is_some_and(|s| s.to_string() == "running");
            entry.services.insert(service.clone(), running);
        }
    }
    let mut list: Vec<KeptShard> = shards.into_values().collect();
    list.sort_by_key(|s| s.created);
    Ok(list)
}

/// Removes a kept shard this process holds: its containers, network and
/// volumes, then its claim (not before: nobody may take over an environment
/// half removed), then, once no shard of its run is left or held, the
/// run's leases and dead claims.
pub(crate) async fn remove_held(docker: &Docker, held: &Held) -> Result<(), EnvError> {
    let shard = ShardContext {
        run: RunContext {
            run_id: held.run.clone(),
            shard_count: held.shard,
            expires_at: SystemTime::now(),
        },
        shard: held.shard,
    };
    let torn = teardown::teardown(docker, &shard).await;
    // Released even if the teardown failed: whoever claims it next finds
    // it not whole and removes the rest.
    claim::release(docker, held).await?;
    torn?;
    remove_run_leftovers(docker, &held.run).await
}

/// Removes a run's lease volumes and dead claims once none of its
/// environment containers remain and no live process holds a claim on it
/// (shards of one run go one by one, each checking: the last one removes).
async fn remove_run_leftovers(docker: &Docker, run: &str) -> Result<(), EnvError> {
    let run_label = format!("{}={run}", labels::RUN);
    let filters = HashMap::from([("label".to_owned(), vec![run_label.clone()])]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| {
            EnvError::Other(format!(
                "listing run {run}'s containers: {}",
                daemon_message(&e)
            ))
        })?;
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        // A shard of the run is still there, or held: its leases stay.
        if !claim::is_claim(&labels) || Holder::judge(&labels).1 {
            return Ok(());
        }
    }
    let leftovers = inventory::list_matching(docker, vec![run_label]).await?;
    let problems: Vec<String> = inventory::remove_resources(docker, &leftovers)
        .await
        .into_iter()
        .filter_map(|(r, result)| result.err().map(|e| format!("{} {}: {e}", r.kind, r.name)))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(EnvError::Other(format!(
        "run {run}: cannot remove {}; `cargo ephem gc` removes them once the run expires",
        problems.join("; ")
    )))
}

/// What `cargo ephem down` did with one kept shard of the workspace.
#[derive(Clone, Debug)]
pub enum DownOutcome {
    /// Removed.
    Removed {
        /// The run that made it.
        run: String,
        /// Its shard.
        shard: u32,
    },
    /// Left alone: a live process uses it (the run that made it, or one
    /// that took it over).
    InUse {
        /// The run that made it.
        run: String,
        /// Its shard.
        shard: u32,
        /// Who uses it.
        holder: Holder,
    },
}

/// `cargo ephem down`: removes the kept environments of `workspace` (see
/// [`workspace_id`]), each claimed first like any run would; those a live
/// process uses are left alone and reported.
pub async fn down(docker: &Docker, workspace: &str) -> Result<Vec<DownOutcome>, EnvError> {
    let owner = Owner::current();
    let label = format!("{}={workspace}", labels::WORKSPACE);
    let mut outcomes = Vec::new();
    for kept in kept_shards(docker, &label).await? {
        let (run, shard) = (kept.run.clone(), kept.shard);
        if let Some(holder) = kept.maker.clone() {
            outcomes.push(DownOutcome::InUse { run, shard, holder });
            continue;
        }
        let Some(target) = kept.target() else {
            // Only its network is left: nothing anyone could take over.
            let held_nothing = ShardContext {
                run: RunContext {
                    run_id: run.clone(),
                    shard_count: shard,
                    expires_at: SystemTime::now(),
                },
                shard,
            };
            teardown::teardown(docker, &held_nothing).await?;
            remove_run_leftovers(docker, &run).await?;
            outcomes.push(DownOutcome::Removed { run, shard });
            continue;
        };
        let until = SystemTime::now() + DOWN_CLAIM_TTL;
        match claim::claim(docker, &owner, &target, until).await? {
            Claim::Won(held) => {
                remove_held(docker, &held).await?;
                outcomes.push(DownOutcome::Removed { run, shard });
            }
            Claim::Busy(holder) => outcomes.push(DownOutcome::InUse { run, shard, holder }),
        }
    }
    Ok(outcomes)
}

impl DockerBackend {
    /// Every shard's key, and the removal of this workspace's kept
    /// environments with an old one.
    pub(super) async fn prepare_reuse(&self, run: &RunContext) -> Result<(), EnvError> {
        let images = self.image_ids().await?;
        let keys: HashMap<u32, String> = (1..=run.shard_count)
            .map(|shard| (shard, key(&self.shared.config, &images, shard)))
            .collect();
        let current: Vec<String> = keys.values().cloned().collect();
        *self.reuse_keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
        self.remove_outdated(run, &current).await
    }

    /// The removal of this workspace's kept environments whose key is none
    /// of this run's (the configuration or an image changed), each claimed
    /// first: one a live run holds is left to it.
    async fn remove_outdated(&self, run: &RunContext, keys: &[String]) -> Result<(), EnvError> {
        let docker = &self.shared.docker;
        let label = format!(
            "{}={}",
            labels::WORKSPACE,
            self.shared.config.reuse.workspace
        );
        for kept in kept_shards(docker, &label).await? {
            let outdated = kept.key.as_ref().is_some_and(|k| !keys.contains(k));
            let Some(target) = kept.target().filter(|_| outdated && kept.maker.is_none()) else {
                continue;
            };
            let owner = &self.shared.owner;
            let Claim::Won(held) = claim::claim(docker, owner, &target, run.expires_at).await?
            else {
                continue;
            };
            remove_held(docker, &held).await?;
            let _ = self.shared.events.send(crate::EnvEvent::Warning {
                shard: None,
                message: format!(
                    "removed shard {}'s kept environment (run {}): its services or images changed",
                    kept.shard, kept.run
                ),
            });
        }
        Ok(())
    }

    /// Takes over a kept environment with `key`, if one is whole and free;
    /// its claim is remembered for [`keep`](crate::Backend::keep) or teardown.
    pub(super) async fn take_over(
        &self,
        shard: &ShardContext,
        key: &str,
    ) -> Result<Option<Environment>, EnvError> {
        let docker = &self.shared.docker;
        claim_barrier().await;
        let label = format!("{}={key}", labels::REUSE);
        let expiries = keep_expiries(docker).await?;
        let ttl = self.shared.config.reuse.ttl;
        for kept in kept_shards(docker, &label).await? {
            let lasting = lasts(expiries.get(&kept.run).copied(), SystemTime::now(), ttl);
            let Some(target) = kept.target().filter(|_| kept.maker.is_none() && lasting) else {
                continue;
            };
            let until = shard.run.expires_at;
            let held = match claim::claim(docker, &self.shared.owner, &target, until).await {
                Ok(Claim::Won(held)) => held,
                Ok(Claim::Busy(_)) => continue,
                Err(e) => {
                    self.warn(shard, format!("{e}; starting a fresh environment"));
                    continue;
                }
            };
            if let Some(why) = self.not_whole(&kept) {
                self.warn(
                    shard,
                    format!(
                        "the environment kept by run {} is not whole ({why}): starting a fresh one",
                        kept.run
                    ),
                );
                remove_held(docker, &held).await?;
                continue;
            }
            let owned = ShardContext {
                run: RunContext {
                    run_id: kept.run.clone(),
                    ..shard.run.clone()
                },
                shard: shard.shard,
            };
            let env = match shard::reattach(&self.shared, &owned).await {
                Ok(env) => env,
                Err(e) => {
                    self.warn(
                        shard,
                        format!(
                            "the kept environment of run {} could not be taken over ({e}); starting a fresh one",
                            kept.run
                        ),
                    );
                    remove_held(docker, &held).await?;
                    continue;
                }
            };
            self.reused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((shard.run.run_id.clone(), shard.shard), held);
            self.watch(shard, &owned);
            return Ok(Some(env));
        }
        Ok(None)
    }

    /// Why a kept shard cannot be used: services stopped or missing.
    fn not_whole(&self, kept: &KeptShard) -> Option<String> {
        let missing: Vec<&str> = self
            .shared
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| !kept.services.contains_key(*name))
            .collect();
        let stopped: Vec<&str> = kept
            .services
            .iter()
            .filter(|(_, running)| !**running)
            .map(|(name, _)| name.as_str())
            .collect();
        let mut what = Vec::new();
        if !stopped.is_empty() {
            what.push(format!("{} not running", stopped.join(", ")));
        }
        if !missing.is_empty() {
            what.push(format!("{} removed", missing.join(", ")));
        }
        (!what.is_empty()).then(|| what.join("; "))
    }

    fn warn(&self, shard: &ShardContext, message: String) {
        let _ = self.shared.events.send(crate::EnvEvent::Warning {
            shard: Some(shard.shard),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_environment_is_taken_over_only_while_its_lease_lasts_a_margin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let secs = labels::unix_secs(now);
        let ttl = Duration::from_secs(1800);
        assert!(lasts(Some(secs + 61), now, ttl));
        assert!(
            !lasts(Some(secs + 60), now, ttl),
            "a sweep may be removing it"
        );
        assert!(!lasts(Some(secs - 5), now, ttl), "expired");
        assert!(
            !lasts(None, now, ttl),
            "no lease: sweeps take it for abandoned"
        );
        // A short TTL: a quarter of it.
        let short = Duration::from_secs(8);
        assert!(lasts(Some(secs + 3), now, short));
        assert!(!lasts(Some(secs + 2), now, short));
    }

    #[test]
    fn the_key_depends_on_the_workspace() {
        let text = "[services.web]\nimage = \"busybox:1.36\"\nports = [80]\n";
        let mut config = EphemConfig::parse(text, "ephem.toml").unwrap();
        config.reuse.workspace = workspace_id("/work/a");
        let a = key(&config, &[], 1);
        config.reuse.workspace = workspace_id("/work/b");
        assert_ne!(a, key(&config, &[], 1));
        assert_ne!(key(&config, &[], 1), key(&config, &[], 2));
    }
}
