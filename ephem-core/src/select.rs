//! What `test` and `list` select with, settled before anything is built:
//! the workspace (read with its package graph when `-E` needs one, or from
//! an archive), the compiled filtersets, and the earlier run a rerun repeats.
//! A bad expression or a missing record costs no build.

use crate::archive;
use crate::discover::{CargoOptions, Workspace};
use crate::error::{EphemError, Result};
use crate::filterset::{self, FiltersetUse, Filtersets};
use crate::options::ArchiveInput;
use crate::rerun::{Rerun, RerunFrom};
use crate::test_list::{Selector, TestFilter, TestList};

/// The workspace and the selection of one command.
pub struct Prepared {
    /// The workspace (for an archive: the remapped sources).
    pub workspace: Workspace,
    /// An archive's test list, its ruled-out binaries set aside.
    pub archived: Option<TestList>,
    /// Name filters, filtersets and the rerun set together.
    pub selector: Selector,
    /// The earlier run `--rerun-failed` repeats.
    pub rerun: Option<Rerun>,
}

/// Reads the workspace (or unpacks the archive), compiles `filter`'s
/// filtersets against its package graph and reads the rerun's records.
pub fn prepare(
    cargo: &CargoOptions,
    filter: &TestFilter,
    archive_input: Option<&ArchiveInput>,
    rerun_from: Option<&RerunFrom>,
) -> Result<Prepared> {
    let with_exprs = !filter.filtersets.is_empty();
    let (workspace, mut archived) = match archive_input {
        Some(input) => {
            let extracted = archive::extract(&input.file, input.workspace_remap.as_deref())?;
            (extracted.workspace, Some(extracted.list))
        }
        None if with_exprs => (Workspace::load_with_graph(cargo)?, None),
        None => (Workspace::load(cargo)?, None),
    };
    let filtersets = if with_exprs {
        let json = workspace.graph_json.as_deref().ok_or_else(|| {
            EphemError::Usage(format!(
                "-E: the archive {} carries no package graph (it was made by an older \
                 cargo-ephem); make it again with this version, or select with name filters",
                archive_input.map(|a| a.file.as_str()).unwrap_or("?")
            ))
        })?;
        let graph = filterset::package_graph(json)?;
        Filtersets::parse(&filter.filtersets, &graph, FiltersetUse::Test)?
    } else {
        Filtersets::none()
    };
    if let Some(list) = archived.as_mut() {
        list.set_aside(|b| filtersets.set_aside(b));
    }
    let rerun = match rerun_from {
        Some(from) => Some(Rerun::load(from, &workspace.target_dir)?),
        None => None,
    };
    let selector = Selector {
        filter: filter.clone(),
        filtersets,
        rerun: rerun.as_ref().map(|r| r.set.clone()),
    };
    Ok(Prepared {
        workspace,
        archived,
        selector,
        rerun,
    })
}
