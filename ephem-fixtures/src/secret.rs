//! Secrets: generated ones for `${random}`, the runner's own for
//! `${secret.NAME}`, and the register of every secret this process knows.
//!
//! The register is process-wide on purpose. Secrets are born deep inside
//! backends (rendering a shard's templates, reading a kept environment back),
//! often in a task that fails before it can hand anything over, and every
//! place that shows or writes text must mask them all: the runner masks what
//! it prints and writes with [`known`], so no path can forget one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, RwLock};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of every generated token.
pub const TOKEN_LEN: usize = 24;

/// The shortest value `${secret.NAME}` takes (GitLab's rule for masked
/// variables too): masking a shorter one would hide ordinary words, and
/// could cut into the syntax of the reports it is masked in.
pub const MIN_SECRET_LEN: usize = 8;

static KNOWN: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(Default::default);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Returns 24 random alphanumeric characters (about 143 bits), registered
/// as a secret of this process.
///
/// Alphanumerics only, rather than base64url, so a token is safe unquoted in
/// URLs, shell words and argv (a leading `-` would read as a flag).
pub fn random_token() -> Result<String, String> {
    let mut token = String::with_capacity(TOKEN_LEN);
    let mut buf = [0u8; 64];
    while token.len() < TOKEN_LEN {
        getrandom::fill(&mut buf)
            .map_err(|e| format!("cannot read the system's random source: {e}"))?;
        // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
        for byte in buf.iter().filter(|b| **b < 248) {
            if token.len() == TOKEN_LEN {
                break;
            }
            token.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
        }
    }
    register(&token);
    Ok(token)
}

/// The value of the runner's environment variable `name` for
/// `${secret.NAME}`, registered as a secret; an error when it is unset,
/// shorter than [`MIN_SECRET_LEN`] or not UTF-8.
pub fn from_runner_env(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if value.chars().count() >= MIN_SECRET_LEN => {
            register(&value);
            Ok(value)
        }
        Ok(value) if value.is_empty() => Err(format!(
            "${{secret.{name}}}: the runner's environment variable {name} is empty; set it to the secret (in CI, from the secret store)"
        )),
        Ok(value) => Err(format!(
            "${{secret.{name}}}: the runner's environment variable {name} has {} characters, and a secret needs at least {MIN_SECRET_LEN} (masking a shorter one would hide ordinary text); use a longer secret",
            value.chars().count()
        )),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "${{secret.{name}}}: the runner's environment has no {name}; set it to the secret (in CI, from the secret store)"
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "${{secret.{name}}}: the runner's environment variable {name} is not UTF-8"
        )),
    }
}

/// Remembers `value` as a secret: from now on the runner masks it in
/// everything it shows or writes. Empty values are ignored.
pub fn register(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    if known.insert(value.to_owned()) {
        GENERATION.fetch_add(1, Ordering::Release);
    }
}

/// How many times the register changed: a masker built at one generation
/// is current while this stays the same.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Every secret registered so far.
pub fn known() -> Vec<String> {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    known.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_registered_and_missing_ones_named() {
        let before = generation();
        let token = random_token().unwrap();
        assert!(known().contains(&token));
        assert!(generation() > before);
        register("");
        register(&token);
        assert_eq!(known().iter().filter(|k| k.is_empty()).count(), 0);

        // Setting variables is left to tests/secret_values.rs, a process
        // of its own: other tests here may read the environment meanwhile.
        let missing = from_runner_env("EPHEM_SECRET_TEST_UNSET").unwrap_err();
        assert!(
            missing.contains("has no EPHEM_SECRET_TEST_UNSET"),
            "{missing}"
        );
    }
}
