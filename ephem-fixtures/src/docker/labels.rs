//! Labels on everything the backend creates: teardown and garbage collection
//! find resources by label, never by name.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::ShardContext;

/// Run id.
pub const RUN: &str = "cargo-ephem.run";
/// 1-based shard number.
pub const SHARD: &str = "cargo-ephem.shard";
/// Pid of the runner that created the resource.
pub const PID: &str = "cargo-ephem.pid";
/// Hostname of the machine that ran the runner.
pub const HOST: &str = "cargo-ephem.host";
/// Unix seconds after which the resource counts as abandoned.
pub const EXPIRES: &str = "cargo-ephem.expires";
/// Service name (containers only).
pub const SERVICE: &str = "cargo-ephem.service";

/// Labels shared by a shard's containers, network and volumes.
pub(crate) fn for_shard(shard: &ShardContext, pid: u32, hostname: &str) -> HashMap<String, String> {
    let expires = shard
        .run
        .expires_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    HashMap::from([
        (RUN.to_owned(), shard.run.run_id.clone()),
        (SHARD.to_owned(), shard.shard.to_string()),
        (PID.to_owned(), pid.to_string()),
        (HOST.to_owned(), hostname.to_owned()),
        (EXPIRES.to_owned(), expires.to_string()),
    ])
}

/// A list filter matching exactly one shard's resources.
pub(crate) fn shard_filter(shard: &ShardContext) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{RUN}={}", shard.run.run_id),
            format!("{SHARD}={}", shard.shard),
        ],
    )])
}

/// This machine's hostname, or `unknown`.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (we also guard against truncation by searching for the NUL).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// First 8 name-safe characters of the run id, for readable container names.
pub(crate) fn short_run(run_id: &str) -> String {
    let short: String = run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if short.is_empty() {
        "run".to_owned()
    } else {
        short
    }
}
