//! The one error type of the runner, and the exit codes it maps to.

use camino::Utf8PathBuf;
use ephem_fixtures::{ConfigError, EnvError};

/// Process exit codes, documented in `--help` and the README.
pub mod exit_codes {
    /// Every selected test passed (flaky tests count as passed).
    pub const OK: i32 = 0;
    /// Unexpected internal error (a bug: please report it).
    pub const INTERNAL: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// `--no-tests fail` and the filters matched no test.
    pub const NO_TESTS: i32 = 4;
    /// One or more tests failed or timed out.
    pub const TESTS_FAILED: i32 = 100;
    /// `cargo test --no-run` failed.
    pub const BUILD_FAILED: i32 = 101;
    /// An environment could not be prepared, provisioned or reached.
    pub const ENVIRONMENT_FAILED: i32 = 102;
    /// A test binary could not be listed.
    pub const LISTING_FAILED: i32 = 104;
    /// Base of the codes for a run stopped by a signal: 128 + the signal number
    /// (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
    pub const SIGNAL_BASE: i32 = 128;
}

/// Everything that can stop the runner before or instead of a test verdict.
///
/// Each variant's message is one line: what went wrong, where, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EphemError {
    /// The command line is inconsistent or a value is malformed.
    #[error("{0}")]
    Usage(String),
    /// A configuration or input file is unreadable or malformed.
    #[error("{path}: {message}")]
    Input {
        /// The file at fault.
        path: Utf8PathBuf,
        /// What is wrong with it and how to fix it.
        message: String,
    },
    /// `ephem.toml` is unreadable or invalid; the message names file, line and key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The build failed; cargo has already printed its diagnostics.
    #[error("build failed: `{command}` exited with {status}; see cargo's errors above")]
    BuildFailed {
        /// The cargo command line that failed.
        command: String,
        /// Its exit status, described.
        status: String,
    },
    /// The build was stopped by a signal (Ctrl-C reaches cargo too).
    #[error("interrupted by signal {signal} while building")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// A test binary could not be run with `--list`, or printed something unexpected.
    #[error("cannot list tests of {binary_id} ({path}): {reason}")]
    Listing {
        /// Binary id, e.g. `mycrate::integration`.
        binary_id: String,
        /// Path of the test binary.
        path: Utf8PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An environment backend failed.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// An I/O error on a named file.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot write JUnit report".
        action: &'static str,
        /// The file.
        path: Utf8PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Something that should not happen.
    #[error("internal error: {0} (please report this as a bug)")]
    Internal(String),
}

impl EphemError {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            EphemError::Usage(_) | EphemError::Input { .. } | EphemError::Config(_) => {
                exit_codes::USAGE
            }
            EphemError::BuildFailed { .. } => exit_codes::BUILD_FAILED,
            EphemError::Interrupted { signal } => exit_codes::SIGNAL_BASE + signal,
            EphemError::Listing { .. } => exit_codes::LISTING_FAILED,
            EphemError::Environment(_) => exit_codes::ENVIRONMENT_FAILED,
            EphemError::Io { .. } | EphemError::Internal(_) => exit_codes::INTERNAL,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = EphemError> = std::result::Result<T, E>;
