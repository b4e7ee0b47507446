//! Pod Security: what `[kubernetes] pod-security` adds to pods, containers
//! and namespaces.
//!
//! Kubernetes' `baseline` standard forbids privileged containers, host
//! namespaces, ports and paths, added capabilities beyond its default set,
//! and unconfined seccomp; cargo-ephem's pods use none of them, so
//! `baseline` adds nothing to them. `restricted` also requires, of every
//! container (init containers included): `runAsNonRoot` (at the pod's or the
//! container's level), `allowPrivilegeEscalation: false`,
//! `capabilities.drop: [ALL]` (only `NET_BIND_SERVICE` may be added back),
//! a `RuntimeDefault` or `Localhost` seccomp profile, no `runAsUser: 0`, and
//! only ConfigMap, CSI, downwardAPI, emptyDir, ephemeral, PVC, projected and
//! Secret volumes. Each namespace is labelled to enforce the chosen level,
//! so that the cluster refuses what cargo-ephem would not render.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

use crate::config::{PodSecurity, ServiceKubernetes};

/// The namespace label Pod Security admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The user and group the prepull pods run as under `restricted`: they run
/// `true` and pause, which need no one (65534 is `nobody`).
pub const PREPULL_USER: i64 = 65534;

/// The namespace's Pod Security labels: `enforce` at `level`, none for `none`.
pub fn namespace_labels(level: PodSecurity) -> BTreeMap<String, String> {
    level
        .enforced()
        .map(|value| (ENFORCE_LABEL.to_owned(), value.to_owned()))
        .into_iter()
        .collect()
}

/// A service pod's security context: what `restricted` requires at the pod
/// level (non-root, the runtime's seccomp profile), and the service's own
/// user, group and filesystem group at any level. `None` when empty.
pub fn pod_context(level: PodSecurity, own: &ServiceKubernetes) -> Option<PodSecurityContext> {
    let context = PodSecurityContext {
        run_as_user: own.run_as_user,
        run_as_group: own.run_as_group,
        fs_group: own.fs_group,
        ..restricted_pod(level)
    };
    (context != PodSecurityContext::default()).then_some(context)
}

/// The prepull pods' security context: under `restricted`, also a user
/// that is surely not root, since the images' own may be.
pub fn prepull_context(level: PodSecurity) -> Option<PodSecurityContext> {
    (level == PodSecurity::Restricted).then(|| PodSecurityContext {
        run_as_user: Some(PREPULL_USER),
        run_as_group: Some(PREPULL_USER),
        ..restricted_pod(level)
    })
}

/// Every container's security context: under `restricted`, no privilege
/// escalation and no capabilities; nothing otherwise.
pub fn container_context(level: PodSecurity) -> Option<SecurityContext> {
    (level == PodSecurity::Restricted).then(|| SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..Default::default()
    })
}

fn restricted_pod(level: PodSecurity) -> PodSecurityContext {
    if level != PodSecurity::Restricted {
        return PodSecurityContext::default();
    }
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_adds_what_it_requires_and_nothing_else() {
        let own = ServiceKubernetes::default();
        assert_eq!(pod_context(PodSecurity::Baseline, &own), None);
        assert_eq!(pod_context(PodSecurity::None, &own), None);
        assert_eq!(container_context(PodSecurity::Baseline), None);
        let pod = pod_context(PodSecurity::Restricted, &own).unwrap();
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = container_context(PodSecurity::Restricted).unwrap();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.capabilities.unwrap().drop.unwrap(), ["ALL"]);

        let own = ServiceKubernetes {
            run_as_user: Some(999),
            fs_group: Some(999),
            ..Default::default()
        };
        let pod = pod_context(PodSecurity::None, &own).unwrap();
        assert_eq!((pod.run_as_user, pod.fs_group), (Some(999), Some(999)));
        assert_eq!(pod.run_as_non_root, None);

        assert!(namespace_labels(PodSecurity::None).is_empty());
        assert_eq!(
            namespace_labels(PodSecurity::Baseline)[ENFORCE_LABEL],
            "baseline"
        );
    }
}
