//! Labelled resources made by hand, for the inventory, reaping and sweep
//! tests, and a guard that removes them (by label or name, without the code
//! under test) whether the test passed or panicked.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use bollard::models::{ContainerCreateBody, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions,
};
use bollard::Docker;
use ephem_fixtures::docker::DockerCleanup;
use ephem_fixtures::{Backend, Cleanup, DockerBackend, EphemConfig, RunContext};
use futures_util::FutureExt;

use super::{unique_run_id, MIRROR};

/// The image every hand-made container runs.
pub const IMAGE: &str = "busybox:1.36";

/// Who a hand-made resource claims made it.
#[derive(Clone, Debug)]
pub struct Claim {
    pub run: String,
    pub shard: u32,
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub host: String,
    pub expires: u64,
}

impl Claim {
    pub fn labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            ("cargo-ephem.run".to_owned(), self.run.clone()),
            ("cargo-ephem.shard".to_owned(), self.shard.to_string()),
            ("cargo-ephem.pid".to_owned(), self.pid.to_string()),
            ("cargo-ephem.host".to_owned(), self.host.clone()),
            ("cargo-ephem.expires".to_owned(), self.expires.to_string()),
        ]);
        if let Some(start) = self.pid_start {
            labels.insert("cargo-ephem.pid-start".to_owned(), start.to_string());
        }
        labels
    }
}

/// Names of a run's hand-made resources.
pub struct Made {
    pub container: String,
    pub network: String,
    pub volume: String,
}

/// Creates, for `claim`, a container that is never started, a network and a volume.
pub async fn make_run(docker: &Docker, claim: &Claim) -> Made {
    let prefix = format!("ephem-test-{}", short(&claim.run));
    let made = Made {
        container: format!("{prefix}-box"),
        network: format!("{prefix}-net"),
        volume: format!("{prefix}-vol"),
    };
    create_container(docker, &made.container, Some(claim.labels())).await;
    docker
        .create_network(NetworkCreateRequest {
            name: made.network.clone(),
            labels: Some(claim.labels()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create network {}: {e}", made.network));
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(made.volume.clone()),
            labels: Some(claim.labels()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create volume {}: {e}", made.volume));
    made
}

/// Creates (does not start) a `sleep` container named `name`.
pub async fn create_container(
    docker: &Docker,
    name: &str,
    labels: Option<HashMap<String, String>>,
) {
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_owned()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(IMAGE.to_owned()),
                cmd: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
                labels,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create container {name}: {e}"));
}

/// A backend whose configuration runs [`IMAGE`], with the image present.
pub async fn busybox_backend() -> DockerBackend {
    let text = format!("[images]\nmirror = \"{MIRROR}\"\n\n[services.box]\nimage = \"{IMAGE}\"\n");
    let config = EphemConfig::parse(&text, "runs.toml").unwrap_or_else(|e| panic!("{e}"));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = DockerBackend::connect(config, tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run = RunContext {
        run_id: "image-only".to_owned(),
        shard_count: 1,
        expires_at: std::time::SystemTime::now(),
    };
    backend
        .prepare(&run)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    backend
}

/// What a guarded test registers for removal.
#[derive(Clone)]
pub struct Guard {
    pub docker: Docker,
    /// The safety nets' view of the daemon, under test.
    pub cleanup: Arc<DockerCleanup>,
    runs: Arc<Mutex<Vec<String>>>,
    containers: Arc<Mutex<Vec<String>>>,
    volumes: Arc<Mutex<Vec<String>>>,
}

impl Guard {
    /// A new unique run id, whose resources are removed at the end.
    pub fn run(&self, test: &str) -> String {
        let id = unique_run_id(test);
        self.runs.lock().unwrap().push(id.clone());
        id
    }

    /// A unique name for an unlabelled container, removed at the end.
    pub fn unlabelled_container(&self, test: &str) -> String {
        let name = format!("ephem-unlabelled-{}", unique_run_id(test));
        self.containers.lock().unwrap().push(name.clone());
        name
    }

    /// A unique name for an unlabelled volume, removed at the end.
    pub fn unlabelled_volume(&self, test: &str) -> String {
        let name = format!("ephem-unlabelled-{}", unique_run_id(test));
        self.volumes.lock().unwrap().push(name.clone());
        name
    }
}

/// Runs `body`, then removes every registered run's resources and every
/// registered unlabelled resource, checks that no run left anything, and
/// re-raises a panic of `body`.
pub async fn guarded<F, Fut>(body: F)
where
    F: FnOnce(Guard) -> Fut,
    Fut: Future<Output = ()>,
{
    busybox_backend().await;
    // What `cargo ephem gc` and the reaper use: no configuration needed.
    let cleanup = DockerCleanup::connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!cleanup.address().is_empty());
    let docker = cleanup.client().clone();
    let guard = Guard {
        docker: docker.clone(),
        cleanup: Arc::new(cleanup),
        runs: Arc::default(),
        containers: Arc::default(),
        volumes: Arc::default(),
    };
    let outcome = AssertUnwindSafe(body(guard.clone())).catch_unwind().await;

    let runs = taken(&guard.runs);
    let mut left = Vec::new();
    for run in &runs {
        remove_run(&docker, run).await;
        left.extend(leftovers(&docker, run).await);
    }
    let force = Some(RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    });
    let containers = taken(&guard.containers);
    for name in containers {
        let _ = docker.remove_container(&name, force.clone()).await;
    }
    let volumes = taken(&guard.volumes);
    for name in volumes {
        let _ = docker
            .remove_volume(&name, Some(RemoveVolumeOptions { force: true }))
            .await;
    }
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(()) => assert!(left.is_empty(), "left behind: {left:?}"),
    }
}

/// The registered names, even if a panicking test poisoned the lock.
fn taken(names: &Mutex<Vec<String>>) -> Vec<String> {
    names.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn run_filter(run: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("cargo-ephem.run={run}")])])
}

/// Removes the run's containers, networks and volumes, ignoring errors.
async fn remove_run(docker: &Docker, run: &str) {
    // Twice: a container created concurrently with the first pass.
    for _ in 0..2 {
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(run_filter(run)),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(run_filter(run)),
        }))
        .await
        .unwrap_or_default();
    for id in networks.into_iter().filter_map(|n| n.id) {
        let _ = docker.remove_network(&id).await;
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(run_filter(run)),
        }))
        .await
        .map(|l| l.volumes.unwrap_or_default())
        .unwrap_or_default();
    for volume in volumes {
        let _ = docker
            .remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true }))
            .await;
    }
}

/// `kind name` of everything still labelled with the run.
pub async fn leftovers(docker: &Docker, run: &str) -> Vec<String> {
    let mut left: Vec<String> = super::leftovers(docker, run).await;
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(run_filter(run)),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    left.extend(volumes.into_iter().map(|v| format!("volume {}", v.name)));
    left
}

fn short(run: &str) -> String {
    run.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase()
}
