//! `[services.NAME] snapshot`: which state is kept after `setup`, and which
//! workspace files that state depends on.

use toml::Spanned;

use super::error::Locator;
use super::raw::RawSnapshot;
use super::ConfigError;
use crate::image_ref::ImageRef;
use crate::template::Template;

/// A service whose prepared state is kept as an image (see the README's
/// Snapshots section).
#[derive(Clone, Debug)]
pub struct SnapshotSpec {
    /// What is copied out, and how the service is quiesced first.
    pub kind: SnapshotKind,
    /// Globs of workspace files (relative to the configuration's folder)
    /// whose contents are part of the snapshot's key, e.g. `migrations/**`.
    pub inputs: Vec<String>,
    /// `quiesce = { exec }`: run in the container before copying.
    pub quiesce: Option<Vec<Template>>,
}

/// Where a service keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// The official Postgres image: a consistent copy of `PGDATA` taken
    /// with `pg_basebackup` while it runs.
    Postgres,
    /// The official Redis image: `SAVE`, then `/data`.
    Redis,
    /// These absolute paths, copied as they are (after `quiesce`).
    Paths(Vec<String>),
}

impl SnapshotKind {
    /// The built-in kind of an image, from its repository's last part.
    pub fn builtin(image: &ImageRef) -> Option<SnapshotKind> {
        let repository = image.local_repository();
        match repository.rsplit('/').next().unwrap_or_default() {
            "postgres" => Some(SnapshotKind::Postgres),
            "redis" => Some(SnapshotKind::Redis),
            _ => None,
        }
    }
}

pub(super) fn check(
    at: &Locator<'_>,
    raw: &Spanned<RawSnapshot>,
    image: &ImageRef,
    key: &str,
    quiesce: Option<Vec<Template>>,
) -> Result<Option<SnapshotSpec>, ConfigError> {
    let key = format!("{key}.snapshot");
    let builtin = || {
        SnapshotKind::builtin(image).ok_or_else(|| {
            at.error(
                raw.span(),
                &key,
                format!(
                    "only postgres and redis images have known state paths, not {image}; write snapshot = {{ paths = [\"/data\"] }}"
                ),
            )
        })
    };
    let table = match raw.get_ref() {
        RawSnapshot::Enabled(false) => return Ok(None),
        RawSnapshot::Enabled(true) => {
            return Ok(Some(SnapshotSpec {
                kind: builtin()?,
                inputs: Vec::new(),
                quiesce: None,
            }))
        }
        RawSnapshot::Table(table) => table,
    };
    let kind = match &table.paths {
        None => builtin()?,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(at.error(
                    list.span(),
                    format!("{key}.paths"),
                    "paths is empty; list the container folders that hold the state, e.g. [\"/data\"]",
                ));
            }
            let mut paths = Vec::new();
            for (i, path) in list.get_ref().iter().enumerate() {
                let text = path.get_ref().trim_end_matches('/');
                if !text.starts_with('/') || text.split('/').any(|p| p == "..") {
                    return Err(at.error(
                        path.span(),
                        format!("{key}.paths[{i}]"),
                        "paths are absolute container paths without `..`, e.g. \"/data\"",
                    ));
                }
                if text.is_empty() {
                    return Err(at.error(
                        path.span(),
                        format!("{key}.paths[{i}]"),
                        "the whole file system cannot be a snapshot; name the state's folder",
                    ));
                }
                paths.push(text.to_owned());
            }
            SnapshotKind::Paths(paths)
        }
    };
    let mut inputs = Vec::new();
    if let Some(list) = &table.inputs {
        for (i, glob) in list.get_ref().iter().enumerate() {
            let text = glob.get_ref();
            if text.starts_with('/') || text.split('/').any(|p| p == "..") {
                return Err(at.error(
                    glob.span(),
                    format!("{key}.inputs[{i}]"),
                    "inputs are globs relative to the workspace (the folder of ephem.toml), e.g. \"migrations/**\"",
                ));
            }
            globset::Glob::new(text).map_err(|e| {
                at.error(
                    glob.span(),
                    format!("{key}.inputs[{i}]"),
                    format!("not a glob: {e}"),
                )
            })?;
            inputs.push(text.clone());
        }
    }
    Ok(Some(SnapshotSpec {
        kind,
        inputs,
        quiesce,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::EphemConfig;
    use super::SnapshotKind;

    fn load(service: &str) -> Result<EphemConfig, String> {
        let text = format!("[services.s]\nports = [5432]\n{service}\n");
        EphemConfig::parse(&text, std::path::Path::new("ephem.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn short_and_long_forms_load_for_the_built_in_images() {
        let config = load("image = \"postgres:15\"\nsnapshot = true").unwrap();
        let spec = config.services[0].snapshot.as_ref().unwrap();
        assert_eq!(spec.kind, SnapshotKind::Postgres);
        let config = load(
            "image = \"ghcr.io/x/redis:7\"\nsnapshot = { inputs = [\"migrations/**\"], quiesce = { exec = [\"sync\"] } }",
        )
        .unwrap();
        let spec = config.services[0].snapshot.as_ref().unwrap();
        assert_eq!(spec.kind, SnapshotKind::Redis);
        assert_eq!(spec.inputs, vec!["migrations/**".to_owned()]);
        assert!(spec.quiesce.is_some());
        let config = load("image = \"app:1\"\nsnapshot = { paths = [\"/data/\"] }").unwrap();
        let spec = config.services[0].snapshot.as_ref().unwrap();
        assert_eq!(spec.kind, SnapshotKind::Paths(vec!["/data".into()]));
        assert!(load("image = \"postgres:15\"\nsnapshot = false")
            .unwrap()
            .services[0]
            .snapshot
            .is_none());
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let cases = [
            (
                "image = \"app:1\"\nsnapshot = true",
                "services.s.snapshot",
                "paths",
            ),
            (
                "image = \"app:1\"\nsnapshot = { paths = [] }",
                "services.s.snapshot.paths",
                "is empty",
            ),
            (
                "image = \"app:1\"\nsnapshot = { paths = [\"data\"] }",
                "services.s.snapshot.paths[0]",
                "absolute",
            ),
            (
                "image = \"postgres:15\"\nsnapshot = { inputs = [\"../x\"] }",
                "services.s.snapshot.inputs[0]",
                "relative",
            ),
            (
                "image = \"postgres:15\"\nsnapshot = { inputs = [\"a/[\"] }",
                "services.s.snapshot.inputs[0]",
                "not a glob",
            ),
            (
                "image = \"postgres:15\"\nsnapshot = { path = [\"/x\"] }",
                "snapshot",
                "path",
            ),
            (
                "image = \"postgres:15\"\nsnapshot = \"yes\"",
                "snapshot",
                "snapshot = true",
            ),
        ];
        for (text, key, words) in cases {
            let message = load(text).unwrap_err();
            assert!(
                message.contains(key) && message.contains(words),
                "{text}: {message}"
            );
        }
    }
}
