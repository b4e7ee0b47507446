//! Finding a Docker-compatible daemon: `DOCKER_HOST`, Docker's socket, then Podman's.

use std::path::Path;
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};
use tokio::time::Instant;

use crate::EnvError;

/// How long connecting may take in all; the runner promises an answer within 5 s.
const CONNECT_BUDGET: Duration = Duration::from_millis(4500);

/// Timeout of every later API request, except streams that follow logs or pulls.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A daemon that answered, with what the rest of the backend needs to know about it.
pub(crate) struct Connection {
    /// The client, with its API version negotiated down to the daemon's.
    pub docker: Docker,
    /// The address that answered, for messages.
    pub address: String,
    /// Where published ports are reached: 127.0.0.1, or a tcp:// daemon's host.
    pub host: String,
}

/// A daemon that answered, for callers without a configuration (`cargo ephem
/// gc`, the reaper).
pub struct DaemonConnection {
    /// The client, with its API version negotiated down to the daemon's.
    pub docker: Docker,
    /// The address that answered, e.g. `unix:///var/run/docker.sock`.
    pub address: String,
}

/// Connects like [`DockerBackend::connect`](super::DockerBackend::connect)
/// does (`DOCKER_HOST`, Docker's socket, then Podman's; within 5 s;
/// API version negotiated), without needing a configuration.
pub async fn connect_daemon() -> Result<DaemonConnection, EnvError> {
    let conn = connect().await?;
    Ok(DaemonConnection {
        docker: conn.docker,
        address: conn.address,
    })
}

/// One address to try.
struct Candidate {
    address: String,
    kind: Kind,
}

enum Kind {
    Unix(String),
    Tcp { url: String, host: String },
    Unsupported(&'static str),
}

/// Connects to the first daemon that answers, within [`CONNECT_BUDGET`].
pub(crate) async fn connect() -> Result<Connection, EnvError> {
    let docker_host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty());
    let candidates = match &docker_host {
        Some(host) => vec![parse_docker_host(host.trim())],
        None => default_sockets(),
    };
    let deadline = Instant::now() + CONNECT_BUDGET;
    let mut failures = Vec::new();
    for candidate in &candidates {
        match try_candidate(candidate, deadline).await {
            Ok(conn) => return Ok(conn),
            Err(reason) => failures.push((candidate.address.clone(), reason)),
        }
    }
    let hint = match &docker_host {
        Some(_) => "check that the daemon listens at DOCKER_HOST, or unset DOCKER_HOST to use the local socket".to_owned(),
        None if failures.iter().any(|(_, r)| r.contains("ermission denied")) => {
            "add your user to the `docker` group (then log in again) or run the daemon rootless and set DOCKER_HOST".to_owned()
        }
        None => "start Docker (e.g. `sudo systemctl start docker`) or Podman (`systemctl --user start podman.socket`), or set DOCKER_HOST".to_owned(),
    };
    Err(EnvError::Unreachable {
        backend: "the Docker daemon".to_owned(),
        address: failures
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        reason: failures
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        hint,
    })
}

async fn try_candidate(candidate: &Candidate, deadline: Instant) -> Result<Connection, String> {
    let (docker, host) = match &candidate.kind {
        Kind::Unix(path) => {
            if !Path::new(path).exists() {
                return Err(format!("no socket at {path}"));
            }
            let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(|e| e.to_string())?;
            (docker, "127.0.0.1".to_owned())
        }
        Kind::Tcp { url, host } => {
            let docker = Docker::connect_with_http(url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(|e| e.to_string())?;
            (docker, host.clone())
        }
        Kind::Unsupported(why) => return Err((*why).to_owned()),
    };
    // bollard speaks a newer API than e.g. Docker 20.10 (1.41); without
    // negotiating, every request would fail with "client version too new".
    let docker = match tokio::time::timeout_at(deadline, docker.negotiate_version()).await {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => return Err(describe(&e)),
        Err(_) => return Err("no answer in time".to_owned()),
    };
    Ok(Connection {
        docker,
        address: candidate.address.clone(),
        host,
    })
}

/// The innermost cause of a connection error, e.g. `Connection refused (os
/// error 111)` rather than hyper's layers of context.
fn describe(err: &bollard::errors::Error) -> String {
    let mut innermost: &dyn std::error::Error = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

fn parse_docker_host(value: &str) -> Candidate {
    let address = value.to_owned();
    let kind = if let Some(path) = value.strip_prefix("unix://") {
        Kind::Unix(path.to_owned())
    } else if value.starts_with('/') {
        Kind::Unix(value.to_owned())
    } else if let Some(rest) = value
        .strip_prefix("tcp://")
        .or_else(|| value.strip_prefix("http://"))
    {
        let authority = rest.split('/').next().unwrap_or(rest);
        Kind::Tcp {
            url: format!("tcp://{authority}"),
            host: host_of(authority),
        }
    } else if value.starts_with("ssh://") {
        Kind::Unsupported("ssh:// is not supported; forward the socket (ssh -L /tmp/docker.sock:/var/run/docker.sock HOST) and use unix://")
    } else if value.starts_with("https://") || value.starts_with("npipe://") {
        Kind::Unsupported("only unix:// and tcp:// daemons are supported")
    } else {
        Kind::Unsupported(
            "not a daemon address; write unix:///path/to/docker.sock or tcp://HOST:PORT",
        )
    };
    Candidate { address, kind }
}

/// `host` of `host:port` or `[v6]:port`, as used in `${host}`.
fn host_of(authority: &str) -> String {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return rest[..end].to_owned();
        }
    }
    match authority.rsplit_once(':') {
        Some((host, _)) => host.to_owned(),
        None => authority.to_owned(),
    }
}

fn default_sockets() -> Vec<Candidate> {
    let mut paths = vec!["/var/run/docker.sock".to_owned()];
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        if !dir.is_empty() {
            paths.push(format!("{dir}/podman/podman.sock"));
        }
    }
    paths.push("/run/podman/podman.sock".to_owned());
    paths
        .into_iter()
        .map(|path| Candidate {
            address: format!("unix://{path}"),
            kind: Kind::Unix(path),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_forms() {
        assert!(
            matches!(parse_docker_host("unix:///run/docker.sock").kind, Kind::Unix(p) if p == "/run/docker.sock")
        );
        match parse_docker_host("tcp://10.0.0.5:2375").kind {
            Kind::Tcp { url, host } => assert_eq!(
                (url.as_str(), host.as_str()),
                ("tcp://10.0.0.5:2375", "10.0.0.5")
            ),
            _ => panic!("tcp:// should be a tcp candidate"),
        }
        assert!(matches!(
            parse_docker_host("ssh://me@box").kind,
            Kind::Unsupported(_)
        ));
        assert_eq!(host_of("[::1]:2375"), "::1");
    }
}
