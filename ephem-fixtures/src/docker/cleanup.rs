//! The Docker backend's safety-net side: every labelled container, network
//! and volume of cargo-ephem runs, their removal, and lease volumes.

use std::time::SystemTime;

use bollard::Docker;

use super::{connect, inventory, labels, lease};
use crate::{Cleanup, EnvError, RunResource};

/// Lists, removes and renews the resources of cargo-ephem runs on one daemon.
#[derive(Clone)]
pub struct DockerCleanup {
    docker: Docker,
    address: String,
    /// This runner, as labelled on the lease volumes it creates.
    owner: labels::Owner,
}

impl DockerCleanup {
    /// Connects like [`DockerBackend::connect`](super::DockerBackend::connect)
    /// (`DOCKER_HOST`, Docker's socket, then Podman's; within 5 s), without
    /// needing a configuration.
    pub async fn connect() -> Result<DockerCleanup, EnvError> {
        let conn = connect::connect().await?;
        Ok(DockerCleanup::new(conn.docker, conn.address))
    }

    pub(crate) fn new(docker: Docker, address: String) -> DockerCleanup {
        DockerCleanup {
            docker,
            address,
            owner: labels::Owner::current(),
        }
    }

    /// The underlying client, for diagnostics and tests.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

#[async_trait::async_trait]
impl Cleanup for DockerCleanup {
    fn backend(&self) -> &str {
        "docker"
    }

    fn address(&self) -> &str {
        &self.address
    }

    async fn list(&self) -> Result<Vec<RunResource>, EnvError> {
        inventory::list_resources(&self.docker).await
    }

    async fn remove(&self, resources: &[RunResource]) -> Vec<crate::cleanup::Removal> {
        inventory::remove_resources(&self.docker, resources).await
    }

    async fn remove_run(&self, run_id: &str) -> Result<usize, EnvError> {
        inventory::reap_run(&self.docker, run_id).await
    }

    /// Creates a lease volume carrying the later expiry and removes the
    /// run's earlier leases (labels cannot change once set).
    async fn renew(
        &self,
        run_id: &str,
        expires_at: SystemTime,
        keep: bool,
    ) -> Result<(), EnvError> {
        lease::renew(&self.docker, &self.owner, run_id, expires_at, keep).await
    }

    async fn end_run(&self, run_id: &str) -> Result<(), EnvError> {
        lease::remove_leases(&self.docker, run_id).await
    }
}
