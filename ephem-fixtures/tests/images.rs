//! Images are pulled once per run, through the mirror, and tagged under the
//! name the configuration uses.
//!
//! The test needs an image that is surely absent locally, without removing
//! one that tests running beside it (nextest runs binaries in parallel) use:
//! it copies busybox's manifest to a fresh tag in the local registry first.

mod common;

use std::process::Command;

use bollard::query_parameters::RemoveImageOptions;
use common::{scenario, MIRROR};
use ephem_fixtures::{Backend, EnvEvent};
use futures_util::future::join_all;

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// Publishes `library/busybox:1.36` again as `library/busybox:<tag>` in the
/// registry (same blobs, so nothing is uploaded).
fn registry_copy_tag(tag: &str) {
    let base = format!("http://{MIRROR}/v2/library/busybox/manifests");
    let get = Command::new("curl")
        .args([
            "-sf",
            "-H",
            &format!("Accept: {MANIFEST_TYPES}"),
            "-w",
            "\n%{content_type}",
            &format!("{base}/1.36"),
        ])
        .output()
        .expect("curl runs");
    assert!(
        get.status.success(),
        "cannot read busybox:1.36 from the registry; run scripts/provision-test-env.sh"
    );
    let text = String::from_utf8(get.stdout).expect("a JSON manifest");
    let (manifest, content_type) = text.rsplit_once('\n').expect("manifest and content type");
    let put = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            manifest,
            &format!("{base}/{tag}"),
        ])
        .output()
        .expect("curl runs");
    assert!(
        put.status.success(),
        "cannot tag busybox:{tag} in the registry: {}",
        String::from_utf8_lossy(&put.stderr)
    );
}

#[tokio::test]
async fn one_pull_per_image_for_four_shards_through_the_mirror() {
    let tag = format!("pull-test-{}", &common::unique_run_id("x")[..8]);
    registry_copy_tag(&tag);
    // Two spellings of one Docker Hub image: one distinct image, one pull.
    let toml = format!(
        r#"
[services.a]
image = "busybox:{tag}"
cmd = ["sleep", "300"]

[services.b]
image = "docker.io/library/busybox:{tag}"
cmd = ["sleep", "300"]
"#
    );
    let local = format!("busybox:{tag}");
    let mirrored = format!("{MIRROR}/library/busybox:{tag}");
    let checked = local.clone();
    scenario("pull-once", &toml, 4, |mut s| async move {
        let local = checked;
        assert!(
            s.docker().inspect_image(&local).await.is_err(),
            "{local} must be absent before the test"
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

        let image = s
            .docker()
            .inspect_image(&local)
            .await
            .expect("tagged under the original name");
        assert!(image.repo_tags.unwrap_or_default().contains(&local));

        s
    })
    .await;

    // After teardown, so no container uses them. Untag only (noprune): the
    // layers are busybox:1.36's, which other tests use.
    let docker = bollard::Docker::connect_with_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker answers");
    for name in [local, mirrored] {
        let options = RemoveImageOptions {
            noprune: true,
            ..Default::default()
        };
        docker
            .remove_image(&name, Some(options), None)
            .await
            .unwrap_or_else(|e| panic!("untag {name}: {e}"));
    }
}
