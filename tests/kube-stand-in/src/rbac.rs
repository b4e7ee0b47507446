//! RBAC as the API server's authorizer applies it, for what
//! [`StandIn::apply_rbac`](crate::StandIn::apply_rbac) was given: the rules
//! of the Roles and ClusterRoles bound to the stand-in's user, each holding
//! only where its binding says (a ClusterRoleBinding everywhere, a
//! RoleBinding in its own namespace). Requests nothing grants are denied.

use serde::Deserialize;
use serde_json::Value;

/// What RBAC judges of one request, as the API server derives it from the
/// method and path: `GET` of one object is `get`, of a collection `list`,
/// with `watch=true` `watch`; `POST` `create`; `PATCH` `patch`; `DELETE`
/// `delete`. Requests about a namespace itself count as made in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    /// `get`, `list`, `watch`, `create`, `patch`, `delete`, ...
    pub verb: String,
    /// The API group; empty for the core group.
    pub group: String,
    /// The resource, with its subresource: `pods`, `pods/log`.
    pub resource: String,
    /// The namespace; None at the cluster scope.
    pub namespace: Option<String>,
    /// The object's name, when the request names one.
    pub name: Option<String>,
}

/// One rule as bound: where it holds, and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `ClusterRole cargo-ephem`, `Role ephem-ci/cargo-ephem-secrets`.
    pub role: String,
    /// None: every namespace and the cluster scope (a ClusterRoleBinding);
    /// else only this namespace (a RoleBinding).
    pub namespace: Option<String>,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `resources`.
    pub resources: Vec<String>,
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `resourceNames`; empty: any.
    pub resource_names: Vec<String>,
}

impl Grant {
    /// Whether this rule allows `access`.
    pub fn allows(&self, access: &Access) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        let in_scope = match &self.namespace {
            None => true,
            Some(ns) => access.namespace.as_deref() == Some(ns.as_str()),
        };
        let named = self.resource_names.is_empty()
            || access
                .name
                .as_deref()
                .is_some_and(|n| self.resource_names.iter().any(|r| r == n));
        in_scope
            && named
            && any(&self.api_groups, &access.group)
            && any(&self.resources, &access.resource)
            && any(&self.verbs, &access.verb)
    }
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default)]
    non_resource_urls: Vec<String>,
}

#[derive(Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// The grants of `manifests` (a YAML stream, as `kubectl apply -f` takes
/// it) that hold for `user`. Objects other than Roles, ClusterRoles and
/// their bindings are skipped; a binding to a role not in the stream grants
/// nothing (as on a cluster without that role).
pub fn grants_for(manifests: &str, user: &str) -> Result<Vec<Grant>, String> {
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(manifests) {
        let value = Value::deserialize(document).map_err(|e| format!("not YAML: {e}"))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    let of_kind = |kind: &'static str| objects.iter().filter(move |o| o["kind"] == kind);
    let mut grants = Vec::new();
    for binding in of_kind("ClusterRoleBinding").chain(of_kind("RoleBinding")) {
        let meta: Meta = field(binding, "metadata")?;
        let role_ref: RoleRef = field(binding, "roleRef")?;
        let subjects: Vec<Subject> = field(binding, "subjects")?;
        let binding_ns =
            match binding["kind"].as_str() {
                Some("RoleBinding") => Some(meta.namespace.clone().ok_or_else(|| {
                    format!("RoleBinding {} has no metadata.namespace", meta.name)
                })?),
                _ => None,
            };
        if !subjects
            .iter()
            .any(|s| names_user(s, user, binding_ns.as_deref()))
        {
            continue;
        }
        let role_kind = if role_ref.kind == "Role" {
            "Role"
        } else {
            "ClusterRole"
        };
        let role = of_kind(role_kind).find(|r| {
            let Ok(m) = serde_json::from_value::<Meta>(r["metadata"].clone()) else {
                return false;
            };
            m.name == role_ref.name && (role_ref.kind == "ClusterRole" || m.namespace == binding_ns)
        });
        let Some(role) = role else { continue };
        let role_name = match &binding_ns {
            Some(ns) if role_ref.kind == "Role" => format!("Role {ns}/{}", role_ref.name),
            _ => format!("{} {}", role_ref.kind, role_ref.name),
        };
        let rules: Vec<Rule> = field(role, "rules")?;
        for rule in rules {
            if !rule.non_resource_urls.is_empty() {
                return Err(format!(
                    "{role_name} grants nonResourceURLs, which the stand-in does not judge"
                ));
            }
            grants.push(Grant {
                role: role_name.clone(),
                namespace: binding_ns.clone(),
                api_groups: rule.api_groups,
                resources: rule.resources,
                verbs: rule.verbs,
                resource_names: rule.resource_names,
            });
        }
    }
    Ok(grants)
}

fn field<T: serde::de::DeserializeOwned>(object: &Value, name: &str) -> Result<T, String> {
    serde_json::from_value(object[name].clone()).map_err(|e| {
        format!(
            "{} {}: {name}: {e}",
            object["kind"].as_str().unwrap_or("object"),
            object["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

/// Whether `subject` of a binding (in `binding_ns`, for RoleBindings) is
/// `user`, or a group a service account belongs to.
fn names_user(subject: &Subject, user: &str, binding_ns: Option<&str>) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user,
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().or(binding_ns).unwrap_or("");
            user == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        "Group" => {
            let sa_namespace = user
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split(':').next());
            match subject.name.as_str() {
                "system:authenticated" => true,
                "system:serviceaccounts" => sa_namespace.is_some(),
                group => {
                    sa_namespace.is_some_and(|ns| group == format!("system:serviceaccounts:{ns}"))
                }
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "system:serviceaccount:ci:runner";

    fn access(verb: &str, resource: &str, namespace: Option<&str>) -> Access {
        Access {
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
            name: None,
        }
    }

    const MANIFESTS: &str = "
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wide}
rules:
  - apiGroups: ['']
    resources: [pods]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: wide}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wide}
subjects: [{kind: ServiceAccount, name: runner, namespace: ci}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: narrow, namespace: ci}
rules:
  - apiGroups: ['']
    resources: [secrets]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: narrow, namespace: ci}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: narrow}
subjects: [{kind: ServiceAccount, name: runner, namespace: ci}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: someone-else, namespace: ci}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wide}
subjects: [{kind: User, name: alice}]
";

    #[test]
    fn cluster_roles_hold_everywhere_and_roles_in_their_namespace() {
        let grants = grants_for(MANIFESTS, USER).unwrap();
        assert_eq!(grants.len(), 2, "{grants:?}");
        let allowed = |a: &Access| grants.iter().any(|g| g.allows(a));
        assert!(allowed(&access("create", "pods", Some("any"))));
        assert!(!allowed(&access("get", "pods", Some("any"))));
        assert!(allowed(&access("get", "secrets", Some("ci"))));
        assert!(!allowed(&access("get", "secrets", Some("kube-system"))));
        assert!(!allowed(&access("list", "secrets", Some("ci"))));
        assert_eq!(grants[1].role, "Role ci/narrow");
        assert!(grants_for(MANIFESTS, "system:serviceaccount:other:runner")
            .unwrap()
            .is_empty());
    }
}
