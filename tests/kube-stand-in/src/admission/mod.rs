//! The admission chain of a create, in kube-apiserver's order and words:
//! LimitRanger's defaults, the ServiceAccount plugin (a new namespace's
//! `default` ServiceAccount may not exist yet), LimitRanger's `min`/`max`,
//! Pod Security (the namespace's `enforce` label, else the cluster's
//! default), validating webhooks (played by [`Webhook`] rules), and the
//! ResourceQuota's `pods` count. Each refusal is a 403 `Forbidden` Status,
//! `pods "NAME" is forbidden: ...`, as `admission.NewForbidden` writes it.
//!
//! Also the ServiceAccount controller: every namespace created through the
//! API gets its `default` ServiceAccount, after [`Policy::service_account_delay`].

mod limits;
mod pod_security;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::resources::{self, Resource};
use crate::status::ApiError;
use crate::store::State;
use crate::Shared;

pub use pod_security::Level;

/// A validating admission webhook the stand-in plays: it denies every create
/// of `resource` (`*`: any) with `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Its name, e.g. `validate.kyverno.svc-fail`.
    pub name: String,
    /// The plural resource it judges (`pods`, `namespaces`), or `*`.
    pub resource: String,
    /// What it answers; empty: it gives no explanation.
    pub message: String,
    /// The HTTP code it sets; None: the API server's default (403).
    pub code: Option<u16>,
}

impl Webhook {
    /// A webhook `name` that denies creates of `resource` with `message`.
    pub fn denying(name: &str, resource: &str, message: &str) -> Webhook {
        Webhook {
            name: name.to_owned(),
            resource: resource.to_owned(),
            message: message.to_owned(),
            code: None,
        }
    }
}

/// How admission behaves; changed through the stand-in's controls.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The Pod Security level of namespaces without an `enforce` label (the
    /// cluster's AdmissionConfiguration default; `privileged` unless set).
    pub default_level: Level,
    /// Webhooks that deny creates.
    pub webhooks: Vec<Webhook>,
    /// How long after its creation a namespace gets its `default`
    /// ServiceAccount (the controller's lag).
    pub service_account_delay: Duration,
    /// Namespaces whose `default` ServiceAccount the controller has not made yet.
    pub awaiting_service_account: BTreeSet<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_level: Level::Privileged,
            webhooks: Vec::new(),
            service_account_delay: Duration::ZERO,
            awaiting_service_account: BTreeSet::new(),
        }
    }
}

/// The chain for a create of `object` (named `name`) in `ns`; a pod may be
/// changed (LimitRanger's defaults) before it is stored.
pub(crate) fn admit(
    state: &State,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    object: &mut Value,
) -> Result<(), ApiError> {
    if let (Some(ns), "pods") = (ns, res.plural) {
        admit_pod(state, ns, name, object)?;
    }
    webhooks(state, res, name)?;
    if let (Some(ns), "pods") = (ns, res.plural) {
        quota(state, ns, name)?;
    }
    Ok(())
}

fn admit_pod(state: &State, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let ranges = state.all(by_plural("limitranges"), Some(ns));
    let breaches = limits::apply(&ranges, pod);
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    if state.admission.awaiting_service_account.contains(ns) && account == "default" {
        return Err(ApiError::admission(
            "pods",
            "",
            name,
            &format!(
                "error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
            ),
        ));
    }
    pod["spec"]["serviceAccountName"] = json!(account);
    match breaches.len() {
        0 => {}
        1 => return Err(ApiError::admission("pods", "", name, &breaches[0])),
        _ => {
            let all = format!("[{}]", breaches.join(", "));
            return Err(ApiError::admission("pods", "", name, &all));
        }
    }
    let labels = state
        .get(resources::namespaces(), None, ns)
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or(Value::Null);
    let level = labels[pod_security::ENFORCE_LABEL]
        .as_str()
        .and_then(Level::parse)
        .unwrap_or(state.admission.default_level);
    let version = labels[pod_security::ENFORCE_VERSION_LABEL]
        .as_str()
        .unwrap_or("latest");
    match pod_security::evaluate(level, version, pod) {
        Some(violation) => Err(ApiError::admission("pods", "", name, &violation)),
        None => Ok(()),
    }
}

fn webhooks(state: &State, res: &Resource, name: &str) -> Result<(), ApiError> {
    let Some(hook) = state
        .admission
        .webhooks
        .iter()
        .find(|w| w.resource == "*" || w.resource == res.plural)
    else {
        return Ok(());
    };
    let said = if hook.message.is_empty() {
        format!(
            "admission webhook \"{}\" denied the request without explanation",
            hook.name
        )
    } else {
        format!(
            "admission webhook \"{}\" denied the request: {}",
            hook.name, hook.message
        )
    };
    let mut error = ApiError::admission(res.plural, res.group, name, &said);
    if let Some(code) = hook.code {
        error.code = code;
    }
    Err(error)
}

/// The ResourceQuota plugin for the `pods` count: a pod that would exceed a
/// quota's `hard.pods` is refused with its words.
fn quota(state: &State, ns: &str, name: &str) -> Result<(), ApiError> {
    let used = state.pods_counted(ns);
    for quota in state.all(by_plural("resourcequotas"), Some(ns)) {
        let Some(limit) = quota["spec"]["hard"]["pods"]
            .as_str()
            .and_then(|p| p.parse::<usize>().ok())
        else {
            continue;
        };
        if used + 1 > limit {
            let quota_name = quota["metadata"]["name"].as_str().unwrap_or("");
            return Err(ApiError::quota_exceeded(name, quota_name, used, limit));
        }
    }
    Ok(())
}

/// The ServiceAccount controller: a namespace created through the API gets
/// its `default` ServiceAccount now, or after the configured delay.
pub(crate) fn namespace_created(shared: &Arc<Shared>, namespace: &Value) {
    let name = namespace["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let delay = shared.read(|s| s.admission.service_account_delay);
    if delay.is_zero() {
        shared.write(|s| add_default_account(s, &name));
        return;
    }
    shared.write(|s| s.admission.awaiting_service_account.insert(name.clone()));
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        shared.write(|s| add_default_account(s, &name));
    });
}

fn add_default_account(state: &mut State, ns: &str) {
    state.admission.awaiting_service_account.remove(ns);
    let open = state
        .get(resources::namespaces(), None, ns)
        .is_ok_and(|n| n["metadata"]["deletionTimestamp"].is_null());
    if open {
        let account = json!({"metadata": {"name": "default", "namespace": ns}});
        state.insert(by_plural("serviceaccounts"), Some(ns), account);
    }
}

fn by_plural(plural: &str) -> &'static Resource {
    resources::by_plural(plural).expect("the stand-in serves it")
}
