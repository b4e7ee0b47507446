//! `[kubernetes.helm]`: the chart installed into each shard's namespace once
//! its services are ready, with `helm upgrade --install --atomic --wait`
//! (the `helm` binary from PATH), and the chart's Services, which exports
//! name as `${service.NAME}`. The chart goes with the namespace.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;

use super::backend::Shared;
use super::client::ApiCall;
use super::forward;
use super::labels;
use crate::config::{HelmConfig, Reach};
use crate::{EnvError, ShardContext};

/// How long helm may run beyond its own `--timeout` before it is killed.
const HELM_GRACE: Duration = Duration::from_secs(30);

/// How many of helm's last output lines a failure shows.
const HELM_LINES: usize = 50;

/// A chart installed in a shard's namespace: its release and the Services
/// it made.
pub(crate) struct Installed {
    release: String,
    namespace: String,
    services: Vec<Service>,
}

/// Runs `helm upgrade --install` for the shard and lists the chart's Services.
pub(crate) async fn install(
    shared: &Shared,
    shard: &ShardContext,
    ns: &str,
    helm: &HelmConfig,
) -> Result<Installed, EnvError> {
    let path = shared
        .helm_path
        .clone()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    let Some(binary) = find_on_path("helm", &path) else {
        return Err(EnvError::Other(format!(
            "shard {}: [kubernetes.helm] installs its chart with the helm binary, and there is no `helm` on PATH; install Helm (https://helm.sh/docs/intro/install/) or remove [kubernetes.helm] from ephem.toml",
            shard.shard
        )));
    };
    let values = ValuesFile::write(ns, &helm.values).map_err(|e| {
        EnvError::Other(format!(
            "shard {}: cannot write the Helm values file in {}: {e}",
            shard.shard,
            std::env::temp_dir().display()
        ))
    })?;
    let context = (!shared.cluster.in_cluster).then_some(shared.cluster.context.as_str());
    let args = helm_args(helm, ns, context, values.path());
    run_helm(&binary, &args, helm, shard).await?;
    Ok(Installed {
        release: helm.release.clone(),
        namespace: ns.to_owned(),
        services: chart_services(shared, ns).await?,
    })
}

/// `upgrade --install RELEASE CHART --namespace NS [--kube-context C]
/// --atomic --wait --timeout Ns [--version V] -f VALUES`.
pub(crate) fn helm_args(
    helm: &HelmConfig,
    ns: &str,
    context: Option<&str>,
    values: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "upgrade",
        "--install",
        &helm.release,
        &helm.chart,
        "--namespace",
        ns,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(context) = context {
        args.extend(["--kube-context", context].map(OsString::from));
    }
    let timeout = format!("{}s", helm.timeout.as_secs().max(1));
    args.extend(["--atomic", "--wait", "--timeout", &timeout].map(OsString::from));
    if let Some(version) = &helm.version {
        args.extend(["--version", version].map(OsString::from));
    }
    args.push("-f".into());
    args.push(values.as_os_str().to_owned());
    args
}

/// The first executable file named `name` in the PATH value `path`.
fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs helm to completion within its timeout plus a grace period; a
/// failure is the release not becoming ready, with helm's last lines.
async fn run_helm(
    binary: &Path,
    args: &[OsString],
    helm: &HelmConfig,
    shard: &ShardContext,
) -> Result<(), EnvError> {
    let child = tokio::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            EnvError::Other(format!(
                "shard {}: cannot run {}: {e}; check that it is Helm 3 or later",
                shard.shard,
                binary.display()
            ))
        })?;
    let not_ready = |reason: String, logs: Vec<String>| EnvError::NotReady {
        shard: shard.shard,
        service: format!("helm release {}", helm.release),
        wait: format!(
            "helm upgrade --install --atomic --wait within {}",
            humantime::format_duration(helm.timeout)
        ),
        reason,
        logs,
    };
    let output =
        match tokio::time::timeout(helm.timeout + HELM_GRACE, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return Err(not_ready(
                    format!("waiting for helm failed: {e}"),
                    Vec::new(),
                ))
            }
            Err(_) => {
                return Err(not_ready(
                    format!(
                        "helm was still running {} after its own timeout, and was killed",
                        humantime::format_duration(HELM_GRACE)
                    ),
                    Vec::new(),
                ))
            }
        };
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
    let skip = lines.len().saturating_sub(HELM_LINES);
    let code = output
        .status
        .code()
        .map_or("a signal".to_owned(), |c| format!("code {c}"));
    Err(not_ready(
        format!(
            "helm upgrade --install {} {} exited with {code}",
            helm.release, helm.chart
        ),
        lines.into_iter().skip(skip).collect(),
    ))
}

/// The chart's values, written as JSON (which YAML reads) to a file only
/// this user can read, removed when dropped.
struct ValuesFile(PathBuf);

impl ValuesFile {
    fn write(ns: &str, values: &toml::Table) -> std::io::Result<ValuesFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path =
            std::env::temp_dir().join(format!("cargo-ephem-helm-{ns}-{}.yaml", std::process::id()));
        let json = toml_to_json(&toml::Value::Table(values.clone()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let file_guard = ValuesFile(path);
        file.write_all(json.to_string().as_bytes())?;
        Ok(file_guard)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// TOML as JSON; datetimes become their text.
pub(crate) fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// The namespace's Services other than ours (those carry the service label).
async fn chart_services(shared: &Shared, ns: &str) -> Result<Vec<Service>, EnvError> {
    let api: Api<Service> = Api::namespaced(shared.cluster.client.clone(), ns);
    let listed = shared
        .bounded(
            api.list(&ListParams::default().labels(&format!("!{}", labels::SERVICE))),
            ApiCall::namespaced("list", "services", ns),
        )
        .await?;
    Ok(listed.items)
}

impl Installed {
    /// The chart's Service names, for messages.
    fn names(&self) -> String {
        let names: Vec<&str> = self
            .services
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// `${service.NAME}`: `host:port` of the Service's first port, by
    /// cluster DNS, or through a port-forward to one of its ready pods;
    /// with a hint saying how to reach it by hand.
    pub(crate) async fn reach(
        &self,
        shared: &Shared,
        shard: &ShardContext,
        name: &str,
    ) -> Result<(String, String), String> {
        let ns = &self.namespace;
        let service = self
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| {
                format!(
                    "there is no Service {name} of release {} in namespace {ns} (its Services: {})",
                    self.release,
                    self.names()
                )
            })?;
        let spec = service.spec.clone().unwrap_or_default();
        let port = spec
            .ports
            .as_deref()
            .and_then(|p| p.first())
            .ok_or_else(|| format!("Service {name} has no ports"))?;
        let service_port = u16::try_from(port.port)
            .map_err(|_| format!("Service {name} has port {}", port.port))?;
        if shared.reach == Reach::ClusterDns {
            let host =
                super::render::service_host(name, ns, &shared.config.kubernetes.cluster_domain);
            let address = format!("{host}:{service_port}");
            return Ok((
                address.clone(),
                format!(
                    "service {name} of release {}: {address} (cluster DNS)",
                    self.release
                ),
            ));
        }
        let selector = spec.selector.unwrap_or_default();
        if selector.is_empty() {
            return Err(format!("Service {name} selects no pods, so there is nothing to port-forward to; set [kubernetes] reach = \"cluster-dns\" and run inside the cluster"));
        }
        let pod = ready_pod(shared, ns, &selector).await?;
        let target =
            target_port(&pod, port.target_port.as_ref(), service_port).ok_or_else(|| {
                format!(
                    "Service {name}'s target port is not a port of pod {}",
                    pod.metadata.name.as_deref().unwrap_or("")
                )
            })?;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(shared.cluster.client.clone(), ns);
        let forwards = forward::forward(&pods, &pod_name, &[target])
            .await
            .map_err(|e| {
                format!("cannot listen on 127.0.0.1 to port-forward to pod {pod_name}: {e}")
            })?;
        for task in forwards.tasks {
            shared.add_task(shard, task);
        }
        let local = forwards.ports[&target];
        let address = format!("127.0.0.1:{local}");
        let hint = format!(
            "service {name} of release {}: {address} -> pod {pod_name}:{target} (port-forward while cargo-ephem runs; afterwards: kubectl {}-n {ns} port-forward service/{name} {service_port})",
            self.release,
            shared.context_flag()
        );
        Ok((address, hint))
    }
}

/// A running, ready pod the selector matches.
async fn ready_pod(
    shared: &Shared,
    ns: &str,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<Pod, String> {
    let text: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let api: Api<Pod> = Api::namespaced(shared.cluster.client.clone(), ns);
    let listed = shared
        .bounded(
            api.list(&ListParams::default().labels(&text.join(","))),
            ApiCall::namespaced("list", "pods", ns),
        )
        .await
        .map_err(|e| e.to_string())?;
    listed
        .items
        .into_iter()
        .find(|p| {
            matches!(
                super::readiness::judge(p, Default::default()),
                super::readiness::PodState::Running { ready: true }
            )
        })
        .ok_or_else(|| format!("no ready pod matches {}", text.join(",")))
}

/// The container port a Service's `targetPort` means on `pod`.
fn target_port(pod: &Pod, target: Option<&IntOrString>, service_port: u16) -> Option<u16> {
    match target {
        None => Some(service_port),
        Some(IntOrString::Int(port)) => u16::try_from(*port).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_gets_every_flag_in_order() {
        let mut values = toml::Table::new();
        values.insert("replicas".into(), toml::Value::Integer(1));
        let helm = HelmConfig {
            chart: "oci://registry.example/charts/api".into(),
            release: "app".into(),
            values,
            version: Some("1.2.3".into()),
            timeout: Duration::from_secs(90),
        };
        let args = helm_args(
            &helm,
            "ephem-1a2b3c4d-1",
            Some("kind-ci"),
            Path::new("/tmp/v.yaml"),
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "upgrade",
                "--install",
                "app",
                "oci://registry.example/charts/api",
                "--namespace",
                "ephem-1a2b3c4d-1",
                "--kube-context",
                "kind-ci",
                "--atomic",
                "--wait",
                "--timeout",
                "90s",
                "--version",
                "1.2.3",
                "-f",
                "/tmp/v.yaml",
            ]
        );
    }

    #[test]
    fn values_become_json_that_yaml_reads() {
        let table: toml::Table = toml::from_str(
            "replicas = 2\nratio = 0.5\non = true\nwhen = 1979-05-27T07:32:00Z\n[image]\ntag = \"1.0\"\nports = [80, 443]\n",
        )
        .unwrap();
        let json = toml_to_json(&toml::Value::Table(table));
        assert_eq!(
            json,
            serde_json::json!({"replicas": 2, "ratio": 0.5, "on": true, "when": "1979-05-27T07:32:00Z",
                "image": {"tag": "1.0", "ports": [80, 443]}})
        );
    }
}
