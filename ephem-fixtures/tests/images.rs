//! Images are pulled once per run, through the mirror, and tagged under the
//! name the configuration uses.
//!
//! Its own test binary: it removes the local busybox image first, which
//! would disturb tests running beside it (test binaries run one at a time).

mod common;

use bollard::query_parameters::RemoveImageOptions;
use common::scenario;
use ephem_fixtures::{Backend, EnvEvent};
use futures_util::future::join_all;

#[tokio::test]
async fn one_pull_per_image_for_four_shards_through_the_mirror() {
    let toml = r#"
[services.a]
image = "busybox:1.36"
cmd = ["sleep", "300"]

[services.b]
image = "docker.io/library/busybox:1.36"
cmd = ["sleep", "300"]
"#;
    scenario("pull-once", toml, 4, |mut s| async move {
        for name in ["busybox:1.36", "localhost:5000/library/busybox:1.36"] {
            let options = RemoveImageOptions {
                force: true,
                ..Default::default()
            };
            match s.docker().remove_image(name, Some(options), None).await {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => panic!("cannot remove {name}: {e}"),
            }
        }
        assert!(
            s.docker().inspect_image("busybox:1.36").await.is_err(),
            "the image must be absent before the test"
        );

        // prepare and four provisions at once: they must share one pull.
        let shards: Vec<_> = (1..=4).map(|n| s.shard(n)).collect();
        let (prepared, envs) = tokio::join!(
            s.backend.prepare(&s.run),
            join_all(shards.iter().map(|shard| s.backend.provision(shard)))
        );
        prepared.unwrap_or_else(|e| panic!("{e}"));
        for env in envs {
            env.unwrap_or_else(|e| panic!("{e}"));
        }

        let events = s.drain_events();
        let pulls: Vec<&EnvEvent> = events
            .iter()
            .filter(|e| matches!(e, EnvEvent::ImageReady { pulled: true, .. }))
            .collect();
        assert_eq!(pulls.len(), 1, "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, EnvEvent::PullProgress { current, .. } if *current > 0)),
            "{events:?}"
        );

        let image = s
            .docker()
            .inspect_image("busybox:1.36")
            .await
            .expect("tagged under the original name");
        assert!(image
            .repo_tags
            .unwrap_or_default()
            .contains(&"busybox:1.36".to_owned()));
        s
    })
    .await;
}
