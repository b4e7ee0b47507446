//! A snapshot's key: a digest of everything its content depends on. Each
//! input is kept as its own short digest, so a miss can say which changed
//! (and no value, secret or not, is written into the cache as text).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::image_cache::layout::digest_of;

/// Bumped whenever what a snapshot holds, or how it is started, changes.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// What one service's snapshot is made from, rendered for one shard.
pub(crate) struct KeySource<'a> {
    /// The daemon's id of the base image (`sha256:…`).
    pub image_id: &'a str,
    /// The container's configured environment.
    pub env: &'a std::collections::HashMap<String, String>,
    /// The container's command when `cmd` or `args` set it.
    pub cmd: Option<&'a [String]>,
    /// The rendered `setup` and `quiesce` commands.
    pub setup: Option<&'a [String]>,
    pub quiesce: Option<&'a [String]>,
    /// How the state is copied (`postgres`, `redis`, or the paths).
    pub kind: String,
    /// Generated and runner-given values (`${random}`, `${secret.NAME}`):
    /// replaced by a placeholder before hashing, so they neither make each
    /// key unique nor can be recovered from it.
    pub secrets: &'a [String],
    /// The configuration's folder and the `inputs` globs under it.
    pub root: &'a Path,
    pub inputs: &'a [String],
}

/// A snapshot's key and the digest of each of its inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// 64 hex digits: the image tag of the snapshot.
    pub hex: String,
    /// Input name (`image`, `env.POSTGRES_DB`, `input:migrations/001.sql`,
    /// …) to its digest's first 16 hex digits.
    pub parts: BTreeMap<String, String>,
}

impl Key {
    /// Works the key out; `Err` names an input file that cannot be read.
    pub(crate) fn compute(source: &KeySource<'_>) -> Result<Key, String> {
        let mut parts = BTreeMap::new();
        let masked = |text: &str| {
            let mut text = text.to_owned();
            for secret in source.secrets.iter().filter(|s| !s.is_empty()) {
                text = text.replace(secret.as_str(), "<secret>");
            }
            text
        };
        let mut put = |name: String, text: &str| {
            parts.insert(name, short(&digest_of(masked(text).as_bytes())));
        };
        put("format".into(), &FORMAT_VERSION.to_string());
        put("image".into(), source.image_id);
        put("kind".into(), &source.kind);
        for (name, value) in source.env {
            put(format!("env.{name}"), value);
        }
        let list = |l: Option<&[String]>| serde_json::to_string(&l).unwrap_or_default();
        put("cmd".into(), &list(source.cmd));
        put("setup".into(), &list(source.setup));
        put("quiesce".into(), &list(source.quiesce));
        put("inputs".into(), &source.inputs.join("\n"));
        for file in matching_files(source.root, source.inputs)? {
            let bytes = std::fs::read(source.root.join(&file))
                .map_err(|e| format!("snapshot input {}: {e}", file.display()))?;
            parts.insert(
                format!("input:{}", file.display()),
                short(&digest_of(&bytes)),
            );
        }
        let canonical = serde_json::to_string(&parts).unwrap_or_default();
        let hex = digest_of(canonical.as_bytes())
            .trim_start_matches("sha256:")
            .to_owned();
        Ok(Key { hex, parts })
    }

    /// Why a snapshot made from `old` does not apply to this key: the
    /// inputs that changed, appeared or went, in one line.
    pub(crate) fn changes_from(&self, old: &BTreeMap<String, String>) -> String {
        let mut changed = Vec::new();
        for (name, digest) in &self.parts {
            match old.get(name) {
                Some(was) if was == digest => {}
                Some(_) => changed.push(format!("{name} changed")),
                None => changed.push(format!("{name} is new")),
            }
        }
        for name in old.keys().filter(|n| !self.parts.contains_key(*n)) {
            changed.push(format!("{name} is gone"));
        }
        if changed.is_empty() {
            return "its inputs are the same (rebuilt)".to_owned();
        }
        let more = changed.len().saturating_sub(5);
        changed.truncate(5);
        let mut text = changed.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..16].to_owned()
}

/// Workspace files matched by `globs`, relative to `root`, sorted; `target`
/// and `.git` folders are not searched.
pub(crate) fn matching_files(root: &Path, globs: &[String]) -> Result<Vec<PathBuf>, String> {
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let mut set = globset::GlobSetBuilder::new();
    for glob in globs {
        let glob = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("snapshot input {glob:?}: {e}"))?;
        set.add(glob);
    }
    let set = set.build().map_err(|e| format!("snapshot inputs: {e}"))?;
    let mut found = Vec::new();
    let mut folders = vec![PathBuf::new()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(root.join(&folder)).map_err(|e| {
            format!(
                "snapshot inputs: cannot list {}: {e}",
                root.join(&folder).display()
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("snapshot inputs: {e}"))?;
            let relative = folder.join(entry.file_name());
            let kind = entry
                .file_type()
                .map_err(|e| format!("snapshot inputs: {e}"))?;
            if kind.is_dir() {
                let name = entry.file_name();
                if name != "target" && name != ".git" {
                    folders.push(relative);
                }
            } else if set.is_match(&relative) {
                found.push(relative);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(root: &Path, env: &HashMap<String, String>, secrets: &[String]) -> Key {
        Key::compute(&KeySource {
            image_id: "sha256:aa",
            env,
            cmd: None,
            setup: Some(&["psql".to_owned()]),
            quiesce: None,
            kind: "postgres".into(),
            secrets,
            root,
            inputs: &["migrations/**".to_owned()],
        })
        .unwrap()
    }

    #[test]
    fn secrets_do_not_change_the_key_and_inputs_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/sub")).unwrap();
        std::fs::write(
            dir.path().join("migrations/sub/001.sql"),
            "CREATE TABLE a ();",
        )
        .unwrap();
        std::fs::write(dir.path().join("other.sql"), "x").unwrap();
        let env = |pw: &str| HashMap::from([("POSTGRES_PASSWORD".to_owned(), pw.to_owned())]);
        let first = key(dir.path(), &env("s3cret1"), &["s3cret1".to_owned()]);
        let second = key(dir.path(), &env("other22"), &["other22".to_owned()]);
        assert_eq!(first, second);
        assert!(first.parts.contains_key("input:migrations/sub/001.sql"));
        assert!(!first.parts.contains_key("input:other.sql"));
        // Not a secret: part of the key.
        let plain = key(dir.path(), &env("fixed"), &[]);
        assert_ne!(plain.hex, first.hex);
        assert_eq!(
            plain.changes_from(&first.parts),
            "env.POSTGRES_PASSWORD changed"
        );

        std::fs::write(
            dir.path().join("migrations/sub/001.sql"),
            "CREATE TABLE b ();",
        )
        .unwrap();
        let edited = key(dir.path(), &env("s3cret1"), &["s3cret1".to_owned()]);
        assert_ne!(edited.hex, first.hex);
        assert_eq!(
            edited.changes_from(&first.parts),
            "input:migrations/sub/001.sql changed"
        );
    }
}
