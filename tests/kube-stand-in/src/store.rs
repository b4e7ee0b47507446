//! The stand-in's in-memory API: objects as JSON, one resourceVersion
//! counter (like etcd's revision), and the history of changes that watches
//! replay. Handlers and test controls both go through [`State`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::deletion::has_finalizers;
use crate::rbac::{Access, Grant};
use crate::resources::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::validate;
use crate::{Lifecycle, NamespaceDeletion, RecordedRequest};

/// How many changes a watch can resume from by default; older
/// resourceVersions get 410 (see [`State::history_limit`]).
const HISTORY: usize = 10_000;

/// An object's place: resource, namespace (empty for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The resource's plural name.
    pub plural: &'static str,
    /// Its namespace; empty for namespaces themselves.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Key {
    pub fn new(res: &Resource, namespace: Option<&str>, name: &str) -> Key {
        Key {
            plural: res.plural,
            namespace: namespace.unwrap_or("").to_owned(),
            name: name.to_owned(),
        }
    }
}

/// One change, as a watch event will carry it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Where the object lives.
    pub key: Key,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before removal, for `DELETED`).
    pub object: Value,
}

/// What a list or watch selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selection {
    /// Whether an object of `res` in `namespace` (None: any) is selected.
    pub fn matches(&self, key: &Key, object: &Value, res: &Resource, ns: Option<&str>) -> bool {
        key.plural == res.plural
            && ns.is_none_or(|ns| key.namespace == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// Everything the stand-in knows.
pub struct State {
    pub(crate) objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    /// (verb, resource) pairs answered with 403; `*` matches any.
    pub forbidden: Vec<(String, String)>,
    /// What happens to a deleted namespace.
    pub deletion: NamespaceDeletion,
    /// The bearer token accepted.
    pub token: String,
    /// Added before every answer.
    pub latency: Duration,
    /// Every request, in order.
    pub requests: Vec<RecordedRequest>,
    /// Pod logs by (namespace, pod).
    pub(crate) logs: BTreeMap<(String, String), String>,
    next_ip: u32,
    /// How pods created through the API run; None: they stay as created.
    pub lifecycle: Option<Lifecycle>,
    /// Where port-forwards of (namespace or any, pod, port) lead.
    pub forwards: Vec<Forward>,
    /// Raised to end every open watch (as an API server restart would).
    pub watch_epoch: u64,
    next_event: u64,
    /// How many changes are kept for watches to resume from (etcd's
    /// compaction and the watch cache's size on a cluster).
    pub history_limit: usize,
    /// Admission: Pod Security's default, webhooks, ServiceAccounts.
    pub admission: crate::admission::Policy,
    /// How often watches that allow bookmarks get one; None: never by time.
    pub bookmark_interval: Option<Duration>,
    /// The RBAC rules that hold for the user, once applied; None: all allowed.
    pub rbac: Option<Vec<Grant>>,
    /// Every authorization decision, in order: what was asked, and whether
    /// it was granted.
    pub accesses: Vec<(Access, bool)>,
}

/// Where a port-forward to a pod's port is relayed.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The pod's namespace; None for a pod of that name in any namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub pod: String,
    /// The pod's port.
    pub port: u16,
    /// The local address that plays the pod's port.
    pub target: std::net::SocketAddr,
}

impl State {
    pub fn new(token: String) -> State {
        State {
            objects: BTreeMap::new(),
            rv: 1000,
            history: VecDeque::new(),
            forbidden: Vec::new(),
            deletion: NamespaceDeletion::After(Duration::ZERO),
            token,
            latency: Duration::ZERO,
            requests: Vec::new(),
            logs: BTreeMap::new(),
            next_ip: 1,
            lifecycle: None,
            forwards: Vec::new(),
            watch_epoch: 0,
            next_event: 1,
            history_limit: HISTORY,
            admission: crate::admission::Policy::default(),
            bookmark_interval: Some(Duration::from_secs(60)),
            rbac: None,
            accesses: Vec::new(),
        }
    }

    /// Whether the applied RBAC grants `access` (everything, before any was
    /// applied); the decision is recorded.
    pub fn judge(&mut self, access: &Access) -> bool {
        let granted = self
            .rbac
            .as_ref()
            .is_none_or(|grants| grants.iter().any(|g| g.allows(access)));
        self.accesses.push((access.clone(), granted));
        granted
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// `POST`: validates, fills the server-set fields, stores, returns the object.
    pub fn create(
        &mut self,
        res: &'static Resource,
        ns: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut object = body;
        check_type(&object, res)?;
        let name = assign_name(&mut object, res)?;
        if let Some(ns) = ns {
            self.check_namespace_open(res, ns, &name)?;
            if let Some(given) = object["metadata"]["namespace"].as_str() {
                if given != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        let causes = validate::object_meta(&object, res.label_names());
        if !causes.is_empty() {
            return Err(ApiError::invalid(res.kind, &name, causes));
        }
        let key = Key::new(res, ns, &name);
        if let Some(existing) = self.objects.get(&key) {
            let terminating = !existing["metadata"]["deletionTimestamp"].is_null();
            return Err(ApiError::already_exists(
                res.plural,
                res.group,
                &name,
                terminating,
            ));
        }
        crate::admission::admit(self, res, ns, &name, &mut object)?;
        self.server_fields(&mut object, res, ns);
        self.defaults(&mut object, res);
        let created = self.store(key, object, "ADDED");
        if let Some(ns) = ns.filter(|_| matches!(res.plural, "pods" | "resourcequotas")) {
            self.recount_quota(ns);
        }
        Ok(created)
    }

    /// Pods that count against a quota: those not Succeeded or Failed.
    pub(crate) fn pods_counted(&self, ns: &str) -> usize {
        let pods = resources::by_plural("pods").expect("pods are served");
        self.select(pods, Some(ns), &Selection::default())
            .filter(|(_, p)| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count()
    }

    /// Sets every quota's `status` (hard as specified, pods used), as the
    /// quota controller keeps it.
    pub fn recount_quota(&mut self, ns: &str) {
        let used = self.pods_counted(ns);
        for quota in self.all(quotas(), Some(ns)) {
            let hard = quota["spec"]["hard"].clone();
            let mut counts = serde_json::Map::new();
            if let Some(hard) = hard.as_object() {
                for key in hard.keys() {
                    let value = if key == "pods" {
                        used.to_string()
                    } else {
                        "0".to_owned()
                    };
                    counts.insert(key.clone(), json!(value));
                }
            }
            let status = json!({"hard": hard, "used": counts});
            if quota["status"] != status {
                let name = quota["metadata"]["name"].as_str().unwrap_or("").to_owned();
                self.update(quotas(), Some(ns), &name, |q| q["status"] = status);
            }
        }
    }

    /// Records a core/v1 Event about `involved` in `ns` (skipped when the
    /// namespace is gone or terminating, as the API would refuse it).
    pub fn record_event(
        &mut self,
        ns: &str,
        involved: Value,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let open = self
            .get(resources::namespaces(), None, ns)
            .is_ok_and(|n| n["metadata"]["deletionTimestamp"].is_null());
        if !open {
            return;
        }
        let events = resources::by_plural("events").expect("events are served");
        let name = format!(
            "{}.{:016x}",
            involved["name"].as_str().unwrap_or("object"),
            self.next_event
        );
        self.next_event += 1;
        let at = now();
        let event = json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        });
        self.insert(events, Some(ns), event);
    }

    /// Where a port-forward to `pod`'s `port` in `ns` leads, if a test said.
    pub fn forward_target(&self, ns: &str, pod: &str, port: u16) -> Option<std::net::SocketAddr> {
        let matching = |f: &&Forward| f.pod == pod && f.port == port;
        self.forwards
            .iter()
            .filter(matching)
            .find(|f| f.namespace.as_deref() == Some(ns))
            .or_else(|| {
                self.forwards
                    .iter()
                    .filter(matching)
                    .find(|f| f.namespace.is_none())
            })
            .map(|f| f.target)
    }

    /// `GET` of one object.
    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Key::new(res, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res.plural, res.group, name))
    }

    /// Objects of `res` in `ns` (None: every namespace) that `selection`
    /// selects, in key order.
    pub fn select<'a>(
        &'a self,
        res: &'a Resource,
        ns: Option<&str>,
        selection: &'a Selection,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let ns = ns.map(str::to_owned);
        self.objects
            .iter()
            .filter(move |(k, v)| selection.matches(k, v, res, ns.as_deref()))
    }

    /// `GET` of a collection: a `<Kind>List` with the current resourceVersion,
    /// paginated by `limit` and `continue`.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        selection: &Selection,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Value {
        let mut items = Vec::new();
        let mut remaining = 0usize;
        let mut last = None;
        for (key, object) in self.select(res, ns, selection) {
            let token = continue_token(key);
            if after.is_some_and(|after| token.as_str() <= after) {
                continue;
            }
            if limit.is_some_and(|limit| items.len() >= limit) {
                remaining += 1;
                continue;
            }
            last = Some(token);
            items.push(list_item(object));
        }
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if remaining > 0 {
            metadata["continue"] = json!(last);
            metadata["remainingItemCount"] = json!(remaining);
        }
        json!({
            "apiVersion": res.api_version(),
            "kind": format!("{}List", res.kind),
            "metadata": metadata,
            "items": items,
        })
    }

    /// `DELETE` with a DeleteOptions body. A namespace goes Terminating (the
    /// caller schedules its removal); anything else goes at once. Returns
    /// the object as the server answers it.
    pub fn delete(
        &mut self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let key = Key::new(res, ns, name);
        let object = self.get(res, ns, name)?;
        check_preconditions(res, name, &object, &options["preconditions"])?;
        if let Some(policy) = options["propagationPolicy"].as_str() {
            if !matches!(policy, "Orphan" | "Background" | "Foreground") {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "",
                    vec![(
                        "propagationPolicy".to_owned(),
                        format!("Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                    )],
                ));
            }
        }
        let dry_run = options["dryRun"].as_array().is_some_and(|a| !a.is_empty());
        if res.plural != "namespaces" {
            if dry_run {
                return Ok(object);
            }
            if has_finalizers(&object) {
                // Marked, kept until its finalizers are removed.
                return Ok(self.mark_deleted(key, object));
            }
            self.remove_key(&key);
            if let (Some(ns), "pods") = (ns, res.plural) {
                self.recount_quota(ns);
            }
            return Ok(object);
        }
        if !object["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                name,
                "The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system.",
            ));
        }
        let mut terminating = object;
        terminating["metadata"]["deletionTimestamp"] = json!(now());
        terminating["status"]["phase"] = json!("Terminating");
        if let NamespaceDeletion::Stuck(conditions) = &self.deletion {
            let conditions: Vec<Value> = conditions.iter().map(|c| c.to_json()).collect();
            terminating["status"]["conditions"] = json!(conditions);
        }
        if dry_run {
            return Ok(terminating);
        }
        Ok(self.store(key, terminating, "MODIFIED"))
    }

    /// `PATCH` with a JSON merge patch (RFC 7386).
    pub fn patch(
        &mut self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        if !patch.is_object() {
            return Err(ApiError::bad_request(
                "the body of the patch is not a JSON object",
            ));
        }
        check_preconditions(res, name, &old, &patch["metadata"])?;
        let mut new = old.clone();
        merge_patch(&mut new, patch);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "resourceVersion",
            "generation",
        ] {
            restore(&mut new["metadata"], &old["metadata"], field);
        }
        let causes = validate::object_meta(&new, res.label_names());
        if !causes.is_empty() {
            return Err(ApiError::invalid(res.kind, name, causes));
        }
        if new == old {
            return Ok(old);
        }
        if new["spec"] != old["spec"] {
            let generation = old["metadata"]["generation"].as_u64().unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let key = Key::new(res, ns, name);
        let stored = self.store(key.clone(), new, "MODIFIED");
        self.release_if_finalized(&key);
        Ok(stored)
    }

    /// The end of a namespace's deletion: its objects, then itself, if it is
    /// still the one with `uid`.
    pub fn purge_namespace(&mut self, name: &str, uid: &str) {
        let key = Key::new(resources::namespaces(), None, name);
        let same = self
            .objects
            .get(&key)
            .is_some_and(|ns| ns["metadata"]["uid"] == uid);
        if !same {
            return;
        }
        let inside: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.plural != "namespaces" && k.namespace == name)
            .cloned()
            .collect();
        for k in inside {
            self.remove_key(&k);
        }
        self.logs.retain(|(ns, _), _| ns != name);
        self.remove_key(&key);
    }

    /// Stores `object` as given, filling only what is missing (uid,
    /// resourceVersion, creationTimestamp, ...): how tests plant foreign,
    /// old or stuck objects. No validation.
    pub fn insert(&mut self, res: &'static Resource, ns: Option<&str>, mut object: Value) -> Value {
        if !object.is_object() {
            object = json!({});
        }
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let given = object["metadata"].clone();
        let name = given["name"].as_str().unwrap_or("unnamed").to_owned();
        object["metadata"]["name"] = json!(name);
        self.server_fields(&mut object, res, ns);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            if !given[field].is_null() {
                object["metadata"][field] = given[field].clone();
            }
        }
        self.defaults(&mut object, res);
        let key = Key::new(res, ns, &name);
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.store(key, object, kind)
    }

    /// Changes an object in place, as a controller or kubelet would (e.g. a
    /// pod's status); watchers see `MODIFIED`. `None` if it does not exist.
    pub fn update(
        &mut self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let key = Key::new(res, ns, name);
        let mut object = self.objects.get(&key)?.clone();
        change(&mut object);
        let stored = self.store(key.clone(), object, "MODIFIED");
        self.release_if_finalized(&key);
        Some(stored)
    }

    /// Removes an object at once (no Terminating phase); watchers see `DELETED`.
    pub fn remove(&mut self, res: &'static Resource, ns: Option<&str>, name: &str) -> bool {
        if res.plural == "namespaces" {
            let uid = self
                .get(res, None, name)
                .ok()
                .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned));
            if let Some(uid) = uid {
                self.purge_namespace(name, &uid);
                return true;
            }
            return false;
        }
        self.remove_key(&Key::new(res, ns, name)).is_some()
    }

    /// Every stored object of `res` in `ns` (None: all), in key order.
    pub fn all(&self, res: &Resource, ns: Option<&str>) -> Vec<Value> {
        self.select(res, ns, &Selection::default())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes after `rv`, or the oldest resourceVersion still known when
    /// `rv` is older than the history.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Change>, u64> {
        let oldest = self.history.front().map_or(self.rv, |c| c.rv);
        if rv + 1 < oldest && self.history.len() >= self.history_limit {
            return Err(oldest);
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Appends to a pod's log.
    pub fn append_log(&mut self, ns: &str, pod: &str, text: &str) {
        self.logs
            .entry((ns.to_owned(), pod.to_owned()))
            .or_default()
            .push_str(text);
    }

    /// A pod's log so far.
    pub fn log(&self, ns: &str, pod: &str) -> String {
        self.logs
            .get(&(ns.to_owned(), pod.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// 404 for a missing namespace, 403 for one being deleted.
    fn check_namespace_open(&self, res: &Resource, ns: &str, name: &str) -> Result<(), ApiError> {
        let namespace = self.get(resources::namespaces(), None, ns)?;
        if namespace["metadata"]["deletionTimestamp"].is_null() {
            Ok(())
        } else {
            Err(ApiError::namespace_terminating(
                res.plural, res.group, name, ns,
            ))
        }
    }

    /// uid, resourceVersion, creationTimestamp, generation, namespace,
    /// apiVersion and kind: what the server sets, whatever the client sent.
    fn server_fields(&mut self, object: &mut Value, res: &Resource, ns: Option<&str>) {
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        let metadata = object["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        metadata.insert("creationTimestamp".into(), json!(now()));
        metadata.insert("generation".into(), json!(1));
        metadata.remove("deletionTimestamp");
        if let Some(ns) = ns {
            metadata.insert("namespace".into(), json!(ns));
        }
    }

    /// Defaults a real cluster fills in on create.
    fn defaults(&mut self, object: &mut Value, res: &Resource) {
        match res.plural {
            "namespaces" => {
                if object["spec"]["finalizers"].is_null() {
                    object["spec"]["finalizers"] = json!(["kubernetes"]);
                }
                if object["status"]["phase"].is_null() {
                    object["status"]["phase"] = json!("Active");
                }
            }
            "pods" => {
                if object["status"].is_null() {
                    object["status"] = json!({"phase": "Pending"});
                }
                if object["spec"]["restartPolicy"].is_null() {
                    object["spec"]["restartPolicy"] = json!("Always");
                }
            }
            "secrets" => encode_string_data(object),
            "services" => {
                if object["spec"]["type"].is_null() {
                    object["spec"]["type"] = json!("ClusterIP");
                }
                if object["spec"]["clusterIP"].is_null() {
                    let n = self.next_ip;
                    self.next_ip += 1;
                    object["spec"]["clusterIP"] =
                        json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
                }
            }
            _ => {}
        }
    }

    /// Sets the next resourceVersion, stores, records the change.
    pub(crate) fn store(&mut self, key: Key, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.record(key, kind, object.clone());
        object
    }

    pub(crate) fn remove_key(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(key.clone(), "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, key: Key, kind: &'static str, object: Value) {
        while self.history.len() >= self.history_limit.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(Change {
            rv: self.rv,
            key,
            kind,
            object,
        });
    }
}

fn quotas() -> &'static Resource {
    resources::by_plural("resourcequotas").expect("resource quotas are served")
}

/// `stringData` merged into `data`, base64-encoded, as the API server
/// stores a Secret (it never returns `stringData`).
fn encode_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|s| s.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in plain {
        let text = value.as_str().unwrap_or("").to_owned();
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// `apiVersion` and `kind`, when the client sent them, must be the route's.
fn check_type(object: &Value, res: &Resource) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    if let Some(v) = object["apiVersion"].as_str() {
        if v != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    if let Some(k) = object["kind"].as_str() {
        if k != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    Ok(())
}

/// `metadata.name`, or `generateName` plus five random characters.
fn assign_name(object: &mut Value, res: &Resource) -> Result<String, ApiError> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if let Some(name) = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        return Ok(name.to_owned());
    }
    let Some(prefix) = object["metadata"]["generateName"].as_str() else {
        return Err(ApiError::invalid(
            res.kind,
            "",
            vec![(
                "metadata.name".to_owned(),
                "Required value: name or generateName is required".to_owned(),
            )],
        ));
    };
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
    let name = format!("{prefix}{suffix}");
    object["metadata"]["name"] = json!(name);
    Ok(name)
}

/// `preconditions` of a DeleteOptions, or `metadata` of a patch: a uid or
/// resourceVersion that differs from the object's is a 409.
fn check_preconditions(
    res: &Resource,
    name: &str,
    object: &Value,
    wanted: &Value,
) -> Result<(), ApiError> {
    let have = &object["metadata"];
    if let Some(uid) = wanted["uid"].as_str() {
        if have["uid"].as_str() != Some(uid) {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    have["uid"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    if let Some(rv) = wanted["resourceVersion"].as_str() {
        if have["resourceVersion"].as_str() != Some(rv) {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
    }
    Ok(())
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn restore(new: &mut Value, old: &Value, field: &str) {
    match old.get(field) {
        Some(value) => new[field] = value.clone(),
        None => {
            if let Some(map) = new.as_object_mut() {
                map.remove(field);
            }
        }
    }
}

/// Lists carry their items without `apiVersion` and `kind`, as the API server sends them.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    item
}

/// Opaque to clients; orders like the store's keys.
fn continue_token(key: &Key) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// Now, as the API server writes timestamps.
pub fn now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut target, &json!({"c": ["x"]}));
        assert_eq!(target, json!({"a": "z", "c": ["x"]}));
    }

    fn namespace(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn a_deleted_namespace_terminates_and_rejects_new_content() {
        let mut state = State::new("t".into());
        let ns = resources::namespaces();
        let pods = resources::by_plural("pods").unwrap();
        let created = state.create(ns, None, namespace("a")).unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
        let wrong = json!({"preconditions": {"uid": "other"}});
        assert_eq!(state.delete(ns, None, "a", &wrong).unwrap_err().code, 409);
        let gone = state.delete(ns, None, "a", &json!({})).unwrap();
        assert_eq!(gone["status"]["phase"], "Terminating");
        let again = state.delete(ns, None, "a", &json!({})).unwrap_err();
        assert!(again.message.contains("ensuring all content"), "{again:?}");
        let pod = json!({"metadata": {"name": "p"}});
        assert_eq!(state.create(pods, Some("a"), pod).unwrap_err().code, 403);
        state.purge_namespace("a", &uid);
        assert_eq!(state.get(ns, None, "a").unwrap_err().code, 404);
    }

    #[test]
    fn lists_paginate_in_name_order() {
        let mut state = State::new("t".into());
        let ns = resources::namespaces();
        for name in ["c", "a", "b"] {
            state.create(ns, None, namespace(name)).unwrap();
        }
        let all = Selection::default();
        let first = state.list(ns, None, &all, Some(2), None);
        let names = |l: &Value| -> Vec<String> {
            l["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first["metadata"]["remainingItemCount"], 1);
        let token = first["metadata"]["continue"].as_str().unwrap();
        let rest = state.list(ns, None, &all, Some(2), Some(token));
        assert_eq!(names(&rest), ["c"]);
        assert!(rest["metadata"]["continue"].is_null());
    }
}
