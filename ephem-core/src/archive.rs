//! Build once, run anywhere: `cargo ephem archive` packs a workspace's test
//! binaries, their test list and what they need at run time into one
//! zstd-compressed tar; `cargo ephem test --archive-file` runs from it in a
//! job that has the sources but no build and no cargo.
//!
//! Paths move between the machine that built and the one that runs, so the
//! archive stores every path in a portable form: `{workspace}/...` (the
//! sources, found again with `--workspace-remap`), `{target}/...` (build
//! outputs, extracted beside the sources) and `{toolchain}/...` (the shared
//! std a proc-macro crate's tests link, packed when a binary needs it).
//! Anything else keeps its absolute path.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::discover::{BuildControl, CargoOptions, Workspace};
use crate::error::{exit_codes, EphemError, Result};
use crate::filterset::{self, FiltersetUse, Filtersets};
use crate::test_list::{TestBinary, TestList};

/// The archive layout this build reads and writes; another is refused.
pub const FORMAT: u32 = 1;

/// The manifest's name inside the archive.
const MANIFEST: &str = "ephem-archive.json";

/// Where the build outputs go inside the archive and the extraction.
const TARGET: &str = "target";

/// Where the toolchain's shared libraries go.
const TOOLCHAIN: &str = "toolchain";

/// `cargo metadata`'s JSON (with the dependency graph), so that `-E`
/// filtersets parse where the archive runs, without cargo, as nextest's
/// archives allow.
const METADATA: &str = "cargo-metadata.json";

/// What an archive says of itself and its binaries.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// [`FORMAT`].
    format: u32,
    /// The cargo-ephem version that wrote it.
    cargo_ephem: String,
    /// The workspace root on the machine that built it.
    workspace_root: Utf8PathBuf,
    /// The build's folder inside the target directory (`debug`, ...).
    profile_dir: Utf8PathBuf,
    /// Package folders relative to the workspace root: what a remapped
    /// workspace must hold.
    package_dirs: BTreeSet<Utf8PathBuf>,
    /// Every test binary, its tests, and how to run it, in portable paths.
    binaries: Vec<ArchivedBinary>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ArchivedBinary {
    binary_id: String,
    binary_name: String,
    package_id: String,
    package_name: String,
    kind: String,
    path: String,
    cwd: String,
    env: Vec<(String, String)>,
    /// `(name, ignored)`, as listed when the archive was made.
    tests: Vec<(String, bool)>,
}

/// Moves paths between their real and their portable forms.
struct Paths {
    workspace: Utf8PathBuf,
    target: Utf8PathBuf,
    toolchain: Vec<Utf8PathBuf>,
}

impl Paths {
    /// `path` with a known prefix replaced by its placeholder.
    fn portable(&self, path: &str) -> String {
        let p = Utf8Path::new(path);
        // The target folder first: it usually lies inside the workspace.
        if let Ok(rest) = p.strip_prefix(&self.target) {
            return join_placeholder("{target}", rest);
        }
        for lib in &self.toolchain {
            if p == lib {
                return format!("{{{TOOLCHAIN}}}");
            }
        }
        if let Ok(rest) = p.strip_prefix(&self.workspace) {
            return join_placeholder("{workspace}", rest);
        }
        path.to_owned()
    }

    /// The real path of a portable one.
    fn real(&self, portable: &str, extracted: &Utf8Path) -> String {
        let resolve = |placeholder: &str, base: &Utf8Path| {
            portable
                .strip_prefix(placeholder)
                .map(|rest| match rest.trim_start_matches('/') {
                    "" => base.to_string(),
                    rest => base.join(rest).to_string(),
                })
        };
        resolve("{target}", &extracted.join(TARGET))
            .or_else(|| resolve("{toolchain}", &extracted.join(TOOLCHAIN)))
            .or_else(|| resolve("{workspace}", &self.workspace))
            .unwrap_or_else(|| portable.to_owned())
    }

    /// A variable's value: one path, or a `:`-separated search path.
    fn portable_value(&self, name: &str, value: &str) -> String {
        if name == dylib_path_var() {
            value
                .split(':')
                .map(|p| self.portable(p))
                .collect::<Vec<_>>()
                .join(":")
        } else {
            self.portable(value)
        }
    }

    fn real_value(&self, name: &str, value: &str, extracted: &Utf8Path) -> String {
        if name == dylib_path_var() {
            value
                .split(':')
                .map(|p| self.real(p, extracted))
                .collect::<Vec<_>>()
                .join(":")
        } else {
            self.real(value, extracted)
        }
    }
}

fn join_placeholder(placeholder: &str, rest: &Utf8Path) -> String {
    if rest.as_str().is_empty() {
        placeholder.to_owned()
    } else {
        format!("{placeholder}/{rest}")
    }
}

fn dylib_path_var() -> &'static str {
    if cfg!(target_os = "macos") {
        "DYLD_FALLBACK_LIBRARY_PATH"
    } else {
        "LD_LIBRARY_PATH"
    }
}

/// Options of `cargo ephem archive`.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// What cargo builds.
    pub cargo: CargoOptions,
    /// Where the archive goes.
    pub archive_file: Utf8PathBuf,
    /// `-E`: only the binaries these filtersets can match go in (`test()`
    /// and `group()` are refused: an archive holds whole binaries).
    pub filtersets: Vec<String>,
}

/// Runs `cargo ephem archive`: builds, lists, packs. Returns the exit code.
pub fn archive(options: &ArchiveOptions) -> Result<i32> {
    check_writable(&options.archive_file)?;
    let workspace = Workspace::load_with_graph(&options.cargo)?;
    let graph_json = workspace.graph_json.clone().unwrap_or_default();
    let filtersets = if options.filtersets.is_empty() {
        Filtersets::none()
    } else {
        let graph = filterset::package_graph(&graph_json)?;
        Filtersets::parse(&options.filtersets, &graph, FiltersetUse::Archive)?
    };
    let list = workspace.discover_with(&options.cargo, &BuildControl::default(), &|b| {
        filtersets.set_aside(b)
    })?;
    let paths = Paths {
        workspace: workspace.root.clone(),
        target: workspace.target_dir.clone(),
        toolchain: crate::discover::toolchain_lib_dirs(&workspace.root),
    };
    let (manifest, files) = pack_plan(&list, &paths, &workspace)?;
    let written = write_archive(
        &options.archive_file,
        &manifest,
        graph_json.as_bytes(),
        &files,
    )?;
    let tests: usize = manifest.binaries.iter().map(|b| b.tests.len()).sum();
    let left_out = match list.skipped.len() {
        0 => String::new(),
        n => format!(" ({n} left out by -E)"),
    };
    eprintln!(
        "  Archived {} test binaries{left_out} ({tests} tests), {} files, {} to {}",
        manifest.binaries.len(),
        files.len() + 2,
        human_size(written),
        options.archive_file
    );
    Ok(exit_codes::OK)
}

/// The manifest, and every file to pack as (path in the archive, real path).
fn pack_plan(
    list: &TestList,
    paths: &Paths,
    workspace: &Workspace,
) -> Result<(Manifest, Vec<(String, Utf8PathBuf)>)> {
    let mut files = BTreeSet::new();
    let mut package_dirs = BTreeSet::new();
    // Shared libraries on the search path inside the target folder: packed
    // only if a test binary links them (proc-macro crates' .so files sit in
    // the same folder but are needed at compile time only).
    let mut candidates = BTreeSet::new();
    let mut binaries = Vec::new();
    for (idx, binary) in list.binaries.iter().enumerate() {
        files.insert(binary.path.clone());
        for (name, value) in binary.env.iter() {
            let value = Utf8Path::new(value);
            if name == "OUT_DIR" || name.starts_with("CARGO_BIN_EXE_") {
                if value.starts_with(&paths.target) {
                    files.extend(walk(value)?);
                }
            } else if name == dylib_path_var() {
                for dir in value.as_str().split(':').map(Utf8Path::new) {
                    if dir.starts_with(&paths.target) {
                        candidates.extend(shared_libraries(dir));
                    }
                }
            }
        }
        if let Ok(rel) = binary.cwd.strip_prefix(&workspace.root) {
            package_dirs.insert(rel.to_owned());
        }
        let tests = list
            .tests
            .iter()
            .filter(|t| t.binary == idx)
            .map(|t| (t.name.clone(), t.ignored))
            .collect();
        binaries.push(ArchivedBinary {
            binary_id: binary.binary_id.clone(),
            binary_name: binary.binary_name.clone(),
            package_id: binary.package_id.clone(),
            package_name: binary.package_name.clone(),
            kind: binary.kind.clone(),
            path: paths.portable(binary.path.as_str()),
            cwd: paths.portable(binary.cwd.as_str()),
            env: binary
                .env
                .iter()
                .map(|(k, v)| (k.clone(), paths.portable_value(k, v)))
                .collect(),
            tests,
        });
    }
    let toolchain_libs: Vec<Utf8PathBuf> = paths
        .toolchain
        .iter()
        .flat_map(|dir| shared_libraries(dir))
        .filter(|l| is_std(l))
        .collect();
    let executables: Vec<Utf8PathBuf> = files.iter().cloned().collect();
    let linked = linked_libraries(&executables, candidates.iter().chain(&toolchain_libs));
    let needs_std = toolchain_libs.iter().any(|l| linked.contains(l));
    files.extend(candidates.into_iter().filter(|l| linked.contains(l)));
    let mut packed: Vec<(String, Utf8PathBuf)> = files
        .into_iter()
        .filter_map(|real| {
            let rel = real.strip_prefix(&paths.target).ok()?.to_owned();
            Some((format!("{TARGET}/{rel}"), real))
        })
        .collect();
    if needs_std {
        for lib in toolchain_libs {
            let name = lib.file_name().unwrap_or_default().to_owned();
            packed.push((format!("{TOOLCHAIN}/{name}"), lib));
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        cargo_ephem: env!("CARGO_PKG_VERSION").to_owned(),
        workspace_root: workspace.root.clone(),
        profile_dir: list.profile_dir.clone(),
        package_dirs,
        binaries,
    };
    Ok((manifest, packed))
}

/// The libraries among `candidates` that some executable links: its
/// dynamic section names each library it needs as `<file name>\0`.
fn linked_libraries<'a>(
    executables: &[Utf8PathBuf],
    candidates: impl Iterator<Item = &'a Utf8PathBuf>,
) -> BTreeSet<Utf8PathBuf> {
    let candidates: Vec<(&Utf8PathBuf, Vec<u8>)> = candidates
        .map(|lib| {
            let mut needle = lib.file_name().unwrap_or_default().as_bytes().to_vec();
            needle.push(0);
            (lib, needle)
        })
        .collect();
    let mut linked = BTreeSet::new();
    for exe in executables {
        let Ok(bytes) = std::fs::read(exe) else {
            continue;
        };
        for (lib, needle) in &candidates {
            if !linked.contains(*lib) && memchr::memmem::find(&bytes, needle).is_some() {
                linked.insert((*lib).clone());
            }
        }
    }
    linked
}

fn is_std(lib: &Utf8Path) -> bool {
    lib.file_name().is_some_and(|n| n.starts_with("libstd-"))
}

/// Every file below `path` (or `path` itself when it is a file).
fn walk(path: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut found = Vec::new();
    let Ok(entries) = path.read_dir_utf8() else {
        return Ok(found);
    };
    for entry in entries.flatten() {
        let p = entry.path().to_owned();
        if p.is_dir() {
            found.extend(walk(&p)?);
        } else if p.is_file() {
            found.push(p);
        }
    }
    Ok(found)
}

/// The shared libraries directly in `dir` (`.so`, `.dylib`).
fn shared_libraries(dir: &Utf8Path) -> Vec<Utf8PathBuf> {
    let Ok(entries) = dir.read_dir_utf8() else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().to_owned())
        .filter(|p| p.is_file() && matches!(p.extension(), Some("so" | "dylib")))
        .collect()
}

/// Writes the tar.zst next to its final name and renames it into place, so a
/// reader never sees half an archive. Returns its size.
fn write_archive(
    path: &Utf8Path,
    manifest: &Manifest,
    metadata: &[u8],
    files: &[(String, Utf8PathBuf)],
) -> Result<u64> {
    let io = |source| EphemError::Io {
        action: "cannot write the archive",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io)?;
    let encoder = zstd::Encoder::new(BufWriter::new(file), 9).map_err(io)?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(true);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| EphemError::Internal(format!("serializing the archive manifest: {e}")))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, &json[..])
        .map_err(io)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, METADATA, metadata)
        .map_err(io)?;
    for (inside, real) in files {
        tar.append_path_with_name(real, inside).map_err(io)?;
    }
    let encoder = tar.into_inner().map_err(io)?;
    let mut writer = encoder.finish().map_err(io)?;
    writer.flush().map_err(io)?;
    drop(writer);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Fails now if the archive could not be written at `path` later.
fn check_writable(path: &Utf8Path) -> Result<()> {
    let unwritable = |e: std::io::Error| {
        EphemError::Usage(format!(
            "--archive-file {path}: cannot write there ({e}); give a path in a writable folder"
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(unwritable)?;
    }
    let probe = path.with_extension("tmp");
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// An archive unpacked for a run: its tests, found again in the sources.
pub struct Extracted {
    /// The workspace the tests run in (the remapped one).
    pub workspace: Workspace,
    /// The archived test list, with real paths.
    pub list: TestList,
}

/// Opens `archive`, checks it and the workspace (`remap`, else the
/// archived root), unpacks it beside the sources and gives the test list.
/// A corrupt archive, another format, or a workspace that is not the
/// archived one is exit 2 saying what is wrong.
pub fn extract(archive: &Utf8Path, remap: Option<&Utf8Path>) -> Result<Extracted> {
    let bad = |message: String| EphemError::Input {
        path: archive.to_owned(),
        message,
    };
    let manifest = read_manifest(archive).map_err(&bad)?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "archive format {} (written by cargo-ephem {}), this cargo-ephem {} reads format {FORMAT}; \
             make the archive with the same cargo-ephem version that runs it",
            manifest.format,
            manifest.cargo_ephem,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let root = match remap {
        Some(dir) => dir
            .canonicalize_utf8()
            .map_err(|e| EphemError::Usage(format!("--workspace-remap {dir}: {e}")))?,
        None => manifest.workspace_root.clone(),
    };
    check_workspace(&manifest, &root, remap.is_some())?;
    let target_dir = root.join("target");
    let extracted = target_dir.join("ephem").join("archive");
    unpack(archive, &extracted).map_err(&bad)?;
    let paths = Paths {
        workspace: root.clone(),
        target: extracted.join(TARGET),
        toolchain: Vec::new(),
    };
    let list = rebuild_list(manifest, &paths, &extracted, &target_dir);
    let mut workspace = Workspace::at(root, target_dir);
    // Archives of older versions carry no graph: `-E` says so when used.
    workspace.graph_json = std::fs::read_to_string(extracted.join(METADATA))
        .ok()
        .filter(|json| !json.is_empty())
        .map(Into::into);
    Ok(Extracted { workspace, list })
}

/// Reads only the manifest (the archive's first entry).
fn read_manifest(archive: &Utf8Path) -> std::result::Result<Manifest, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open the archive: {e}"))?;
    let decoder = zstd::Decoder::new(BufReader::new(file))
        .map_err(|e| format!("not a cargo-ephem archive ({e})"))?;
    let mut tar = tar::Archive::new(decoder);
    let mut entries = tar
        .entries()
        .map_err(|e| format!("not a cargo-ephem archive ({e})"))?;
    let mut first = entries
        .next()
        .ok_or("not a cargo-ephem archive (it is empty)")?
        .map_err(|e| format!("not a cargo-ephem archive ({e})"))?;
    let name = first
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != MANIFEST {
        return Err(format!(
            "not a cargo-ephem archive (its first entry is {name:?}, not {MANIFEST})"
        ));
    }
    let mut json = Vec::new();
    first
        .read_to_end(&mut json)
        .map_err(|e| format!("the archive is corrupt ({e})"))?;
    serde_json::from_slice(&json).map_err(|e| format!("its manifest is not readable ({e})"))
}

/// The remapped workspace must hold every archived package folder.
fn check_workspace(manifest: &Manifest, root: &Utf8Path, remapped: bool) -> Result<()> {
    let missing: Vec<String> = manifest
        .package_dirs
        .iter()
        .filter(|dir| !root.join(dir).join("Cargo.toml").is_file())
        .map(|dir| root.join(dir).join("Cargo.toml").to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let hint = if remapped {
        "point --workspace-remap at a checkout of the archived workspace".to_owned()
    } else {
        format!(
            "the archive was made in {}; pass --workspace-remap DIR with the sources here",
            manifest.workspace_root
        )
    };
    Err(EphemError::Usage(format!(
        "{root} is not the archived workspace: it lacks {}; {hint}",
        missing.join(", ")
    )))
}

/// Unpacks everything into `dest` (emptied first), refusing entries that
/// would land outside it.
fn unpack(archive: &Utf8Path, dest: &Utf8Path) -> std::result::Result<(), String> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| format!("cannot empty {dest}: {e}"))?;
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {dest}: {e}"))?;
    let file = File::open(archive).map_err(|e| format!("cannot open the archive: {e}"))?;
    let decoder = zstd::Decoder::new(BufReader::new(file))
        .map_err(|e| format!("the archive is corrupt ({e})"))?;
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(true);
    for entry in tar
        .entries()
        .map_err(|e| format!("the archive is corrupt ({e})"))?
    {
        let mut entry = entry.map_err(|e| format!("the archive is corrupt ({e})"))?;
        // `unpack_in` refuses `..` and absolute paths.
        let inside = entry
            .unpack_in(dest.as_std_path())
            .map_err(|e| format!("the archive is corrupt or truncated ({e})"))?;
        if !inside {
            return Err("the archive holds a path outside its folder; refusing it".to_owned());
        }
    }
    Ok(())
}

/// The archived list with every path made real again.
fn rebuild_list(
    manifest: Manifest,
    paths: &Paths,
    extracted: &Utf8Path,
    target_dir: &Utf8Path,
) -> TestList {
    let binaries = manifest
        .binaries
        .into_iter()
        .map(|b| {
            let mut env: Vec<(String, String)> = b
                .env
                .iter()
                .filter(|(k, _)| k != "CARGO")
                .map(|(k, v)| (k.clone(), paths.real_value(k, v, extracted)))
                .collect();
            // The runner has no cargo; tests that look for one find `cargo`
            // on PATH if there is one.
            env.push(("CARGO".to_owned(), "cargo".to_owned()));
            let binary = TestBinary {
                binary_id: b.binary_id,
                binary_name: b.binary_name,
                package_id: b.package_id,
                package_name: b.package_name,
                kind: b.kind,
                path: paths.real(&b.path, extracted).into(),
                cwd: paths.real(&b.cwd, extracted).into(),
                env: Arc::new(env),
            };
            (binary, b.tests)
        })
        .collect();
    let mut list = TestList::new(binaries, target_dir.to_owned());
    list.profile_dir = manifest.profile_dir;
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths {
            workspace: "/ws".into(),
            target: "/ws/target".into(),
            toolchain: vec!["/tc/lib/rustlib/x86/lib".into()],
        }
    }

    #[test]
    fn paths_travel_in_portable_form() {
        let p = paths();
        assert_eq!(
            p.portable("/ws/target/debug/deps/a-1"),
            "{target}/debug/deps/a-1"
        );
        assert_eq!(p.portable("/ws/crates/a"), "{workspace}/crates/a");
        assert_eq!(p.portable("/ws"), "{workspace}");
        assert_eq!(p.portable("/tc/lib/rustlib/x86/lib"), "{toolchain}");
        assert_eq!(p.portable("/usr/lib"), "/usr/lib");
        let lib = p.portable_value(
            dylib_path_var(),
            "/ws/target/debug/deps:/tc/lib/rustlib/x86/lib:/opt/x",
        );
        assert_eq!(lib, "{target}/debug/deps:{toolchain}:/opt/x");

        let there = Paths {
            workspace: "/job/src".into(),
            target: "/job/src/target/ephem/archive/target".into(),
            toolchain: Vec::new(),
        };
        let extracted = Utf8Path::new("/job/src/target/ephem/archive");
        assert_eq!(
            there.real("{target}/debug/deps/a-1", extracted),
            "/job/src/target/ephem/archive/target/debug/deps/a-1"
        );
        assert_eq!(
            there.real("{workspace}/crates/a", extracted),
            "/job/src/crates/a"
        );
        assert_eq!(there.real("{workspace}", extracted), "/job/src");
        assert_eq!(there.real("/usr/lib", extracted), "/usr/lib");
    }
}
