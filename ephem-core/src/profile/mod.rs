//! nextest profiles: `.config/nextest.toml` read as nextest reads it, so a
//! team moving from `cargo nextest run --profile ci` keeps its file.
//!
//! A profile is resolved along its chain: the profile, what it `inherits`
//! (transitively), `[profile.default]`, then nextest's built-in defaults;
//! the first that sets a key wins. Overrides are the chain's
//! `[[overrides]]` in that order, and per test the first matching override
//! that sets a setting wins it ([`overrides`]). Keys this runner does not
//! apply are listed in [`Profile::unapplied`], never an error; a malformed
//! file is one (exit 2, with file:line).

pub mod apply;
mod overrides;
mod raw;
pub mod settings;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};
use toml::Spanned;

pub use overrides::{Override, TestSettings};
use raw::{Fault, RawConfig, RawProfile};
pub use settings::{Backoff, MaxFail, RetryPolicy, SlowTimeout, TestThreads, ThreadsRequired};

use crate::error::{EphemError, Result};
use crate::report::levels::{FinalStatusLevel, OutputDisplay, StatusLevel};

/// Where nextest reads its configuration, from the workspace root.
pub const CONFIG_PATH: &str = ".config/nextest.toml";

/// The profile used without `--profile`, as in nextest.
pub const DEFAULT_PROFILE: &str = "default";

/// A profile, resolved along its inheritance chain.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Its name (`default` without `--profile`).
    pub name: String,
    /// The file it came from, if there was one.
    pub file: Option<Utf8PathBuf>,
    /// Retries of a failing test, before overrides.
    pub retries: RetryPolicy,
    /// When a test is slow, and killed.
    pub slow_timeout: SlowTimeout,
    /// When the run stops scheduling after failures.
    pub fail_fast: MaxFail,
    /// Tests at once; `None`: nextest's default (CPUs).
    pub test_threads: Option<TestThreads>,
    /// Threads each test takes, before overrides.
    pub threads_required: ThreadsRequired,
    /// nextest's output keys, read for the display's flags to use.
    pub output: OutputLevels,
    /// Where the JUnit report goes, already under the store directory
    /// (`target/nextest/NAME/`).
    pub junit_path: Option<Utf8PathBuf>,
    /// `[test-groups]`: each group's most tests at once.
    pub test_groups: BTreeMap<String, TestThreads>,
    /// The chain's `[[overrides]]`, first to match first.
    pub overrides: Vec<Override>,
    /// Keys read but not applied here (dotted paths), for one note.
    pub unapplied: Vec<String>,
}

/// `status-level`, `final-status-level`, `failure-output` and
/// `success-output`, where the profile sets them; the flags of the same
/// names win.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputLevels {
    /// `status-level`.
    pub status_level: Option<StatusLevel>,
    /// `final-status-level`.
    pub final_status_level: Option<FinalStatusLevel>,
    /// `failure-output`.
    pub failure_output: Option<OutputDisplay>,
    /// `success-output`.
    pub success_output: Option<OutputDisplay>,
}

impl Profile {
    /// nextest's built-in default profile (no file).
    pub fn builtin() -> Profile {
        Profile {
            name: DEFAULT_PROFILE.to_owned(),
            file: None,
            retries: RetryPolicy::default(),
            slow_timeout: SlowTimeout::default(),
            fail_fast: MaxFail::FIRST,
            test_threads: None,
            threads_required: ThreadsRequired::default(),
            output: OutputLevels::default(),
            junit_path: None,
            test_groups: BTreeMap::new(),
            overrides: Vec::new(),
            unapplied: Vec::new(),
        }
    }

    /// The profile `name` (`None`: `default`) of the workspace at `root`,
    /// whose store directory defaults to `target_dir/nextest`. Without the
    /// file, only `default` exists (nextest's built-in one).
    pub fn load(root: &Utf8Path, target_dir: &Utf8Path, name: Option<&str>) -> Result<Profile> {
        let path = root.join(CONFIG_PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match name {
                    None | Some(DEFAULT_PROFILE) => Ok(Profile::builtin()),
                    Some(other) => Err(EphemError::Usage(format!(
                        "--profile {other}: there is no {path} to define it (only the built-in \
                         `default` profile exists without one)"
                    ))),
                };
            }
            Err(e) => {
                return Err(EphemError::Input {
                    path,
                    message: format!("cannot read it: {e}"),
                })
            }
        };
        Profile::parse(&text, &path, root, target_dir, name)
    }

    /// [`Profile::load`] on the text of the file at `path`.
    pub fn parse(
        text: &str,
        path: &Utf8Path,
        root: &Utf8Path,
        target_dir: &Utf8Path,
        name: Option<&str>,
    ) -> Result<Profile> {
        let at = |fault: Fault| located(text, path, fault);
        let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        let config: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        let name = name.unwrap_or(DEFAULT_PROFILE);
        let chain = chain(&config, name).map_err(|f| match f {
            ChainError::Fault(f) => at(f),
            ChainError::Unknown(message) => EphemError::Input {
                path: path.to_owned(),
                message,
            },
        })?;
        let mut profile = Profile::builtin();
        profile.name = name.to_owned();
        profile.file = Some(path.to_owned());
        // Last to first: a nearer profile's key replaces a farther one's.
        for raw in chain.iter().rev() {
            apply(&mut profile, raw).map_err(at)?;
        }
        for (group, raw) in &config.test_groups {
            if group.starts_with('@') {
                return Err(at(Fault::at(
                    raw,
                    format!("test-groups.{group}: names starting with @ are reserved (@global)"),
                )));
            }
            let max = match &raw.get_ref().max_threads {
                Some(v) => raw::max_threads(v).map_err(at)?,
                None => {
                    return Err(at(Fault::at(
                        raw,
                        format!("test-groups.{group}: needs `max-threads`"),
                    )))
                }
            };
            profile.test_groups.insert(group.clone(), max);
        }
        for raw in &chain {
            for o in &raw.overrides {
                let o = Override::read(o, &profile.test_groups).map_err(at)?;
                profile.overrides.push(o);
            }
        }
        if let Some(junit) = chain.iter().find_map(|p| p.junit.path.as_ref()) {
            let store = match config.store.as_ref().and_then(|s| s.dir.as_ref()) {
                Some(dir) => root.join(dir.get_ref()),
                None => target_dir.join("nextest"),
            };
            profile.junit_path = Some(store.join(name).join(junit.get_ref()));
        }
        profile.unapplied = raw::unapplied_keys(&doc);
        Ok(profile)
    }

    /// Whether some override needs the package graph (a `filter`).
    pub fn needs_graph(&self) -> bool {
        self.overrides.iter().any(|o| o.filter.is_some())
    }

    /// The note listing what is read but not applied, if anything.
    pub fn unapplied_note(&self) -> Option<String> {
        if self.unapplied.is_empty() {
            return None;
        }
        let file = self.file.as_ref().map_or(CONFIG_PATH, |f| f.as_str());
        Some(format!(
            "note: {file}: not applied by cargo-ephem (no meaning here): {}",
            self.unapplied.join(", ")
        ))
    }
}

/// The profiles a profile resolves through, nearest first, ending with
/// `default` when the file has it.
fn chain<'a>(config: &'a RawConfig, name: &str) -> Result<Vec<&'a RawProfile>, ChainError> {
    let profile = |n: &str| config.profile.get(n).map(Spanned::get_ref);
    if name != DEFAULT_PROFILE && profile(name).is_none() {
        let known: Vec<&str> = config.profile.keys().map(String::as_str).collect();
        return Err(ChainError::Unknown(format!(
            "profile `{name}` not found (profiles: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    let mut out = Vec::new();
    let mut seen = vec![name.to_owned()];
    let mut current = profile(name);
    while let Some(p) = current {
        out.push(p);
        let Some(parent) = &p.inherits else {
            break;
        };
        let parent_name = parent.get_ref();
        if seen.iter().any(|s| s == parent_name) {
            return Err(ChainError::Fault(Fault::at(
                parent,
                format!(
                    "inherits: the profiles inherit in a cycle ({} -> {parent_name})",
                    seen.join(" -> ")
                ),
            )));
        }
        current = profile(parent_name);
        if current.is_none() && parent_name != DEFAULT_PROFILE {
            return Err(ChainError::Fault(Fault::at(
                parent,
                format!("inherits: there is no profile `{parent_name}`"),
            )));
        }
        seen.push(parent_name.clone());
    }
    // A profile that inherits nothing inherits `default`.
    if !seen.iter().any(|s| s == DEFAULT_PROFILE) {
        if let Some(d) = profile(DEFAULT_PROFILE) {
            out.push(d);
        }
    }
    Ok(out)
}

enum ChainError {
    Fault(Fault),
    Unknown(String),
}

/// Sets on `profile` every key `raw` sets.
fn apply(profile: &mut Profile, raw: &RawProfile) -> Result<(), Fault> {
    if let Some(v) = &raw.retries {
        profile.retries = raw::retries(v)?;
    }
    if let Some(v) = &raw.slow_timeout {
        profile.slow_timeout = raw::slow_timeout(v)?;
    }
    if let Some(v) = &raw.fail_fast {
        profile.fail_fast = raw::fail_fast(v)?;
    }
    if let Some(v) = &raw.test_threads {
        profile.test_threads = Some(raw::test_threads(v)?);
    }
    if let Some(v) = &raw.threads_required {
        profile.threads_required = raw::threads_required(v)?;
    }
    let out = &mut profile.output;
    if let Some(v) = &raw.status_level {
        out.status_level = Some(raw::named(v, "status-level")?);
    }
    if let Some(v) = &raw.final_status_level {
        out.final_status_level = Some(raw::named(v, "final-status-level")?);
    }
    if let Some(v) = &raw.failure_output {
        out.failure_output = Some(raw::named(v, "failure-output")?);
    }
    if let Some(v) = &raw.success_output {
        out.success_output = Some(raw::named(v, "success-output")?);
    }
    Ok(())
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn located(text: &str, path: &Utf8Path, fault: Fault) -> EphemError {
    let (line, col) = line_col(text, fault.span.start);
    EphemError::Usage(format!(
        "{path}:{line}:{col}: {} (nextest's configuration reference: https://nexte.st/docs/configuration/reference)",
        fault.message
    ))
}

fn toml_error(text: &str, path: &Utf8Path, e: &toml::de::Error) -> EphemError {
    let message = e.message().trim().to_owned();
    match e.span() {
        Some(span) => located(text, path, Fault { span, message }),
        None => EphemError::Input {
            path: path.to_owned(),
            message,
        },
    }
}
