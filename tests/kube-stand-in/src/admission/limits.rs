//! The LimitRanger admission plugin for pods: `Container` limits of the
//! namespace's LimitRanges set each container's missing requests and limits
//! (`default`, `defaultRequest`), then `min` and `max` are enforced, each
//! breach worded as the plugin words it.

use serde_json::{json, Value};

/// Fills in defaults, then checks every container against every LimitRange
/// of type `Container`; the breaches, in the plugin's words (empty: admitted).
pub fn apply(ranges: &[Value], pod: &mut Value) -> Vec<String> {
    let items: Vec<&Value> = ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .filter(|l| l["type"] == "Container")
        .collect();
    let mut set = Vec::new();
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers {
            if let Some(note) = set_defaults(&items, c) {
                set.push(note);
            }
        }
    }
    if !set.is_empty() {
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", set.join("; ")));
    }
    let mut errors = Vec::new();
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            for item in &items {
                errors.extend(check(item, c));
            }
        }
    }
    errors
}

/// `default` and `defaultRequest` for what the container leaves out, after
/// the API's own defaulting (a request left out takes the limit written).
fn set_defaults(items: &[&Value], c: &mut Value) -> Option<String> {
    requests_from_limits(c);
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    for item in items {
        for (field, source, note) in [
            ("limits", "default", &mut limits),
            ("requests", "defaultRequest", &mut requests),
        ] {
            for (resource, value) in item[source].as_object().into_iter().flatten() {
                if c["resources"][field][resource].is_null() {
                    c["resources"][field][resource] = value.clone();
                    note.push(resource.clone());
                }
            }
        }
    }
    let name = c["name"].as_str().unwrap_or("");
    let mut parts = Vec::new();
    if !requests.is_empty() {
        parts.push(format!(
            "{} request for container {name}",
            requests.join(", ")
        ));
    }
    if !limits.is_empty() {
        parts.push(format!("{} limit for container {name}", limits.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The API's defaulting of a container: a limit without a request is also
/// its request.
fn requests_from_limits(c: &mut Value) {
    let limited: Vec<(String, Value)> = c["resources"]["limits"]
        .as_object()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for (resource, value) in limited {
        if c["resources"]["requests"][&resource].is_null() {
            c["resources"]["requests"][&resource] = value;
        }
    }
}

/// `min` and `max` of one LimitRange item against one container.
fn check(item: &Value, c: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let requests = &c["resources"]["requests"];
    let limits = &c["resources"]["limits"];
    for (resource, min) in item["min"].as_object().into_iter().flatten() {
        let min_text = min.as_str().unwrap_or("");
        let (req, lim) = (requests[resource].as_str(), limits[resource].as_str());
        match req {
            None => errors.push(format!(
                "minimum {resource} usage per Container is {min_text}.  No request is specified."
            )),
            Some(r) if less(r, min_text) => errors.push(format!(
                "minimum {resource} usage per Container is {min_text}, but request is {r}."
            )),
            _ => {}
        }
        if let Some(l) = lim.filter(|l| less(l, min_text)) {
            errors.push(format!(
                "minimum {resource} usage per Container is {min_text}, but limit is {l}."
            ));
        }
    }
    for (resource, max) in item["max"].as_object().into_iter().flatten() {
        let max_text = max.as_str().unwrap_or("");
        let (req, lim) = (requests[resource].as_str(), limits[resource].as_str());
        match lim {
            None => errors.push(format!(
                "maximum {resource} usage per Container is {max_text}.  No limit is specified."
            )),
            Some(l) if less(max_text, l) => errors.push(format!(
                "maximum {resource} usage per Container is {max_text}, but limit is {l}."
            )),
            _ => {}
        }
        if let Some(r) = req.filter(|r| less(max_text, r)) {
            errors.push(format!(
                "maximum {resource} usage per Container is {max_text}, but request is {r}."
            ));
        }
    }
    errors
}

fn less(a: &str, b: &str) -> bool {
    matches!((milli(a), milli(b)), (Some(a), Some(b)) if a < b)
}

/// A quantity (`500m`, `1Gi`, `2e3`, `0.5`) in thousandths of its unit.
pub fn milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (number, exponent) = match suffix.strip_prefix(['e', 'E']) {
        Some(exp) if !exp.is_empty() => (number, exp.parse::<i32>().ok()?),
        _ => (number, 0),
    };
    let suffix = if exponent != 0 { "" } else { suffix };
    let scale: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    Some((value * scale * 10f64.powi(exponent) * 1000.0).round() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_across_units() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("1Ki"), Some(1_024_000));
        assert_eq!(milli("2e3"), Some(2_000_000));
        assert!(less("512Mi", "1Gi") && less("500m", "1") && !less("1", "1000m"));
        assert_eq!(milli("1x"), None);
    }

    #[test]
    fn defaults_fill_in_and_maxima_refuse_in_the_plugins_words() {
        // cargo-ephem's defaults, then a cluster policy's maximum (which
        // the API defaults into its own default and defaultRequest).
        let ranges = vec![
            json!({"spec": {"limits": [{"type": "Container",
                "default": {"cpu": "1", "memory": "1Gi"}, "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]}}),
            json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "500m"},
                "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "500m"}}]}}),
        ];
        let mut pod = json!({"metadata": {"name": "db"}, "spec": {"containers": [{"name": "db"}]}});
        let errors = apply(&ranges, &mut pod);
        assert_eq!(
            errors,
            ["maximum cpu usage per Container is 500m, but limit is 1."]
        );
        let c = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(c["requests"]["cpu"], "100m");
        assert_eq!(c["requests"]["memory"], "128Mi");
        assert_eq!(
            pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu, memory request for container db; cpu, memory limit for container db"
        );
    }
}
