//! The inventory sees every labelled resource of a run and nothing
//! unlabelled; removal and reaping leave nothing behind.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::runs::{create_container, guarded, leftovers, make_run, Claim};
use ephem_fixtures::docker::labels;
use ephem_fixtures::{Backend, Cleanup, ResourceKind, RunResource};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A claim by this process, on this host, expiring in an hour.
fn claim_by_me(run: &str) -> Claim {
    Claim {
        run: run.to_owned(),
        shard: 1,
        pid: std::process::id(),
        pid_start: labels::process_start(std::process::id()),
        host: labels::hostname(),
        expires: now() + 3600,
    }
}

fn of_run<'a>(all: &'a [RunResource], run: &str) -> Vec<&'a RunResource> {
    all.iter().filter(|r| r.run == run).collect()
}

#[tokio::test]
async fn lists_a_runs_container_network_and_volume_and_nothing_unlabelled() {
    guarded(|g| async move {
        let run = g.run("inventory-list");
        let claim = claim_by_me(&run);
        let made = make_run(&g.docker, &claim).await;

        // Unlabelled, or with cargo-ephem labels but no run label: never listed.
        let bare = g.unlabelled_container("bare");
        create_container(&g.docker, &bare, None).await;
        let decoy = g.unlabelled_container("decoy");
        let decoy_labels = HashMap::from([("cargo-ephem.shard".to_owned(), "1".to_owned())]);
        create_container(&g.docker, &decoy, Some(decoy_labels)).await;
        let bare_volume = g.unlabelled_volume("bare");
        g.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(bare_volume.clone()),
                ..Default::default()
            })
            .await
            .unwrap();

        let all = g.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
        for unlabelled in [&bare, &decoy, &bare_volume] {
            assert!(
                !all.iter().any(|r| &r.name == unlabelled),
                "{unlabelled} has no run label but was listed"
            );
        }
        assert!(all.iter().all(|r| !r.run.is_empty()));

        let mine = of_run(&all, &run);
        let mut kinds: Vec<(ResourceKind, &str)> =
            mine.iter().map(|r| (r.kind, r.name.as_str())).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                (ResourceKind::Container, made.container.as_str()),
                (ResourceKind::Network, made.network.as_str()),
                (ResourceKind::Volume, made.volume.as_str()),
            ]
        );
        for r in &mine {
            assert_eq!(r.shard, Some(1), "{r:?}");
            assert_eq!(r.pid, Some(claim.pid), "{r:?}");
            assert_eq!(r.pid_start, claim.pid_start, "{r:?}");
            assert_eq!(r.host.as_deref(), Some(claim.host.as_str()), "{r:?}");
            assert_eq!(r.expires, Some(claim.expires), "{r:?}");
            assert!(!r.lease);
            let created = r
                .created
                .unwrap_or_else(|| panic!("no creation time: {r:?}"));
            let age = SystemTime::now()
                .duration_since(created)
                .unwrap_or(Duration::ZERO);
            assert!(age < Duration::from_secs(600), "{r:?} is {age:?} old");
        }

        // Removal: containers, then networks, then volumes; all succeed.
        let mine: Vec<RunResource> = mine.into_iter().cloned().collect();
        let removed = g.cleanup.remove(&mine).await;
        let order: Vec<ResourceKind> = removed.iter().map(|(r, _)| r.kind).collect();
        assert_eq!(
            order,
            [
                ResourceKind::Container,
                ResourceKind::Network,
                ResourceKind::Volume
            ]
        );
        for (r, result) in &removed {
            assert_eq!(result, &Ok(()), "{r:?}");
        }
        assert_eq!(leftovers(&g.docker, &run).await, Vec::<String>::new());

        // Already gone counts as removed.
        for (r, result) in g.cleanup.remove(&mine).await {
            assert_eq!(result, Ok(()), "removing {r:?} again");
        }

        // The unlabelled ones are untouched.
        g.docker.inspect_container(&bare, None).await.unwrap();
        g.docker.inspect_container(&decoy, None).await.unwrap();
        g.docker.inspect_volume(&bare_volume).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn reap_run_catches_a_container_created_after_it_started() {
    guarded(|g| async move {
        let run = g.run("inventory-reap");
        let other = g.run("inventory-reap-other");
        let claim = claim_by_me(&run);
        let made = make_run(&g.docker, &claim).await;
        make_run(&g.docker, &claim_by_me(&other)).await;
        // Started too: reaping must kill it.
        g.docker
            .start_container(&made.container, None)
            .await
            .unwrap();

        let late = format!("{}-late", made.container);
        let docker = g.docker.clone();
        let late_labels = claim.labels();
        let late_name = late.clone();
        let creator = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            create_container(&docker, &late_name, Some(late_labels)).await;
            Instant::now()
        });

        let started = Instant::now();
        let removed = g
            .cleanup
            .remove_run(&run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        let created_at = creator.await.expect("late create");
        assert!(
            created_at > started,
            "the late container must be created while reaping"
        );
        assert!(took < Duration::from_secs(10), "reaping took {took:?}");
        assert_eq!(
            removed, 4,
            "container, network, volume and the late container"
        );
        assert_eq!(leftovers(&g.docker, &run).await, Vec::<String>::new());

        // Another run on the same daemon is untouched.
        assert_eq!(leftovers(&g.docker, &other).await.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn reap_run_of_an_unknown_run_finds_nothing_quickly() {
    guarded(|g| async move {
        let run = g.run("inventory-reap-empty");
        let started = Instant::now();
        let removed = g
            .cleanup
            .remove_run(&run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(removed, 0);
        // Two empty passes (0 s and 1 s) end it.
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn provisioned_resources_name_their_runner_and_its_start_time() {
    const CONFIG: &str = r#"
[services.box]
image = "busybox:1.36"
cmd = ["sleep", "3600"]
"#;
    common::scenario("inventory-provisioned", CONFIG, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        let all = s
            .backend
            .cleanup()
            .list()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mine = of_run(&all, &s.run.run_id);
        assert_eq!(mine.len(), 2, "a network and a container: {mine:?}");
        let me = std::process::id();
        for r in mine {
            assert_eq!(r.pid, Some(me), "{r:?}");
            assert_eq!(r.pid_start, labels::process_start(me), "{r:?}");
            assert!(r.pid_start.is_some() || !cfg!(target_os = "linux"));
            assert_eq!(r.host, Some(labels::hostname()), "{r:?}");
            assert_eq!(r.shard, Some(1));
        }
        s
    })
    .await;
}
