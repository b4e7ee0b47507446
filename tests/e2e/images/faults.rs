//! Faults of the image cache a user sees through the binary: a restore
//! that fails both ways, a cached image missing a blob with its registry
//! gone. Each costs only the cache: one warning, a direct pull, and exit
//! 102 naming the image only when that pull fails too.

use std::process::Command;

use super::{
    config_naming, images_cmd, remove_from_registry, sha256_of, test_repository, warnings, Proxy,
    TestImage,
};
use crate::support::{describe, run, shared_daemon};

/// Pushes, with the registry's HTTP API, an image whose config is not
/// JSON: the registry and the cache's fill take it (the bytes match their
/// digests), the daemon refuses it however it arrives. Returns its name
/// by digest, which the caller removes from the registry.
fn push_broken_image(repository: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let upload = |bytes: &[u8]| -> (String, usize) {
        let file = dir.path().join("blob");
        std::fs::write(&file, bytes).expect("write");
        let digest = sha256_of(&file);
        let out = Command::new("curl")
            .args(["-sS", "-f", "-D", "-", "-o", "/dev/null", "-X", "POST"])
            .arg(format!(
                "http://127.0.0.1:5000/v2/{repository}/blobs/uploads/"
            ))
            .output()
            .expect("curl runs");
        let headers = String::from_utf8_lossy(&out.stdout);
        let location = headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("location:")
                    .then(|| l[9..].trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no upload location: {headers}"));
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://127.0.0.1:5000{location}")
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = Command::new("curl")
            .args(["-sS", "-f", "-X", "PUT", "-H"])
            .arg("Content-Type: application/octet-stream")
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{location}{sep}digest={digest}"))
            .output()
            .expect("curl runs");
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        (digest, bytes.len())
    };
    let (config, config_len) = upload(b"this is not an image config");
    // One real (empty) layer: a gzip of an empty tar.
    let tar_gz = Command::new("sh")
        .args(["-c", "tar -cf - -T /dev/null | gzip -n"])
        .output()
        .expect("tar runs")
        .stdout;
    let (layer, layer_len) = upload(&tar_gz);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_len}],
    });
    let put = Command::new("curl")
        .args(["-sS", "-f", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.oci.image.manifest.v1+json")
        .arg("--data-binary")
        .arg(manifest.to_string())
        .arg(format!("http://127.0.0.1:5000/v2/{repository}/manifests/1"))
        .output()
        .expect("curl runs");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let file = dir.path().join("manifest");
    std::fs::write(&file, manifest.to_string()).expect("write");
    format!("127.0.0.1:5000/{repository}@{}", sha256_of(&file))
}

/// Removes a manifest from the test registry on drop.
struct InRegistry(String);

impl Drop for InRegistry {
    fn drop(&mut self) {
        remove_from_registry(&self.0);
    }
}

#[test]
fn a_restore_that_fails_both_ways_falls_back_to_a_direct_pull() {
    let _daemon = shared_daemon();
    let repository = format!("{}/e2e", test_repository());
    let name = format!("127.0.0.1:5000/{repository}:1");
    let _broken = InRegistry(push_broken_image(&repository));
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_naming(&name, dir.path());
    let cache = dir.path().join("cache");

    // The cache takes the image; neither restore path nor the registry's
    // own image works: exit 102, naming the image, after one warning.
    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("error") && last.contains(&name),
        "{}",
        describe(&out)
    );
    let warned = warnings(&out.stderr);
    assert_eq!(warned.len(), 1, "one warning: {}", describe(&out));
    assert!(
        warned[0].contains(&name) && warned[0].contains("directly"),
        "{}",
        describe(&out)
    );

    // The tag now names a good image; the cache still holds the broken
    // one: one warning, then the direct pull brings the good one.
    let good = TestImage::push_as(name.clone());
    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("registry {name}"),
        "{}",
        describe(&out)
    );
    let warned = warnings(&out.stderr);
    assert_eq!(warned.len(), 1, "one warning: {}", describe(&out));
    assert!(
        warned[0].contains(&name) && warned[0].contains("served") && warned[0].contains("load"),
        "the warning says why both ways failed: {}",
        describe(&out)
    );
    assert!(TestImage::present(&good.name));
}

#[test]
fn a_cached_image_missing_a_blob_with_its_registry_gone_warns_then_fails_naming_it() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let proxy = Proxy::start(false);
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_naming(&name, dir.path());
    let cache = dir.path().join("cache");
    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    image.remove_local();
    drop(proxy);
    // The largest blob (a layer) is lost.
    let largest = std::fs::read_dir(cache.join("blobs/sha256"))
        .expect("blobs")
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    std::fs::remove_file(largest.path()).expect("remove blob");

    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let warned = warnings(&out.stderr);
    assert_eq!(warned.len(), 1, "one warning: {}", describe(&out));
    assert!(
        warned[0].contains(&name) && warned[0].contains("incomplete"),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains(&name),
        "{}",
        describe(&out)
    );
}
