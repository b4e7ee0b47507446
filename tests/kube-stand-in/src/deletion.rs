//! Deletion as the API server and the namespace controller do it: an
//! object with finalizers is only marked (`deletionTimestamp`) and goes once
//! they are removed; a Terminating namespace's content is deleted, and what
//! finalizers hold keeps the namespace Terminating with the controller's
//! conditions until it goes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::resources;
use crate::store::{now, Key, State};

impl State {
    /// An object marked for deletion whose last finalizer went is removed;
    /// a Terminating namespace waiting for it is looked at again.
    pub(crate) fn release_if_finalized(&mut self, key: &Key) {
        let Some(object) = self.objects.get(key) else {
            return;
        };
        if object["metadata"]["deletionTimestamp"].is_null() || has_finalizers(object) {
            return;
        }
        if key.plural == "namespaces" {
            return;
        }
        self.remove_key(key);
        let namespace = key.namespace.clone();
        let waiting = self
            .get(resources::namespaces(), None, &namespace)
            .ok()
            .filter(|ns| !ns["status"]["conditions"].is_null())
            .and_then(|ns| ns["metadata"]["uid"].as_str().map(str::to_owned));
        if let Some(uid) = waiting {
            self.finish_namespace_deletion(&namespace, &uid);
        }
    }

    /// Sets `deletionTimestamp` on an object that has finalizers, as the
    /// API server does instead of removing it.
    pub(crate) fn mark_deleted(&mut self, key: Key, mut object: Value) -> Value {
        if !object["metadata"]["deletionTimestamp"].is_null() {
            return object;
        }
        object["metadata"]["deletionTimestamp"] = json!(now());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        self.store(key, object, "MODIFIED")
    }

    /// The namespace controller's pass over a Terminating namespace (if it
    /// still has `uid`): deletes its content (objects with finalizers are
    /// only marked, and stay), then removes the namespace if nothing is
    /// left, else sets the conditions the controller sets: what remains
    /// (`NamespaceContentRemaining`) and which finalizers hold it
    /// (`NamespaceFinalizersRemaining`), with the controller's messages.
    pub fn finish_namespace_deletion(&mut self, name: &str, uid: &str) {
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
        let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
        let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
        for k in inside {
            let object = self.objects[&k].clone();
            if !has_finalizers(&object) {
                self.remove_key(&k);
                continue;
            }
            let group = resources::by_plural(k.plural).map_or("", |r| r.group);
            *remaining
                .entry(format!("{}.{group}", k.plural))
                .or_default() += 1;
            for f in object["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                *finalizers
                    .entry(f.as_str().unwrap_or("").to_owned())
                    .or_default() += 1;
            }
            self.mark_deleted(k, object);
        }
        if remaining.is_empty() {
            self.logs.retain(|(ns, _), _| ns != name);
            self.remove_key(&key);
            return;
        }
        let conditions = namespace_conditions(&remaining, &finalizers);
        self.update(resources::namespaces(), None, name, |ns| {
            ns["status"]["conditions"] = conditions;
        });
    }
}

/// Whether `metadata.finalizers` names any.
pub(crate) fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// The five conditions the namespace controller keeps on a Terminating
/// namespace, for content left (`pods.` → count) held by finalizers
/// (finalizer → count), worded as the controller words them.
fn namespace_conditions(
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
) -> Value {
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now()})
    };
    let content: Vec<String> = remaining
        .iter()
        .map(|(resource, n)| format!("{resource} has {n} resource instances"))
        .collect();
    let held: Vec<String> = finalizers
        .iter()
        .map(|(finalizer, n)| format!("{finalizer} in {n} resource instances"))
        .collect();
    json!([
        condition(
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered".to_owned()
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_owned()
        ),
        condition(
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_owned()
        ),
        condition(
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", content.join(", "))
        ),
        condition(
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                held.join(", ")
            )
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn finalizers_hold_objects_and_their_terminating_namespace_as_the_controller_says() {
        let mut state = State::new("t".into());
        let ns = resources::namespaces();
        let pods = resources::by_plural("pods").unwrap();
        let maps = resources::by_plural("configmaps").unwrap();
        let created = state.create(ns, None, namespace("a")).unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
        state
            .create(pods, Some("a"), json!({"metadata": {"name": "p"}}))
            .unwrap();
        let held = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
        state.create(maps, Some("a"), held).unwrap();

        // A direct DELETE of an object with finalizers only marks it.
        let marked = state.delete(maps, Some("a"), "held", &json!({})).unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(state.get(maps, Some("a"), "held").is_ok());

        state.delete(ns, None, "a", &json!({})).unwrap();
        state.finish_namespace_deletion("a", &uid);
        assert_eq!(state.get(pods, Some("a"), "p").unwrap_err().code, 404);
        let terminating = state.get(ns, None, "a").unwrap();
        let conditions = terminating["status"]["conditions"].as_array().unwrap();
        let holding: Vec<(&str, &str)> = conditions
            .iter()
            .filter(|c| c["status"] == "True")
            .map(|c| (c["type"].as_str().unwrap(), c["message"].as_str().unwrap()))
            .collect();
        assert_eq!(
            holding,
            [
                (
                    "NamespaceContentRemaining",
                    "Some resources are remaining: configmaps. has 1 resource instances"
                ),
                (
                    "NamespaceFinalizersRemaining",
                    "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
                ),
            ]
        );
        assert_eq!(conditions.len(), 5);

        // Its controller removes the finalizer: the object goes, then the namespace.
        state
            .patch(
                maps,
                Some("a"),
                "held",
                &json!({"metadata": {"finalizers": null}}),
            )
            .unwrap();
        assert_eq!(state.get(maps, Some("a"), "held").unwrap_err().code, 404);
        assert_eq!(state.get(ns, None, "a").unwrap_err().code, 404);
    }
}
