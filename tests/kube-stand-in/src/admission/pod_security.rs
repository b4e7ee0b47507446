//! Pod Security admission, as kube-apiserver's built-in plugin judges a pod
//! (k8s.io/pod-security-admission, policy version `latest` of 1.33): the
//! checks of the `baseline` and `restricted` standards that a pod spec can
//! fail, each with the reason and detail the plugin writes, aggregated into
//! `violates PodSecurity "LEVEL:latest": reason (detail), ...`.
//!
//! Checks of fields cargo-ephem never writes and no test needs (AppArmor,
//! SELinux, sysctls, procMount, Windows host processes, probes' hosts) are
//! left out.

use std::collections::BTreeSet;

use serde_json::Value;

/// The namespace label that sets the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label that sets the enforced policy version.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

/// A Pod Security level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// No known privilege escalations.
    Baseline,
    /// Hardened: non-root, no capabilities, seccomp.
    Restricted,
}

impl Level {
    /// The level a label value names.
    pub fn parse(value: &str) -> Option<Level> {
        match value {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// One failed check: its reason and detail, as the plugin words them.
struct Failed {
    reason: &'static str,
    detail: String,
}

/// The pod's violations of `level` as the plugin's error text (`violates
/// PodSecurity ...`), or None when it passes. `version` is the
/// `enforce-version` label's value (`latest` without one).
pub fn evaluate(level: Level, version: &str, pod: &Value) -> Option<String> {
    if level == Level::Privileged {
        return None;
    }
    let spec = &pod["spec"];
    let containers = containers(spec);
    let mut failed: Vec<Failed> = [
        host_namespaces(spec),
        host_ports(&containers),
        privileged(&containers),
    ]
    .into_iter()
    .flatten()
    .collect();
    if level == Level::Baseline {
        failed.extend(
            [
                capabilities_baseline(&containers),
                host_path_volumes(spec),
                seccomp_baseline(spec, &containers),
            ]
            .into_iter()
            .flatten(),
        );
    } else {
        failed.extend(
            [
                allow_privilege_escalation(&containers),
                capabilities_restricted(&containers),
                restricted_volumes(spec),
                run_as_non_root(spec, &containers),
                run_as_user(spec, &containers),
                seccomp_restricted(spec, &containers),
            ]
            .into_iter()
            .flatten(),
        );
    }
    if failed.is_empty() {
        return None;
    }
    let detail: Vec<String> = failed
        .iter()
        .map(|f| {
            if f.detail.is_empty() {
                f.reason.to_owned()
            } else {
                format!("{} ({})", f.reason, f.detail)
            }
        })
        .collect();
    Some(format!(
        "violates PodSecurity \"{}:{version}\": {}",
        level.name(),
        detail.join(", ")
    ))
}

/// Init containers, then containers, as the plugin visits them.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|list| spec[list].as_array().into_iter().flatten())
        .collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_owned()
}

fn join_quote(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pluralize(singular: &'static str, plural: &'static str, n: usize) -> &'static str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn host_namespaces(spec: &Value) -> Option<Failed> {
    let used: Vec<&str> = ["hostIPC", "hostNetwork", "hostPID"]
        .into_iter()
        .filter(|f| spec[*f] == true)
        .collect();
    (!used.is_empty()).then(|| Failed {
        reason: "host namespaces",
        detail: used.join(", "),
    })
}

fn host_ports(containers: &[&Value]) -> Option<Failed> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers {
        let used: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !used.is_empty() {
            bad.push(name(c));
            ports.extend(used);
        }
    }
    (!bad.is_empty()).then(|| Failed {
        reason: "hostPort",
        detail: format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

fn privileged(containers: &[&Value]) -> Option<Failed> {
    let bad: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["privileged"] == true)
        .map(|c| name(c))
        .collect();
    (!bad.is_empty()).then(|| Failed {
        reason: "privileged",
        detail: format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    })
}

/// The capabilities `baseline` lets a container add.
const DEFAULT_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added(c: &Value) -> Vec<String> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn capabilities_baseline(containers: &[&Value]) -> Option<Failed> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers {
        let extra: Vec<String> = added(c)
            .into_iter()
            .filter(|a| !DEFAULT_CAPABILITIES.contains(&a.as_str()))
            .collect();
        if !extra.is_empty() {
            bad.push(name(c));
            caps.extend(extra);
        }
    }
    (!bad.is_empty()).then(|| Failed {
        reason: "non-default capabilities",
        detail: format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps.into_iter().collect::<Vec<_>>())
        ),
    })
}

fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(spec: &Value) -> Option<Failed> {
    let bad: Vec<String> = volumes(spec)
        .filter(|v| !v["hostPath"].is_null())
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| Failed {
        reason: "hostPath volumes",
        detail: format!(
            "{} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad)
        ),
    })
}

fn valid_seccomp(kind: &str) -> bool {
    matches!(kind, "RuntimeDefault" | "Localhost")
}

/// (who set a bad type, the bad types) and the containers that set none.
fn seccomp_setters(
    spec: &Value,
    containers: &[&Value],
) -> (Vec<String>, BTreeSet<String>, Vec<String>, bool) {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let pod = &spec["securityContext"]["seccompProfile"]["type"];
    let pod_ok = pod.as_str().is_some_and(valid_seccomp);
    if let Some(kind) = pod.as_str().filter(|k| !valid_seccomp(k)) {
        setters.push("pod".to_owned());
        values.insert(kind.to_owned());
    }
    let mut bad = Vec::new();
    let mut unset = Vec::new();
    for c in containers {
        match c["securityContext"]["seccompProfile"]["type"].as_str() {
            Some(kind) if !valid_seccomp(kind) => {
                bad.push(name(c));
                values.insert(kind.to_owned());
            }
            Some(_) => {}
            None => unset.push(name(c)),
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    (setters, values, unset, pod_ok)
}

fn seccomp_baseline(spec: &Value, containers: &[&Value]) -> Option<Failed> {
    let (setters, values, _, _) = seccomp_setters(spec, containers);
    (!setters.is_empty()).then(|| Failed {
        reason: "seccompProfile",
        detail: format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&values.into_iter().collect::<Vec<_>>())
        ),
    })
}

fn seccomp_restricted(spec: &Value, containers: &[&Value]) -> Option<Failed> {
    let (setters, values, unset, pod_ok) = seccomp_setters(spec, containers);
    if !setters.is_empty() {
        return seccomp_baseline(spec, containers);
    }
    let _ = values;
    (!pod_ok && !unset.is_empty()).then(|| Failed {
        reason: "seccompProfile",
        detail: format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ),
    })
}

fn allow_privilege_escalation(containers: &[&Value]) -> Option<Failed> {
    let bad: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(|c| name(c))
        .collect();
    (!bad.is_empty()).then(|| Failed {
        reason: "allowPrivilegeEscalation != false",
        detail: format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    })
}

fn capabilities_restricted(containers: &[&Value]) -> Option<Failed> {
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers {
        let caps = &c["securityContext"]["capabilities"];
        if caps.is_null() {
            missing_drop.push(name(c));
            continue;
        }
        let drops_all = caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d == "ALL");
        if !drops_all {
            missing_drop.push(name(c));
        }
        let extra: Vec<String> = added(c)
            .into_iter()
            .filter(|a| a != "NET_BIND_SERVICE")
            .collect();
        if !extra.is_empty() {
            adding.push(name(c));
            forbidden.extend(extra);
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&forbidden.into_iter().collect::<Vec<_>>())
        ));
    }
    (!details.is_empty()).then(|| Failed {
        reason: "unrestricted capabilities",
        detail: details.join("; "),
    })
}

/// The volume types `restricted` allows.
const ALLOWED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted_volumes(spec: &Value) -> Option<Failed> {
    let bad: BTreeSet<String> = volumes(spec)
        .filter(|v| !ALLOWED_VOLUMES.iter().any(|t| !v[*t].is_null()))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| Failed {
        reason: "restricted volume types",
        detail: format!(
            "volumes [{}] have restricted types",
            bad.into_iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    })
}

/// Pod-level `field` set to `bad`, and containers that set it to `bad` or
/// (for `implicit`) leave it unset without a pod-level good value.
fn explicit_setters(
    spec: &Value,
    containers: &[&Value],
    field: &str,
    bad: &Value,
) -> (Vec<String>, Vec<String>) {
    let mut setters = Vec::new();
    if &spec["securityContext"][field] == bad {
        setters.push("pod".to_owned());
    }
    let explicit: Vec<String> = containers
        .iter()
        .filter(|c| &c["securityContext"][field] == bad)
        .map(|c| name(c))
        .collect();
    let unset: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"][field].is_null())
        .map(|c| name(c))
        .collect();
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    (setters, unset)
}

fn run_as_non_root(spec: &Value, containers: &[&Value]) -> Option<Failed> {
    let (setters, unset) = explicit_setters(spec, containers, "runAsNonRoot", &Value::Bool(false));
    if !setters.is_empty() {
        return Some(Failed {
            reason: "runAsNonRoot != true",
            detail: format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        });
    }
    let pod_set = spec["securityContext"]["runAsNonRoot"] == true;
    (!pod_set && !unset.is_empty()).then(|| Failed {
        reason: "runAsNonRoot != true",
        detail: format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&unset)
        ),
    })
}

fn run_as_user(spec: &Value, containers: &[&Value]) -> Option<Failed> {
    let (setters, _) = explicit_setters(spec, containers, "runAsUser", &Value::from(0));
    (!setters.is_empty()).then(|| Failed {
        reason: "runAsUser=0",
        detail: format!("{} must not set runAsUser=0", setters.join(" and ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bare_pod_fails_restricted_in_the_plugins_words() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(evaluate(Level::Baseline, "latest", &pod), None);
        assert_eq!(
            evaluate(Level::Restricted, "latest", &pod).unwrap(),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
    }

    #[test]
    fn a_restricted_pod_passes_and_each_rule_is_checked() {
        let good = json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "i", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }});
        assert_eq!(evaluate(Level::Restricted, "latest", &good), None);
        let broken = |patch: Value| {
            let mut pod = good.clone();
            crate::merge_patch(&mut pod, &patch);
            evaluate(Level::Restricted, "latest", &pod).unwrap_or_default()
        };
        assert!(
            broken(json!({"spec": {"securityContext": {"runAsUser": 0}}}))
                .ends_with("runAsUser=0 (pod must not set runAsUser=0)")
        );
        assert!(
            broken(json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}))
                .contains("restricted volume types (volumes [\"h\"] have restricted types)")
        );
        assert!(broken(json!({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}))
            .contains("seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"));
        assert!(
            broken(json!({"spec": {"securityContext": {"runAsNonRoot": false}}})).contains(
                "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"
            )
        );
        assert!(broken(json!({"spec": {"hostNetwork": true}})).starts_with(
            "violates PodSecurity \"restricted:latest\": host namespaces (hostNetwork)"
        ));
    }

    #[test]
    fn baseline_refuses_privilege_and_added_capabilities() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "securityContext": {"privileged": true}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
        ]}});
        assert_eq!(
            evaluate(Level::Baseline, "v1.33", &pod).unwrap(),
            "violates PodSecurity \"baseline:v1.33\": hostPort (container \"b\" uses hostPort 8080), privileged (container \"a\" must not set securityContext.privileged=true), non-default capabilities (container \"b\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)"
        );
    }
}
