//! Names, labels and annotations of everything the Kubernetes backend
//! creates: what teardown, the reaper, sweeps, `gc` and kube-janitor find
//! it by. Label values are limited (63 characters, no `:` or `/`), so the
//! facts a sweep needs exactly (pid, start time, host, expiry) are
//! annotations; labels carry what selectors need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// `app.kubernetes.io/managed-by=cargo-ephem`: sweeps and `gc` find
/// namespaces by this label alone, whatever cargo-ephem version made them.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "cargo-ephem";
/// Label: the run id.
pub const RUN: &str = "cargo-ephem.dev/run";
/// Label: the 1-based shard number.
pub const SHARD: &str = "cargo-ephem.dev/shard";
/// Label: the runner's hostname as a label value ([`label_value`]).
pub const HOST: &str = "cargo-ephem.dev/host";
/// Label on a service's pod and Service: its name in `ephem.toml`.
pub const SERVICE: &str = "cargo-ephem.dev/service";

/// Annotation: the runner's hostname, exactly.
pub const HOSTNAME: &str = "cargo-ephem.dev/hostname";
/// Annotation: the runner's pid.
pub const PID: &str = "cargo-ephem.dev/pid";
/// Annotation: the runner's start time in clock ticks since boot.
pub const PID_START: &str = "cargo-ephem.dev/pid-start";
/// Annotation: the run's environments were kept on purpose (`--keep-env`).
pub const KEEP: &str = "cargo-ephem.dev/keep";
/// kube-janitor's TTL annotation, `<int><s|m|h|d|w>`, counted from the
/// namespace's creation.
pub const JANITOR_TTL: &str = "janitor/ttl";
/// kube-janitor's absolute expiry annotation, `%Y-%m-%dT%H:%M:%SZ` (UTC);
/// where the run's expiry lives, pushed forward while the run is alive.
pub const JANITOR_EXPIRES: &str = "janitor/expires";

/// The label selector of every namespace cargo-ephem made.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// The label selector of one run's namespaces.
pub fn run_selector(run_id: &str) -> String {
    format!("{},{RUN}={}", managed_selector(), label_value(run_id))
}

/// A label value from any text: at most 63 characters of `[A-Za-z0-9-_.]`,
/// starting and ending with an alphanumeric (others become `-`).
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// A DNS-1123 label from any text: lowercase letters, digits and `-`,
/// starting and ending with a letter or digit, at most `max` characters.
/// Empty when nothing usable remains.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(max);
    out.trim_matches('-').to_owned()
}

/// `<prefix>-<run8>-<shard>`: a DNS-1123 label of at most 63 characters,
/// unique per run (so a namespace of an earlier run still Terminating never
/// collides). `prefix` is slugged and cut to leave room for the rest.
pub fn namespace_name(prefix: &str, run_id: &str, shard: u32) -> String {
    let run8: String = slug(run_id, 63).replace('-', "").chars().take(8).collect();
    let tail = format!("-{run8}-{shard}");
    let prefix = slug(prefix, 63 - tail.len());
    let prefix = if prefix.is_empty() {
        "ephem".to_owned()
    } else {
        prefix
    };
    format!("{prefix}{tail}")
}

/// `janitor/expires` for an instant: `%Y-%m-%dT%H:%M:%SZ`, UTC.
pub fn janitor_expires(at: SystemTime) -> String {
    DateTime::<Utc>::from(at)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Unix seconds of a `janitor/expires` value in any of the forms
/// kube-janitor reads: `%Y-%m-%dT%H:%M:%SZ`, `%Y-%m-%dT%H:%M`, `%Y-%m-%d`.
pub fn parse_janitor_expires(text: &str) -> Option<u64> {
    let text = text.trim();
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_time(Default::default()))
        })
        .ok()?;
    u64::try_from(naive.and_utc().timestamp()).ok()
}

/// `janitor/ttl` that ends at `expires_at` for a namespace created at
/// `created`: whole seconds, rounded up, so that kube-janitor (which counts
/// the TTL from creation) never deletes a live run before its expiry.
pub fn janitor_ttl(created: SystemTime, expires_at: SystemTime) -> String {
    let ttl = expires_at
        .duration_since(created)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        + 1;
    format!("{ttl}s")
}

/// Seconds since the Unix epoch; 0 before it.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn namespace_names_are_dns_labels_whatever_the_prefix() {
        let run = "3f2a9c1e-77b0-4d0e-9f1a-0123456789ab";
        assert_eq!(namespace_name("ephem", run, 2), "ephem-3f2a9c1e-2");
        for prefix in [
            "",
            "---",
            "My Team/PR #1234: fix ÜBER bug",
            &"x".repeat(200),
            "a",
        ] {
            let name = namespace_name(prefix, run, 1024);
            assert!(is_dns_label(&name), "{prefix:?} gave {name:?}");
            assert!(name.ends_with("-3f2a9c1e-1024"), "{name}");
        }
    }

    #[test]
    fn label_values_fit_the_rules() {
        assert_eq!(
            label_value("build-host.example.com"),
            "build-host.example.com"
        );
        assert_eq!(label_value("-weird:host/"), "weird-host");
        assert_eq!(label_value(&"h".repeat(100)).len(), 63);
    }

    #[test]
    fn janitor_annotations_round_trip() {
        let at = UNIX_EPOCH + Duration::from_secs(1_714_557_600);
        assert_eq!(janitor_expires(at), "2024-05-01T10:00:00Z");
        assert_eq!(
            parse_janitor_expires("2024-05-01T10:00:00Z"),
            Some(1_714_557_600)
        );
        assert_eq!(
            parse_janitor_expires("2024-05-01T10:00"),
            Some(1_714_557_600)
        );
        assert_eq!(parse_janitor_expires("2024-05-01"), Some(1_714_521_600));
        assert_eq!(parse_janitor_expires("soon"), None);
        let created = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            janitor_ttl(created, created + Duration::from_secs(1800)),
            "1801s"
        );
        assert_eq!(janitor_ttl(created, created - Duration::from_secs(5)), "1s");
    }
}
