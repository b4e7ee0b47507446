//! The `[kubernetes]` table: how the Kubernetes backend names, bounds and
//! reaches each shard's namespace, and the optional Helm chart per shard.
//!
//! Every key has a default, so a file without the table works on a cluster
//! as it is; the table is validated whatever the backend, like the rest of
//! the file.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use super::error::Locator;
use super::raw::{RawHelm, RawKubernetes, RawLimits, RawQuota, Scalar, SpannedList};
use super::ConfigError;
use crate::kubernetes::labels;
use crate::kubernetes::quantity::Quantity;

/// Default `namespace-prefix`: namespaces are `ephem-<run8>-<shard>`.
pub const DEFAULT_NAMESPACE_PREFIX: &str = "ephem";
/// Default `[kubernetes.helm] release`.
pub const DEFAULT_HELM_RELEASE: &str = "app";
/// Default `[kubernetes.helm] timeout`.
pub const DEFAULT_HELM_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Helm refuses release names longer than this.
pub const MAX_HELM_RELEASE_LEN: usize = 53;
/// The largest `[kubernetes.quota] pods`: far beyond any test environment,
/// and Kubernetes' own guidance is 150,000 pods for a whole cluster.
pub const MAX_QUOTA_PODS: u32 = 10_000;

/// The `[kubernetes]` table.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// `context`: the kubeconfig context to use; `None`: the current one.
    pub context: Option<String>,
    /// `namespace-prefix`, slugged to a DNS-1123 label (`My Team` gives
    /// `my-team`); namespaces are `<prefix>-<run8>-<shard>`.
    pub namespace_prefix: String,
    /// `image-pull-secrets`: Secrets (already in each shard's namespace, or
    /// made by the cluster's policy) that pods pull their images with.
    pub image_pull_secrets: Vec<String>,
    /// `prepull`: pull every image on every node once per run, before shards start.
    pub prepull: bool,
    /// `reach`: how tests reach the services.
    pub reach: Reach,
    /// `[kubernetes.quota]`: the ResourceQuota of every shard's namespace.
    pub quota: QuotaConfig,
    /// `[kubernetes.limits]`: the LimitRange (per-container defaults) of every shard's namespace.
    pub limits: LimitsConfig,
    /// `[kubernetes.helm]`: a chart installed in every shard's namespace once its services are ready.
    pub helm: Option<HelmConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            context: None,
            namespace_prefix: DEFAULT_NAMESPACE_PREFIX.to_owned(),
            image_pull_secrets: Vec::new(),
            prepull: false,
            reach: Reach::default(),
            quota: QuotaConfig::default(),
            limits: LimitsConfig::default(),
            helm: None,
        }
    }
}

/// `reach`: how the shard's tests, which run outside the cluster or in it,
/// reach its services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Cluster DNS when the runner itself runs in the cluster, else port-forward.
    #[default]
    Auto,
    /// A port-forward per published port, on 127.0.0.1.
    PortForward,
    /// `<service>.<namespace>.svc` names: for runners inside the cluster.
    ClusterDns,
}

impl Reach {
    /// Every choice, in the order messages list them.
    pub const ALL: [Reach; 3] = [Reach::Auto, Reach::PortForward, Reach::ClusterDns];

    /// The name in `ephem.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Reach::Auto => "auto",
            Reach::PortForward => "port-forward",
            Reach::ClusterDns => "cluster-dns",
        }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Reach {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Reach::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a way to reach services; use \"auto\", \"port-forward\" or \"cluster-dns\"")
            })
    }
}

/// `[kubernetes.quota]`: what one shard's namespace may use in all, so that
/// no shard can starve the cluster.
#[derive(Clone, Debug)]
pub struct QuotaConfig {
    /// `requests-cpu` (`"4"`): CPU requested by all pods together.
    pub requests_cpu: Quantity,
    /// `requests-memory` (`"8Gi"`).
    pub requests_memory: Quantity,
    /// `limits-cpu` (`"8"`): CPU limits of all pods together.
    pub limits_cpu: Quantity,
    /// `limits-memory` (`"16Gi"`).
    pub limits_memory: Quantity,
    /// `pods` (20): pods in the namespace.
    pub pods: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            requests_cpu: known("4"),
            requests_memory: known("8Gi"),
            limits_cpu: known("8"),
            limits_memory: known("16Gi"),
            pods: 20,
        }
    }
}

/// `[kubernetes.limits]`: defaults for containers that say nothing about
/// resources (the quota makes the API server reject those otherwise).
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// `default-request-cpu` (`"100m"`).
    pub default_request_cpu: Quantity,
    /// `default-request-memory` (`"128Mi"`).
    pub default_request_memory: Quantity,
    /// `default-cpu` (`"1"`): the default CPU limit.
    pub default_cpu: Quantity,
    /// `default-memory` (`"1Gi"`): the default memory limit.
    pub default_memory: Quantity,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_request_cpu: known("100m"),
            default_request_memory: known("128Mi"),
            default_cpu: known("1"),
            default_memory: known("1Gi"),
        }
    }
}

/// `[kubernetes.helm]`: a chart installed in every shard's namespace after
/// its services are ready.
#[derive(Clone, Debug)]
pub struct HelmConfig {
    /// `chart`: a chart reference as `helm install` takes it (`oci://...`, `repo/name`, a path).
    pub chart: String,
    /// `release` (`"app"`): the release name.
    pub release: String,
    /// `values`: the chart's values, as written; written out as a values file.
    pub values: toml::Table,
    /// `version`: the chart version; `None`: the latest.
    pub version: Option<String>,
    /// `timeout` (`"5m"`): how long the install may take.
    pub timeout: Duration,
}

/// A default that is a valid quantity by construction (unit-tested).
fn known(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|e| unreachable!("default quantity {text}: {e}"))
}

/// Checks the `[kubernetes]` table; its absence gives every default.
pub(super) fn check(
    at: &Locator<'_>,
    raw: Option<&RawKubernetes>,
) -> Result<KubernetesConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(KubernetesConfig::default());
    };
    let defaults = KubernetesConfig::default();
    let quota = check_quota(at, raw.quota.as_ref())?;
    let limits = check_limits(at, raw.limits.as_ref(), &quota, raw.quota.as_ref())?;
    Ok(KubernetesConfig {
        context: raw
            .context
            .as_ref()
            .map(|c| non_empty(at, c, "kubernetes.context", "a kubeconfig context name"))
            .transpose()?,
        namespace_prefix: match &raw.namespace_prefix {
            Some(prefix) => check_prefix(at, prefix)?,
            None => defaults.namespace_prefix,
        },
        image_pull_secrets: match &raw.image_pull_secrets {
            Some(list) => check_pull_secrets(at, list)?,
            None => Vec::new(),
        },
        prepull: raw.prepull.as_ref().is_some_and(|p| *p.get_ref()),
        reach: match &raw.reach {
            Some(reach) => reach
                .get_ref()
                .parse()
                .map_err(|e| at.error(reach.span(), "kubernetes.reach", e))?,
            None => Reach::default(),
        },
        quota,
        limits,
        helm: raw.helm.as_ref().map(|h| check_helm(at, h)).transpose()?,
    })
}

fn non_empty(
    at: &Locator<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let text = value.get_ref().trim();
    if text.is_empty() {
        return Err(at.error(
            value.span(),
            key,
            format!("is empty; give {what} or remove the key"),
        ));
    }
    Ok(text.to_owned())
}

fn check_prefix(at: &Locator<'_>, prefix: &Spanned<String>) -> Result<String, ConfigError> {
    let slug = labels::slug(prefix.get_ref(), 63);
    if slug.is_empty() {
        return Err(at.error(
            prefix.span(),
            "kubernetes.namespace-prefix",
            format!(
                "{:?} has no letter or digit to start a namespace name with (namespaces are DNS-1123 labels: lowercase letters, digits and -); write e.g. \"ephem\" or \"ci-myapp\"",
                prefix.get_ref()
            ),
        ));
    }
    Ok(slug)
}

fn check_pull_secrets(
    at: &Locator<'_>,
    list: &SpannedList<String>,
) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for (i, name) in list.get_ref().iter().enumerate() {
        let key = format!("kubernetes.image-pull-secrets[{i}]");
        let value = name.get_ref();
        if !is_dns1123_subdomain(value) {
            return Err(at.error(
                name.span(),
                key,
                format!("{value:?} is not a Secret name: lowercase letters, digits, - and ., starting and ending with a letter or digit, at most 253 characters"),
            ));
        }
        if names.contains(value) {
            return Err(at.error(
                name.span(),
                key,
                format!("{value:?} is listed twice; remove one"),
            ));
        }
        names.push(value.clone());
    }
    Ok(names)
}

fn check_quota(at: &Locator<'_>, raw: Option<&RawQuota>) -> Result<QuotaConfig, ConfigError> {
    let defaults = QuotaConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let q = |value: &Option<Spanned<Scalar>>, name: &str, default: Quantity| {
        quantity(at, value, &format!("kubernetes.quota.{name}"), default)
    };
    Ok(QuotaConfig {
        requests_cpu: q(&raw.requests_cpu, "requests-cpu", defaults.requests_cpu)?,
        requests_memory: q(
            &raw.requests_memory,
            "requests-memory",
            defaults.requests_memory,
        )?,
        limits_cpu: q(&raw.limits_cpu, "limits-cpu", defaults.limits_cpu)?,
        limits_memory: q(&raw.limits_memory, "limits-memory", defaults.limits_memory)?,
        pods: match &raw.pods {
            Some(pods) => check_pods(at, pods)?,
            None => defaults.pods,
        },
    })
}

fn check_pods(at: &Locator<'_>, pods: &Spanned<i64>) -> Result<u32, ConfigError> {
    let value = *pods.get_ref();
    match u32::try_from(value) {
        Ok(n) if (1..=MAX_QUOTA_PODS).contains(&n) => Ok(n),
        _ => Err(at.error(
            pods.span(),
            "kubernetes.quota.pods",
            format!("{value} is out of range: a shard's namespace holds 1 to {MAX_QUOTA_PODS} pods (one per service)"),
        )),
    }
}

/// A positive quantity, or the default when the key is absent.
fn quantity(
    at: &Locator<'_>,
    value: &Option<Spanned<Scalar>>,
    key: &str,
    default: Quantity,
) -> Result<Quantity, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let Scalar(text) = value.get_ref();
    let q = Quantity::parse(text).map_err(|e| at.error(value.span(), key, e))?;
    if !q.is_positive() {
        return Err(at.error(
            value.span(),
            key,
            format!(
                "{text:?} must be greater than zero; leave the key out for the default ({default})"
            ),
        ));
    }
    Ok(q)
}

fn check_limits(
    at: &Locator<'_>,
    raw: Option<&RawLimits>,
    quota: &QuotaConfig,
    raw_quota: Option<&RawQuota>,
) -> Result<LimitsConfig, ConfigError> {
    let defaults = LimitsConfig::default();
    let limits = match raw {
        None => defaults,
        Some(raw) => {
            let q = |value: &Option<Spanned<Scalar>>, name: &str, default: Quantity| {
                quantity(at, value, &format!("kubernetes.limits.{name}"), default)
            };
            LimitsConfig {
                default_request_cpu: q(
                    &raw.default_request_cpu,
                    "default-request-cpu",
                    defaults.default_request_cpu,
                )?,
                default_request_memory: q(
                    &raw.default_request_memory,
                    "default-request-memory",
                    defaults.default_request_memory,
                )?,
                default_cpu: q(&raw.default_cpu, "default-cpu", defaults.default_cpu)?,
                default_memory: q(
                    &raw.default_memory,
                    "default-memory",
                    defaults.default_memory,
                )?,
            }
        }
    };
    for bound in bounds(&limits, quota, raw, raw_quota) {
        bound.check(at)?;
    }
    Ok(limits)
}

/// One value of the namespace's bounds, with where it was written (if it was).
struct Bounded<'a> {
    key: &'static str,
    value: &'a Quantity,
    span: Option<Range<usize>>,
}

/// `small` must not exceed `large`, or `why`.
struct Bound<'a> {
    small: Bounded<'a>,
    large: Bounded<'a>,
    why: &'static str,
}

impl Bound<'_> {
    /// An error at whichever of the two the user wrote (the smaller first).
    fn check(&self, at: &Locator<'_>) -> Result<(), ConfigError> {
        if self.small.value.compare(self.large.value) != Some(Ordering::Greater) {
            return Ok(());
        }
        let Some((span, key)) = [&self.small, &self.large]
            .into_iter()
            .find_map(|b| b.span.clone().map(|s| (s, b.key)))
        else {
            return Ok(());
        };
        Err(at.error(
            span,
            format!("kubernetes.{key}"),
            format!(
                "{} = {} is more than {} = {}: {}; lower the first or raise the second",
                self.small.key, self.small.value, self.large.key, self.large.value, self.why
            ),
        ))
    }
}

/// The pairs that make a LimitRange the API server accepts and a quota a
/// defaulted container fits in.
fn bounds<'a>(
    limits: &'a LimitsConfig,
    quota: &'a QuotaConfig,
    raw: Option<&RawLimits>,
    raw_quota: Option<&RawQuota>,
) -> Vec<Bound<'a>> {
    let span = |v: Option<&Option<Spanned<Scalar>>>| v.and_then(|v| v.as_ref().map(Spanned::span));
    let b = |key, value, span| Bounded { key, value, span };
    let l = |f: fn(&RawLimits) -> &Option<Spanned<Scalar>>| span(raw.map(f));
    let q = |f: fn(&RawQuota) -> &Option<Spanned<Scalar>>| span(raw_quota.map(f));
    let request_over_limit =
        "a container's default request cannot exceed its default limit (the API server rejects the LimitRange)";
    let over_quota = "a container with the defaults would not fit in the namespace's quota";
    vec![
        Bound {
            small: b(
                "limits.default-request-cpu",
                &limits.default_request_cpu,
                l(|r| &r.default_request_cpu),
            ),
            large: b(
                "limits.default-cpu",
                &limits.default_cpu,
                l(|r| &r.default_cpu),
            ),
            why: request_over_limit,
        },
        Bound {
            small: b(
                "limits.default-request-memory",
                &limits.default_request_memory,
                l(|r| &r.default_request_memory),
            ),
            large: b(
                "limits.default-memory",
                &limits.default_memory,
                l(|r| &r.default_memory),
            ),
            why: request_over_limit,
        },
        Bound {
            small: b(
                "limits.default-request-cpu",
                &limits.default_request_cpu,
                l(|r| &r.default_request_cpu),
            ),
            large: b(
                "quota.requests-cpu",
                &quota.requests_cpu,
                q(|r| &r.requests_cpu),
            ),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-request-memory",
                &limits.default_request_memory,
                l(|r| &r.default_request_memory),
            ),
            large: b(
                "quota.requests-memory",
                &quota.requests_memory,
                q(|r| &r.requests_memory),
            ),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-cpu",
                &limits.default_cpu,
                l(|r| &r.default_cpu),
            ),
            large: b("quota.limits-cpu", &quota.limits_cpu, q(|r| &r.limits_cpu)),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-memory",
                &limits.default_memory,
                l(|r| &r.default_memory),
            ),
            large: b(
                "quota.limits-memory",
                &quota.limits_memory,
                q(|r| &r.limits_memory),
            ),
            why: over_quota,
        },
    ]
}

fn check_helm(at: &Locator<'_>, helm: &Spanned<RawHelm>) -> Result<HelmConfig, ConfigError> {
    let raw = helm.get_ref();
    let chart = non_empty(
        at,
        &raw.chart,
        "kubernetes.helm.chart",
        "a chart reference, e.g. \"oci://registry.example/charts/app\"",
    )?;
    let release = match &raw.release {
        Some(release) => {
            let value = release.get_ref();
            if !is_dns1123_label(value) || value.len() > MAX_HELM_RELEASE_LEN {
                return Err(at.error(
                    release.span(),
                    "kubernetes.helm.release",
                    format!("{value:?} is not a Helm release name: lowercase letters, digits and -, starting and ending with a letter or digit, at most {MAX_HELM_RELEASE_LEN} characters; e.g. \"app\""),
                ));
            }
            value.clone()
        }
        None => DEFAULT_HELM_RELEASE.to_owned(),
    };
    let version = raw
        .version
        .as_ref()
        .map(|v| {
            non_empty(
                at,
                v,
                "kubernetes.helm.version",
                "a chart version, e.g. \"1.2.3\"",
            )
        })
        .transpose()?;
    let timeout = match &raw.timeout {
        Some(t) => super::parse_duration(t.get_ref(), false)
            .map_err(|e| at.error(t.span(), "kubernetes.helm.timeout", e))?,
        None => DEFAULT_HELM_TIMEOUT,
    };
    Ok(HelmConfig {
        chart,
        release,
        values: raw
            .values
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default(),
        version,
        timeout,
    })
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit (namespaces, container names).
pub(crate) fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter (Service names).
pub(crate) fn is_dns1035_label(name: &str) -> bool {
    is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253
/// characters (most object names, Secrets included).
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_quantities() {
        let config = KubernetesConfig::default();
        assert_eq!(config.quota.requests_memory.as_str(), "8Gi");
        assert_eq!(config.limits.default_request_cpu.as_str(), "100m");
        assert_eq!(config.namespace_prefix, "ephem");
        assert_eq!(config.reach, Reach::Auto);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("a") && is_dns1123_label("2db") && is_dns1123_label("my-db"));
        assert!(!is_dns1123_label("") && !is_dns1123_label("-a") && !is_dns1123_label("a-"));
        assert!(
            !is_dns1123_label("my_db")
                && !is_dns1123_label("A")
                && !is_dns1123_label(&"a".repeat(64))
        );
        assert!(is_dns1035_label("db2") && !is_dns1035_label("2db"));
        assert!(is_dns1123_subdomain("regcred") && is_dns1123_subdomain("a.b-c.d"));
        assert!(
            !is_dns1123_subdomain("a..b")
                && !is_dns1123_subdomain(".a")
                && !is_dns1123_subdomain("Reg")
        );
    }

    #[test]
    fn reach_names_round_trip() {
        for reach in Reach::ALL {
            assert_eq!(reach.name().parse::<Reach>(), Ok(reach));
        }
        assert!("dns"
            .parse::<Reach>()
            .unwrap_err()
            .contains("\"port-forward\""));
    }
}
