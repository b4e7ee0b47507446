//! Configuration errors that point at a file, line and key.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use super::raw::RESET_FORMS;

/// Why `ephem.toml` was rejected; the CLI maps this to exit code 2.
///
/// Always one line: `file:line:column: key: what is wrong; how to fix it`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The path that was tried.
        file: String,
        /// What the operating system said.
        reason: String,
    },
    /// The file was read but is malformed or inconsistent.
    Invalid {
        /// The path as given.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// Dotted key at fault, e.g. `services.redis.export.REDIS_URL`; empty for syntax errors.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// 1-based line at fault, when the error is about the file's content.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }

    /// Dotted key at fault, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, reason } => {
                write!(f, "{file}: cannot read the configuration: {reason}; check the path or pass --config PATH")
            }
            ConfigError::Invalid {
                file,
                line,
                column,
                key,
                message,
            } => {
                write!(f, "{file}:{line}:{column}: ")?;
                if !key.is_empty() {
                    write!(f, "{key}: ")?;
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte spans into `file:line:column` errors for one source text.
pub(crate) struct Locator<'a> {
    file: String,
    source: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(path: &Path, source: &'a str) -> Self {
        Locator {
            file: path.display().to_string(),
            source,
        }
    }

    /// An error about the value at `span`, filed under `key`.
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Converts a TOML syntax or schema error, keeping its key path.
    pub(crate) fn toml_error(&self, err: toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        // Without the input, the error's Display ends with "in `a.b.c`": the
        // only public way to learn which key a schema error is about.
        let mut bare = err.clone();
        bare.set_input(None);
        let rendered = bare.to_string();
        let mut key = rendered
            .lines()
            .find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`')))
            .unwrap_or("")
            .to_owned();
        let mut message = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // serde speaks of fields and Rust types; users wrote keys and ports.
        message = message
            .replace("missing field", "missing key")
            .replace("expected u16", "expected a port number (1-65535)")
            .replace("expected u32", "expected a whole number");
        if let Some(field) = unknown_field(&message) {
            let parent = key.clone();
            key = if parent.is_empty() {
                field.clone()
            } else {
                format!("{parent}.{field}")
            };
            message = if parent.ends_with("wait") {
                format!(
                    "unknown wait kind or option `{field}`; kinds are log, exec, tcp, http, healthcheck (options: regex, times, port, status, interval)"
                )
            } else {
                format!(
                    "unknown key `{field}`; {}",
                    message.replace(&format!("unknown field `{field}`, "), "")
                )
            };
        }
        if is_reset_key(&key) && !message.contains(RESET_FORMS) {
            // A wrong shape or option inside `reset`: name the forms there are.
            message = format!("{message}; write {RESET_FORMS}");
        }
        if key.is_empty() {
            // Syntax errors carry no key path; name the key the broken line assigns.
            key = self.key_at_line(self.position(span.start).0);
        }
        self.error(span, key, message)
    }

    /// `table.key` for the assignment on `line` (1-based), from the nearest
    /// table header above it; empty when the line assigns nothing.
    fn key_at_line(&self, line: usize) -> String {
        let lines: Vec<&str> = self.source.lines().collect();
        let Some(text) = lines.get(line.saturating_sub(1)) else {
            return String::new();
        };
        let table = lines[..line.saturating_sub(1)]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
            .unwrap_or_default();
        let assigned = text
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.\"".contains(c))
            })
            .unwrap_or("");
        match (table.is_empty(), assigned.is_empty()) {
            (_, true) => String::new(),
            (true, false) => assigned.to_owned(),
            (false, false) => format!("{table}.{assigned}"),
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = self.source.get(..offset).unwrap_or(self.source);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

/// `services.NAME.reset`, or a key inside it.
fn is_reset_key(key: &str) -> bool {
    key.split('.').nth(2) == Some("reset") && key.starts_with("services.")
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}
