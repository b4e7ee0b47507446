//! What happens when things go wrong: clear errors, and nothing left behind.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use common::{container_name, not_ready, scenario};
use ephem_fixtures::{Backend, EnvError, EnvEvent};

async fn containers_of(s: &common::Scenario) -> Vec<(String, String)> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("cargo-ephem.run={}", s.run.run_id)],
    )]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    s.docker()
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let name = c.names.unwrap_or_default().join(",");
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            (name, state)
        })
        .collect()
}

#[tokio::test]
async fn early_exit_reports_exit_code_and_logs_and_stops_dependants() {
    let toml = r#"
[services.box]
image = "busybox:1.36"
cmd = ["sh", "-c", "echo boom-line; echo to-stderr >&2; exit 3"]
wait = { log = "never printed" }

[services.after]
image = "busybox:1.36"
depends-on = ["box"]
"#;
    scenario("early-exit", toml, 1, |s| async move {
        let result = s.up(1).await;
        let message = match &result {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        let (service, reason, logs) = not_ready(result);
        assert_eq!(service, "box");
        assert!(reason.contains("exited with code 3"), "{reason}");
        assert!(
            logs.iter().any(|l| l == "boom-line") && logs.iter().any(|l| l == "to-stderr"),
            "{logs:?}"
        );
        assert!(
            message.starts_with("shard 1: service box not ready (log \"never printed\" within 1m)"),
            "{message}"
        );
        // The dependant was never created; the failed one is still there for teardown.
        let containers = containers_of(&s).await;
        assert_eq!(containers.len(), 1, "{containers:?}");
        assert!(containers[0].0.ends_with("-box"), "{containers:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn a_container_that_cannot_start_is_reported_and_removed() {
    let toml = r#"
[services.box]
image = "busybox:1.36"
cmd = ["/no/such/binary"]
"#;
    scenario("no-start", toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(
            reason.contains("did not start") && reason.contains("/no/such/binary"),
            "{reason}"
        );
        // Created but never started: teardown must still find and remove it.
        let containers = containers_of(&s).await;
        assert_eq!(containers.len(), 1, "{containers:?}");
        assert_eq!(containers[0].1, "created", "{containers:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn a_missing_image_names_the_image_and_the_mirror() {
    let toml = r#"
[services.box]
image = "busybox:no-such-tag"
"#;
    scenario("pull-error", toml, 1, |s| async move {
        match s.backend.prepare(&s.run).await {
            Err(EnvError::Pull {
                image,
                registry,
                reason,
            }) => {
                assert_eq!(image, "busybox:no-such-tag");
                assert_eq!(registry, "localhost:5000");
                assert!(!reason.is_empty());
            }
            other => panic!("expected a pull error, got {other:?}"),
        }
        s
    })
    .await;
}

/// A provision dropped half-way (Ctrl-C, a runner timeout) leaves containers
/// and a network that teardown must still find.
#[tokio::test]
async fn teardown_after_an_abandoned_provision_is_complete_and_idempotent() {
    let toml = r#"
[services.slow]
image = "busybox:1.36"
cmd = ["sleep", "300"]
wait = { log = "never" }

[services.other]
image = "busybox:1.36"
cmd = ["sleep", "300"]
"#;
    scenario("abandoned", toml, 2, |s| async move {
        s.backend
            .prepare(&s.run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let abandoned =
            tokio::time::timeout(Duration::from_secs(3), s.backend.provision(&s.shard(1))).await;
        assert!(abandoned.is_err(), "the slow service never becomes ready");
        assert_eq!(containers_of(&s).await.len(), 2);
        for _ in 0..2 {
            s.backend
                .teardown(&s.shard(1))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(containers_of(&s).await.is_empty());
        // Shard 2 was never provisioned: teardown is a no-op, not an error.
        s.backend
            .teardown(&s.shard(2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s
    })
    .await;
}

#[tokio::test]
async fn a_service_that_dies_during_tests_is_reported() {
    let toml = r#"
[services.box]
image = "busybox:1.36"
cmd = ["sleep", "300"]
"#;
    scenario("service-exit", toml, 1, |mut s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        // Let the event follower subscribe before the container dies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.docker()
            .kill_container(
                &container_name(&s.run, 1, "box"),
                None::<KillContainerOptions>,
            )
            .await
            .unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.events.recv().await {
                    Some(EnvEvent::ServiceExited {
                        shard,
                        service,
                        exit_code,
                        ..
                    }) => break (shard, service, exit_code),
                    Some(_) => continue,
                    None => panic!("event channel closed"),
                }
            }
        })
        .await
        .expect("a ServiceExited event within 15 s");
        assert_eq!(exited, (1, "box".to_owned(), Some(137)));
        s
    })
    .await;
}

/// A failing service that prints the password it was given: the error's
/// logs (shown, and kept in reports) carry `***`, never the secret.
#[tokio::test]
async fn a_failing_services_logs_are_masked() {
    let toml = r#"
[services.db]
image = "busybox:1.36"
env = { PASSWORD = "${random}" }
cmd = ["sh", "-c", "echo \"starting with password=$PASSWORD\"; exit 3"]
wait = { log = "never printed" }
"#;
    scenario("masked-logs", toml, 1, |s| async move {
        let result = s.up(1).await;
        let (_, reason, logs) = not_ready(result);
        assert!(reason.contains("exited with code 3"), "{reason}");
        let line = logs
            .iter()
            .find(|l| l.starts_with("starting with password="))
            .unwrap_or_else(|| panic!("the log line is shown: {logs:?}"));
        assert_eq!(line, "starting with password=***", "the secret leaked");
        s
    })
    .await;
}
