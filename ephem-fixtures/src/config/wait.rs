//! How to tell that a service is ready: the `wait` key.

use std::fmt;
use std::time::Duration;

use crate::template::Template;

/// Default pause between two readiness probes.
pub const DEFAULT_WAIT_INTERVAL: Duration = Duration::from_millis(250);

/// A service's readiness check and how often to probe it.
#[derive(Clone, Debug)]
pub struct WaitStrategy {
    /// What to wait for.
    pub kind: WaitKind,
    /// Pause between probes (not used by `log`, which follows the stream).
    pub interval: Duration,
}

/// The readiness checks a service can use.
#[derive(Clone, Debug)]
pub enum WaitKind {
    /// The container's stdout or stderr shows `pattern` on `times` lines.
    Log {
        /// What to look for on each line.
        pattern: LogPattern,
        /// How many matching lines to see (Postgres logs its ready line twice).
        times: u32,
    },
    /// `command` run inside the container exits 0.
    Exec {
        /// Command and arguments, templated like `cmd`.
        command: Vec<Template>,
    },
    /// The published `port` accepts a TCP connection that is not closed at once.
    Tcp {
        /// Container port; must be in `ports`.
        port: u16,
    },
    /// `GET path` on the published `port` answers `status` (any 2xx when `None`).
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// Container port; must be in `ports`.
        port: u16,
        /// Expected status code.
        status: Option<u16>,
    },
    /// Docker reports the container healthy (image HEALTHCHECK or `healthcheck` key).
    Healthcheck,
    /// No `wait` key: the container is running.
    Running,
}

/// A log line matcher.
#[derive(Clone, Debug)]
pub enum LogPattern {
    /// Plain substring.
    Substring(String),
    /// Regular expression (`regex = true`).
    Regex(regex::Regex),
}

impl WaitKind {
    /// Whether this waits for Docker's health status.
    pub fn is_healthcheck(&self) -> bool {
        matches!(self, WaitKind::Healthcheck)
    }
}

impl LogPattern {
    /// Whether `line` matches.
    pub fn matches(&self, line: &str) -> bool {
        match self {
            LogPattern::Substring(s) => line.contains(s.as_str()),
            LogPattern::Regex(re) => re.is_match(line),
        }
    }
}

impl fmt::Display for WaitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitKind::Log { pattern, times } => {
                match pattern {
                    LogPattern::Substring(s) => write!(f, "log {s:?}")?,
                    LogPattern::Regex(re) => write!(f, "log regex {:?}", re.as_str())?,
                }
                if *times > 1 {
                    write!(f, " x{times}")?;
                }
                Ok(())
            }
            WaitKind::Exec { command } => {
                let words: Vec<&str> = command.iter().map(Template::source).collect();
                write!(f, "exec {:?}", words.join(" "))
            }
            WaitKind::Tcp { port } => write!(f, "tcp {port}"),
            WaitKind::Http { path, port, status } => {
                write!(f, "http GET {path} on {port}")?;
                match status {
                    Some(code) => write!(f, " = {code}"),
                    None => write!(f, " = 2xx"),
                }
            }
            WaitKind::Healthcheck => f.write_str("healthcheck"),
            WaitKind::Running => f.write_str("running"),
        }
    }
}
