//! An unreachable daemon is reported within seconds, naming the address.
//!
//! Its own test binary: it sets DOCKER_HOST, which no other test may see.

use std::time::{Duration, Instant};

use ephem_fixtures::{Backend, DockerBackend, EnvError, EphemConfig};

async fn connect_error(docker_host: &str) -> (EnvError, Duration) {
    std::env::set_var("DOCKER_HOST", docker_host);
    let config = EphemConfig::parse("", "ephem.toml").unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let result = DockerBackend::connect(config, tx).await;
    let elapsed = started.elapsed();
    match result {
        Err(e) => (e, elapsed),
        Ok(backend) => panic!("connected to {docker_host} at {}", backend.address()),
    }
}

#[tokio::test]
async fn unreachable_daemons_fail_fast_with_the_address() {
    let (err, elapsed) = connect_error("tcp://127.0.0.1:1").await;
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(matches!(err, EnvError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("tcp://127.0.0.1:1") && message.contains("DOCKER_HOST"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");

    let (err, elapsed) = connect_error("unix:///nonexistent/docker.sock").await;
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    let message = err.to_string();
    assert!(
        message.contains("no socket at /nonexistent/docker.sock"),
        "{message}"
    );

    let (err, _) = connect_error("ssh://someone@somewhere").await;
    assert!(err.to_string().contains("ssh:// is not supported"), "{err}");
    std::env::remove_var("DOCKER_HOST");
}
