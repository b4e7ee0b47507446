//! `[kubernetes] pod-security` and each service's `[services.NAME.kubernetes]`
//! table: which Pod Security Standard the pods meet, the user, group and
//! filesystem group a service runs as, and how often it may crash while it
//! starts.

use std::fmt;
use std::str::FromStr;

use toml::Spanned;

use super::super::error::Locator;
use super::super::raw::RawServiceKubernetes;
use super::super::ConfigError;

/// The largest user or group id Kubernetes takes (a non-negative int32).
pub const MAX_ID: i64 = i32::MAX as i64;
/// The largest `restarts`: a service that needs more to start is broken.
pub const MAX_RESTARTS: u32 = 100;

/// `pod-security`: the Pod Security Standard (Kubernetes' `baseline` or
/// `restricted` profile) every rendered pod satisfies, and which each
/// namespace enforces through its `pod-security.kubernetes.io/enforce` label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodSecurity {
    /// Every container runs as non-root, without privilege escalation or
    /// capabilities, under the runtime's default seccomp profile.
    Restricted,
    /// Nothing privileged (what cargo-ephem's pods are by construction).
    #[default]
    Baseline,
    /// No label: the cluster's own default decides; no security context
    /// beyond the service's own keys.
    None,
}

impl PodSecurity {
    /// Every choice, in the order messages list them.
    pub const ALL: [PodSecurity; 3] = [
        PodSecurity::Restricted,
        PodSecurity::Baseline,
        PodSecurity::None,
    ];

    /// The name in `ephem.toml`.
    pub fn name(self) -> &'static str {
        match self {
            PodSecurity::Restricted => "restricted",
            PodSecurity::Baseline => "baseline",
            PodSecurity::None => "none",
        }
    }

    /// The `pod-security.kubernetes.io/enforce` value; `None` for `none`.
    pub fn enforced(self) -> Option<&'static str> {
        match self {
            PodSecurity::None => None,
            level => Some(level.name()),
        }
    }
}

impl fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PodSecurity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PodSecurity::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a Pod Security level; use \"restricted\", \"baseline\" or \"none\"")
            })
    }
}

/// `[services.NAME.kubernetes]`: what only the Kubernetes backend uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceKubernetes {
    /// `run-as-user`: the pod's `securityContext.runAsUser` (the image's
    /// USER otherwise).
    pub run_as_user: Option<i64>,
    /// `run-as-group`: the pod's `securityContext.runAsGroup`.
    pub run_as_group: Option<i64>,
    /// `fs-group`: the pod's `securityContext.fsGroup` (a supplementary
    /// group of every process, and the group of the pod's volumes).
    pub fs_group: Option<i64>,
    /// `restarts`: how often the container may crash before it is ready
    /// (`restartPolicy: Always`); 0 (default): `restartPolicy: Never`, the
    /// first exit fails the service.
    pub restarts: u32,
}

/// Checks `[services.NAME.kubernetes]` (`key` is `services.NAME`); under
/// `pod-security = "restricted"`, user and group 0 are refused, as the
/// standard refuses them.
pub(in crate::config) fn check_service(
    at: &Locator<'_>,
    raw: Option<&Spanned<RawServiceKubernetes>>,
    key: &str,
    level: PodSecurity,
) -> Result<ServiceKubernetes, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ServiceKubernetes::default());
    };
    let raw = raw.get_ref();
    let id = |value: &Option<Spanned<i64>>, name: &str| -> Result<Option<i64>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let n = *value.get_ref();
        let key = format!("{key}.kubernetes.{name}");
        if !(0..=MAX_ID).contains(&n) {
            return Err(at.error(
                value.span(),
                key,
                format!("{n} is out of range: ids are 0 to {MAX_ID}; the official postgres and redis images run as 999"),
            ));
        }
        if n == 0 && level == PodSecurity::Restricted && name == "run-as-user" {
            return Err(at.error(
                value.span(),
                key,
                "0 is root, which [kubernetes] pod-security = \"restricted\" forbids; give the image's non-root user (999 for the official postgres and redis images) or choose pod-security = \"baseline\"",
            ));
        }
        Ok(Some(n))
    };
    let restarts = match &raw.restarts {
        None => 0,
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(n) if n <= MAX_RESTARTS => n,
            _ => {
                return Err(at.error(
                    value.span(),
                    format!("{key}.kubernetes.restarts"),
                    format!(
                        "{} is out of range: a service may crash 0 to {MAX_RESTARTS} times while it starts",
                        value.get_ref()
                    ),
                ))
            }
        },
    };
    Ok(ServiceKubernetes {
        run_as_user: id(&raw.run_as_user, "run-as-user")?,
        run_as_group: id(&raw.run_as_group, "run-as-group")?,
        fs_group: id(&raw.fs_group, "fs-group")?,
        restarts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EphemConfig;

    fn load(text: &str) -> Result<EphemConfig, String> {
        EphemConfig::parse(text, "ephem.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn levels_round_trip_and_baseline_is_the_default() {
        for level in PodSecurity::ALL {
            assert_eq!(level.name().parse::<PodSecurity>(), Ok(level));
        }
        assert_eq!(PodSecurity::default(), PodSecurity::Baseline);
        assert_eq!(PodSecurity::None.enforced(), None);
        assert_eq!(PodSecurity::Restricted.enforced(), Some("restricted"));
        let err = load("[kubernetes]\npod-security = \"privileged\"\n").unwrap_err();
        assert!(
            err.contains("ephem.toml:2:16: kubernetes.pod-security: \"privileged\" is not a Pod Security level"),
            "{err}"
        );
    }

    #[test]
    fn service_keys_load_and_are_checked_where_written() {
        let config = load(
            "[kubernetes]\npod-security = \"restricted\"\n[services.db]\nimage = \"postgres:15\"\n[services.db.kubernetes]\nrun-as-user = 999\nrun-as-group = 998\nfs-group = 997\nrestarts = 3\n",
        )
        .unwrap();
        assert_eq!(
            config.services[0].kubernetes,
            ServiceKubernetes {
                run_as_user: Some(999),
                run_as_group: Some(998),
                fs_group: Some(997),
                restarts: 3,
            }
        );
        let err = load("[kubernetes]\npod-security = \"restricted\"\n[services.db]\nimage = \"postgres:15\"\nkubernetes = { run-as-user = 0 }\n").unwrap_err();
        assert!(
            err.contains("ephem.toml:5:30: services.db.kubernetes.run-as-user: 0 is root"),
            "{err}"
        );
        assert!(
            load("[services.db]\nimage = \"postgres:15\"\nkubernetes = { run-as-user = 0 }\n")
                .is_ok()
        );
        let err =
            load("[services.db]\nimage = \"x:1\"\nkubernetes = { fs-group = -1 }\n").unwrap_err();
        assert!(
            err.contains("services.db.kubernetes.fs-group: -1 is out of range"),
            "{err}"
        );
        let err =
            load("[services.db]\nimage = \"x:1\"\nkubernetes = { restarts = 101 }\n").unwrap_err();
        assert!(
            err.contains("services.db.kubernetes.restarts: 101 is out of range"),
            "{err}"
        );
        let err = load("[services.db]\nimage = \"x:1\"\nkubernetes = { user = 1 }\n").unwrap_err();
        assert!(
            err.contains("services.db.kubernetes.user: unknown key `user`"),
            "{err}"
        );
    }

    #[test]
    fn registry_and_cluster_domain_are_checked() {
        let k = load("[kubernetes]\nregistry = \"mirror.example:5000/hub/\"\ncluster-domain = \"corp.example.\"\n")
            .unwrap()
            .kubernetes;
        assert_eq!(k.registry.as_deref(), Some("mirror.example:5000/hub"));
        assert_eq!(k.cluster_domain, "corp.example");
        let k = load("").unwrap().kubernetes;
        assert_eq!(
            (k.registry, k.cluster_domain.as_str()),
            (None, "cluster.local")
        );
        let err = load("[kubernetes]\nregistry = \"https://mirror\"\n").unwrap_err();
        assert!(
            err.contains("kubernetes.registry: \"https://mirror\" is not a registry address"),
            "{err}"
        );
        let err = load("[kubernetes]\ncluster-domain = \"Cluster.Local\"\n").unwrap_err();
        assert!(
            err.contains("kubernetes.cluster-domain: \"Cluster.Local\" is not a DNS domain"),
            "{err}"
        );
    }
}
