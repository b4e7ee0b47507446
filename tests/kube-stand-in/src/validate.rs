//! The API server's validation of what every object shares: its name, labels
//! and annotations. A client that writes an invalid one gets 422, as from a
//! real cluster.

use serde_json::Value;

/// Invalid fields as (field path, message), in the API server's words.
pub type Causes = Vec<(String, String)>;

/// `metadata.name`, labels and annotations of an object about to be stored.
/// `dns_label`: names must be DNS-1123 labels (namespaces, services), else
/// DNS-1123 subdomains.
pub fn object_meta(object: &Value, dns_label: bool) -> Causes {
    let mut causes = Causes::new();
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let name_ok = if dns_label {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !name_ok {
        let rule = if dns_label {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        causes.push((
            "metadata.name".to_owned(),
            format!("Invalid value: \"{name}\": {rule}"),
        ));
    }
    causes.extend(labels(&object["metadata"]["labels"]));
    causes.extend(annotations(&object["metadata"]["annotations"]));
    causes
}

fn labels(labels: &Value) -> Causes {
    let mut causes = Causes::new();
    let Some(map) = labels.as_object() else {
        return causes;
    };
    for (key, value) in map {
        if !is_qualified_name(key) {
            causes.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        let text = value.as_str().unwrap_or("");
        if !value.is_string() || !is_label_value(text) {
            causes.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: \"{text}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"),
            ));
        }
    }
    causes
}

fn annotations(annotations: &Value) -> Causes {
    let mut causes = Causes::new();
    let Some(map) = annotations.as_object() else {
        return causes;
    };
    for (key, value) in map {
        if !is_qualified_name(key) {
            causes.push((
                "metadata.annotations".to_owned(),
                format!("Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
        if !value.is_string() {
            causes.push((
                "metadata.annotations".to_owned(),
                format!("Invalid value: {value}: annotation values must be strings"),
            ));
        }
    }
    causes
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Dot-separated DNS labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `[prefix/]name`: a DNS subdomain prefix and a 63-character name part.
fn is_qualified_name(key: &str) -> bool {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return false;
            }
            name
        }
        None => key,
    };
    !name.is_empty() && is_label_value(name)
}

/// Empty, or at most 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge_ok(v.chars().next())
        && edge_ok(v.chars().last())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_and_labels() {
        let ok = json!({"metadata": {"name": "ephem-1a2b3c4d-1",
            "labels": {"app.kubernetes.io/managed-by": "cargo-ephem", "empty": ""},
            "annotations": {"janitor/expires": "2024-05-01T10:00:00Z"}}});
        assert!(object_meta(&ok, true).is_empty());
        let bad = json!({"metadata": {"name": "Bad_Name",
            "labels": {"host": "a:b", "/x": "y"},
            "annotations": {"n": 1}}});
        let fields: Vec<String> = object_meta(&bad, true).into_iter().map(|c| c.0).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "metadata.labels",
                "metadata.annotations"
            ]
        );
        assert!(!is_label_value(&"x".repeat(64)));
        assert!(is_dns_subdomain("db.example"));
    }
}
