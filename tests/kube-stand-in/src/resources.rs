//! The resources the stand-in serves: adding one is one line of [`RESOURCES`].

/// One API resource, as discovery would describe it.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural name in paths and RBAC rules, e.g. `pods`.
    pub plural: &'static str,
    /// Kind of its objects, e.g. `Pod`.
    pub kind: &'static str,
    /// Whether its objects live in a namespace.
    pub namespaced: bool,
}

impl Resource {
    /// `v1` or `apps/v1`: what objects carry as `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether names must be DNS-1123 labels (else subdomains).
    pub fn label_names(&self) -> bool {
        matches!(self.plural, "namespaces" | "services")
    }
}

const fn core(plural: &'static str, kind: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        kind,
        namespaced,
    }
}

/// Everything the Kubernetes backend creates, reads or watches.
pub static RESOURCES: &[Resource] = &[
    core("namespaces", "Namespace", false),
    core("pods", "Pod", true),
    core("services", "Service", true),
    core("secrets", "Secret", true),
    core("configmaps", "ConfigMap", true),
    core("resourcequotas", "ResourceQuota", true),
    core("limitranges", "LimitRange", true),
    core("events", "Event", true),
    core("serviceaccounts", "ServiceAccount", true),
    Resource {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
    },
];

/// The namespaces resource.
pub fn namespaces() -> &'static Resource {
    &RESOURCES[0]
}

/// The resource served as `plural` in `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource by plural name alone (plural names are unique here).
pub fn by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.plural == plural)
}
