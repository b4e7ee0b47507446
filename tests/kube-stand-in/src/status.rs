//! Errors as the API server writes them: a `Status` object with the HTTP
//! code, a machine-readable reason and the message kubectl would print.

use serde_json::{json, Value};

/// A failed request: what the handler returns, turned into a `Status` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Forbidden`, `Invalid`, ...
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    /// `details`: the object's name, group and kind (the resource, for most reasons).
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> ApiError {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    /// 404: `pods "db" not found`.
    pub fn not_found(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(resource, group)),
            Some(details(name, group, resource)),
        )
    }

    /// 404 for a path the server does not serve.
    pub fn no_such_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
            None,
        )
    }

    /// 409 on create: `namespaces "x" already exists`, or the namespace is
    /// still being deleted.
    pub fn already_exists(resource: &str, group: &str, name: &str, terminating: bool) -> ApiError {
        let prefix = if terminating {
            "object is being deleted: "
        } else {
            ""
        };
        ApiError::new(
            409,
            "AlreadyExists",
            format!(
                "{prefix}{} \"{name}\" already exists",
                qualified(resource, group)
            ),
            Some(details(name, group, resource)),
        )
    }

    /// 409: `Operation cannot be fulfilled on namespaces "x": <why>`.
    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(resource, group)
            ),
            Some(details(name, group, resource)),
        )
    }

    /// 403 from authorization, worded like the RBAC authorizer's denial.
    pub fn forbidden(
        user: &str,
        verb: &str,
        resource: &str,
        group: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> ApiError {
        let subject = match name {
            Some(name) => format!("{} \"{name}\"", qualified(base(resource), group)),
            None => qualified(base(resource), group),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
            ),
            Some(details(name.unwrap_or(""), group, base(resource))),
        )
    }

    /// 403 for content created in a namespace being deleted.
    pub fn namespace_terminating(resource: &str, group: &str, name: &str, ns: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(resource, group)
            ),
            Some(json!({
                "name": name, "group": group, "kind": resource,
                "causes": [{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {ns} is being terminated"),
                    "field": "metadata.namespace",
                }],
            })),
        )
    }

    /// 403 from the ResourceQuota admission plugin: creating pod `name`
    /// would exceed quota `quota`'s `pods`.
    pub fn quota_exceeded(name: &str, quota: &str, used: usize, limit: usize) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: exceeded quota: {quota}, requested: pods=1, used: pods={used}, limited: pods={limit}"
            ),
            Some(details(name, "", "pods")),
        )
    }

    /// 403 from an admission plugin or webhook: `pods "db" is forbidden:
    /// <why>`, as `admission.NewForbidden` writes it.
    pub fn admission(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: {why}",
                qualified(resource, group)
            ),
            Some(details(name, group, resource)),
        )
    }

    /// 400 for a log request of a container that has not started.
    pub fn waiting_to_start(container: &str, pod: &str, reason: &str) -> ApiError {
        ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"
        ))
    }

    /// 401: the credentials are not accepted.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized".to_owned(), None)
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> ApiError {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = match text.len() {
            1 => format!("{kind} \"{name}\" is invalid: {}", text[0]),
            _ => format!("{kind} \"{name}\" is invalid: [{}]", text.join(", ")),
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, message)| {
                json!({"reason": "FieldValueInvalid", "message": message, "field": field})
            })
            .collect();
        ApiError::new(
            422,
            "Invalid",
            message,
            Some(json!({"name": name, "kind": kind, "causes": causes})),
        )
    }

    /// 400 with the server's words.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message.into(), None)
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            None,
        )
    }

    /// 410 for a watch from a resourceVersion older than the kept history.
    pub fn expired(rv: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {rv} ({oldest})"),
            None,
        )
    }

    /// 415 for a patch type the stand-in does not apply.
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
            None,
        )
    }

    /// The `Status` object.
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `namespaces`, or `daemonsets.apps` for a resource outside the core group.
fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

/// `pods` of `pods/log`: the subject of a message is the parent resource.
fn base(resource: &str) -> &str {
    resource.split('/').next().unwrap_or(resource)
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({"kind": kind});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_reads_like_the_rbac_authorizer() {
        let e = ApiError::forbidden("me", "create", "namespaces", "", None, None);
        assert_eq!(
            e.message,
            "namespaces is forbidden: User \"me\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        let e = ApiError::forbidden("me", "get", "pods/log", "", Some("ns"), Some("db"));
        assert_eq!(
            e.message,
            "pods \"db\" is forbidden: User \"me\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"ns\""
        );
        assert_eq!(e.to_json()["code"], 403);
        assert_eq!(e.to_json()["reason"], "Forbidden");
    }

    #[test]
    fn other_groups_qualify_the_resource() {
        let e = ApiError::not_found("daemonsets", "apps", "x");
        assert_eq!(e.message, "daemonsets.apps \"x\" not found");
        assert_eq!(e.to_json()["details"]["group"], "apps");
    }
}
