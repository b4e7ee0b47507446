//! Why a registry request failed, in one line, sorted by what the cache
//! does about it.

use std::fmt;

/// A failed registry request; the text names the registry and what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// No connection could be made at all: the cache may use what it has.
    Unreachable(String),
    /// The registry connected but then sent nothing for the idle timeout.
    Stalled(String),
    /// Anything else: an error status, a refused token, bad bytes.
    Failed(String),
}

impl RegistryError {
    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            RegistryError::Unreachable(m)
            | RegistryError::Stalled(m)
            | RegistryError::Failed(m) => m,
        }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for RegistryError {}

/// An error and its sources on one line (hyper's errors nest the cause).
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
