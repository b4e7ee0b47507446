//! Finding a Docker-compatible daemon: `DOCKER_HOST`, Docker's socket, then Podman's.

use std::time::Duration;

use bollard::Docker;
use http::Uri;
use tokio::time::Instant;

use crate::EnvError;

/// How long connecting may take in all; the runner promises an answer within 5 s.
const CONNECT_BUDGET: Duration = Duration::from_millis(4500);

/// Timeout of every later API request, except streams that follow logs or pulls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `${host}` for a daemon on a unix socket: its published ports are on loopback.
const LOOPBACK: &str = "127.0.0.1";

/// A daemon that answered, with what the rest of the backend needs to know about it.
pub(crate) struct Connection {
    /// The client, with its API version negotiated down to the daemon's.
    pub docker: Docker,
    /// The address that answered, for messages.
    pub address: String,
    /// Where published ports are reached: 127.0.0.1, or a tcp:// daemon's host.
    pub host: String,
    /// Podman's Docker-compatible service answered (see the README's Podman section).
    pub podman: bool,
}

/// One address to try.
struct Candidate {
    /// As written in `DOCKER_HOST` or by us, for messages.
    address: String,
    kind: Kind,
}

enum Kind {
    /// A URL that bollard's `connect_with_host` takes, and the `${host}` it implies.
    Daemon { url: String, host: String },
    /// An address we cannot use, and why, with how to fix it.
    Unsupported(&'static str),
}

/// Where the addresses came from, which decides the hint of a failure.
enum Source {
    DockerHost,
    Given,
    Defaults,
}

/// Connects to `DOCKER_HOST` if set, else to the first default socket that
/// answers, within [`CONNECT_BUDGET`].
pub(crate) async fn connect() -> Result<Connection, EnvError> {
    let docker_host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty());
    match docker_host {
        Some(host) => connect_first(&[parse_docker_host(host.trim())], Source::DockerHost).await,
        None => connect_first(&default_sockets(), Source::Defaults).await,
    }
}

/// Connects to `host`, written as `DOCKER_HOST` would be, ignoring `DOCKER_HOST`.
pub(crate) async fn connect_to(host: &str) -> Result<Connection, EnvError> {
    connect_first(&[parse_docker_host(host.trim())], Source::Given).await
}

async fn connect_first(candidates: &[Candidate], source: Source) -> Result<Connection, EnvError> {
    let deadline = Instant::now() + CONNECT_BUDGET;
    let mut failures = Vec::new();
    for candidate in candidates {
        match try_candidate(candidate, deadline).await {
            Ok(conn) => return Ok(conn),
            Err(reason) => failures.push((candidate.address.clone(), reason)),
        }
    }
    let hint = match source {
        Source::DockerHost => "check that the daemon listens at DOCKER_HOST, or unset DOCKER_HOST to use the local socket".to_owned(),
        Source::Given => "check that the daemon listens at that address".to_owned(),
        Source::Defaults if failures.iter().any(|(_, r)| r.contains("ermission denied")) => {
            "add your user to the `docker` group (then log in again) or run the daemon rootless and set DOCKER_HOST".to_owned()
        }
        Source::Defaults => "start Docker (e.g. `sudo systemctl start docker`) or Podman (`systemctl --user start podman.socket`), or set DOCKER_HOST".to_owned(),
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
    let (url, host) = match &candidate.kind {
        Kind::Daemon { url, host } => (url, host),
        Kind::Unsupported(why) => return Err((*why).to_owned()),
    };
    let docker = Docker::connect_with_host(url)
        .map_err(|e| match e {
            bollard::errors::Error::SocketNotFoundError(path) => format!("no socket at {path}"),
            other => describe(&other),
        })?
        .with_timeout(REQUEST_TIMEOUT);
    // bollard speaks a newer API than e.g. Docker 20.10 (1.41); without
    // negotiating, every request would fail with "client version too new".
    let docker = match tokio::time::timeout_at(deadline, docker.negotiate_version()).await {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => return Err(describe(&e)),
        Err(_) => return Err("no answer in time".to_owned()),
    };
    // A daemon that answered but not this is taken for Docker.
    let podman = match tokio::time::timeout_at(deadline, docker.version()).await {
        Ok(Ok(version)) => is_podman(&version),
        _ => false,
    };
    Ok(Connection {
        docker,
        address: candidate.address.clone(),
        host: host.clone(),
        podman,
    })
}

/// Podman's service lists a "Podman Engine" component; Docker's, "Engine".
fn is_podman(version: &bollard::models::SystemVersion) -> bool {
    version
        .components
        .iter()
        .flatten()
        .any(|c| c.name.starts_with("Podman"))
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

/// Sorts a `DOCKER_HOST` value into what bollard can connect to and what not.
fn parse_docker_host(value: &str) -> Candidate {
    let kind = if value.starts_with('/') {
        // Docker's CLI takes a bare path as a socket; bollard wants the scheme.
        daemon(format!("unix://{value}"), LOOPBACK)
    } else if value.starts_with("unix://") {
        daemon(value.to_owned(), LOOPBACK)
    } else if value.starts_with("tcp://") || value.starts_with("http://") {
        tcp(value)
    } else if value.starts_with("ssh://") {
        Kind::Unsupported("ssh:// is not supported; forward the socket (ssh -L /tmp/docker.sock:/var/run/docker.sock HOST) and use unix://")
    } else if value.starts_with("https://") || value.starts_with("npipe://") {
        Kind::Unsupported("only unix:// and tcp:// daemons are supported")
    } else {
        Kind::Unsupported(NOT_AN_ADDRESS)
    };
    Candidate {
        address: value.to_owned(),
        kind,
    }
}

const NOT_AN_ADDRESS: &str =
    "not a daemon address; write unix:///path/to/docker.sock or tcp://HOST:PORT";

fn daemon(url: String, host: &str) -> Kind {
    Kind::Daemon {
        url,
        host: host.to_owned(),
    }
}

/// `tcp://HOST:PORT` without any path, and HOST without IPv6 brackets as `${host}`.
fn tcp(value: &str) -> Kind {
    let Ok(uri) = value.parse::<Uri>() else {
        return Kind::Unsupported(NOT_AN_ADDRESS);
    };
    match (uri.authority(), uri.host()) {
        (Some(authority), Some(host)) if !host.is_empty() => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            daemon(format!("tcp://{authority}"), host)
        }
        _ => Kind::Unsupported(NOT_AN_ADDRESS),
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
        .map(|path| {
            let url = format!("unix://{path}");
            Candidate {
                address: url.clone(),
                kind: daemon(url, LOOPBACK),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL handed to bollard and the `${host}`, or the reason it is refused.
    fn parsed(value: &str) -> Result<(String, String), &'static str> {
        match parse_docker_host(value).kind {
            Kind::Daemon { url, host } => Ok((url, host)),
            Kind::Unsupported(why) => Err(why),
        }
    }

    fn ok(url: &str, host: &str) -> Result<(String, String), &'static str> {
        Ok((url.to_owned(), host.to_owned()))
    }

    #[test]
    fn docker_host_forms() {
        let unix = ok("unix:///run/docker.sock", "127.0.0.1");
        assert_eq!(parsed("unix:///run/docker.sock"), unix);
        assert_eq!(parsed("/run/docker.sock"), unix);
        assert_eq!(
            parsed("tcp://10.0.0.5:2375"),
            ok("tcp://10.0.0.5:2375", "10.0.0.5")
        );
        assert_eq!(
            parsed("http://10.0.0.5:2375/"),
            ok("tcp://10.0.0.5:2375", "10.0.0.5")
        );
        assert_eq!(parsed("tcp://[::1]:2375"), ok("tcp://[::1]:2375", "::1"));
        assert!(parsed("ssh://me@box")
            .unwrap_err()
            .contains("ssh:// is not supported"));
        assert!(parsed("https://box:2376")
            .unwrap_err()
            .contains("only unix:// and tcp://"));
        assert!(parsed("npipe:////./pipe/docker_engine").is_err());
        assert!(parsed("docker.sock")
            .unwrap_err()
            .contains("not a daemon address"));
        assert!(parsed("tcp://").is_err());
    }
}
