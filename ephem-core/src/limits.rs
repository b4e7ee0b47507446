//! The ranges of every number a user can give, checked before the build.
//!
//! Beyond these, deadlines overflow (a timeout of 10^19 s), memory runs out
//! (four billion shards), or a run never ends in practice; each limit is far
//! beyond any real use and is named in the error.

use std::time::Duration;

pub use ephem_fixtures::config::MAX_DURATION;

/// Most shards in a plan (`--shards N`, `--partition KIND:M/N`). CI matrices
/// top out at a few hundred jobs (GitHub: 256, GitLab: 200).
pub const MAX_SHARDS: u32 = 1024;

/// Most extra attempts of a failing test (`--retries`).
pub const MAX_RETRIES: u32 = 100;

/// Most tests at once across all shards (`-j`).
pub const MAX_TEST_THREADS: usize = 4096;

/// A duration from the command line: humantime syntax, 1 ms to 365 days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    ephem_fixtures::config::parse_duration(text, false)
}

/// `N` of `--shards N`, 1 to [`MAX_SHARDS`].
pub fn parse_shard_count(text: &str) -> Result<u32, String> {
    parse_in_range(text, 1, MAX_SHARDS as u64).map(|n| n as u32)
}

/// `N` of `--retries N`, 0 to [`MAX_RETRIES`].
pub fn parse_retries(text: &str) -> Result<u32, String> {
    parse_in_range(text, 0, MAX_RETRIES as u64).map(|n| n as u32)
}

/// `N` of `-j N`, 1 to [`MAX_TEST_THREADS`].
pub fn parse_test_threads(text: &str) -> Result<usize, String> {
    parse_in_range(text, 1, MAX_TEST_THREADS as u64).map(|n| n as usize)
}

/// A whole number in `min..=max`; the error gives the range.
pub fn parse_in_range(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let range = format!("allowed: {min} to {max}");
    let trimmed = text.trim();
    match trimmed.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{trimmed} is out of range ({range})")),
        // Digits that do not fit are out of range too, not "invalid".
        Err(_) if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{trimmed} is out of range ({range})"))
        }
        Err(_) => Err(format!("{trimmed:?} is not a whole number ({range})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_numbers_are_out_of_range_with_the_range_named() {
        let err = parse_shard_count("4000000000").unwrap_err();
        assert!(err.contains("out of range (allowed: 1 to 1024)"), "{err}");
        let err = parse_shard_count("99999999999999999999999").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        assert!(parse_shard_count("0").unwrap_err().contains("1 to 1024"));
        assert!(parse_shard_count("-1")
            .unwrap_err()
            .contains("not a whole number"));
        assert_eq!(parse_shard_count("1024"), Ok(1024));
        assert_eq!(parse_retries("0"), Ok(0));
        assert!(parse_retries("4294967295").is_err());
        assert!(parse_test_threads("0").is_err());
    }

    #[test]
    fn durations_end_at_a_year() {
        let err = parse_duration("10000000000000000000s").unwrap_err();
        assert!(err.contains("allowed: 1ms to 365days"), "{err}");
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    }
}
