//! Why the API server refused a request: a 403 is not always RBAC. The
//! authorizer, the admission plugins (Pod Security, LimitRanger,
//! ResourceQuota, ServiceAccount, NamespaceLifecycle) and the cluster's
//! admission webhooks all answer `Forbidden`, told apart only by their
//! messages, which [`classify`] reads (a pure function, tested on the API
//! server's real texts). [`explain`] turns each into one line that says who
//! refused, what, and what to change.

use kube::core::Status;

use super::client::ApiCall;

/// Who refused a request, by the API server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The RBAC authorizer: `User "u" cannot VERB resource "R" ...`.
    Rbac,
    /// Pod Security admission: `violates PodSecurity "LEVEL:VERSION": ...`.
    PodSecurity {
        /// `restricted:latest`.
        policy: String,
        /// The checks that failed, with their details.
        violations: String,
    },
    /// An admission webhook: `admission webhook "NAME" denied the request: ...`.
    Webhook {
        /// The webhook's name, e.g. `validate.kyverno.svc-fail`.
        name: String,
        /// What it said (one line), empty without an explanation.
        said: String,
    },
    /// The ResourceQuota plugin: `exceeded quota: ...` or `failed quota: ...`.
    Quota(String),
    /// The quota controller has not counted a new namespace's quota yet:
    /// retried.
    QuotaUnsynced,
    /// LimitRanger: `maximum cpu usage per Container is ...`.
    LimitRange(String),
    /// The ServiceAccount plugin: the namespace's `default` ServiceAccount
    /// does not exist yet (a brand-new namespace): retried.
    ServiceAccountMissing,
    /// NamespaceLifecycle: the namespace is being deleted.
    NamespaceTerminating,
    /// Anything else.
    Other,
}

/// Reads the API server's message of a refused request.
pub fn classify(message: &str) -> Denial {
    // Admission errors are `RESOURCE "NAME" is forbidden: <why>`.
    let why = message
        .split_once(" is forbidden: ")
        .map_or(message, |(_, why)| why);
    if let Some(rest) = after(message, "admission webhook \"") {
        let (name, tail) = rest.split_once('"').unwrap_or((rest, ""));
        let said = tail
            .trim_start_matches(" denied the request")
            .trim_start_matches(':')
            .trim_start_matches(" without explanation");
        return Denial::Webhook {
            name: name.to_owned(),
            said: one_line(said),
        };
    }
    if let Some(rest) = why.strip_prefix("violates PodSecurity \"") {
        let (policy, violations) = rest.split_once("\": ").unwrap_or((rest, ""));
        return Denial::PodSecurity {
            policy: policy.trim_end_matches('"').to_owned(),
            violations: violations.to_owned(),
        };
    }
    if why.starts_with("exceeded quota: ") || why.starts_with("failed quota: ") {
        return Denial::Quota(why.to_owned());
    }
    if why.starts_with("status unknown for quota") {
        return Denial::QuotaUnsynced;
    }
    if why.starts_with("error looking up service account ") && why.contains("\" not found") {
        return Denial::ServiceAccountMissing;
    }
    if why.contains("because it is being terminated") {
        return Denial::NamespaceTerminating;
    }
    let limit_range = ["minimum ", "maximum ", "[minimum ", "[maximum "]
        .iter()
        .any(|p| why.starts_with(p))
        && why.contains(" usage per ")
        || why.contains(" max limit to request ratio per ");
    if limit_range {
        return Denial::LimitRange(why.to_owned());
    }
    if message.contains("\" cannot ") && message.contains(" resource \"") {
        return Denial::Rbac;
    }
    Denial::Other
}

/// One line for a refusal that is not RBAC's (None for RBAC and unknown
/// ones, which [`super::client::api_error`] words itself): who refused,
/// what was asked, in the API server's words, and what to change.
/// `pod_security` is the configured level, when the request is a pod's.
pub fn explain(status: &Status, call: ApiCall<'_>, pod_security: Option<&str>) -> Option<String> {
    let what = subject(call, status);
    let scope = call
        .namespace
        .map_or(String::new(), |ns| format!(" in namespace {ns}"));
    let line = match classify(&status.message) {
        Denial::Webhook { name, said } => {
            let said = if said.is_empty() {
                "without explanation".to_owned()
            } else {
                said
            };
            format!(
                "the cluster's admission webhook \"{name}\" refused to create {what}{scope}: {said}; this is the cluster's policy, not a missing permission: change what the policy requires (its message says what), or ask the cluster's admins"
            )
        }
        Denial::PodSecurity { policy, violations } => {
            let level = policy.split(':').next().unwrap_or("restricted");
            let hint = if pod_security.is_some_and(|ours| ours == level || ours == "restricted") {
                "cargo-ephem already renders pods for that level, so something else changed them (a mutating webhook?); ask the cluster's admins".to_owned()
            } else {
                format!("set [kubernetes] pod-security = \"{level}\" in ephem.toml so that cargo-ephem renders pods that pass (with run-as-user for images that run as root), or ask the cluster's admins")
            };
            format!(
                "the namespace's Pod Security admission (\"{policy}\") refused {what}: {violations}; {hint}"
            )
        }
        Denial::Quota(why) => format!(
            "a ResourceQuota{scope} refused {what} ({why}); raise the limit in [kubernetes.quota] of ephem.toml, or ask the cluster's admins about theirs"
        ),
        Denial::LimitRange(why) => format!(
            "a LimitRange of namespace {} refused {what} ({why}); cargo-ephem's own LimitRange gives containers the defaults of [kubernetes.limits]: change them in ephem.toml to fit the cluster's (`kubectl get limitranges -n {}` shows them)",
            call.namespace.unwrap_or("?"),
            call.namespace.unwrap_or("NAMESPACE"),
        ),
        Denial::NamespaceTerminating => format!(
            "cannot create {what}{scope}: the namespace is being deleted ({})",
            status.message
        ),
        Denial::ServiceAccountMissing => format!(
            "the namespace's default ServiceAccount does not exist, so the API server refused {what} ({}); the cluster's ServiceAccount controller makes it for every new namespace: check that kube-controller-manager runs",
            status.message
        ),
        Denial::QuotaUnsynced => format!(
            "the namespace's ResourceQuota was never counted, so the API server refused {what} ({}); check that kube-controller-manager runs",
            status.message
        ),
        Denial::Rbac | Denial::Other => return None,
    };
    Some(line)
}

/// `pod svc`, `namespace ephem-...`: the object refused, named by the
/// Status's `details` (admission's refusals carry it).
fn subject(call: ApiCall<'_>, status: &Status) -> String {
    let kind = call.resource.trim_end_matches('s');
    match status.details.as_ref().map(|d| d.name.as_str()) {
        Some(name) if !name.is_empty() => format!("{kind} {name}"),
        _ => format!("the {kind}"),
    }
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}

/// Whitespace (webhooks write several lines) as single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_is_the_authorizers_denial_only() {
        for message in [
            "namespaces is forbidden: User \"system:serviceaccount:ns:sa\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope",
            "pods \"db\" is forbidden: User \"me\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"ns\"",
            "daemonsets.apps is forbidden: User \"ci\" cannot list resource \"daemonsets\" in API group \"apps\" in the namespace \"ephem-1\": RBAC: clusterrole.rbac.authorization.k8s.io \"cargo-ephem\" not found",
        ] {
            assert_eq!(classify(message), Denial::Rbac, "{message}");
        }
    }

    #[test]
    fn pod_security_names_its_policy_and_violations() {
        let message = "pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)";
        assert_eq!(
            classify(message),
            Denial::PodSecurity {
                policy: "restricted:latest".into(),
                violations: "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)".into(),
            }
        );
        let baseline = "pods \"x\" is forbidden: violates PodSecurity \"baseline:v1.33\": privileged (container \"c\" must not set securityContext.privileged=true)";
        assert!(
            matches!(classify(baseline), Denial::PodSecurity { policy, .. } if policy == "baseline:v1.33")
        );
    }

    #[test]
    fn webhooks_are_named_whatever_their_code_and_lines() {
        let kyverno = "pods \"db\" is forbidden: admission webhook \"validate.kyverno.svc-fail\" denied the request: \n\nresource Pod/ns/db was blocked due to the following policies\n\nrequire-labels:\n  check-for-labels: 'validation error: label app is required'\n";
        assert_eq!(
            classify(kyverno),
            Denial::Webhook {
                name: "validate.kyverno.svc-fail".into(),
                said: "resource Pod/ns/db was blocked due to the following policies require-labels: check-for-labels: 'validation error: label app is required'".into(),
            }
        );
        // Gatekeeper, and the API server's form before 1.x without a prefix.
        let gatekeeper = "admission webhook \"validation.gatekeeper.sh\" denied the request: [k8srequiredlabels] you must provide labels: {\"owner\"}";
        assert!(
            matches!(classify(gatekeeper), Denial::Webhook { name, said } if name == "validation.gatekeeper.sh" && said.starts_with("[k8srequiredlabels]"))
        );
        let silent = "namespaces \"ephem-1\" is forbidden: admission webhook \"ns.policy\" denied the request without explanation";
        assert_eq!(
            classify(silent),
            Denial::Webhook {
                name: "ns.policy".into(),
                said: String::new()
            }
        );
    }

    #[test]
    fn quotas_limit_ranges_service_accounts_and_terminating_namespaces() {
        assert!(matches!(
            classify("pods \"db\" is forbidden: exceeded quota: ephem-quota, requested: pods=1, used: pods=1, limited: pods=1"),
            Denial::Quota(q) if q.starts_with("exceeded quota: ephem-quota")
        ));
        assert!(matches!(
            classify("pods \"db\" is forbidden: failed quota: compute: must specify limits.cpu for: db; limits.memory for: db"),
            Denial::Quota(_)
        ));
        assert_eq!(
            classify(
                "pods \"db\" is forbidden: status unknown for quota: ephem-quota, resources: pods"
            ),
            Denial::QuotaUnsynced
        );
        assert_eq!(
            classify("pods \"db\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1."),
            Denial::LimitRange("maximum cpu usage per Container is 500m, but limit is 1.".into())
        );
        assert!(matches!(
            classify("pods \"db\" is forbidden: [minimum memory usage per Container is 64Mi, but request is 16Mi., maximum cpu usage per Container is 500m, but limit is 1.]"),
            Denial::LimitRange(_)
        ));
        assert!(matches!(
            classify("pods \"db\" is forbidden: cpu max limit to request ratio per Container is 2, but provided ratio is 10.000000."),
            Denial::LimitRange(_)
        ));
        assert_eq!(
            classify("pods \"db\" is forbidden: error looking up service account ephem-1/default: serviceaccount \"default\" not found"),
            Denial::ServiceAccountMissing
        );
        assert_eq!(
            classify("pods \"db\" is forbidden: unable to create new content in namespace ephem-1 because it is being terminated"),
            Denial::NamespaceTerminating
        );
        assert_eq!(classify("Unauthorized"), Denial::Other);
    }

    #[test]
    fn explanations_are_one_line_and_say_what_to_change() {
        let status = |message: &str| {
            let mut s = Status::failure(message, "Forbidden").with_code(403);
            s.details =
                serde_json::from_value(serde_json::json!({"name": "db", "kind": "pods"})).ok();
            s
        };
        let call = ApiCall::namespaced("create", "pods", "ephem-1");
        let psa = status("pods \"db\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod or container \"db\" must set securityContext.runAsNonRoot=true)");
        let line = explain(&psa, call, Some("baseline")).unwrap();
        assert!(line.starts_with("the namespace's Pod Security admission (\"restricted:latest\") refused pod db: runAsNonRoot != true"), "{line}");
        assert!(
            line.contains("set [kubernetes] pod-security = \"restricted\""),
            "{line}"
        );
        let line = explain(&psa, call, Some("restricted")).unwrap();
        assert!(line.contains("something else changed them"), "{line}");
        let hook =
            status("pods \"db\" is forbidden: admission webhook \"w\" denied the request: no\nway");
        let line = explain(&hook, call, None).unwrap();
        assert!(line.starts_with("the cluster's admission webhook \"w\" refused to create pod db in namespace ephem-1: no way;"), "{line}");
        assert!(!line.contains('\n'));
        let rbac = status("pods is forbidden: User \"u\" cannot create resource \"pods\" in API group \"\" in the namespace \"ephem-1\"");
        assert_eq!(explain(&rbac, call, None), None);
    }
}
