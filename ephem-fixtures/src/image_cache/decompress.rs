//! `EPHEM_IMAGE_SERVE=decompressed`: the loopback registry serves gzip layers
//! decompressed, so the daemon spends no time in gunzip (a knob for the
//! benchmark; stored layers are the default).
//!
//! The daemon checks every blob against the manifest's digest, so a
//! decompressed layer needs a manifest of its own: each gzip layer becomes
//! its uncompressed media type, its digest the config's diff id, its size
//! the uncompressed length. The config is untouched, so the image id is the
//! same. Every layer is decompressed once here first, to learn its length
//! and to check that it really hashes to its diff id before anything is
//! served.

use std::collections::HashMap;
use std::io::Read;

use super::layout::{Hasher, Layout};

/// The env variable choosing how layers are served: `stored` or `decompressed`.
pub const SERVE_ENV: &str = "EPHEM_IMAGE_SERVE";

/// Whether `EPHEM_IMAGE_SERVE=decompressed`.
pub fn wanted() -> bool {
    std::env::var(SERVE_ENV).is_ok_and(|v| v.trim() == "decompressed")
}

/// A manifest whose gzip layers are served decompressed.
#[derive(Clone, Debug)]
pub struct Decompressed {
    /// The rewritten manifest's digest (stored as a blob).
    pub digest: String,
    /// Its media type (the original's).
    pub media_type: String,
    /// Diff id to (stored gzip layer, uncompressed length).
    pub layers: HashMap<String, (String, u64)>,
}

/// Rewrites the manifest `digest` of `media_type` for decompressed layers,
/// and stores it. `Ok(None)`: a layer is compressed some other way (zstd),
/// so the layers are served as stored.
pub fn prepare(
    layout: &Layout,
    digest: &str,
    media_type: &str,
) -> Result<Option<Decompressed>, String> {
    let read = |d: &str| -> Result<Vec<u8>, String> {
        let path = layout
            .blob_path(d)
            .ok_or_else(|| format!("malformed digest {d}"))?;
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&read(digest)?).map_err(|e| format!("manifest {digest}: {e}"))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| format!("manifest {digest} names no config"))?
        .to_owned();
    let config: serde_json::Value = serde_json::from_slice(&read(&config_digest)?)
        .map_err(|e| format!("config {config_digest}: {e}"))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let Some(layers) = manifest["layers"].as_array_mut() else {
        return Err(format!("manifest {digest} names no layers"));
    };
    if layers.len() != diff_ids.len() {
        return Err(format!(
            "manifest {digest} has {} layers but its config {} diff ids",
            layers.len(),
            diff_ids.len()
        ));
    }
    let mut map = HashMap::new();
    for (layer, diff_id) in layers.iter_mut().zip(&diff_ids) {
        let kind = layer["mediaType"].as_str().unwrap_or_default().to_owned();
        let plain = match kind.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                "application/vnd.docker.image.rootfs.diff.tar"
            }
            "application/vnd.oci.image.layer.v1.tar+gzip" => {
                "application/vnd.oci.image.layer.v1.tar"
            }
            "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.v1.tar" => continue,
            _ => return Ok(None),
        };
        let stored = layer["digest"].as_str().unwrap_or_default().to_owned();
        let (got, len) = gunzip_digest(layout, &stored)?;
        if got != *diff_id {
            return Err(format!(
                "layer {stored} decompresses to {got}, not its diff id {diff_id}"
            ));
        }
        layer["mediaType"] = plain.into();
        layer["digest"] = diff_id.clone().into();
        layer["size"] = len.into();
        map.insert(diff_id.clone(), (stored, len));
    }
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let new_digest = super::layout::digest_of(&bytes);
    layout
        .put_blob(&new_digest, &bytes)
        .map_err(|e| format!("cannot store the decompressed manifest: {e}"))?;
    Ok(Some(Decompressed {
        digest: new_digest,
        media_type: media_type.to_owned(),
        layers: map,
    }))
}

/// The sha256 and length of a stored gzip layer's decompressed bytes.
fn gunzip_digest(layout: &Layout, digest: &str) -> Result<(String, u64), String> {
    let mut reader = open_gunzip(layout, digest)?;
    let mut hasher = Hasher::default();
    let mut len = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("layer {digest} does not decompress: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finish(), len))
}

/// A reader of a stored gzip layer's decompressed bytes.
pub fn open_gunzip(layout: &Layout, digest: &str) -> Result<impl Read + Send, String> {
    let path = layout
        .blob_path(digest)
        .ok_or_else(|| format!("malformed digest {digest}"))?;
    let file =
        std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
        file,
    )))
}
