//! The `[kubernetes]` table: how the Kubernetes backend names, bounds,
//! secures and reaches each shard's namespace, and the optional Helm chart
//! per shard; and each service's `[services.NAME.kubernetes]` table.
//!
//! Every key has a default, so a file without the table works on a cluster
//! as it is; the table is validated whatever the backend, like the rest of
//! the file.

mod bounds;
mod security;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use super::error::Locator;
use super::raw::{RawHelm, RawKubernetes, SpannedList};
use super::ConfigError;
use crate::kubernetes::labels;

pub use bounds::{LimitsConfig, QuotaConfig};
pub(super) use security::check_service;
pub use security::{PodSecurity, ServiceKubernetes};

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
/// Default `cluster-domain`: kubeadm's, kind's, k3s' and most managed clusters'.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Environment variable that overrides `[kubernetes] registry`.
pub const KUBERNETES_REGISTRY_ENV: &str = "EPHEM_KUBERNETES_REGISTRY";

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
    /// `pod-security`: the Pod Security Standard every pod meets and every
    /// namespace enforces.
    pub pod_security: PodSecurity,
    /// `registry`: the registry the cluster pulls Docker Hub images through
    /// (`EPHEM_KUBERNETES_REGISTRY` overrides it; see
    /// [`effective_registry`](Self::effective_registry)). Never the Docker
    /// daemon's `[images] mirror`.
    pub registry: Option<String>,
    /// `cluster-domain`: the cluster's DNS domain, in Services' full names
    /// (`NAME.NAMESPACE.svc.<domain>`).
    pub cluster_domain: String,
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
            pod_security: PodSecurity::default(),
            registry: None,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            quota: QuotaConfig::default(),
            limits: LimitsConfig::default(),
            helm: None,
        }
    }
}

impl KubernetesConfig {
    /// The registry pods pull Docker Hub images through:
    /// `EPHEM_KUBERNETES_REGISTRY` when set and not empty, else `registry`.
    /// `EPHEM_REGISTRY_MIRROR` is the Docker daemon's and is never used here:
    /// `localhost:5000` on the runner means nothing to a node.
    pub fn effective_registry(&self) -> Option<String> {
        match std::env::var(KUBERNETES_REGISTRY_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                Some(value.trim().trim_end_matches('/').to_owned())
            }
            _ => self.registry.clone(),
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

/// Checks the `[kubernetes]` table; its absence gives every default.
pub(super) fn check(
    at: &Locator<'_>,
    raw: Option<&RawKubernetes>,
) -> Result<KubernetesConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(KubernetesConfig::default());
    };
    let defaults = KubernetesConfig::default();
    let quota = bounds::check_quota(at, raw.quota.as_ref())?;
    let limits = bounds::check_limits(at, raw.limits.as_ref(), &quota, raw.quota.as_ref())?;
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
        pod_security: match &raw.pod_security {
            Some(level) => level
                .get_ref()
                .parse()
                .map_err(|e| at.error(level.span(), "kubernetes.pod-security", e))?,
            None => PodSecurity::default(),
        },
        registry: raw
            .registry
            .as_ref()
            .map(|r| check_registry(at, r))
            .transpose()?,
        cluster_domain: match &raw.cluster_domain {
            Some(domain) => check_cluster_domain(at, domain)?,
            None => defaults.cluster_domain,
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

/// `registry`: `host[:port][/path]`, as `[images] mirror` is written.
fn check_registry(at: &Locator<'_>, registry: &Spanned<String>) -> Result<String, ConfigError> {
    let value = registry.get_ref().trim().trim_end_matches('/');
    if value.is_empty() || value.contains("://") || value.contains(char::is_whitespace) {
        return Err(at.error(
            registry.span(),
            "kubernetes.registry",
            format!("{value:?} is not a registry address; write host[:port][/path] without a scheme, as the cluster's nodes reach it, e.g. \"mirror.example:5000\""),
        ));
    }
    Ok(value.to_owned())
}

/// `cluster-domain`: a DNS-1123 subdomain (a trailing dot is dropped).
fn check_cluster_domain(at: &Locator<'_>, domain: &Spanned<String>) -> Result<String, ConfigError> {
    let value = domain.get_ref().trim().trim_end_matches('.');
    if !is_dns1123_subdomain(value) {
        return Err(at.error(
            domain.span(),
            "kubernetes.cluster-domain",
            format!("{value:?} is not a DNS domain: dot-separated labels of lowercase letters, digits and -; the cluster's is in any pod's /etc/resolv.conf (search NS.svc.DOMAIN), usually \"{DEFAULT_CLUSTER_DOMAIN}\""),
        ));
    }
    Ok(value.to_owned())
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
