//! Reaching the cluster: the kubeconfig (read and merged by kube's own
//! loader) with its current (or a named) context, else
//! the pod's service account when the runner runs in a cluster, and a
//! `GET /version` that must answer within 5 s in all. Also the one place
//! that turns kube's errors into one-line [`EnvError`]s.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use tokio::time::Instant;

use crate::EnvError;

/// How long connecting may take in all, reading the kubeconfig included:
/// the runner promises an answer within 5 s.
pub const CONNECT_BUDGET: Duration = Duration::from_millis(4500);

/// The manifest that grants what the backend needs, named by RBAC errors.
pub const RBAC_MANIFEST: &str = "examples/kubernetes/rbac.yaml";

/// What [`EnvError::Unreachable`] names as the backend.
const API_SERVER: &str = "the Kubernetes API server";

/// A cluster that answered `GET /version`.
#[derive(Clone)]
pub struct Cluster {
    /// The client, authenticated as the context's user (or the pod's
    /// service account).
    pub client: Client,
    /// The kubeconfig context used; `in-cluster` for the service account.
    pub context: String,
    /// The API server's URL.
    pub server: String,
    /// Whether the credentials are the pod's service account.
    pub in_cluster: bool,
}

impl Cluster {
    /// `https://10.0.0.1:6443 (context ci)`: where, for messages.
    pub fn address(&self) -> String {
        address(&self.server, &self.context)
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("context", &self.context)
            .field("server", &self.server)
            .field("in_cluster", &self.in_cluster)
            .finish_non_exhaustive()
    }
}

/// Connects like kubectl: the files of `KUBECONFIG` (several, merged; each
/// must exist) or `~/.kube/config`, read by kube's own loader, with
/// `context` or the current one; without any kubeconfig, the pod's service
/// account; within [`CONNECT_BUDGET`].
pub async fn connect(context: Option<&str>) -> Result<Cluster, EnvError> {
    let deadline = Instant::now() + CONNECT_BUDGET;
    match load_kubeconfig()? {
        Some((kubeconfig, files)) => {
            connect_kubeconfig(kubeconfig, &files, context, deadline).await
        }
        None if in_a_pod() => connect_in_cluster(context).await,
        None => Err(no_cluster(context)),
    }
}

/// Connects through these kubeconfig files (merged in order, as `KUBECONFIG`
/// would list them) with `context` or their current context, ignoring the
/// environment; within [`CONNECT_BUDGET`].
pub async fn connect_with(
    kubeconfigs: &[PathBuf],
    context: Option<&str>,
) -> Result<Cluster, EnvError> {
    let deadline = Instant::now() + CONNECT_BUDGET;
    let files = describe_files(kubeconfigs);
    let kubeconfig = kubeconfigs
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            Kubeconfig::read_from(path).and_then(|next| merged.merge(next))
        })
        .map_err(|e| unreadable(&e, &files))?;
    connect_kubeconfig(kubeconfig, &files, context, deadline).await
}

/// The kubeconfig as kube loads it ([`Kubeconfig::from_env`]: `KUBECONFIG`'s
/// files merged, the first to set a value wins; else [`Kubeconfig::read`]'s
/// `~/.kube/config`), with the files it came from; None when there is none.
/// A file `KUBECONFIG` lists that cannot be read is an error naming it
/// (kubectl would skip it, and quietly use the next file's cluster).
fn load_kubeconfig() -> Result<Option<(Kubeconfig, String)>, EnvError> {
    let listed = std::env::var("KUBECONFIG").unwrap_or_default();
    match Kubeconfig::from_env() {
        Ok(Some(kubeconfig)) => return Ok(Some((kubeconfig, listed))),
        Ok(None) => {}
        Err(e) => return Err(unreadable(&e, &format!("KUBECONFIG={listed}"))),
    }
    let default = std::env::home_dir()
        .map(|h| h.join(".kube").join("config").display().to_string())
        .unwrap_or_else(|| "~/.kube/config".to_owned());
    match Kubeconfig::read() {
        Ok(kubeconfig) => Ok(Some((kubeconfig, default))),
        Err(KubeconfigError::FindPath) => Ok(None),
        Err(KubeconfigError::ReadConfig(e, _)) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(unreadable(&e, &default)),
    }
}

/// A kubeconfig that cannot be read or merged, naming the file.
fn unreadable(e: &KubeconfigError, files: &str) -> EnvError {
    let what = match e {
        KubeconfigError::ReadConfig(io, path) => {
            format!("cannot read {} ({io})", path.display())
        }
        other => innermost(other),
    };
    EnvError::Other(format!(
        "kubeconfig {files}: {what}; fix the file or the KUBECONFIG variable"
    ))
}

/// Picks the context and reaches its cluster before `deadline`.
async fn connect_kubeconfig(
    kubeconfig: Kubeconfig,
    files: &str,
    context: Option<&str>,
    deadline: Instant,
) -> Result<Cluster, EnvError> {
    let context = pick_context(&kubeconfig, context, files)?;
    let server = server_of(&kubeconfig, &context).unwrap_or_else(|| "(no server)".to_owned());
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            EnvError::Other(format!(
                "kubeconfig {files}, context {context} (server {server}): {}; fix the context's cluster or user",
                innermost(&e)
            ))
        })?;
    reach(config, context, false, deadline).await
}

/// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
async fn connect_in_cluster(context: Option<&str>) -> Result<Cluster, EnvError> {
    let deadline = Instant::now() + CONNECT_BUDGET;
    if let Some(named) = context {
        return Err(EnvError::Other(format!(
            "[kubernetes] context = {named:?}, but there is no kubeconfig (KUBECONFIG unset, no ~/.kube/config) and inside a pod only the service account can be used; remove `context` or mount a kubeconfig and set KUBECONFIG"
        )));
    }
    let config = Config::incluster().map_err(|e| EnvError::Unreachable {
        backend: API_SERVER.to_owned(),
        address: "the in-cluster service account".to_owned(),
        reason: innermost(&e),
        hint: "mount the pod's service account token (automountServiceAccountToken: true) or set KUBECONFIG".to_owned(),
    })?;
    reach(config, "in-cluster".to_owned(), true, deadline).await
}

/// Builds the client and asks for `/version` before `deadline`.
async fn reach(
    config: Config,
    context: String,
    in_cluster: bool,
    deadline: Instant,
) -> Result<Cluster, EnvError> {
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let address = address(&server, &context);
    let client = Client::try_from(config).map_err(|e| EnvError::Unreachable {
        backend: API_SERVER.to_owned(),
        address: address.clone(),
        reason: innermost(&e),
        hint: "fix the context's cluster and user in the kubeconfig".to_owned(),
    })?;
    match tokio::time::timeout_at(deadline, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(Cluster {
            client,
            context,
            server,
            in_cluster,
        }),
        Ok(Err(e)) => Err(api_error(&e, ApiCall::cluster("get", "/version"), &address)),
        Err(_) => Err(EnvError::Unreachable {
            backend: API_SERVER.to_owned(),
            address,
            reason: format!(
                "no answer to GET /version within {}s",
                CONNECT_BUDGET.as_secs_f32().ceil()
            ),
            hint: unreachable_hint(&context),
        }),
    }
}

/// The named context if the kubeconfig has it, else the current one.
fn pick_context(
    kubeconfig: &Kubeconfig,
    wanted: Option<&str>,
    files: &str,
) -> Result<String, EnvError> {
    let names: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let Some(name) = wanted.or(kubeconfig.current_context.as_deref()) else {
        return Err(EnvError::Other(format!(
            "kubeconfig {files} has no current-context; set one (`kubectl config use-context NAME`) or name it in ephem.toml ([kubernetes] context = \"NAME\"); contexts: {}",
            list_or_none(&names)
        )));
    };
    if !names.contains(&name) {
        return Err(EnvError::Other(format!(
            "kubeconfig {files} has no context {name:?}; contexts: {}; fix [kubernetes] context in ephem.toml or the kubeconfig's current-context",
            list_or_none(&names)
        )));
    }
    Ok(name.to_owned())
}

/// The server of the context's cluster, as written in the kubeconfig.
fn server_of(kubeconfig: &Kubeconfig, context: &str) -> Option<String> {
    let cluster = &kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster;
    kubeconfig
        .clusters
        .iter()
        .find(|c| &c.name == cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()
}

fn in_a_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
}

fn no_cluster(context: Option<&str>) -> EnvError {
    let looked = match std::env::home_dir() {
        Some(home) => format!(
            "KUBECONFIG unset and no file at {}",
            home.join(".kube").join("config").display()
        ),
        None => "KUBECONFIG unset and no HOME".to_owned(),
    };
    EnvError::Unreachable {
        backend: API_SERVER.to_owned(),
        address: match context {
            Some(c) => format!("context {c}"),
            None => "the current context".to_owned(),
        },
        reason: format!("no kubeconfig ({looked}) and not running in a pod"),
        hint: "set KUBECONFIG or create ~/.kube/config (e.g. `kind get kubeconfig > ~/.kube/config`), or use --backend docker".to_owned(),
    }
}

fn address(server: &str, context: &str) -> String {
    format!("{server} (context {context})")
}

fn unreachable_hint(context: &str) -> String {
    format!("check that the cluster runs and that `kubectl --context {context} version` answers, or pick another context with [kubernetes] context in ephem.toml")
}

fn describe_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// One API request as RBAC judges it: a verb on a resource, in a namespace
/// or at the cluster scope. What an error about the request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall<'a> {
    /// `create`, `list`, `delete`, `patch`, ...
    pub verb: &'a str,
    /// `namespaces`, `pods/log`, ...
    pub resource: &'a str,
    /// The namespace, or None at the cluster scope.
    pub namespace: Option<&'a str>,
}

impl<'a> ApiCall<'a> {
    /// A request at the cluster scope.
    pub fn cluster(verb: &'a str, resource: &'a str) -> ApiCall<'a> {
        ApiCall {
            verb,
            resource,
            namespace: None,
        }
    }

    /// A request in `namespace`.
    pub fn namespaced(verb: &'a str, resource: &'a str, namespace: &'a str) -> ApiCall<'a> {
        ApiCall {
            verb,
            resource,
            namespace: Some(namespace),
        }
    }

    fn scope(&self) -> String {
        match self.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "at the cluster scope".to_owned(),
        }
    }
}

/// A kube error as one line: what was asked (`call`), of which cluster
/// (`address`), what the API said, and how to fix it. 403 names the missing
/// permission and [`RBAC_MANIFEST`]; 401 the credentials; a transport failure
/// is [`EnvError::Unreachable`].
pub fn api_error(err: &kube::Error, call: ApiCall<'_>, address: &str) -> EnvError {
    // Admission plugins and webhooks answer 403 too: not a permission.
    if let Some(line) = status_of(err).and_then(|s| super::denial::explain(s, call, None)) {
        return EnvError::Other(line);
    }
    let ApiCall { verb, resource, .. } = call;
    let scope = call.scope();
    match err {
        kube::Error::Api(status) if status.code == 403 => EnvError::Other(format!(
            "the Kubernetes API server at {address} forbids {verb} on {resource} {scope} ({}); grant it with {RBAC_MANIFEST} (`kubectl apply -f {RBAC_MANIFEST}`, binding your user or the runner's service account) or ask the cluster's admin",
            status.message
        )),
        kube::Error::Api(status) if status.code == 401 => EnvError::Other(format!(
            "the Kubernetes API server at {address} rejected the credentials ({verb} {resource}: {}); renew them (log in again, or refresh the token or certificate in the kubeconfig) and check with `kubectl auth whoami`",
            non_empty(&status.message, "Unauthorized")
        )),
        kube::Error::Api(status) => EnvError::Other(format!(
            "cannot {verb} {resource} {scope} at {address}: {} ({} {})",
            non_empty(&status.message, "no message"),
            status.code,
            non_empty(&status.reason, "no reason")
        )),
        kube::Error::Auth(e) => EnvError::Other(format!(
            "cannot authenticate to {address}: {}; check the user's credentials (token, certificate or exec plugin) in the kubeconfig",
            innermost(e)
        )),
        kube::Error::HyperError(_) | kube::Error::Service(_) => EnvError::Unreachable {
            backend: API_SERVER.to_owned(),
            address: address.to_owned(),
            reason: format!("{verb} {resource}: {}", innermost(err)),
            hint: "check that the cluster runs and answers `kubectl version`".to_owned(),
        },
        other => EnvError::Other(format!(
            "cannot {verb} {resource} {scope} at {address}: {}",
            innermost(other)
        )),
    }
}

/// The API's `Status` of a failed request, if the API answered.
pub fn status_of(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

fn non_empty<'a>(text: &'a str, otherwise: &'a str) -> &'a str {
    if text.is_empty() {
        otherwise
    } else {
        text
    }
}

/// The innermost cause, e.g. `Connection refused (os error 111)` rather
/// than hyper's layers of context.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = err;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn forbidden_names_verb_resource_scope_and_the_manifest() {
        let e = status(403, "Forbidden", "namespaces is forbidden: User \"ci\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope");
        let line = api_error(
            &e,
            ApiCall::cluster("create", "namespaces"),
            "https://k (context ci)",
        )
        .to_string();
        assert!(
            line.contains("forbids create on namespaces at the cluster scope"),
            "{line}"
        );
        assert!(line.contains(RBAC_MANIFEST), "{line}");
        let line =
            api_error(&e, ApiCall::namespaced("get", "pods/log", "ephem-1"), "k").to_string();
        assert!(
            line.contains("forbids get on pods/log in namespace ephem-1"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn unauthorized_points_at_credentials_and_others_keep_the_apis_words() {
        let line = api_error(
            &status(401, "Unauthorized", "Unauthorized"),
            ApiCall::cluster("list", "namespaces"),
            "k",
        )
        .to_string();
        assert!(line.contains("rejected the credentials"), "{line}");
        let line = api_error(
            &status(422, "Invalid", "Namespace \"X\" is invalid"),
            ApiCall::cluster("create", "namespaces"),
            "k",
        )
        .to_string();
        assert_eq!(line, "cannot create namespaces at the cluster scope at k: Namespace \"X\" is invalid (422 Invalid)");
    }
}
