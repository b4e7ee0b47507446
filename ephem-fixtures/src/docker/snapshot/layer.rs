//! The snapshot's one layer: the state copied out of the container (the
//! daemon's archive API), each copied folder moved to where the image keeps
//! it, gzipped into a blob of the image cache; and the image around it (the
//! base image's config and manifest with the layer added).

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::{json, Value};

use crate::image_cache::layout::{Hasher, Layout};

/// A folder copied out of the container and where it goes in the image.
pub(crate) struct Copy {
    /// A tar of the folder: the daemon's archive (its entries start with
    /// the folder's own name), or, `rooted`, one whose entries are the
    /// folder's contents (`pg_basebackup -D - -Ft`).
    pub archive: Vec<u8>,
    /// The archive's entries are relative to the folder itself.
    pub rooted: bool,
    /// Absolute path in the image.
    pub to: String,
}

/// A blob written into the cache.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    pub digest: String,
    pub size: u64,
}

/// The written layer: its blob, and the digest of its uncompressed tar
/// (the config's `diff_id`).
pub(crate) struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// Writes the layer holding `copies` into the cache (a temporary file
/// renamed into place once complete: a reader never sees half a blob).
pub(crate) fn write_layer(layout: &Layout, copies: &[Copy]) -> io::Result<Layer> {
    let tmp = layout.temp_path("snapshot-layer");
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let compressed = Hashing::new(io::BufWriter::new(file));
        let gzip = GzEncoder::new(compressed, flate2::Compression::fast());
        let mut builder = tar::Builder::new(Hashing::new(gzip));
        for copy in copies {
            append_moved(&mut builder, copy)?;
        }
        let raw = builder.into_inner()?;
        let diff_id = raw.hasher.finish();
        let compressed = raw.inner.finish()?;
        let digest = compressed.hasher.finish();
        let size = compressed.written;
        let file = compressed.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = layout
            .blob_path(&digest)
            .ok_or_else(|| io::Error::other("malformed digest"))?;
        std::fs::rename(&tmp, path)?;
        Ok(Layer {
            blob: Blob { digest, size },
            diff_id,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends every entry of the copy's archive under `to`: its first path
/// component (the copied folder's name) replaced by `to`, or, for a rooted
/// archive, below a `to` entry of its own (mode 0700, owned as the
/// archive's first entry: Postgres starts only on a data folder that is
/// its own and closed to others).
fn append_moved<W: Write>(builder: &mut tar::Builder<W>, copy: &Copy) -> io::Result<()> {
    let to = Path::new(copy.to.trim_start_matches('/'));
    let rooted = copy.rooted;
    let moved = |path: &Path| -> io::Result<PathBuf> {
        let mut parts = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir));
        if !rooted {
            parts.next();
        }
        let rest: PathBuf = parts.collect();
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(io::Error::other(format!(
                "unexpected path {} in the container's archive",
                path.display()
            )));
        }
        Ok(to.join(rest))
    };
    let mut entries = tar::Archive::new(copy.archive.as_slice());
    let mut folder_written = !rooted;
    for entry in entries.entries()? {
        let mut entry = entry?;
        let path = moved(&entry.path()?)?;
        let mut header = entry.header().clone();
        if !folder_written {
            folder_written = true;
            if path != to {
                let mut folder = tar::Header::new_gnu();
                folder.set_entry_type(tar::EntryType::Directory);
                folder.set_mode(0o700);
                folder.set_uid(header.uid()?);
                folder.set_gid(header.gid()?);
                folder.set_mtime(header.mtime()?);
                folder.set_size(0);
                builder.append_data(&mut folder, to, io::empty())?;
            }
        }
        match header.entry_type() {
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("a hard link without a target"))?;
                let target = moved(&target)?;
                builder.append_link(&mut header, &path, &target)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("a symlink without a target"))?
                    .into_owned();
                builder.append_link(&mut header, &path, &target)?;
            }
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                builder.append_data(&mut header, &path, data.as_slice())?;
            }
        }
    }
    Ok(())
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Hasher::default(),
            written: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The snapshot's config: the base image's, with the layer's `diff_id`,
/// a history line and a label naming the key (never the container's
/// environment: no rendered secret ends up in the image).
pub(crate) fn config(base: &[u8], diff_id: &str, service: &str, key: &str) -> io::Result<Vec<u8>> {
    let mut config: Value = serde_json::from_slice(base).map_err(io::Error::other)?;
    let now = super::now();
    let diff_ids = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| io::Error::other("the base image's config has no rootfs.diff_ids"))?;
    diff_ids.push(json!(diff_id));
    if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({
            "created": now,
            "created_by": format!("cargo-ephem snapshot of services.{service} after setup"),
        }));
    }
    config["created"] = json!(now);
    if let Some(inner) = config.get_mut("config").and_then(Value::as_object_mut) {
        let labels = inner.entry("Labels").or_insert_with(|| json!({}));
        if labels.is_null() {
            *labels = json!({});
        }
        labels[super::KEY_LABEL] = json!(key);
    }
    serde_json::to_vec(&config).map_err(io::Error::other)
}

/// The snapshot's manifest: the base image's, with `config` replaced and
/// the layer added in the manifest's own media type family.
pub(crate) fn manifest(base: &[u8], config: &Blob, layer: &Blob) -> io::Result<Vec<u8>> {
    let mut manifest: Value = serde_json::from_slice(base).map_err(io::Error::other)?;
    let docker = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .is_some_and(|m| m.contains("docker"));
    let layer_type = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    manifest["config"]["digest"] = json!(config.digest);
    manifest["config"]["size"] = json!(config.size);
    manifest
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| io::Error::other("the base image's manifest has no layers"))?
        .push(json!({"mediaType": layer_type, "digest": layer.digest, "size": layer.size}));
    serde_json::to_vec(&manifest).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer's blob as stored (gzip) and decompressed (the tar).
    fn stored_and_raw(layout: &Layout, layer: &Layer) -> (Vec<u8>, Vec<u8>) {
        let stored = std::fs::read(layout.blob_path(&layer.blob.digest).unwrap()).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        (stored, raw)
    }

    /// Each entry of the tar `raw`: path, mode, uid and gid (`None` where
    /// the header leaves it empty).
    fn listing(raw: &[u8]) -> Vec<(String, u32, u64, Option<u64>)> {
        tar::Archive::new(raw)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().ok(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_move_under_the_target_and_hashes_match_the_bytes() {
        let mut source = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_uid(999);
        dir.set_gid(999);
        dir.set_size(0);
        source
            .append_data(&mut dir, "ephem-snapshot/", io::empty())
            .unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        file.set_mode(0o600);
        file.set_uid(0);
        source
            .append_data(&mut file, "ephem-snapshot/base/PG_VERSION", &b"15\n"[..])
            .unwrap();
        let archive = source.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let copies = [Copy {
            archive,
            rooted: false,
            to: "/var/lib/postgresql/data".into(),
        }];
        let layer = write_layer(&layout, &copies).unwrap();
        let (stored, raw) = stored_and_raw(&layout, &layer);
        assert_eq!(
            crate::image_cache::layout::digest_of(&stored),
            layer.blob.digest
        );
        assert_eq!(crate::image_cache::layout::digest_of(&raw), layer.diff_id);
        let entries: Vec<(String, u32, u64)> = listing(&raw)
            .into_iter()
            .map(|(path, mode, uid, _)| (path, mode, uid))
            .collect();
        assert_eq!(
            entries,
            vec![
                ("var/lib/postgresql/data/".to_owned(), 0o700, 999),
                (
                    "var/lib/postgresql/data/base/PG_VERSION".to_owned(),
                    0o600,
                    0
                ),
            ]
        );
    }

    /// `pg_basebackup -D - -Ft` writes the folder's contents without the
    /// folder: the layer gets a data folder of its own, 0700, owned as the
    /// files are.
    #[test]
    fn a_rooted_archive_goes_below_a_closed_folder_of_its_own() {
        let mut source = tar::Builder::new(Vec::new());
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        file.set_mode(0o600);
        file.set_uid(101);
        file.set_gid(102);
        source
            .append_data(&mut file, "PG_VERSION", &b"15\n"[..])
            .unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(1);
        file.set_mode(0o600);
        file.set_uid(101);
        file.set_gid(0);
        source
            .append_data(&mut file, "base/1/112", &b"x"[..])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let copies = [Copy {
            archive: source.into_inner().unwrap(),
            rooted: true,
            to: "/var/lib/postgresql/data".into(),
        }];
        let layer = write_layer(&layout, &copies).unwrap();
        let (_, raw) = stored_and_raw(&layout, &layer);
        let entries: Vec<(String, u32, u64, u64)> = listing(&raw)
            .into_iter()
            .map(|(path, mode, uid, gid)| (path, mode, uid, gid.unwrap()))
            .collect();
        assert_eq!(
            entries,
            vec![
                ("var/lib/postgresql/data".to_owned(), 0o700, 101, 102),
                (
                    "var/lib/postgresql/data/PG_VERSION".to_owned(),
                    0o600,
                    101,
                    102
                ),
                (
                    "var/lib/postgresql/data/base/1/112".to_owned(),
                    0o600,
                    101,
                    0
                ),
            ]
        );
    }
}
