//! `labelSelector` and `fieldSelector` as the API server reads them.

use serde_json::Value;

use crate::status::ApiError;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `k=v`, `k==v`
    Equals(String, String),
    /// `k!=v` (also true when `k` is absent)
    NotEquals(String, String),
    /// `k in (a,b)`
    In(String, Vec<String>),
    /// `k notin (a,b)` (also true when `k` is absent)
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    DoesNotExist(String),
}

/// A parsed label selector; every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `k=v,k2 in (a,b),!k3,...`; an empty text selects everything.
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: found '{part}', expected: key, key=value, key!=value, key in (...), key notin (...), !key"
                ))
            })?);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Option<Requirement> {
    if let Some(key) = part.strip_prefix('!') {
        return valid_key(key.trim()).map(Requirement::DoesNotExist);
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Some(Requirement::NotEquals(
            valid_key(k.trim())?,
            v.trim().to_owned(),
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Some(Requirement::Equals(
            valid_key(k.trim())?,
            v.trim().to_owned(),
        ));
    }
    if let Some((k, rest)) = split_keyword(part, " notin ") {
        return Some(Requirement::NotIn(valid_key(k)?, set(rest)?));
    }
    if let Some((k, rest)) = split_keyword(part, " in ") {
        return Some(Requirement::In(valid_key(k)?, set(rest)?));
    }
    valid_key(part).map(Requirement::Exists)
}

fn split_keyword<'a>(part: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    part.split_once(keyword).map(|(k, r)| (k.trim(), r.trim()))
}

/// `(a, b)` into its values.
fn set(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn valid_key(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_owned())
}

/// Fields a selector may name beyond `metadata.name` and
/// `metadata.namespace`, per resource, as the API server allows them.
fn selectable(plural: &str) -> &'static [&'static str] {
    match plural {
        "namespaces" => &["status.phase"],
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "secrets" => &["type"],
        _ => &[],
    }
}

/// A field selector (`=`, `==`, `!=`) over the fields the resource allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,status.phase!=Failed` for resource `plural`.
    pub fn parse(text: &str, plural: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || selectable(plural).contains(&field);
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether the object's fields satisfy every term (a missing field reads as empty).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let have = field
                .split('.')
                .try_fold(object, |v, key| v.get(key))
                .and_then(Value::as_str)
                .unwrap_or("");
            (have == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(pairs: &[(&str, &str)]) -> Value {
        let labels: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .unwrap()
            .matches(&labelled(pairs))
    }

    #[test]
    fn equality_and_existence() {
        let managed = [
            ("app.kubernetes.io/managed-by", "cargo-ephem"),
            ("run", "r1"),
        ];
        assert!(selects(
            "app.kubernetes.io/managed-by=cargo-ephem",
            &managed
        ));
        assert!(selects(
            "app.kubernetes.io/managed-by==cargo-ephem,run=r1",
            &managed
        ));
        assert!(!selects(
            "app.kubernetes.io/managed-by=cargo-ephem,run=r2",
            &managed
        ));
        assert!(selects("run", &managed));
        assert!(!selects("shard", &managed));
        assert!(selects("!shard", &managed));
        assert!(!selects("!run", &managed));
        assert!(selects("run!=r2", &managed));
        assert!(selects("shard!=1", &managed));
        assert!(selects("", &[]));
    }

    #[test]
    fn set_based() {
        let l = [("env", "prod"), ("tier", "db")];
        assert!(selects("env in (prod, dev),tier", &l));
        assert!(!selects("env in (dev)", &l));
        assert!(selects("env notin (dev)", &l));
        assert!(selects("missing notin (dev)", &l));
        assert!(!selects("missing in (dev)", &l));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(LabelSelector::parse("a in b").unwrap_err().code, 400);
        assert_eq!(LabelSelector::parse("spa ce=1").unwrap_err().code, 400);
        assert_eq!(
            FieldSelector::parse("spec.x=1", "pods").unwrap_err().code,
            400
        );
    }

    #[test]
    fn resource_specific_fields() {
        let event =
            json!({"metadata": {"name": "e"}, "involvedObject": {"name": "db"}, "type": "Warning"});
        let s = FieldSelector::parse("involvedObject.name=db,type=Warning", "events").unwrap();
        assert!(s.matches(&event));
        assert!(!FieldSelector::parse("type=Normal", "events")
            .unwrap()
            .matches(&event));
        assert_eq!(
            FieldSelector::parse("type=Warning", "pods")
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn field_selectors_on_name_and_namespace() {
        let obj = json!({"metadata": {"name": "db", "namespace": "ns1"}});
        assert!(FieldSelector::parse("metadata.name=db", "pods")
            .unwrap()
            .matches(&obj));
        assert!(
            FieldSelector::parse("metadata.name!=web,metadata.namespace==ns1", "pods")
                .unwrap()
                .matches(&obj)
        );
        assert!(!FieldSelector::parse("metadata.name=web", "pods")
            .unwrap()
            .matches(&obj));
    }
}
