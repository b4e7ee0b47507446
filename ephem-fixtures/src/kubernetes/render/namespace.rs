//! The namespace of a shard (or of the run's prepull), its ResourceQuota,
//! LimitRange and Secret, the labels and annotations everything carries,
//! and the names Kubernetes accepts.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::Scope;
use super::{security, RenderContext, LIMITS_NAME, QUOTA_NAME, SECRET_NAME};
use crate::config::kubernetes::is_dns1035_label;
use crate::config::{EphemConfig, PodSecurity};
use crate::kubernetes::labels;
use crate::kubernetes::quantity::Quantity as CheckedQuantity;
use crate::EnvError;

impl Scope<'_> {
    pub(super) fn quota(&self) -> ResourceQuota {
        let q = &self.config.kubernetes.quota;
        let hard = BTreeMap::from([
            ("requests.cpu".to_owned(), q.requests_cpu.to_k8s()),
            ("requests.memory".to_owned(), q.requests_memory.to_k8s()),
            ("limits.cpu".to_owned(), q.limits_cpu.to_k8s()),
            ("limits.memory".to_owned(), q.limits_memory.to_k8s()),
            ("pods".to_owned(), Quantity(q.pods.to_string())),
        ]);
        ResourceQuota {
            metadata: meta(QUOTA_NAME, self.namespace, self.shard_labels()),
            spec: Some(ResourceQuotaSpec {
                hard: Some(hard),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(super) fn limits(&self) -> LimitRange {
        let l = &self.config.kubernetes.limits;
        let pair = |cpu: &CheckedQuantity, memory: &CheckedQuantity| {
            BTreeMap::from([
                ("cpu".to_owned(), cpu.to_k8s()),
                ("memory".to_owned(), memory.to_k8s()),
            ])
        };
        LimitRange {
            metadata: meta(LIMITS_NAME, self.namespace, self.shard_labels()),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".to_owned(),
                    default: Some(pair(&l.default_cpu, &l.default_memory)),
                    default_request: Some(pair(&l.default_request_cpu, &l.default_request_memory)),
                    ..Default::default()
                }],
            }),
        }
    }

    pub(super) fn secret(&self, data: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: meta(SECRET_NAME, self.namespace, self.shard_labels()),
            type_: Some("Opaque".to_owned()),
            // stringData, not data: the API server encodes it, and a render
            // can mask the values as text.
            string_data: Some(data),
            ..Default::default()
        }
    }

    fn shard_labels(&self) -> BTreeMap<String, String> {
        base_labels(&self.shard.run.run_id, Some(self.shard.shard))
    }
}

/// `<prefix>-<run8>-prepull`, cut like [`labels::namespace_name`] cuts
/// shard namespaces, so it is a DNS-1123 label whatever the prefix.
pub fn prepull_namespace_name(prefix: &str, run_id: &str) -> String {
    let run8: String = labels::slug(run_id, 63)
        .replace('-', "")
        .chars()
        .take(8)
        .collect();
    let tail = format!("-{run8}-prepull");
    let prefix = labels::slug(prefix, 63 - tail.len());
    let prefix = if prefix.is_empty() {
        crate::config::DEFAULT_NAMESPACE_PREFIX.to_owned()
    } else {
        prefix
    };
    format!("{prefix}{tail}")
}

/// Services whose name cannot be a Service's are refused before anything
/// is generated.
pub(super) fn check_service_names(config: &EphemConfig) -> Result<(), EnvError> {
    match config.services.iter().find(|s| !is_dns1035_label(&s.name)) {
        None => Ok(()),
        Some(spec) => Err(EnvError::Other(format!(
            "services.{name}: on Kubernetes a service's name is its Service's and pod's, a DNS-1035 label (a lowercase letter first, then lowercase letters, digits and -, no - at the end), which {name:?} is not; rename the table, e.g. [services.{suggestion}], and its uses in depends-on and ${{services.{name}...}}",
            name = spec.name,
            suggestion = dns1035_suggestion(&spec.name),
        ))),
    }
}

/// A DNS-1035 label close to a service name the loader accepted
/// (lowercase letters, digits, `-` and `_`).
fn dns1035_suggestion(name: &str) -> String {
    let dashed = name.replace('_', "-");
    let trimmed = dashed.trim_end_matches('-');
    if trimmed.starts_with(|c: char| c.is_ascii_lowercase()) {
        trimmed.to_owned()
    } else {
        format!("svc-{trimmed}")
    }
}

/// `app.kubernetes.io/managed-by`, run and (for shards) shard.
pub(super) fn base_labels(run_id: &str, shard: Option<u32>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::RUN.to_owned(), labels::label_value(run_id)),
    ]);
    if let Some(shard) = shard {
        labels.insert(labels::SHARD.to_owned(), shard.to_string());
    }
    labels
}

/// A namespace's labels: the base ones and the runner's host.
pub(super) fn owner_labels(
    run_id: &str,
    shard: Option<u32>,
    ctx: &RenderContext,
) -> BTreeMap<String, String> {
    let mut labels = base_labels(run_id, shard);
    labels.insert(labels::HOST.to_owned(), labels::label_value(&ctx.hostname));
    labels
}

/// A namespace of ours: `labels` plus the Pod Security label of `level`,
/// and the runner's and kube-janitor's annotations.
pub(super) fn namespace_object(
    name: &str,
    mut labels: BTreeMap<String, String>,
    expires_at: SystemTime,
    ctx: &RenderContext,
    level: PodSecurity,
) -> Namespace {
    labels.extend(security::namespace_labels(level));
    let mut annotations = BTreeMap::from([
        (labels::HOSTNAME.to_owned(), ctx.hostname.clone()),
        (labels::PID.to_owned(), ctx.pid.to_string()),
        (
            labels::JANITOR_EXPIRES.to_owned(),
            labels::janitor_expires(expires_at),
        ),
        (
            labels::JANITOR_TTL.to_owned(),
            labels::janitor_ttl(ctx.now, expires_at),
        ),
    ]);
    if let Some(start) = ctx.pid_start {
        annotations.insert(labels::PID_START.to_owned(), start.to_string());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035_suggestions_are_dns1035_labels() {
        for (name, suggestion) in [("my_db", "my-db"), ("2db", "svc-2db"), ("db_", "db")] {
            assert_eq!(dns1035_suggestion(name), suggestion);
            assert!(is_dns1035_label(suggestion));
        }
    }

    #[test]
    fn prepull_namespaces_are_dns_labels_whatever_the_prefix() {
        let run = "3f2a9c1e-77b0-4d0e-9f1a-0123456789ab";
        assert_eq!(
            prepull_namespace_name("ephem", run),
            "ephem-3f2a9c1e-prepull"
        );
        for prefix in ["", "---", &"x".repeat(200), "My Team"] {
            let name = prepull_namespace_name(prefix, run);
            assert!(
                crate::config::kubernetes::is_dns1123_label(&name),
                "{prefix:?} gave {name:?}"
            );
            assert!(name.ends_with("-3f2a9c1e-prepull"), "{name}");
        }
    }
}
