//! The HTTP side: accepting connections, authenticating, authorizing,
//! routing each request to the store, and writing the answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::admission;
use crate::kubelet;
use crate::portforward::{self, Upgrade};
use crate::rbac::Access;
use crate::resources::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::Selection;
use crate::stream::{self, WatchRequest};
use crate::{NamespaceDeletion, RecordedRequest, Shared, USER};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// How long a watch lasts when the client does not say (the API server
/// picks 30 to 60 minutes; tests want streams that end).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Accepts connections until the task is dropped; dropping it drops every
/// connection (they live in its JoinSet).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    // Upgrades stay possible for port-forward's websocket.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One request as the handlers see it.
struct Call {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    /// The bearer token, if any.
    token: Option<String>,
    body: Bytes,
    /// A WebSocket upgrade's key, offered subprotocols and pending connection.
    upgrade: std::sync::Mutex<Option<Upgrade>>,
}

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let upgrade = websocket_upgrade(&mut req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let call = Call {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        content_type: header(http::header::CONTENT_TYPE).unwrap_or_default(),
        token: header(http::header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)),
        body,
        upgrade: std::sync::Mutex::new(upgrade),
    };
    let latency = shared.write(|s| {
        s.requests.push(RecordedRequest {
            method: call.method.to_string(),
            path: call.path.clone(),
            query: raw_query,
            content_type: (!call.content_type.is_empty()).then(|| call.content_type.clone()),
            body: String::from_utf8_lossy(&call.body).into_owned(),
        });
        s.latency
    });
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Ok(respond(&shared, &call).unwrap_or_else(|e| json_response(e.code, &e.to_json())))
}

/// The upgrade of a WebSocket request (`Upgrade: websocket` with a key), if it is one.
fn websocket_upgrade(req: &mut Request<Incoming>) -> Option<Upgrade> {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let is_websocket =
        header(http::header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let key = header(http::header::SEC_WEBSOCKET_KEY)?;
    if !is_websocket {
        return None;
    }
    let protocols = header(http::header::SEC_WEBSOCKET_PROTOCOL).unwrap_or_default();
    Some(Upgrade {
        key,
        protocols,
        on_upgrade: hyper::upgrade::on(req),
    })
}

fn respond(shared: &Arc<Shared>, call: &Call) -> Result<Response<Body>, ApiError> {
    let user = authenticate(shared, call)?;
    let route = Route::parse(&call.path)?;
    if let Route::Version = route {
        return Ok(json_response(200, &version()));
    }
    authorize(shared, &user, call, &route)?;
    match route {
        Route::Version => unreachable!("answered above"),
        Route::Collection { res, namespace } => collection(shared, call, res, namespace),
        Route::Object {
            res,
            namespace,
            name,
        } => object(shared, call, res, namespace.as_deref(), &name),
        Route::Subresource {
            res,
            namespace,
            name,
            sub,
        } => subresource(shared, call, res, namespace.as_deref(), &name, &sub),
    }
}

/// The user a request is made as: the token's, or anonymous without one.
fn authenticate(shared: &Shared, call: &Call) -> Result<String, ApiError> {
    match &call.token {
        None => Ok("system:anonymous".to_owned()),
        Some(token) if shared.read(|s| &s.token == token) => Ok(USER.to_owned()),
        Some(_) => Err(ApiError::unauthorized()),
    }
}

/// 403 for anonymous requests, for what tests forbade, and for what the
/// RBAC applied (if any) does not grant. A WebSocket upgrade of
/// `pods/portforward`, `exec` or `attach` needs `create` besides `get`, as
/// API servers check since 1.35 (AuthorizePodWebsocketUpgradeCreatePermission).
fn authorize(shared: &Shared, user: &str, call: &Call, route: &Route) -> Result<(), ApiError> {
    let a = route.attributes(&call.method, &call.query);
    let streams = matches!(
        a.resource.as_str(),
        "pods/portforward" | "pods/exec" | "pods/attach"
    ) && call
        .upgrade
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    let verbs = if streams {
        vec![a.verb.clone(), "create".to_owned()]
    } else {
        vec![a.verb.clone()]
    };
    for verb in verbs {
        let access = Access {
            verb,
            group: a.group.to_owned(),
            resource: a.resource.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
        };
        let granted = shared.write(|s| s.judge(&access));
        let denied = user == "system:anonymous"
            || !granted
            || shared.read(|s| {
                s.forbidden.iter().any(|(verb, resource)| {
                    (verb == "*" || *verb == access.verb)
                        && (resource == "*" || *resource == a.resource)
                })
            });
        if denied {
            return Err(ApiError::forbidden(
                user,
                &access.verb,
                &a.resource,
                a.group,
                a.namespace.as_deref(),
                a.name.as_deref(),
            ));
        }
    }
    Ok(())
}

fn collection(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    namespace: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let ns = namespace.as_deref();
    match call.method {
        Method::GET if is_watch(&call.query) => watch(shared, call, res, namespace),
        Method::GET => {
            let selection = selection(&call.query, res)?;
            let limit = call
                .query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .filter(|l| *l > 0);
            let after = call.query.get("continue").map(String::as_str);
            let list = shared.read(|s| s.list(res, ns, &selection, limit, after));
            Ok(json_response(200, &list))
        }
        Method::POST => {
            let Some(ns) = ns.or((!res.namespaced).then_some("")) else {
                return Err(ApiError::method_not_allowed("POST"));
            };
            let ns = (!ns.is_empty()).then_some(ns);
            let body = json_body(call)?;
            let created = shared.write(|s| s.create(res, ns, body))?;
            match (res.plural, ns) {
                ("namespaces", None) => admission::namespace_created(shared, &created),
                ("pods", Some(ns)) => kubelet::pod_created(shared, ns, &created),
                ("daemonsets", Some(ns)) => kubelet::daemon_set_created(shared, ns, &created),
                _ => {}
            }
            Ok(json_response(201, &created))
        }
        _ => Err(ApiError::method_not_allowed(call.method.as_str())),
    }
}

fn object(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    match call.method {
        Method::GET => Ok(json_response(200, &shared.read(|s| s.get(res, ns, name))?)),
        Method::DELETE => {
            let options = if call.body.is_empty() {
                json!({})
            } else {
                json_body(call)?
            };
            let answer = shared.write(|s| s.delete(res, ns, name, &options))?;
            if res.plural == "namespaces" && answer["metadata"]["deletionTimestamp"].is_string() {
                schedule_removal(shared, name, &answer);
            }
            Ok(json_response(200, &answer))
        }
        Method::PATCH => {
            let ct = call.content_type.as_str();
            if !ct.starts_with("application/merge-patch+json")
                && !ct.starts_with("application/strategic-merge-patch+json")
            {
                return Err(ApiError::unsupported_media_type(ct));
            }
            let patch = json_body(call)?;
            Ok(json_response(
                200,
                &shared.write(|s| s.patch(res, ns, name, &patch))?,
            ))
        }
        _ => Err(ApiError::method_not_allowed(call.method.as_str())),
    }
}

fn subresource(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    match (res.plural, sub, &call.method) {
        ("pods", "log", &Method::GET) => pod_log(shared, call, ns.unwrap_or(""), name),
        ("pods", "portforward", &Method::GET) => {
            let upgrade = call
                .upgrade
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let Some(upgrade) = upgrade else {
                return Err(ApiError::bad_request(
                    "Upgrade request required: port-forward is served over WebSocket (v4.channel.k8s.io)",
                ));
            };
            let ports = call.query.get("ports").map_or("", String::as_str);
            portforward::accept(shared, upgrade, ns.unwrap_or(""), name, ports)
        }
        _ => Err(ApiError::no_such_path()),
    }
}

fn pod_log(
    shared: &Arc<Shared>,
    call: &Call,
    ns: &str,
    pod: &str,
) -> Result<Response<Body>, ApiError> {
    let pods = resources::by_plural("pods").expect("pods are served");
    let object = shared.read(|s| s.get(pods, Some(ns), pod))?;
    if let Some((container, reason)) = waiting_to_start(&object, call.query.get("container")) {
        return Err(ApiError::waiting_to_start(&container, pod, &reason));
    }
    let tail = call.query.get("tailLines").and_then(|t| t.parse().ok());
    let follow = call
        .query
        .get("follow")
        .is_some_and(|f| f == "true" || f == "1");
    let body = if follow {
        stream::follow_log(shared.clone(), ns.to_owned(), pod.to_owned(), tail).boxed()
    } else {
        let text = shared.read(|s| stream::log_text(s, ns, pod, tail));
        Full::new(Bytes::from(text)).boxed()
    };
    Ok(response(200, "text/plain", body))
}

/// The container a log request names (else the first) when the kubelet
/// reports it waiting without ever having run: the API answers 400 then.
fn waiting_to_start(pod: &Value, container: Option<&String>) -> Option<(String, String)> {
    let statuses = pod["status"]["containerStatuses"].as_array()?;
    let status = match container {
        Some(name) => statuses.iter().find(|s| s["name"] == name.as_str())?,
        None => statuses.first()?,
    };
    let reason = status["state"]["waiting"]["reason"].as_str()?;
    if !status["lastState"]["terminated"].is_null() {
        return None;
    }
    let reason = match reason {
        "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image",
        other => other,
    };
    Some((
        status["name"].as_str().unwrap_or("").to_owned(),
        reason.to_owned(),
    ))
}

fn watch(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    namespace: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let rv = match call.query.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?,
        ),
    };
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let request = WatchRequest {
        res,
        namespace,
        selection: selection(&call.query, res)?,
        resource_version: rv,
        timeout,
        send_initial_events: call
            .query
            .get("sendInitialEvents")
            .is_some_and(|v| v == "true"),
        allow_bookmarks: call
            .query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
    };
    let body = stream::watch(shared.clone(), request).boxed();
    Ok(response(200, "application/json", body))
}

/// After a namespace's DELETE: the namespace controller's pass after the
/// configured delay, unless stuck.
fn schedule_removal(shared: &Arc<Shared>, name: &str, namespace: &Value) {
    let NamespaceDeletion::After(delay) = shared.read(|s| s.deletion.clone()) else {
        return;
    };
    let uid = namespace["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let (shared, name) = (shared.clone(), name.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        shared.write(|s| s.finish_namespace_deletion(&name, &uid));
    });
}

fn is_watch(query: &HashMap<String, String>) -> bool {
    query.get("watch").is_some_and(|w| w == "true" || w == "1")
}

fn selection(query: &HashMap<String, String>, res: &Resource) -> Result<Selection, ApiError> {
    Ok(Selection {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(
            query.get("fieldSelector").map_or("", String::as_str),
            res.plural,
        )?,
    })
}

fn json_body(call: &Call) -> Result<Value, ApiError> {
    serde_json::from_slice(&call.body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0+ephem-stand-in",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).boxed();
    response(code, "application/json", body)
}

fn response(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).expect("a valid content type"),
    );
    response
}

/// Where a path leads.
#[derive(Debug, PartialEq)]
enum Route {
    Version,
    /// `.../namespaces`, `.../namespaces/{ns}/pods`, or `/api/v1/pods` (all namespaces).
    Collection {
        res: &'static Resource,
        namespace: Option<String>,
    },
    /// `.../namespaces/{name}`, `.../namespaces/{ns}/pods/{name}`.
    Object {
        res: &'static Resource,
        namespace: Option<String>,
        name: String,
    },
    /// `.../pods/{name}/log`, `.../namespaces/{name}/finalize`, ...
    Subresource {
        res: &'static Resource,
        namespace: Option<String>,
        name: String,
        sub: String,
    },
}

/// What RBAC judges: verb, resource (with subresource), group, namespace, name.
struct Attributes {
    verb: String,
    resource: String,
    group: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Result<Route, ApiError> {
        if path == "/version" || path == "/version/" {
            return Ok(Route::Version);
        }
        let (group, version, rest) = if let Some(rest) = path.strip_prefix("/api/v1") {
            ("", "v1", rest)
        } else if let Some(rest) = path.strip_prefix("/apis/") {
            let mut parts = rest.splitn(3, '/');
            let group = parts.next().unwrap_or("");
            let version = parts.next().unwrap_or("");
            (group, version, parts.next().unwrap_or(""))
        } else {
            return Err(ApiError::no_such_path());
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let find = |plural: &str| {
            resources::find(group, version, plural).ok_or_else(ApiError::no_such_path)
        };
        let owned = |s: &str| Some(s.to_owned());
        let route = match segments.as_slice() {
            [plural] => Route::Collection {
                res: find(plural)?,
                namespace: None,
            },
            ["namespaces", name] if group.is_empty() => Route::Object {
                res: resources::namespaces(),
                namespace: None,
                name: (*name).to_owned(),
            },
            ["namespaces", ns, plural] => match find(plural) {
                Ok(res) if res.namespaced => Route::Collection {
                    res,
                    namespace: owned(ns),
                },
                _ if group.is_empty() => Route::Subresource {
                    res: resources::namespaces(),
                    namespace: None,
                    name: (*ns).to_owned(),
                    sub: (*plural).to_owned(),
                },
                _ => return Err(ApiError::no_such_path()),
            },
            ["namespaces", ns, plural, name] => Route::Object {
                res: find(plural).and_then(namespaced)?,
                namespace: owned(ns),
                name: (*name).to_owned(),
            },
            ["namespaces", ns, plural, name, sub] => Route::Subresource {
                res: find(plural).and_then(namespaced)?,
                namespace: owned(ns),
                name: (*name).to_owned(),
                sub: (*sub).to_owned(),
            },
            _ => return Err(ApiError::no_such_path()),
        };
        Ok(route)
    }

    fn attributes(&self, method: &Method, query: &HashMap<String, String>) -> Attributes {
        let (res, namespace, name, sub) = match self {
            Route::Version => unreachable!("/version needs no authorization"),
            Route::Collection { res, namespace } => (*res, namespace.clone(), None, None),
            Route::Object {
                res,
                namespace,
                name,
            } => (*res, namespace.clone(), Some(name.clone()), None),
            Route::Subresource {
                res,
                namespace,
                name,
                sub,
            } => (
                *res,
                namespace.clone(),
                Some(name.clone()),
                Some(sub.clone()),
            ),
        };
        let verb = match (method, &name) {
            (&Method::GET, None) if is_watch(query) => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, None) => "deletecollection",
            (&Method::DELETE, Some(_)) => "delete",
            _ => "unknown",
        };
        // RBAC sees a namespace's own requests as made in that namespace.
        let namespace = match (res.plural, &name) {
            ("namespaces", Some(name)) => Some(name.clone()),
            _ => namespace,
        };
        Attributes {
            verb: verb.to_owned(),
            resource: match sub {
                Some(sub) => format!("{}/{sub}", res.plural),
                None => res.plural.to_owned(),
            },
            group: res.group,
            namespace,
            name,
        }
    }
}

fn namespaced(res: &'static Resource) -> Result<&'static Resource, ApiError> {
    if res.namespaced {
        Ok(res)
    } else {
        Err(ApiError::no_such_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(
        method: Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> (String, String, Option<String>) {
        let query = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let a = Route::parse(path).unwrap().attributes(&method, &query);
        (a.verb, a.resource, a.namespace)
    }

    #[test]
    fn paths_and_verbs() {
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces", &[]),
            ("list".into(), "namespaces".into(), None)
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces", &[("watch", "true")]),
            ("watch".into(), "namespaces".into(), None)
        );
        assert_eq!(
            attributes(Method::DELETE, "/api/v1/namespaces/a", &[]),
            ("delete".into(), "namespaces".into(), Some("a".into()))
        );
        assert_eq!(
            attributes(Method::POST, "/api/v1/namespaces/a/pods", &[]),
            ("create".into(), "pods".into(), Some("a".into()))
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/a/pods/p/log", &[]),
            ("get".into(), "pods/log".into(), Some("a".into()))
        );
        assert_eq!(
            attributes(Method::PUT, "/api/v1/namespaces/a/finalize", &[]),
            (
                "update".into(),
                "namespaces/finalize".into(),
                Some("a".into())
            )
        );
        assert_eq!(
            attributes(Method::POST, "/apis/apps/v1/namespaces/a/daemonsets", &[]),
            ("create".into(), "daemonsets".into(), Some("a".into()))
        );
        assert_eq!(Route::parse("/api/v1/widgets").unwrap_err().code, 404);
        assert_eq!(
            Route::parse("/apis/apps/v1/namespaces/a").unwrap_err().code,
            404
        );
        assert_eq!(Route::parse("/healthz").unwrap_err().code, 404);
    }
}
