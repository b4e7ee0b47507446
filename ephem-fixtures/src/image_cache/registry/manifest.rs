//! Reading manifests and indexes through the OCI spec's types. Reading
//! only: the cache stores and serves the bytes exactly as the registry sent
//! them (re-serialising would change their digest).

use oci_spec::image::ImageManifest;

/// Largest manifest or index read (containerd's limit too); a registry
/// that sends more is cut off.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Manifest media types asked for: indexes and image manifests, OCI's and
/// Docker's.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type is a multi-platform index (OCI's or Docker's list).
pub fn is_index(media_type: &str) -> bool {
    media_type.contains("manifest.list") || media_type.contains("image.index")
}

/// The media type a manifest declares in its own `mediaType` field, for a
/// registry that served it as `application/json` or without a type.
pub fn declared_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct MediaTypeOnly {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<MediaTypeOnly>(bytes)
        .ok()
        .and_then(|m| m.media_type)
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned())
}

/// Config, then layers, of an image manifest, with the sizes its
/// descriptors give; `None` when it is not an image manifest or names a
/// blob by other than a sha256 digest (the cache's only kind).
pub fn blobs(bytes: &[u8]) -> Option<Vec<(String, u64)>> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).ok()?;
    let entry = |d: &oci_spec::image::Descriptor| {
        d.as_digest_sha256()?;
        Some((d.digest().to_string(), d.size()))
    };
    std::iter::once(manifest.config())
        .chain(manifest.layers())
        .map(entry)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_oci_manifests_name_config_then_layers() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('a'), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d('b'), "size": 20},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d('c'), "size": 30},
            ],
        });
        let bytes = manifest.to_string().into_bytes();
        assert_eq!(
            blobs(&bytes).unwrap(),
            vec![(d('a'), 10), (d('b'), 20), (d('c'), 30)]
        );
        assert_eq!(
            declared_media_type(&bytes),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let index = serde_json::json!({"schemaVersion": 2, "manifests": []}).to_string();
        assert_eq!(blobs(index.as_bytes()), None);
        let bad_digest = manifest.to_string().replace(&d('b'), "sha256:short");
        assert_eq!(blobs(bad_digest.as_bytes()), None);
    }
}
