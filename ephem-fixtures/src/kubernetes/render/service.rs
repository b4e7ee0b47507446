//! A service's ClusterIP Service, and the full DNS name it answers to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as ServiceObjectSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::namespace;
use super::pod::Scope;
use crate::config::ServiceSpec;
use crate::kubernetes::labels;

/// `NAME.NAMESPACE.svc.DOMAIN`: a Service's fully qualified name, which
/// resolves from any pod of the cluster whatever its DNS search path (a
/// runner with `hostNetwork`, or a custom `dnsConfig`, has none of the
/// cluster's search domains).
pub fn service_host(service: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{service}.{namespace}.svc.{cluster_domain}")
}

impl Scope<'_> {
    pub(super) fn service(&self, spec: &ServiceSpec, labels: BTreeMap<String, String>) -> Service {
        let mut selector = labels.clone();
        selector.remove(labels::MANAGED_BY);
        Service {
            metadata: namespace::meta(&spec.name, self.namespace, labels),
            spec: Some(ServiceObjectSpec {
                type_: Some("ClusterIP".to_owned()),
                selector: Some(selector),
                ports: Some(
                    spec.ports
                        .iter()
                        .map(|port| ServicePort {
                            name: Some(format!("tcp-{port}")),
                            port: i32::from(*port),
                            target_port: Some(IntOrString::Int(i32::from(*port))),
                            protocol: Some("TCP".to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_in_full() {
        assert_eq!(
            service_host("db", "ephem-3f2a9c1e-1", "cluster.local"),
            "db.ephem-3f2a9c1e-1.svc.cluster.local"
        );
    }
}
