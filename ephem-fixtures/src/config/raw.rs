//! The file's schema as serde sees it: every value keeps its span so the
//! loader can point at the line at fault.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(super) type SpannedList<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub backend: Option<Spanned<String>>,
    pub reuse: Option<RawReuse>,
    pub shards: Option<RawShards>,
    pub images: Option<RawImages>,
    pub kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReuse {
    pub ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawShards {
    pub test_threads: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawImages {
    pub mirror: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawKubernetes {
    pub context: Option<Spanned<String>>,
    pub namespace_prefix: Option<Spanned<String>>,
    pub image_pull_secrets: Option<SpannedList<String>>,
    pub prepull: Option<Spanned<bool>>,
    pub reach: Option<Spanned<String>>,
    pub pod_security: Option<Spanned<String>>,
    pub registry: Option<Spanned<String>>,
    pub cluster_domain: Option<Spanned<String>>,
    pub quota: Option<RawQuota>,
    pub limits: Option<RawLimits>,
    pub helm: Option<Spanned<RawHelm>>,
}

/// Quantities may be written as numbers (`limits-cpu = 8`) or strings (`"8Gi"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawQuota {
    pub requests_cpu: Option<Spanned<Scalar>>,
    pub requests_memory: Option<Spanned<Scalar>>,
    pub limits_cpu: Option<Spanned<Scalar>>,
    pub limits_memory: Option<Spanned<Scalar>>,
    pub pods: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimits {
    pub default_request_cpu: Option<Spanned<Scalar>>,
    pub default_request_memory: Option<Spanned<Scalar>>,
    pub default_cpu: Option<Spanned<Scalar>>,
    pub default_memory: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHelm {
    pub chart: Spanned<String>,
    pub release: Option<Spanned<String>>,
    pub values: Option<Spanned<toml::Table>>,
    pub version: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawService {
    pub image: Spanned<String>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<Scalar>>,
    pub ports: Option<SpannedList<u16>>,
    pub cmd: Option<SpannedList<String>>,
    pub args: Option<SpannedList<String>>,
    pub wait: Option<Spanned<RawWait>>,
    pub startup_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub export: BTreeMap<Spanned<String>, Spanned<String>>,
    pub depends_on: Option<SpannedList<String>>,
    pub healthcheck: Option<Spanned<RawHealthcheck>>,
    pub setup: Option<Spanned<RawExec>>,
    pub reset: Option<Spanned<RawReset>>,
    pub databases: Option<Spanned<String>>,
    pub kubernetes: Option<Spanned<RawServiceKubernetes>>,
    pub snapshot: Option<Spanned<RawSnapshot>>,
    /// `tests = "FILTERSET"`: which tests get the service.
    pub tests: Option<Spanned<String>>,
}

/// `[services.NAME.kubernetes]`: what only the Kubernetes backend uses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawServiceKubernetes {
    pub run_as_user: Option<Spanned<i64>>,
    pub run_as_group: Option<Spanned<i64>>,
    pub fs_group: Option<Spanned<i64>>,
    pub restarts: Option<Spanned<i64>>,
}

/// `{ exec = ["cmd", "arg"] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExec {
    pub exec: SpannedList<String>,
}

/// `reset = "postgres"`, `reset = "redis"` or `reset = { exec = [...] }`.
pub(super) enum RawReset {
    Named(String),
    Exec(RawExec),
}

/// The forms `reset` takes, as its errors list them.
pub(super) const RESET_FORMS: &str =
    "reset = \"postgres\", reset = \"redis\" or reset = { exec = [\"cmd\", \"arg\"] }";

// Not `#[serde(untagged)]`: an untagged enum buffers the value first, and
// the buffer loses the spans `RawExec` asks for (every `{ exec = [...] }`
// was refused). A visitor picks the form by the value's type instead and
// hands the table to `RawExec` as the TOML reader gives it.
impl<'de> Deserialize<'de> for RawReset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawReset;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "one of {RESET_FORMS}")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawReset, E> {
                Ok(RawReset::Named(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawReset, A::Error> {
                RawExec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawReset::Exec)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `snapshot = true` or `snapshot = { paths = [...], inputs = [...], quiesce = { exec = [...] } }`.
pub(super) enum RawSnapshot {
    Enabled(bool),
    Table(RawSnapshotTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshotTable {
    pub paths: Option<SpannedList<String>>,
    pub inputs: Option<SpannedList<String>>,
    pub quiesce: Option<Spanned<RawExec>>,
}

// A visitor for the same reason as `RawReset`'s: spans survive.
impl<'de> Deserialize<'de> for RawSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSnapshot;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("snapshot = true or snapshot = { paths = [...], inputs = [...] }")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawSnapshot, E> {
                Ok(RawSnapshot::Enabled(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSnapshot, A::Error> {
                RawSnapshotTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSnapshot::Table)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWait {
    pub log: Option<Spanned<String>>,
    pub regex: Option<Spanned<bool>>,
    pub times: Option<Spanned<u32>>,
    pub exec: Option<SpannedList<String>>,
    pub tcp: Option<Spanned<u16>>,
    pub http: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub status: Option<Spanned<u16>>,
    pub healthcheck: Option<Spanned<bool>>,
    pub interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHealthcheck {
    pub test: SpannedList<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<u32>>,
    pub start_period: Option<Spanned<String>>,
}

/// An environment value: users write `PORT = 8080` as often as `PORT = "8080"`.
pub(super) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
